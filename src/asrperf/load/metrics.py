"""Metrics of one load probe, each defined once, as one flat row with unit-named keys.

Over the measured requests (those scheduled after the warm-up window):
- window_s: from the first scheduled send to the last answer (or failure).
- offered_rate_rps: the pattern's nominal rate (open loop; streams: N / mean clip duration);
  closed loop has none, so it is the measured send rate, requests / window_s.
  scheduled_rate_rps: the rate the schedule realised, (n - 1) / (last - first scheduled send).
- completion_rate_rps: the server's steady-state rate: successful answers (warm-up requests'
  too) completed after the first answer and up to the last one, both within the loaded window
  (after warmup_s, before the last scheduled send), over the time between those two answers. A
  closed-loop probe at saturation keeps the server full only in that window: before it the
  warm-up requests hold the server, after it the clients stop and the queue drains, and a
  batching server answers a whole batch at once (its answers, within ANSWER_CLUSTER_S of the
  window's first, open the window rather than count in it). It is the saturation rate the
  search uses.
- achieved_rate_rps: successful answers / window_s. audio_s_per_s: audio seconds of those
  answers / window_s (RTFx under load).
- latency_s_*: end to end from the *scheduled* send time (no coordinated omission), successes
  only; latency_per_audio_s_*: the same divided by the clip's audio seconds;
  latency_from_sent_s_*: from the wire send (what ignoring the schedule would show).
- queue_s_*, compute_s_*, decode_s_*: the server's own times from its headers; dispatch_s_*: the
  part of queue_s after the engine call could have started (the server's scheduling delay, a
  sign of an overloaded machine when it grows); overhead_s_p50:
  latency from the wire send minus the three (HTTP, upload, transport).
- lateness_s_*: the generator's delay, wire send minus the scheduled time (less any in-flight
  slot wait, which slot_wait_s_* report); lateness_ok: its p99 within LATENESS_BOUND_S.
- goodput_fraction: the share of requests, failures included, that succeeded and met every
  latency term of the SLO (just succeeded without one), with a Wilson 95% CI; goodput_rps: those
  requests / window_s.
- batch_size_*: the engine batch each successful request rode in (request-weighted).
- wer, wer_ci_*: corpus WER of the returned transcripts against the clips' exact references
  (measure/wer.py), every successful request one utterance.
Percentiles and the median's CI are measure/stats.summarize's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from asrperf.load.arrivals import nominal_rate_rps
from asrperf.load.client import CLIENT_ERROR, CONNECTION_ERROR, OK, REJECTED, SERVER_ERROR, TIMEOUT, RequestRecord
from asrperf.load.generator import LoadRun
from asrperf.load.slo import Slo, evaluate
from asrperf.load.workload import WorkClip
from asrperf.measure.stats import summarize, wilson_ci

ANSWER_CLUSTER_S = 0.1  # completion_rate_rps: answers this close to the first belong to its batch
LATENESS_BOUND_S = 0.002  # the generator's p99 lateness target (issue "Serving under load")
KNEE_LATENCY_FACTOR = 2.0  # the knee: the last offered rate whose p90 stays within 2x the lowest rate's p90
_PERCENTILES = ("mean", "p50", "p90", "p99", "max")


def _stats(prefix: str, values: Sequence[float | None], keys: Sequence[str] = _PERCENTILES) -> dict[str, Any]:
    x = [v for v in values if v is not None]
    if not x:
        return {f"{prefix}_{k}": None for k in keys}
    s = summarize(x)
    return {f"{prefix}_{k}": s[k] for k in keys}


def _wer(done: Sequence[RequestRecord], clips: Sequence[WorkClip]) -> dict[str, Any]:
    scored = [(clips[r.clip_index].reference, r.text or "") for r in done if clips[r.clip_index].reference]
    if not scored:
        note = "no successful request" if not done else "the clips have no reference (loop mode)"
        return {"wer": None, "wer_ci_low": None, "wer_ci_high": None, "n_scored": 0, "wer_note": note}
    from asrperf.measure.wer import error_rates

    er = error_rates([ref for ref, _ in scored], [hyp for _, hyp in scored])
    return {"wer": er.wer, "wer_ci_low": er.wer_ci[0], "wer_ci_high": er.wer_ci[1], "n_scored": len(scored),
            "wer_note": ""}


def _scheduled_rate(scheduled_s: Sequence[float]) -> float | None:
    # (n - 1) gaps over the span from the first to the last scheduled send
    span = max(scheduled_s, default=0.0) - min(scheduled_s, default=0.0)
    return (len(scheduled_s) - 1) / span if len(scheduled_s) > 1 and span > 0 else None


def completion_rate_rps(run: LoadRun) -> float | None:
    """Answers per second in the loaded window, between its first and last answer (module docstring)."""
    last_send = max((r.scheduled_s for r in run.records), default=0.0)
    done = sorted(r.done_s for r in run.records
                  if r.outcome == OK and r.done_s is not None and run.bounds.warmup_s <= r.done_s <= last_send)
    if len(done) < 2:
        return None
    # the first answer's batch comes back over a few milliseconds, not at one instant: start after it
    start = max(t for t in done if t <= done[0] + ANSWER_CLUSTER_S)
    if done[-1] <= start:
        return None
    return sum(1 for t in done if t > start) / (done[-1] - start)


def probe_row(run: LoadRun, clips: Sequence[WorkClip], slo: Slo | None, context: dict[str, Any]) -> dict[str, Any]:
    """The row of one probe: `context` (target, server, probe identity) plus every metric above."""
    measured = [r for r in run.records if not r.warmup]
    done = [r for r in measured if r.outcome == OK]
    outcomes = Counter(r.outcome for r in measured)
    first = min((r.scheduled_s for r in measured), default=0.0)
    window_s = max((r.done_s or r.scheduled_s for r in measured), default=0.0) - first
    per_s = (lambda count: count / window_s) if window_s > 0 else (lambda count: None)
    nominal = nominal_rate_rps(run.arrivals, [c.audio_s for c in clips])
    row: dict[str, Any] = {
        "scenario": "server", **context,
        "arrival": run.arrivals.label, "arrival_kind": run.arrivals.kind, "open_loop": run.arrivals.open_loop,
        "burstiness": run.arrivals.burstiness, "clients": run.arrivals.clients or None,
        "seed": run.seed, "max_requests": run.bounds.max_requests, "duration_limit_s": run.bounds.duration_s,
        "timeout_s": run.bounds.timeout_s, "warmup_s": run.bounds.warmup_s,
        "max_in_flight": run.bounds.max_in_flight or None, "started_at": run.started_at,
        "n_requests": len(measured), "n_warmup_requests": len(run.records) - len(measured),
        "n_ok": len(done), "n_errors": len(measured) - len(done), "n_rejected": outcomes[REJECTED],
        "n_client_errors": outcomes[CLIENT_ERROR], "n_server_errors": outcomes[SERVER_ERROR],
        "n_timeouts": outcomes[TIMEOUT], "n_connection_errors": outcomes[CONNECTION_ERROR],
        "first_error": next((r.error for r in measured if r.outcome != OK), ""),
        "window_s": window_s,
        "offered_rate_rps": nominal if nominal is not None else per_s(len(measured)),
        "scheduled_rate_rps": _scheduled_rate([r.scheduled_s for r in measured]),
        "achieved_rate_rps": per_s(len(done)),
        "completion_rate_rps": completion_rate_rps(run),
        "audio_s_per_s": per_s(sum(r.audio_s for r in done)),
        "audio_s_mean": float(np.mean([r.audio_s for r in measured])) if measured else None,
    }
    row.update(_stats("latency_s", [r.latency_s for r in done]))
    row.update(_stats("latency_per_audio_s", [r.latency_s / r.audio_s for r in done]))
    row.update(_stats("latency_from_sent_s", [r.latency_from_sent_s for r in done], ("p50", "p99", "max")))
    row.update(_stats("queue_s", [r.queue_s for r in done]))
    row.update(_stats("dispatch_s", [r.dispatch_s for r in done], ("mean", "p50", "p99")))
    row.update(_stats("compute_s", [r.compute_s for r in done]))
    row.update(_stats("decode_s", [r.decode_s for r in done], ("mean", "p50", "p99")))
    overheads = [r.latency_from_sent_s - r.queue_s - r.compute_s - (r.decode_s or 0.0) for r in done
                 if r.latency_from_sent_s is not None and r.queue_s is not None and r.compute_s is not None]
    row["overhead_s_p50"] = float(np.median(overheads)) if overheads else None
    row["server_timing_headers"] = bool(done) and all(r.queue_s is not None and r.compute_s is not None for r in done)
    row.update(_stats("lateness_s", [r.lateness_s for r in measured], ("p50", "p99", "max")))
    row.update(_stats("slot_wait_s", [r.slot_wait_s for r in measured], ("p99", "max")))
    row["lateness_bound_s"] = LATENESS_BOUND_S
    row["generator_policy"] = run.policy
    row["lateness_ok"] = row["lateness_s_p99"] is not None and row["lateness_s_p99"] <= LATENESS_BOUND_S
    sizes = [r.batch_size for r in done if r.batch_size is not None]
    row["batch_size_mean"] = float(np.mean(sizes)) if sizes else None
    row["batch_size_p50"] = float(np.median(sizes)) if sizes else None
    row["batch_size_max"] = max(sizes) if sizes else None
    row["batch_size_counts"] = {str(k): v for k, v in sorted(Counter(sizes).items())}
    good = [r for r in measured if (slo.good(r) if slo else r.outcome == OK)]
    low, high = wilson_ci(len(good), len(measured)) if measured else (None, None)
    row.update(goodput_fraction=len(good) / len(measured) if measured else None, goodput_ci_low=low,
               goodput_ci_high=high, goodput_rps=per_s(len(good)))
    row["slo"] = slo.text if slo else ""
    if slo is not None and measured:
        result = evaluate(slo, measured)
        row.update(slo_verdict=result.verdict, slo_met=result.met,
                   slo_terms=[t.__dict__ for t in result.terms])
    else:
        row.update(slo_verdict=None, slo_met=None, slo_terms=[])
    row.update(_wer(done, clips))
    texts: dict[int, set[str]] = {}
    for r in done:
        texts.setdefault(r.clip_index, set()).add(r.text or "")
    row["transcripts_consistent"] = all(len(t) == 1 for t in texts.values())
    row["requests"] = [r.to_dict() for r in run.records]
    return row


def knee_rate_rps(rows: Sequence[dict[str, Any]]) -> float | None:
    """The last offered rate before the latency-vs-load curve bends: the highest rate, walking up
    from the lowest, whose p90 latency stays within KNEE_LATENCY_FACTOR x the lowest rate's p90.

    Queueing past saturation makes latency grow without bound, so the first rate over the factor
    marks the bend. None when no row has a p90.
    """
    curve = sorted((r for r in rows if r.get("latency_s_p90") is not None), key=lambda r: r["offered_rate_rps"])
    if not curve:
        return None
    base = curve[0]["latency_s_p90"]
    knee = None
    for r in curve:
        if r["latency_s_p90"] > KNEE_LATENCY_FACTOR * base:
            break
        knee = r["offered_rate_rps"]
    return knee
