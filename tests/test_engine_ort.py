"""The ONNX Runtime engine: same transcripts and logits as the transformers engine, cached export, int8."""

import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")

from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.engines.ort import OnnxRuntimeEngine
from asrperf.errors import ConfigError, MissingExtraError, ModelError

SR = 16000


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def ort_cache(cache_dir):
    return cache_dir  # the session cache: the runner cell below reuses this module's export


@pytest.fixture(scope="module")
def ort_fp32(ort_cache):
    engine = OnnxRuntimeEngine(ort_cache)
    engine.load(resolve("wav2vec2-base"), "random", "fp32", "cpu")
    return engine


def test_ort_matches_transformers_on_the_same_random_weights(ort_fp32, ort_cache, audio):
    import torch

    hf = TransformersEngine(ort_cache)
    hf.load(resolve("wav2vec2-base"), "random", "fp32", "cpu")
    assert ort_fp32.transcribe([audio], SR) == hf.transcribe([audio], SR)
    with torch.inference_mode():
        feats = hf.fe([audio], sampling_rate=SR, return_tensors="pt")
        ref = hf.model(input_values=feats["input_values"]).logits.numpy()
    got = ort_fp32.logits([audio], SR)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    # a batch of two lengths runs through the dynamic axes
    out = ort_fp32.transcribe([audio, audio[: SR]], SR)
    assert len(out.texts) == 2 and out.texts[0] == hf.transcribe([audio], SR).texts[0]


def test_info_reports_provenance(ort_fp32):
    info = ort_fp32.info()
    assert info["weights"] == "random" and info["dtype"] == "fp32" and info["device"] == "cpu"
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["onnx_file"].endswith("model.onnx") and "torch.onnx.export" in info["export_method"]
    assert info["decoding"] == "greedy CTC (argmax)" and info["tokens_policy"] == "n/a (CTC)"
    assert info["longform"] == "none needed (CTC over the whole clip)"
    assert not ort_fp32.runs_torch


def test_export_is_cached(ort_fp32, ort_cache):
    from pathlib import Path

    path = Path(ort_fp32.info()["onnx_file"])
    before = path.stat().st_mtime_ns
    again = OnnxRuntimeEngine(ort_cache)
    again.load(resolve("wav2vec2-base"), "random", "fp32", "cpu")
    assert again.info()["onnx_file"] == str(path)
    assert path.stat().st_mtime_ns == before
    assert len(list(Path(ort_cache).glob("ort-*/model.onnx"))) == 1


def test_int8_runs_and_says_so(ort_fp32, ort_cache, audio):
    engine = OnnxRuntimeEngine(ort_cache)
    engine.load(resolve("wav2vec2-base"), "random", "int8", "cpu")
    out = engine.transcribe([audio], SR)
    # CTC emits at most one label per 20 ms frame (320 samples), and text exactly when it emits
    assert len(out.texts) == 1 and out.tokens[0] <= len(audio) // 320 + 1
    assert (out.tokens[0] > 0) == bool(out.texts[0].strip())
    info = engine.info()
    assert info["dtype"] == "int8" and info["onnx_file"].endswith("model.int8.onnx")
    assert info["onnx_file"] != ort_fp32.info()["onnx_file"]


def test_unsupported_dtypes_and_devices_are_refused(ort_cache):
    with pytest.raises(ModelError, match="device 'tpu' is not usable by engine ort"):
        OnnxRuntimeEngine(ort_cache).load(resolve("wav2vec2-base"), "random", "fp32", "tpu")
    with pytest.raises(ConfigError, match="fp32, int8"):
        OnnxRuntimeEngine(ort_cache).load(resolve("wav2vec2-base"), "random", "fp16", "cpu")


def test_missing_onnxruntime_names_the_extra(monkeypatch, ort_cache):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"asrperf\[ort\]"):
        OnnxRuntimeEngine(ort_cache).load(resolve("wav2vec2-base"), "random", "fp32", "cpu")


def test_runner_commits_an_ok_ort_row(run_rows):
    rows = run_rows([{"name": "wav2vec2-base", "engine": "ort", "weights": "random"}], lengths=[3])
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["engine"] == "ort" and rows[0]["weights"] == "random"
