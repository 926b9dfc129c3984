"""The profiler: op categories, stage marks and the Chrome trace, on real tiny.en and wav2vec2-base."""

import json
import time

import pytest

from asrperf.config import TimingConfig
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.engines.hf_families import STAGES
from asrperf.measure.ops import categorize
from asrperf.measure.timer import time_calls
from asrperf.scenarios.profile import profile_cell


@pytest.mark.parametrize("name, category", [
    ("aten::addmm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("aten::mkldnn_convolution", "convolution"),
    ("aten::native_layer_norm", "normalisation"),
    ("aten::gelu", "elementwise"),
    ("aten::empty", "memory"),
    ("aten::copy_", "memory"),
    ("aten::embedding", "embedding/indexing"),
    ("aten::index_select", "embedding/indexing"),
    ("Memcpy HtoD (Pageable -> Device)", "memory"),
    ("ampere_sgemm_128x64_tn", "matmul"),
    ("some_unknown_op", "other"),
])
def test_categorize(name, category):
    assert categorize(name) == category


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return builtin_clips(5.0)


def _profiled(cache_dir, clips, tmp_path, model, weights, device="cpu"):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve(model), weights, "fp32", device)
    row = profile_cell(engine, clips, 1, tmp_path, wait=1, warmup=1, active=2)
    return engine, row


def _check_common(engine, clips, row):
    assert sum(r["share"] for r in row["op_categories"]) == pytest.approx(1.0, abs=0.001)
    assert row["profiled_calls"] == 2
    assert set(STAGES) <= set(engine.stages()) <= set(row["stages"])
    with open(row["trace_path"]) as f:
        assert json.load(f)["traceEvents"]
    # The stage marks cover the whole call: their sum per call matches perf_counter around the
    # same profiled calls to within 20% (the untimed gaps are a few Python statements).
    per_call = sum(row["stages"][s] for s in engine.stages())
    assert per_call == pytest.approx(row["profiled_latency_s"], rel=0.2)
    # Against the plain timer on the same clip: 30% allows for the profiler's own overhead (a
    # few us per op event, thousands of small ops in Whisper's generate) and for timer noise; the fastest call of each is compared because the
    # mean is at the mercy of other processes on a shared CPU.
    plain = time_calls(lambda i: engine.transcribe([clips[0].audio], SAMPLE_RATE), engine.synchronize,
                       TimingConfig(warmup_calls=0, min_calls=3, min_time_s=0.0))
    assert min(row["profiled_latencies_s"]) == pytest.approx(min(plain.samples_s), rel=0.3)


def test_whisper_profile(cache_dir, clips, tmp_path, device):
    engine, row = _profiled(cache_dir, clips, tmp_path, "whisper-tiny.en", "real", device)
    shares = {r["category"]: r["share"] for r in row["op_categories"]}
    assert shares["matmul"] > 0.10
    # encoder and decoder steps are marked inside "model" by forward hooks
    assert 0 < row["stages"]["encoder"] < row["stages"]["model"]
    assert 0 < row["stages"]["decoder"] < row["stages"]["model"]
    assert 0 < row["stages"]["decoder_first_step"] < row["stages"]["model"]
    _check_common(engine, clips, row)


def test_wav2vec2_profile(cache_dir, clips, tmp_path, device):
    engine, row = _profiled(cache_dir, clips, tmp_path, "wav2vec2-base", "random", device)
    shares = {r["category"]: r["share"] for r in row["op_categories"]}
    assert shares["convolution"] > 0.05  # the 7-layer convolutional feature encoder
    assert all(n["name"] for n in row["uncategorised_top"])
    # the CTC head (one Linear) is a sliver of the forward; the greedy decode is its own stage
    assert 0 < row["stages"]["ctc_head"] < 0.2 * row["stages"]["encoder"] < row["stages"]["model"]
    assert "ctc_greedy_decode" in engine.stages()
    _check_common(engine, clips, row)


def test_kv_cache_makes_late_decoder_steps_cheaper(cache_dir):
    """Greedy decoder steps at positions 20-31, with and without the KV cache (random tiny weights).

    Without the cache, step p re-runs self-attention over all p tokens and recomputes the
    cross-attention keys / values of the 1500 encoder frames in every layer; with it, a step runs
    one token. The fastest late step of each is compared (robust to a shared CPU).
    """
    import numpy as np
    import torch

    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny"), "random", "fp32", "cpu")
    model = engine.model
    audio = np.random.default_rng(0).normal(0, 0.1, 5 * SAMPLE_RATE).astype(np.float32)
    features = engine.fe([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def late_step_s(use_cache: bool, n: int = 32, first: int = 20) -> float:
        steps = []
        with torch.inference_mode():
            enc = model.get_encoder()(features)
            ids, cache = torch.tensor([[model.config.decoder_start_token_id]]), None
            for pos in range(n):
                t0 = time.perf_counter()
                out = model(encoder_outputs=enc, decoder_input_ids=ids[:, -1:] if cache is not None else ids,
                            cache=cache, use_cache=use_cache)
                cache = out.past_key_values if use_cache else None
                ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                if pos >= first:
                    steps.append(time.perf_counter() - t0)
        return min(steps)

    with_cache, without = late_step_s(True), late_step_s(False)
    assert without > 1.5 * with_cache, (with_cache, without)
