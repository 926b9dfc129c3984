"""Summary statistics of raw samples, defined once.

Percentiles use numpy's default linear interpolation between order statistics (type 7 in
Hyndman & Fan), the convention of numpy, R and most benchmark tools. The confidence interval of
the median is a percentile bootstrap with a fixed seed, so the same samples give the same CI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000  # CI endpoints move by < 1% of the CI width beyond ~1000 resamples
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    data: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of `statistic`, which maps an (resamples, n) array to (resamples,)."""
    x = np.asarray(data, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        v = float(statistic(x[None, :])[0])
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    stats = statistic(x[idx])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, mean, std (sample, ddof=1), min, p50, p90, p99, max and a bootstrap 95% CI of the median."""
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("summarize: no samples; a timed cell must make at least one call")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    lo, hi = bootstrap_ci(x, lambda a: np.median(a, axis=-1))
    return {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(x.max()),
        "p50_ci_low": lo,
        "p50_ci_high": hi,
    }


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` (scipy's binomtest); NaNs when n = 0.

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0 and 1,
    where goodput targets such as 0.99 live.
    """
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def throughput_samples_per_s(batch_size: int, calls: int, total_s: float) -> float:
    """samples/s = batch size x calls / total timed seconds."""
    return batch_size * calls / total_s


def rtfx(audio_s: float, compute_s: float) -> float:
    """Inverse real-time factor: seconds of audio processed per second of compute (higher is better)."""
    return audio_s / compute_s
