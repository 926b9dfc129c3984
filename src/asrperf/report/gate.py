"""The accuracy gate: every variant's WER change against the fp32 reference on the same clips.

A row's reference is the baseline of the same checkpoint (same model name and weights) measured
on the same clips (clip length, device, batch size, threads): fp32 with no optimization options on
an engine whose declaration makes it the accuracy reference (the row's `accuracy_reference`: the
transformers engine), else the same engine in fp32. Deltas are paired by clip id, so the CI
reflects per-utterance changes, not the spread of the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    preferred = [r for r in candidates if r.get("accuracy_reference")]
    same_engine = [r for r in candidates if r.get("engine") == row.get("engine")]
    return (preferred or same_engine or [None])[0]


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
    from asrperf.measure.paired import transcripts_delta

    d = transcripts_delta(ref.get("transcripts") or [], row.get("transcripts") or [])
    if not d.paired:
        return GateResult(ref["cell_key"], row["wer"] - ref["wer"], None, None, None, len(row.get("transcripts") or []),
                          False, reason="clips differ from the reference's: unpaired difference, no CI")
    return GateResult(ref["cell_key"], d.delta, d.ci_low, d.ci_high, d.n_worse, d.n_utts, True)
