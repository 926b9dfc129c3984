"""Whisper on ONNX Runtime: the transformers engine's transcripts, from exported encoder/decoder graphs."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.base import ModelSpec
from asrperf.engines.catalog import _whisper, resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.engines.ort import OnnxRuntimeEngine
from asrperf.errors import ModelError
from asrperf.measure.wer import error_rates

# int8 (dynamic, weight-only QInt8 MatMuls) may change a word or two on a 60 s clip; measured on
# the built-in corpus: 6.8% WER against 7.3% for fp32. Allowed: 3 points either way.
INT8_WER_TOLERANCE = 0.03
# a Whisper small enough to export in a second: random weights, real tiny.en vocabulary
MINI = ModelSpec("whisper-mini-test", "whisper", "", _whisper(64, 2, 2, vocab=51864), english_only=True)


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return {length: builtin_clips(length) for length in (5.0, 60.0)}


@pytest.fixture(scope="module")
def hf_tiny(cache_dir):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    return engine


@pytest.fixture(scope="module")
def reference(hf_tiny, clips):
    return {length: hf_tiny.transcribe([c.audio for c in cs], SAMPLE_RATE) for length, cs in clips.items()}


@pytest.fixture(scope="module")
def ort_fp32(cache_dir):
    engine = OnnxRuntimeEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    return engine


def test_fp32_gives_the_transformers_transcripts_on_real_tiny_en(ort_fp32, reference, clips):
    for length in (5.0, 60.0):
        out = ort_fp32.transcribe([c.audio for c in clips[length]], SAMPLE_RATE)
        assert out == reference[length], length
    # the 60 s clip went through the sequential long-form algorithm, all of it
    assert "sequential" in ort_fp32.info()["longform"]
    assert error_rates([c.text for c in clips[60.0]], out.texts).wer < 0.15


def test_decoder_steps_with_past_reproduce_the_full_forward(ort_fp32, hf_tiny, clips):
    feats = hf_tiny.fe([clips[5.0][0].audio], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    ids = torch.tensor([[50257, 50362, 383, 1110, 286]])  # prompt, then three text tokens
    with torch.inference_mode():
        ref = hf_tiny.model(input_features=feats, decoder_input_ids=ids).logits.numpy()
        model = ort_fp32._whisper.model
        encoded = model.get_encoder()(feats)
        sequence = object()  # stands for generate's cache: one object per decoded sequence
        steps = [model(decoder_input_ids=ids[:, :2], encoder_outputs=encoded, cache=sequence).logits]
        steps += [model(decoder_input_ids=ids[:, i:i + 1], encoder_outputs=encoded, cache=sequence).logits
                  for i in range(2, ids.shape[1])]
    got = torch.cat(steps, dim=1).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_info_and_stages(ort_fp32):
    info = ort_fp32.info()
    assert info["weights"] == "real" and info["dtype"] == "fp32" and info["providers"] == ["CPUExecutionProvider"]
    assert [Path(f).name for f in info["onnx_files"]] == ["encoder.onnx", "decoder.onnx"]
    assert "past self-attention K/V" in info["export_method"] and "transformers generate" in info["decoding"]
    assert info["n_params"] == 37_760_256
    assert ort_fp32.stages() == ("feature_extraction", "host_to_device", "model", "detokenize")
    assert {f.name for f in ort_fp32.loaded_weights().files} == {"encoder.onnx", "decoder.onnx"}


def test_export_is_cached(ort_fp32, cache_dir):
    decoder = Path(ort_fp32.info()["onnx_file"])
    before = decoder.stat().st_mtime_ns
    again = OnnxRuntimeEngine(cache_dir)
    again.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    assert again.info()["onnx_file"] == str(decoder) and decoder.stat().st_mtime_ns == before


def test_int8_stays_within_the_wer_tolerance(cache_dir, ort_fp32, reference, clips):
    engine = OnnxRuntimeEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "int8", "cpu")
    info = engine.info()
    assert [Path(f).name for f in info["onnx_files"]] == ["encoder.int8.onnx", "decoder.int8.onnx"]
    assert "quantize_dynamic" in info["export_method"]
    for length in (5.0, 60.0):
        refs = [c.text for c in clips[length]]
        out = engine.transcribe([c.audio for c in clips[length]], SAMPLE_RATE)
        fp32_wer = error_rates(refs, reference[length].texts).wer
        assert abs(error_rates(refs, out.texts).wer - fp32_wer) <= INT8_WER_TOLERANCE, (length, out.texts)


def test_random_weights_decode_the_transformers_fixed_token_count(cache_dir):
    hf = TransformersEngine(cache_dir)
    hf.load(MINI, "random", "fp32", "cpu")
    engine = OnnxRuntimeEngine(cache_dir)
    engine.load(MINI, "random", "fp32", "cpu")
    audio = np.random.default_rng(0).normal(0, 0.1, 45 * SAMPLE_RATE).astype(np.float32)
    out = engine.transcribe([audio, audio[: 10 * SAMPLE_RATE]], SAMPLE_RATE)
    # 45 s = a 30 s window (90 tokens) + 15 s (45); 10 s = 30 tokens; the same greedy tokens as transformers
    assert out.tokens == [135, 30]
    assert out == hf.transcribe([audio, audio[: 10 * SAMPLE_RATE]], SAMPLE_RATE)
    info = engine.info()
    assert info["weights"] == "random" and "fixed 3/audio-s" in info["tokens_policy"]


def test_beam_search_is_refused(cache_dir):
    engine = OnnxRuntimeEngine(cache_dir)
    engine.load(MINI, "random", "fp32", "cpu")
    features = torch.zeros(1, 80, 3000)
    with pytest.raises(ModelError, match=r"greedy decoding only \(num_beams=1\)"):
        engine._whisper.model.generate(features, num_beams=2)


def test_runner_commits_an_ok_ort_whisper_row(run_rows, ort_fp32):
    rows = run_rows([{"name": "whisper-tiny.en", "engine": "ort", "weights": "real"}])
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["engine"] == "ort" and rows[0]["weights"] == "real"


def _has_cuda_provider() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# skipped at collection, before its fixtures export the CPU model (seconds of device time)
@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_provider(), reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_execution_provider_gives_the_cpu_transcripts(cache_dir, ort_fp32, clips):
    engine = OnnxRuntimeEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cuda")
    assert engine.info()["providers"][0] == "CUDAExecutionProvider"
    audios = [c.audio for c in clips[5.0]]
    assert engine.transcribe(audios, SAMPLE_RATE).texts == ort_fp32.transcribe(audios, SAMPLE_RATE).texts
