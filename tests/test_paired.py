"""Paired WER change and ratio-of-medians CIs on hand-made data with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from asrperf.measure.paired import paired_wer_delta, ratio_of_means_ci, ratio_of_medians_ci, unpaired_wer_delta

# 20 utterances of 5 words each: 100 reference words
REFS = [f"w{i}a w{i}b w{i}c w{i}d w{i}e" for i in range(20)]


def _sub(ref: str, k: int) -> str:
    """`ref` with its first k words substituted."""
    words = ref.split()
    return " ".join(["zz"] * k + words[k:])


def test_identical_hypotheses_give_zero_delta_and_a_zero_ci():
    hyps = [_sub(r, i % 3) for i, r in enumerate(REFS)]  # some errors, the same in both
    d = paired_wer_delta(REFS, hyps, list(hyps), normalise=False)
    # errors 0,1,2,0,1,2,... over 20 utts: 7x0 + 7x1 + 6x2 = 19 edits / 100 words
    assert d.wer_base == d.wer_variant == pytest.approx(0.19)
    assert (d.delta, d.ci_low, d.ci_high) == (0.0, 0.0, 0.0)
    assert (d.n_worse, d.n_better, d.n_utts, d.ref_words) == (0, 0, 20, 100)
    assert d.paired and d.cer_delta == 0.0


@pytest.mark.parametrize("k, delta", [(1, 0.01), (2, 0.02), (5, 0.05)])
def test_one_utterance_with_k_extra_errors_moves_wer_by_k_over_total_words(k, delta):
    variant = [_sub(REFS[0], k)] + REFS[1:]
    d = paired_wer_delta(REFS, REFS, variant, normalise=False)
    assert d.wer_base == 0.0
    assert d.delta == pytest.approx(delta)
    assert (d.n_worse, d.n_better) == (1, 0)
    # one bad utterance in 20: the resamples without it (p = 0.95^20 = 0.36) give delta 0
    assert d.ci_low == 0.0 and d.ci_high > delta


def test_one_error_in_every_utterance_is_a_fixed_shift_with_a_point_ci():
    variant = [_sub(r, 1) for r in REFS]
    d = paired_wer_delta(REFS, REFS, variant, normalise=False)
    # every resample has 1 extra edit per 5 words
    assert d.delta == pytest.approx(0.2)
    assert d.ci_low == pytest.approx(0.2) and d.ci_high == pytest.approx(0.2)
    assert (d.n_worse, d.n_better) == (20, 0)


def test_fixed_errors_count_as_better_and_give_a_negative_delta():
    base = [_sub(r, 2) if i < 4 else r for i, r in enumerate(REFS)]  # 8 edits
    variant = [_sub(r, 1) if i < 2 else r for i, r in enumerate(REFS)]  # 2 edits
    d = paired_wer_delta(REFS, base, variant, normalise=False)
    assert (d.wer_base, d.wer_variant) == (pytest.approx(0.08), pytest.approx(0.02))
    assert d.delta == pytest.approx(-0.06)
    assert (d.n_worse, d.n_better) == (0, 4)
    assert d.ci_high <= 0.0


def test_cer_delta_counts_characters():
    # "cat sat" is 7 characters; "cat sit" has one substituted character
    d = paired_wer_delta(["cat sat"], ["cat sat"], ["cat sit"], normalise=False)
    assert d.cer_delta == pytest.approx(1 / 7)
    assert d.delta == pytest.approx(1 / 2)
    # one utterance: every resample is that utterance
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.5), pytest.approx(0.5))


def test_normalisation_is_whisper_english_like_error_rates():
    refs = ["Hello, world. It's 5 o'clock."]
    d = paired_wer_delta(refs, ["hello world it's five o'clock"], ["HELLO WORLD! It is 5 o'clock"])
    # case, punctuation, numbers and contractions are normalised away on both sides
    assert d.wer_base == 0.0 and d.delta == 0.0


def test_paired_ci_is_narrower_than_unpaired_when_difficulty_is_shared():
    # utterances of very different difficulty, the variant adds one error on two of them
    base = [_sub(r, i % 5) for i, r in enumerate(REFS)]
    variant = [_sub(r, min(5, i % 5 + (i in (3, 7)))) for i, r in enumerate(REFS)]
    p = paired_wer_delta(REFS, base, variant, normalise=False)
    u = unpaired_wer_delta(REFS, base, REFS, variant, normalise=False)
    assert p.delta == u.delta == pytest.approx(0.02)
    assert not u.paired and u.n_worse is None
    assert (p.ci_high - p.ci_low) < (u.ci_high - u.ci_low) / 3


def test_unpaired_on_different_utterances():
    d = unpaired_wer_delta(["a b c d"], ["a b c d"], ["e f"], ["e x"], normalise=False)
    assert (d.wer_base, d.wer_variant, d.delta) == (0.0, 0.5, 0.5)
    assert d.n_utts == 1 and d.ref_words == 4


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2 base but 1 variant"):
        paired_wer_delta(["a", "b"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        paired_wer_delta([], [], [])


def test_ratio_of_medians_no_ties_exact_mann_whitney():
    a, b = np.arange(1.0, 9.0), np.arange(9.0, 17.0)  # every b above every a
    r = ratio_of_medians_ci(a, b)
    assert r.ratio == pytest.approx(12.5 / 4.5)
    assert r.ci_low > 1.0 and r.ci_low <= r.ratio <= r.ci_high
    # exact two-sided p for complete separation of 8 vs 8: 2 / C(16, 8)
    assert r.p_value == pytest.approx(2 / 12870)
    assert (r.n_a, r.n_b, r.statistic) == (8, 8, "median")


def test_ratio_of_constant_samples_is_exact():
    r = ratio_of_medians_ci([0.5] * 10, [0.6] * 10)
    assert (r.ratio, r.ci_low, r.ci_high) == (pytest.approx(1.2),) * 3
    assert r.p_value < 1e-3


def test_identical_samples_ratio_one_p_one():
    x = [0.1, 0.12, 0.11, 0.13, 0.1]
    r = ratio_of_medians_ci(x, list(reversed(x)))
    assert r.ratio == 1.0 and r.p_value == 1.0
    assert r.ci_low <= 1.0 <= r.ci_high


def test_ratio_of_means_and_seed_determinism():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0, 0.1, 30), rng.lognormal(0, 0.1, 30) * 1.5
    r = ratio_of_means_ci(a, b, seed=3)
    assert r.ratio == pytest.approx(b.mean() / a.mean())
    assert r.ci_low > 1.3 and r.ci_high < 1.7
    assert ratio_of_means_ci(a, b, seed=3) == r
    assert ratio_of_means_ci(a, b, seed=4) != r


def test_ratio_rejects_empty_and_non_positive():
    with pytest.raises(ValueError, match="no samples in a"):
        ratio_of_medians_ci([], [1.0])
    with pytest.raises(ValueError, match="positive"):
        ratio_of_medians_ci([0.0, 1.0], [1.0])
