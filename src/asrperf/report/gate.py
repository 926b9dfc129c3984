"""The accuracy gate: every variant's WER change against the fp32 reference on the same clips.

A row's reference is the baseline of the same checkpoint (same model name and weights) measured
on the same clips (clip length, device, batch size, threads): the transformers engine in fp32 with
no optimization options, else the same engine in fp32. Deltas are paired by clip id, so the CI
reflects per-utterance changes, not the spread of the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REFERENCE_ENGINES = ("transformers",)  # preferred reference engine, then the row's own


@dataclass(frozen=True)
class GateResult:
    """WER change of one row against its reference (fractions, not points)."""

    reference_key: str  # cell_key of the reference row
    delta: float | None  # variant WER - reference WER
    ci_low: float | None
    ci_high: float | None
    n_worse: int | None  # utterances with more word errors than under the reference
    n_utts: int
    paired: bool  # False when the clips differ (then no CI and no n_worse)
    reason: str = ""  # why a delta is missing


def is_baseline(row: dict[str, Any]) -> bool:
    """fp32 with no optimization option: the row's variant label is its dtype alone (config.VariantOptions)."""
    return row.get("dtype") == "fp32" and row.get("variant", "fp32") == "fp32"


def _same_clips(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("model_name", "weights", "clip_length_s", "device", "batch_size", "threads", "scenario", "run_id")
    return all(a.get(k) == b.get(k) for k in keys)


def reference_row(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fp32 baseline that `row` is judged against, or None when the run has none."""
    candidates = [r for r in rows if r.get("status") == "ok" and is_baseline(r) and _same_clips(r, row)]
    for engine in (*REFERENCE_ENGINES, row.get("engine")):
        for r in candidates:
            if r.get("engine") == engine:
                return r
    return None


def gate(row: dict[str, Any], rows: list[dict[str, Any]]) -> GateResult | None:
    """The row's accuracy change; None for the reference itself and for rows that are not variants
    of a scored checkpoint (random weights, failed cells)."""
    if row.get("status") != "ok" or row.get("wer") is None:
        return None
    ref = reference_row(row, rows)
    if ref is not None and ref.get("cell_key") == row.get("cell_key"):
        return None
    if ref is None or ref.get("wer") is None:
        return GateResult("", None, None, None, None, 0, False,
                          reason="no fp32 reference of this checkpoint on the same clips in this run")
    from asrperf.measure.paired import paired_wer_delta

    base = {t["clip"]: t for t in ref.get("transcripts", [])}
    var = {t["clip"]: t for t in row.get("transcripts", [])}
    clips = [c for c in var if c in base]
    if not clips or len(clips) != len(var):
        return GateResult(ref["cell_key"], row["wer"] - ref["wer"], None, None, None, len(var), False,
                          reason="clips differ from the reference's: unpaired difference, no CI")
    d = paired_wer_delta([base[c]["ref"] or "" for c in clips], [base[c]["hyp"] for c in clips],
                         [var[c]["hyp"] for c in clips])
    return GateResult(ref["cell_key"], d.delta, d.ci_low, d.ci_high, d.n_worse, d.n_utts, True)
