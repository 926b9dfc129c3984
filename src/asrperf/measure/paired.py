"""Is B different from A? Changes between two measurements with bootstrap CIs, defined once.

Two kinds of evidence:
- accuracy: both systems transcribed the same utterances, so the WER change is tested *paired*:
  each bootstrap resample draws utterance indices once and recomputes the corpus WER of both
  systems on that same resample (Koehn 2004, "Statistical significance tests for machine
  translation evaluation"). Pairing removes the utterance-difficulty variance both share.
- speed: timed calls of A and B are independent draws, so each side is resampled on its own;
  the change is a ratio of medians (or means) B/A with a percentile-bootstrap 95% CI, and a
  two-sided Mann–Whitney U test of "same distribution".

Pure numpy/scipy/jiwer: no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from asrperf.measure.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from asrperf.measure.wer import count_table

LEVEL = 0.95


@dataclass(frozen=True)
class WerDelta:
    """Corpus WER/CER of a base and a variant system and their change (fractions, not percent)."""

    wer_base: float
    wer_variant: float
    delta: float  # wer_variant - wer_base, absolute (0.01 = one WER point)
    ci_low: float  # 95% bootstrap CI of delta
    ci_high: float
    cer_base: float
    cer_variant: float
    cer_delta: float
    cer_ci_low: float
    cer_ci_high: float
    n_utts: int  # utterances of the base (== the variant's when paired)
    ref_words: int  # reference words of the base after normalisation
    paired: bool  # True: same utterances, resampled together; False: independent resamples
    n_worse: int | None  # utterances whose word errors went up (paired only)
    n_better: int | None  # ... went down (paired only)
    n_boot: int


def _rate(c: np.ndarray, num: int, den: int) -> np.ndarray:
    """Corpus rate summed over utterances: total edits / total reference units (per resample)."""
    return c[..., num].sum(axis=-1) / np.maximum(c[..., den].sum(axis=-1), 1)


def _quantiles(x: np.ndarray) -> tuple[float, float]:
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(x, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _delta(base: np.ndarray, variant: np.ndarray, boot_base: np.ndarray, boot_variant: np.ndarray,
           paired: bool, n_boot: int) -> WerDelta:
    wer_b, wer_v = _rate(base, 0, 1), _rate(variant, 0, 1)
    cer_b, cer_v = _rate(base, 2, 3), _rate(variant, 2, 3)
    wer_lo, wer_hi = _quantiles(_rate(boot_variant, 0, 1) - _rate(boot_base, 0, 1))
    cer_lo, cer_hi = _quantiles(_rate(boot_variant, 2, 3) - _rate(boot_base, 2, 3))
    worse = better = None
    if paired:
        diff = variant[:, 0] - base[:, 0]
        worse, better = int((diff > 0).sum()), int((diff < 0).sum())
    return WerDelta(
        wer_base=float(wer_b), wer_variant=float(wer_v), delta=float(wer_v - wer_b), ci_low=wer_lo, ci_high=wer_hi,
        cer_base=float(cer_b), cer_variant=float(cer_v), cer_delta=float(cer_v - cer_b), cer_ci_low=cer_lo,
        cer_ci_high=cer_hi, n_utts=len(base), ref_words=int(base[:, 1].sum()), paired=paired,
        n_worse=worse, n_better=better, n_boot=n_boot,
    )


def paired_wer_delta(
    refs: Sequence[str],
    hyps_base: Sequence[str],
    hyps_variant: Sequence[str],
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    normalise: bool = True,
) -> WerDelta:
    """WER (and CER) change variant - base on the same utterances, with a paired bootstrap 95% CI.

    Corpus WER = total word edits / total reference words, after Whisper's English normaliser
    (as `asrperf.measure.wer.error_rates`). Each resample draws utterance indices once and
    scores both systems on them, so an unchanged hypothesis set gives a CI of exactly [0, 0].
    """
    if len(hyps_base) != len(hyps_variant):
        raise ValueError(f"paired WER: {len(hyps_base)} base but {len(hyps_variant)} variant hypotheses")
    base = count_table(refs, hyps_base, normalise)
    variant = count_table(refs, hyps_variant, normalise)
    idx = np.random.default_rng(seed).integers(0, len(base), size=(n_boot, len(base)))
    return _delta(base, variant, base[idx], variant[idx], True, n_boot)


def unpaired_wer_delta(
    refs_base: Sequence[str],
    hyps_base: Sequence[str],
    refs_variant: Sequence[str],
    hyps_variant: Sequence[str],
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    normalise: bool = True,
) -> WerDelta:
    """WER change when the two systems were scored on different utterances: independent resamples.

    Wider than the paired CI (the utterance difficulty no longer cancels); use it only when the
    clips differ.
    """
    base = count_table(refs_base, hyps_base, normalise)
    variant = count_table(refs_variant, hyps_variant, normalise)
    rng = np.random.default_rng(seed)
    idx_b = rng.integers(0, len(base), size=(n_boot, len(base)))
    idx_v = rng.integers(0, len(variant), size=(n_boot, len(variant)))
    return _delta(base, variant, base[idx_b], variant[idx_v], False, n_boot)


def transcripts_delta(base: Sequence[dict], variant: Sequence[dict]) -> WerDelta:
    """WER/CER change from the `base` transcripts to the `variant` ones ([{clip, ref, hyp}], as rows
    store them): paired by clip when both scored the same clips with the same references, else
    unpaired (independent resamples; `paired` says which). The accuracy gate and `compare` both
    use it, so a variant's delta and a run-to-run delta are the same computation."""
    a = {t["clip"]: (t.get("ref") or "", t.get("hyp") or "") for t in base}
    b = {t["clip"]: (t.get("ref") or "", t.get("hyp") or "") for t in variant}
    if a.keys() == b.keys() and all(a[c][0] == b[c][0] for c in a):
        clips = list(a)
        return paired_wer_delta([a[c][0] for c in clips], [a[c][1] for c in clips], [b[c][1] for c in clips])
    return unpaired_wer_delta([r for r, _ in a.values()], [h for _, h in a.values()],
                              [r for r, _ in b.values()], [h for _, h in b.values()])


