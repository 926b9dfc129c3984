"""Conformer-family CTC models (Wav2Vec2-Conformer, Parakeet) with random weights, end to end."""

import numpy as np
import pytest

from asrperf.config import config_from_dict
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.results.store import Store
from asrperf.run.runner import run

# No exact parameter counts are published; the fp32 weight files' sizes on the Hub are (GB):
# wav2vec2-conformer-rope-large-960h-ft model.safetensors 2.37, parakeet-ctc-0.6b F32 GGUF
# (handy-computer/parakeet-ctc-0.6b-gguf) 2.44, parakeet-ctc-1.1b.nemo 4.25. 4 bytes a parameter.
PUBLISHED_FP32_GB = {"wav2vec2-conformer-large": 2.37, "parakeet-ctc-0.6b": 2.44, "parakeet-ctc-1.1b": 4.25}
# what the catalog architectures build (pins the shapes against accidental change)
N_PARAMS = {"wav2vec2-conformer-large": 593_376_928, "parakeet-ctc-0.6b": 608_799_745, "parakeet-ctc-1.1b": 1_062_540_289}


def test_parakeet_1_1b_architecture_has_the_published_size():
    # filling 4.25 GB of random weights takes a minute on a 2-core CI machine: count on meta
    import torch
    import transformers as tf

    arch = dict(resolve("parakeet-ctc-1.1b").architecture)
    model_type = arch.pop("model_type")
    with torch.device("meta"):
        model = tf.AutoModelForCTC.from_config(tf.AutoConfig.for_model(model_type, **arch))
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS["parakeet-ctc-1.1b"]


@pytest.mark.parametrize("name", ["wav2vec2-conformer-large", "parakeet-ctc-0.6b"])
def test_random_conformer_transcribes_2_s(cache_dir, name):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve(name), "random", "fp32", "cpu")
    info = engine.info()
    assert info["weights"] == "random"
    assert info["n_params"] == N_PARAMS[name]
    assert info["n_params"] * 4 / 1e9 == pytest.approx(PUBLISHED_FP32_GB[name], rel=0.01)
    rng = np.random.default_rng(0)
    # 2 s, batched with a 1 s clip: the padded batch passes the feature extractor's attention_mask
    clips = [rng.normal(0, 0.1, n * SAMPLE_RATE).astype(np.float32) for n in (2, 1)]
    out = engine.transcribe(clips, SAMPLE_RATE)
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    assert len(out.tokens) == 2 and min(out.tokens) >= 0
    # Parakeet takes mel input_features, the wav2vec2 family the raw waveform (input_values)
    expected_input = "input_features" if name.startswith("parakeet") else "input_values"
    assert engine.fe.model_input_names[0] == expected_input
    # the CTC blank the token count skips is the model's own pad id (the last id for Parakeet)
    assert engine.tok.pad_token_id == engine.model.config.pad_token_id


def test_parakeet_runs_the_full_measurement_path(tmp_path, cache_dir, tiny_source):
    cfg = config_from_dict({
        "source": tiny_source,
        "models": [{"name": "parakeet-ctc-0.6b", "weights": "random"}],
        "timing": {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0},
        "run": {"clip_lengths_s": [3], "n_clips": 1, "store": str(tmp_path / "r.sqlite"), "cache_dir": str(cache_dir)},
    })
    summary = run(cfg)
    assert summary.ran == 1 and summary.failed == 0
    with Store(cfg.store) as s:
        rows = s.rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("error")
    assert row["weights"] == "random" and row["wer"] is None
