"""Batched long-form: where long audio is cut (literal cases on synthetic audio), and both engines
decoding real 60 s speech in windows as well as the sequential algorithm does."""

import dataclasses

import numpy as np
import pytest

from asrperf.config import ModelConfig, config_from_dict
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.windows import Window, split_windows
from asrperf.errors import ConfigError, ModelError
from asrperf.measure.wer import error_rates

SR = 16000
# Batched windows may change a word at each cut (one or two in a minute), and they decode without
# timestamps where the sequential reference decodes with them: a different prompt, which flips a
# word here and there (seen: "canoe slid" -> "can use lid" in the first sentence, int8). The 60 s
# clip holds ~176 words (one is 0.57 points), so 4 points allows about seven such words; a lost or
# doubled window costs over 40 points.
WER_VS_SEQUENTIAL_POINTS = 4.0


def _speech(spans_s: list[tuple[float, float]], total_s: float, floor: float = 0.0, seed: int = 0) -> np.ndarray:
    """Loud noise bursts ("speech") at `spans_s`, silence (or a noise `floor`, amplitude) elsewhere."""
    rng = np.random.default_rng(seed)
    audio = floor * rng.standard_normal(int(total_s * SR)).astype(np.float32)
    for a, b in spans_s:
        audio[int(a * SR):int(b * SR)] = 0.3 * rng.standard_normal(int(b * SR) - int(a * SR))
    return audio


def _s(windows: list[Window]) -> list[tuple[float, float]]:
    return [(round(w.start / SR, 2), round(w.end / SR, 2)) for w in windows]


# "speech" in 4.5 s phrases with 0.5 s pauses: at 4.5-5.0, 9.5-10.0, ..., 59.5-60.0
PHRASES = [(5.0 * k, 5.0 * k + 4.5) for k in range(12)]


@pytest.mark.parametrize("spans, total, expected", [
    # the latest pause before 30 s is 29.5-30.0: the cut lands in it; the rest (29.75-59.6) fits one window
    (PHRASES, 60.0, [(0.0, 29.75), (29.75, 59.6)]),
    # one clip under 30 s: one window, trailing silence dropped (0.1 s of margin kept)
    ([(1.0, 12.0)], 20.0, [(0.9, 12.1)]),
    # exactly the limit of speech fits one window
    ([(0.0, 29.9)], 30.0, [(0.0, 30.0)]),
    # a pause at 20.0-21.0 only: the cut must go there, not at the 30 s limit inside a phrase
    ([(0.0, 20.0), (21.0, 45.0)], 45.0, [(0.0, 20.5), (20.5, 45.0)]),
])
def test_cuts_fall_in_pauses_and_no_window_exceeds_30_s(spans, total, expected):
    windows = split_windows(_speech(spans, total), SR)
    got = _s(windows)
    assert len(got) == len(expected), got
    for (a, b), (ea, eb) in zip(got, expected):
        assert abs(a - ea) <= 0.15 and abs(b - eb) <= 0.15, got
    assert all(w.n <= 30 * SR for w in windows)
    for (a, b), (c, _) in zip(got, got[1:]):  # contiguous: nothing between windows is lost
        assert b == c
    for w in windows[:-1]:  # every cut is in a pause, never inside a phrase
        cut = w.end / SR
        assert not any(a < cut < b for a, b in spans), (cut, got)


def test_a_pause_under_a_noise_floor_is_still_found():
    # room noise 50 dB below the speech: the pauses are not silent, but still quiet
    windows = split_windows(_speech(PHRASES, 60.0, floor=0.3 * 10 ** (-50 / 20)), SR)
    for w in windows[:-1]:
        assert not any(a < w.end / SR < b for a, b in PHRASES), _s(windows)


def test_without_any_pause_the_cut_goes_to_the_quietest_point():
    audio = _speech([(0.0, 50.0)], 50.0)
    audio[int(25.0 * SR):int(25.3 * SR)] *= 0.1  # a softer stretch, 20 dB down: not "quiet", but the quietest
    first, second = split_windows(audio, SR)
    assert 25.0 <= first.end / SR <= 25.3 and second.end == len(audio)


