import numpy as np
import pytest

from asrperf.data.audio import Utterance
from asrperf.data.clips import ClipCache, build_continuous, build_exact, build_loop, gap_samples, n_samples, prepare_clips
from asrperf.errors import DataError

RATE = 16_000


def utt(i: int, seconds: float, text: str) -> Utterance:
    n = n_samples(seconds, RATE)
    return Utterance(f"u{i}", np.full(n, 0.01 * (i + 1), dtype=np.float32), RATE, text)


@pytest.mark.parametrize(
    "length_s, expected",
    [(5, 80_000), (15, 240_000), (30, 480_000), (60, 960_000), (0.5, 8_000), (2.00003, 32_000)],
)
def test_n_samples_is_exact(length_s, expected):
    assert n_samples(length_s, RATE) == expected


def test_exact_clips_pack_whole_utterances_and_pad_with_silence():
    utts = [utt(0, 2.0, "one two"), utt(1, 2.5, "three"), utt(2, 1.0, "four"), utt(3, 3.0, "five six")]
    clips = build_exact(iter(utts), 5.0, 2, RATE)
    assert [len(c.audio) for c in clips] == [80_000, 80_000]
    # 2.0 + 2.5 fits in 5 s; 1.0 more would make 5.5 s, so it starts the next clip
    assert clips[0].text == "one two three"
    assert clips[0].utterance_ids == ("u0", "u1")
    assert clips[0].speech_s == pytest.approx(4.5)
    assert clips[1].text == "four five six"
    assert clips[1].speech_s == pytest.approx(4.0)
    # audio is the utterances end to end, then digital silence
    assert np.all(clips[0].audio[:32_000] == np.float32(0.01))
    assert np.all(clips[0].audio[32_000:72_000] == np.float32(0.02))
    assert np.all(clips[0].audio[72_000:] == 0)


def test_utterance_longer_than_clip_is_never_cut():
    utts = [utt(0, 6.0, "too long"), utt(1, 1.0, "short")]
    clips = build_exact(iter(utts), 5.0, 1, RATE)
    assert clips[0].text == "short"


def test_exact_clips_raise_when_source_runs_out():
    with pytest.raises(DataError, match="only enough whole utterances for 1 clip"):
        build_exact(iter([utt(0, 4.0, "a")]), 5.0, 2, RATE)


def test_loop_clips_are_exact_length_without_reference():
    clips = build_loop(iter([utt(0, 1.3, "a"), utt(1, 0.4, "b")]), 5.0, 3, RATE)
    assert [len(c.audio) for c in clips] == [80_000] * 3
    assert all(c.text is None for c in clips)


def test_clip_cache_round_trip_and_reuse(tmp_path):
    utts = [utt(i, 1.5, f"word{i}") for i in range(12)]
    calls = []

    def source():
        calls.append(1)
        return iter(utts)

    cache = ClipCache(tmp_path)
    first, cached = prepare_clips(source, "test:src", {}, 5.0, 3, cache)
    assert not cached and len(calls) == 1
    again, cached = prepare_clips(source, "test:src", {}, 5.0, 3, cache)
    assert cached and len(calls) == 1, "a second run must reuse the cached clips"
    for a, b in zip(first, again):
        assert a.id == b.id and a.text == b.text and a.utterance_ids == b.utterance_ids
        np.testing.assert_array_equal(a.audio, b.audio)
        assert b.audio.dtype == np.float32 and len(b.audio) == 80_000
    # fewer clips are served from the same entry; a different source key is a different entry
    assert prepare_clips(source, "test:src", {}, 5.0, 2, cache)[1]
    assert not prepare_clips(source, "test:other", {}, 5.0, 2, cache)[1]


@pytest.mark.parametrize("shortfall, n_gaps, expected", [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (2, 4, [1, 1, 0, 0]),
                                                         (0, 2, [0, 0])])
def test_gap_samples_split_the_shortfall_evenly(shortfall, n_gaps, expected):
    assert gap_samples(shortfall, n_gaps) == expected
    assert sum(gap_samples(shortfall, n_gaps)) == shortfall


def test_continuous_clips_spread_the_shortfall_over_the_pauses():
    utts = [utt(0, 2.0, "one two"), utt(1, 2.5, "three"), utt(2, 1.0, "four"), utt(3, 3.0, "five six")]
    clips = build_continuous(iter(utts), 5.0, 2, RATE)
    assert [len(c.audio) for c in clips] == [80_000, 80_000]
    # the same whole utterances as exact mode, so the same exact references
    assert [c.text for c in clips] == ["one two three", "four five six"]
    assert clips[0].speech_s == pytest.approx(4.5) and clips[1].speech_s == pytest.approx(4.0)
    # clip 0: u0 (32,000), the 8,000-sample shortfall as its one pause, then u1 to the last sample
    a = clips[0].audio
    assert np.all(a[:32_000] == np.float32(0.01))
    assert np.all(a[32_000:40_000] == 0)
    assert np.all(a[40_000:] == np.float32(0.02))
    # clip 1: 16,000 + 16,000 gap + 48,000: the clip ends with the speech, no silence after it
    b = clips[1].audio
    assert np.all(b[:16_000] == np.float32(0.03)) and np.all(b[16_000:32_000] == 0)
    assert np.all(b[32_000:] == np.float32(0.04))


def test_continuous_clip_of_many_utterances_has_short_even_pauses():
    utts = [utt(i, 1.3, f"w{i}") for i in range(8)]  # 3 fit in 5 s: 3.9 s, shortfall 1.1 s over 2 pauses
    clip = build_continuous(iter(utts), 5.0, 1, RATE)[0]
    assert clip.text == "w0 w1 w2"
    silent = np.flatnonzero(clip.audio == 0)
    assert list(silent[[0, -1]]) == [20_800, 20_800 + 8_800 + 20_800 + 8_800 - 1]
    assert len(silent) == 17_600  # 1.1 s in two pauses of 0.55 s, none at either end
    assert clip.audio[0] != 0 and clip.audio[-1] != 0


def test_continuous_single_utterance_pads_the_end_and_runs_out_like_exact():
    clip = build_continuous(iter([utt(0, 4.0, "a")]), 5.0, 1, RATE)[0]
    assert clip.text == "a" and np.all(clip.audio[64_000:] == 0)
    with pytest.raises(DataError, match="only enough whole utterances for 1 clip"):
        build_continuous(iter([utt(0, 4.0, "a")]), 5.0, 2, RATE)
