"""The whisper.cpp engine on the real tiny.en and the built-in corpus: agreement, types, caching, errors."""

import os

import pytest

pytest.importorskip("_pywhispercpp", reason="engine whispercpp needs pip install 'asrperf[whispercpp]'")

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.registry import create
from asrperf.engines.whispercpp import STAGES_MS, WhisperCppEngine
from asrperf.errors import ModelError
from asrperf.measure.wer import error_rates

# whisper.cpp runs the same weights (f16 here: the bundled export stores fp16) with the same greedy,
# no-fallback decoding as CTranslate2, so transcripts agree up to float summation order and how each
# implementation seeks at the 30 s boundary of the 60 s clip. ~160 words: 3 points is ~5 words; a
# lost window (~50 points) or a broken vocabulary (~100) fails loudly.
WER_AGREEMENT_POINTS = 3.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return builtin_clips(5.0, 2) + builtin_clips(60.0)


def _load(cache_dir, dtype: str, name: str = "whisper-tiny.en", weights: str = "auto") -> WhisperCppEngine:
    engine = create("whispercpp", cache_dir)
    engine.load(resolve(name), weights, dtype, "cpu")
    return engine


def _corpus_wer(engine, clips) -> tuple[float, list[str]]:
    texts = [engine.transcribe([c.audio], SAMPLE_RATE).texts[0] for c in clips]
    return error_rates([c.text for c in clips], texts).wer, texts


@pytest.fixture(scope="module")
def f16(cache_dir):
    return _load(cache_dir, "fp16")


def test_real_tiny_en_agrees_with_ctranslate2(f16, cache_dir, clips):
    pytest.importorskip("faster_whisper", reason="the reference here is engine ct2: pip install 'asrperf[ct2]'")
    ct2 = create("ct2", cache_dir)
    ct2.load(resolve("whisper-tiny.en"), "auto", "fp32", "cpu")
    ours, texts = _corpus_wer(f16, clips)
    theirs, _ = _corpus_wer(ct2, clips)
    assert ours < 0.15, texts  # real decoding, not garbage: the corpus scores ~6% with every engine
    assert abs(ours - theirs) * 100 <= WER_AGREEMENT_POINTS, (ours, theirs, texts)
    info = f16.info()
    assert info["weights"] == "real" and info["ggml_type"] == "f16" and info["dtype"] == "fp16"
    assert info["cpu_threads"] == int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count())
    assert info["longform"].startswith("sequential (whisper.cpp")  # the 60 s clip came last
    assert info["whispercpp_fallbacks"] == 0
    stages = info["whispercpp_stage_ms"]
    assert set(stages) == set(STAGES_MS) and stages["encode"] > 0 and stages["decode"] > 0
    # the 60 s call: at least two encoder windows; one-token steps for each token after the prompt
    assert info["whispercpp_stage_runs"]["encode"] >= 1


def test_the_conversion_is_cached_per_type(f16, cache_dir):
    path = f16.path
    mtime = path.stat().st_mtime_ns
    again = _load(cache_dir, "fp16")
    assert again.path == path and path.stat().st_mtime_ns == mtime, "a second load must reuse the ggml file"
    assert path.parent.name.startswith("ggml-") and path.name == "ggml-model-f16.bin"


def test_q8_0_runs_whisper_cpps_int8_blocks_within_budget(f16, cache_dir, clips):
    q8 = _load(cache_dir, "q8_0")
    assert q8.info()["ggml_type"] == "q8_0" and q8.path.stat().st_size < 0.7 * f16.path.stat().st_size
    short = clips[:2]  # the 5 s clips: q8_0 changes at most a word there
    ours, texts = _corpus_wer(q8, short)
    ref, _ = _corpus_wer(f16, short)
    assert abs(ours - ref) * 100 <= 10.0, texts


def test_random_weights_decode_a_capped_token_count(cache_dir, clips):
    engine = _load(cache_dir, "fp16", name="whisper-tiny", weights="random")
    out = engine.transcribe([clips[0].audio], SAMPLE_RATE)
    assert 1 <= out.tokens[0] <= 15  # 3 tokens per audio-second of a 5 s window
    assert engine.info()["weights"] == "random" and "max_tokens" in engine.info()["tokens_policy"]


def test_errors_are_one_line(cache_dir, f16):
    with pytest.raises(ModelError, match="dtype 'int8' is not a ggml type"):
        _load(cache_dir, "int8")
    with pytest.raises(ModelError, match="aborts on f32 models.*use dtype fp16"):
        _load(cache_dir, "fp32")
    with pytest.raises(ModelError, match="runs on cpu here"):
        create("whispercpp", cache_dir).load(resolve("whisper-tiny.en"), "auto", "fp16", "cuda")
    with pytest.raises(ModelError, match="Whisper models only"):
        _load(cache_dir, "fp16", name="wav2vec2-base")


def test_a_damaged_cached_file_is_named_not_crashed_on(tmp_path, f16, monkeypatch):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(f16.path.parent, cache / f16.path.parent.name)
    broken = cache / f16.path.parent.name / f16.path.name
    broken.write_bytes(broken.read_bytes()[:1_000_000])  # a killed copy: cut mid-tensor
    import asrperf.engines.whispercpp as module

    monkeypatch.setattr(module, "ggml_model_file", lambda *args: (broken, "real", "test"))  # as if cached
    engine = WhisperCppEngine(cache)
    with pytest.raises(ModelError, match="runs past the end of the file") as err:
        engine.load(resolve("whisper-tiny.en"), "auto", "fp16", "cpu")
    assert "\n" not in str(err.value)


def test_batched_windows_decode_in_parallel_within_the_sequential_wer(cache_dir, clips):
    import dataclasses

    from asrperf.config import VariantOptions

    long = clips[-1]
    engine = WhisperCppEngine(cache_dir)
    engine.load(dataclasses.replace(resolve("whisper-tiny.en"), options=VariantOptions(longform="batched")), "auto",
                "q8_0", "cpu")
    out = engine.transcribe([long.audio], SAMPLE_RATE)
    sequential = _load(cache_dir, "q8_0").transcribe([long.audio], SAMPLE_RATE)
    ours, ref = (error_rates([long.text], o.texts).wer for o in (out, sequential))
    # a cut at a pause may change a word at the seam (ct2's batched variant has the same allowance)
    assert ours - ref <= 0.02, (out.texts, sequential.texts)
    info = engine.info()
    assert info["windows"].startswith("2 window(s)") and "no timestamps" in info["longform"]
    contexts = min(2, info["cpu_threads"])
    assert f"{contexts} whisper.cpp context(s) in parallel" in info["longform"]
    assert len(engine.loaded_weights().files) == info["cpu_threads"]