def test_silence_gives_no_window_and_a_non_mono_input_is_refused():
    assert split_windows(np.zeros(40 * SR, dtype=np.float32), SR) == []
    with pytest.raises(ValueError, match="mono"):
        split_windows(np.zeros((2, SR), dtype=np.float32), SR)


# -- configuration --------------------------------------------------------------------------------

def test_longform_is_a_labelled_variant_of_whisper_engines_only():
    assert ModelConfig("whisper-tiny.en", longform="batched").variant == "fp32+longform=batched"
    assert ModelConfig("whisper-tiny.en", engine="ct2", dtype="int8", longform="batched").variant == "int8+longform=batched"
    assert config_from_dict({"models": [{"name": "whisper-tiny.en"}]}).identity() == \
        config_from_dict({"models": [{"name": "whisper-tiny.en", "longform": "sequential"}]}).identity()
    with pytest.raises(ConfigError, match="longform.*ort"):
        config_from_dict({"models": [{"name": "whisper-tiny.en", "engine": "ort", "longform": "batched"}]})
    with pytest.raises(ConfigError, match="longform"):
        config_from_dict({"models": [{"name": "whisper-tiny.en", "longform": "parallel"}]})


# -- real speech through both engines ---------------------------------------------------------------

@pytest.fixture(scope="module")
def clip60(builtin_clips):
    return builtin_clips(60.0)[0]


def _engine(name: str, cache_dir, dtype: str, longform: str):
    from asrperf.engines.registry import create

    engine = create(name, cache_dir)
    spec = dataclasses.replace(resolve("whisper-tiny.en"), options=ModelConfig("whisper-tiny.en", longform=longform).options)
    engine.load(spec, "real", dtype, "cpu")
    return engine


def _wer(engine, clip) -> tuple[float, str]:
    out = engine.transcribe([clip.audio], SAMPLE_RATE)
    return error_rates([clip.text], out.texts).wer, out.texts[0]


@pytest.mark.slow
def test_transformers_batched_windows_transcribe_a_minute_as_well_as_sequential(cache_dir, clip60):
    seq, _ = _wer(_engine("transformers", cache_dir, "fp32", "sequential"), clip60)
    engine = _engine("transformers", cache_dir, "fp32", "batched")
    wer, text = _wer(engine, clip60)
    assert (wer - seq) * 100 <= WER_VS_SEQUENTIAL_POINTS, text
    assert engine.info()["longform"].startswith("batched windows")
    assert "window(s) over 1 clip(s)" in engine.info()["windows"]


@pytest.mark.slow
def test_ct2_batched_windows_in_parallel_and_as_one_batch_agree_with_sequential(cache_dir, clip60, monkeypatch):
    pytest.importorskip("faster_whisper", reason="engine ct2 needs pip install 'asrperf[ct2]'")
    seq, _ = _wer(_engine("ct2", cache_dir, "int8", "sequential"), clip60)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a pool of two one-thread decoders
    pooled = _engine("ct2", cache_dir, "int8", "batched")
    assert pooled.pool is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: windows decode as one batch
    single = _engine("ct2", cache_dir, "int8", "batched")
    assert single.pool is None
    for engine in (pooled, single):
        wer, text = _wer(engine, clip60)
        assert (wer - seq) * 100 <= WER_VS_SEQUENTIAL_POINTS, (engine.info()["longform"], wer, seq, text)
    assert "in parallel" in pooled.info()["longform"] and "one batch" in single.info()["longform"]


def test_a_ctc_model_refuses_batched_windows(cache_dir):
    from asrperf.engines.hf import TransformersEngine

    spec = dataclasses.replace(resolve("wav2vec2-base"), options=ModelConfig("wav2vec2-base", longform="batched").options)
    with pytest.raises(ModelError, match="longform.*Whisper"):
        TransformersEngine(cache_dir).load(spec, "random", "fp32", "cpu")
