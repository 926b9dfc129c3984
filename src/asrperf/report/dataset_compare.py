"""`compare` on dataset cells (asrperf eval, `run -s dataset`): RTFx and wall RTFx (WER/CER over the
utterances are compared by compare.py's paired test on the transcripts).

Dataset cells match on their identity plus `dataset_source_key` (the source's content key), so an
evaluation is only compared with one of the same utterances.
- RTFx = Σ audio s / Σ per-batch transcription s (scenarios/dataset.py). On the same batch plan
  (the same audio and number of batches) the ratio B/A is the inverse ratio of the mean batch
  seconds: percentile bootstrap over the batches, p: Mann–Whitney U. Otherwise a plain change.
- wall RTFx: one value per cell, a plain change, not tested.
"""

from __future__ import annotations

from typing import Any

from asrperf.measure.paired import ratio_of_means_ci
from asrperf.report.compare import FEW_CALLS, MetricChange, _plain, verdict

Row = dict[str, Any]


def _rtfx(ra: Row, rb: Row, sa: list[float], sb: list[float], threshold: float,
         notes: list[str]) -> MetricChange:
    """RTFx of two dataset cells: Σ audio s / Σ batch s (scenarios/dataset.py). On the same batch
    plan (same utterances, same batch size: the same number of batches) the ratio B/A is the
    inverse ratio of the mean batch seconds, bootstrapped over batches; otherwise a plain change."""
    a, b = ra.get("dataset_rtfx"), rb.get("dataset_rtfx")
    same_plan = bool(sa) and len(sa) == len(sb) and ra.get("audio_s_total") == rb.get("audio_s_total")
    if a is None or b is None or not same_plan:
        return _plain(ra, rb, "dataset_rtfx", "RTFx", "x", lambda r: f"{r.get('dataset_n_batches')} batches",
                      lambda r: "not recorded")
    mean = ratio_of_means_ci(sa, sb)
    ratio, ci = 1 / mean.ratio, (1 / mean.ci_high, 1 / mean.ci_low)
    if len(sa) < FEW_CALLS:
        notes.append(f"RTFx CI rests on only {len(sa)} batches a side, where bootstrap CIs are too narrow")
    return MetricChange("RTFx", "x", a, b, "ratio", ratio, ci, mean.p_value,
                        verdict(ratio, ci, 1.0, abs(ratio - 1) > threshold, False),
                        f"1 / mean of {mean.n_a} vs {mean.n_b} batch seconds (same batch plan)")


def dataset_metrics(ra: Row, rb: Row, sa: list[float], sb: list[float], threshold: float,
                    notes: list[str]) -> list[MetricChange]:
    """RTFx (bootstrap over batches on the same plan) and wall RTFx of a matched pair of dataset cells."""
    return [_rtfx(ra, rb, sa, sb, threshold, notes),
            _plain(ra, rb, "wall_rtfx", "wall RTFx", "x", lambda r: str(r.get("dataset_executor")),
                   lambda r: "not recorded")]