@dataclass(frozen=True)
class RatioCI:
    """statistic(b) / statistic(a) with a 95% percentile-bootstrap CI and a Mann–Whitney U p-value."""

    ratio: float  # > 1: b's statistic is larger (for latency: b is slower)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided Mann–Whitney U: P(samples this different | same distribution)
    stat_a: float
    stat_b: float
    n_a: int
    n_b: int
    statistic: str  # "median" | "mean"
    n_boot: int


def _ratio_ci(a: Sequence[float], b: Sequence[float], stat: Callable[..., np.ndarray], name: str,
              n_boot: int, seed: int) -> RatioCI:
    from scipy.stats import mannwhitneyu

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0:
        raise ValueError(f"ratio of {name}s: no samples in {'a' if xa.size == 0 else 'b'}")
    if (xa <= 0).any() or (xb <= 0).any():
        raise ValueError(f"ratio of {name}s: samples must be positive (times, rates)")
    rng = np.random.default_rng(seed)
    ra = stat(xa[rng.integers(0, xa.size, size=(n_boot, xa.size))], axis=-1)
    rb = stat(xb[rng.integers(0, xb.size, size=(n_boot, xb.size))], axis=-1)
    lo, hi = _quantiles(rb / ra)
    sa, sb = float(stat(xa)), float(stat(xb))
    # identical samples carry no evidence of a difference; scipy would warn on all-tied input
    p = 1.0 if np.array_equal(np.sort(xa), np.sort(xb)) else float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)
    return RatioCI(ratio=sb / sa, ci_low=lo, ci_high=hi, p_value=p, stat_a=sa, stat_b=sb,
                   n_a=int(xa.size), n_b=int(xb.size), statistic=name, n_boot=n_boot)


def ratio_of_medians_ci(a: Sequence[float], b: Sequence[float], n_boot: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> RatioCI:
    """median(b) / median(a), each side resampled independently; for latency samples."""
    return _ratio_ci(a, b, np.median, "median", n_boot, seed)


def ratio_of_means_ci(a: Sequence[float], b: Sequence[float], n_boot: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> RatioCI:
    """mean(b) / mean(a); throughput = batch / mean latency, so its change is the inverse of this."""
    return _ratio_ci(a, b, np.mean, "mean", n_boot, seed)


def ratio_of_quantiles_ci(a: Sequence[float], b: Sequence[float], q: float, n_boot: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> RatioCI:
    """quantile_q(b) / quantile_q(a) (e.g. q = 0.99 for p99 latency), each side resampled on its own."""
    def stat(x: np.ndarray, axis: int | None = None) -> np.ndarray:
        return np.quantile(x, q, axis=axis)

    return _ratio_ci(a, b, stat, f"p{100 * q:g}", n_boot, seed)
