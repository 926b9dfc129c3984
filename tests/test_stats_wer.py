import numpy as np
import pytest

from asrperf.measure.stats import bootstrap_ci, rtfx, summarize, throughput_samples_per_s
from asrperf.measure.wer import error_rates, normalize


def test_summarize_literal():
    s = summarize([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(4.0)
    assert s["std"] == pytest.approx(np.sqrt(((9 + 4 + 1 + 0 + 36) / 4)))
    assert s["min"] == 1.0 and s["max"] == 10.0
    assert s["p50"] == 3.0
    # linear interpolation: p90 sits 60% of the way from 4 to 10
    assert s["p90"] == pytest.approx(7.6)
    assert s["p99"] == pytest.approx(9.76)
    assert s["p50_ci_low"] <= 3.0 <= s["p50_ci_high"]


def test_bootstrap_is_deterministic_and_covers_median():
    x = np.random.default_rng(1).normal(10, 1, 200)
    a = bootstrap_ci(x, lambda a: np.median(a, axis=-1))
    assert a == bootstrap_ci(x, lambda a: np.median(a, axis=-1))
    assert a[0] < np.median(x) < a[1]
    assert a[1] - a[0] < 0.5


def test_derived_rates():
    assert throughput_samples_per_s(batch_size=4, calls=10, total_s=20.0) == 2.0
    assert rtfx(audio_s=60.0, compute_s=2.0) == 30.0


@pytest.mark.parametrize(
    "refs, hyps, wer, cer",
    [
        # one deletion in 6 words + one substitution in 2 words: 2 edits / 8 words
        (["the cat sat on the mat", "hello world"], ["the cat sat on mat", "hello word"], 2 / 8, None),
        # corpus-level, not the mean of per-utterance rates (which would be (1/1 + 0/9) / 2 = 0.5)
        (["yes", "a quick brown fox jumps over the lazy dog"],
         ["no", "a quick brown fox jumps over the lazy dog"], 1 / 10, None),
        # insertions count: 2 inserted words over 2 reference words
        (["good morning"], ["good morning to you"], 2 / 2, None),
        (["abc"], ["abd"], 1.0, 1 / 3),
        (["same words"], ["same words"], 0.0, 0.0),
    ],
)
def test_error_rates_hand_computed(refs, hyps, wer, cer):
    er = error_rates(refs, hyps)
    assert er.wer == pytest.approx(wer)
    if cer is not None:
        assert er.cer == pytest.approx(cer)
    assert er.wer_ci[0] <= er.wer <= er.wer_ci[1]


def test_whisper_normalisation_before_scoring():
    # case, punctuation, British spelling and numbers must not count as errors
    er = error_rates(["The colour is RED, isn't it?"], ["the color is red isn't it"])
    assert er.wer == 0.0
    assert normalize("Twenty-five") == normalize("25")


def test_error_rates_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
