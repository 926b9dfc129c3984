"""Conformer-family models (Wav2Vec2-Conformer, Parakeet CTC, RNN-T and TDT) with random weights, end to end."""

import numpy as np
import pytest

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine

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
    # CTC emits at most one label per encoder frame of the padded batch (Parakeet: 80 ms, 1280
    # samples; the wav2vec2 family: 20 ms, 320 samples), and text exactly when it emits
    hop = 1280 if name.startswith("parakeet") else 320
    assert len(out.tokens) == 2 and max(out.tokens) <= 2 * SAMPLE_RATE // hop + 1
    assert all((n > 0) == bool(t.strip()) for n, t in zip(out.tokens, out.texts))
    # Parakeet takes mel input_features, the wav2vec2 family the raw waveform (input_values)
    expected_input = "input_features" if name.startswith("parakeet") else "input_values"
    assert engine.fe.model_input_names[0] == expected_input
    # the CTC blank the token count skips is the model's own pad id (the last id for Parakeet)
    assert engine.tok.pad_token_id == engine.model.config.pad_token_id


@pytest.mark.parametrize("name, policy", [("parakeet-ctc-0.6b", "n/a (CTC)"),
                                          ("parakeet-tdt-0.6b-v3", "fixed: blank at every encoder frame")])
def test_parakeet_runs_the_full_measurement_path(run_rows, name, policy):
    (row,) = run_rows([{"name": name, "weights": "random"}], lengths=[3],
                      timing={"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0})
    assert row["weights"] == "random" and row["wer"] is None and row["latency_s_p50"] > 0
    assert row["tokens_policy"].startswith(policy)


# -- transducers (RNN-T, TDT) ------------------------------------------------------------------------

@pytest.mark.parametrize("name, model_type", [("parakeet-rnnt-0.6b", "parakeet_rnnt"), ("parakeet-tdt-0.6b-v3", "parakeet_tdt")])
def test_transducer_architectures_are_0_6b_and_resolve_to_the_transducer_family(name, model_type):
    import torch
    import transformers as tf

    from asrperf.engines.catalog import TRANSDUCER_CLASSES

    spec = resolve(name)
    assert spec.family == "transducer" and spec.architecture["model_type"] == model_type
    arch = dict(spec.architecture)
    arch.pop("model_type")
    with torch.device("meta"):
        model = getattr(tf, TRANSDUCER_CLASSES[model_type])(tf.AutoConfig.for_model(model_type, **arch))
    # the checkpoints are published as 0.6B-parameter models
    assert 0.55e9 < sum(p.numel() for p in model.parameters()) < 0.70e9


def test_random_rnnt_takes_one_decoder_step_per_encoder_frame(cache_dir):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("parakeet-rnnt-0.6b"), "random", "fp32", "cpu")
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, n * SAMPLE_RATE).astype(np.float32) for n in (2, 1)]
    out = engine.transcribe(clips, SAMPLE_RATE)
    # random weights are biased to blank: nothing is emitted, and the loop walks every frame once
    assert out.texts == ["", ""] and out.tokens == [0, 0]
    feats = engine.fe(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="longest")
    # the loop ends when the longest clip's valid (unpadded) encoder frames are used up
    frames = int(engine.model.encoder._get_subsampling_output_length(feats.attention_mask.sum(-1)).max())
    assert engine.info()["decoder_steps"] == frames
    assert 0.95 * 12.5 * 2 <= frames <= 1.05 * 12.5 * 2 + 1  # 8x subsampling of 10 ms frames, 2 s
    assert engine.info()["tokens_policy"].startswith("fixed: blank at every encoder frame")
