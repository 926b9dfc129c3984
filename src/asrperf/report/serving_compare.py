"""`compare` on server cells: the maximum sustainable rate, p99 latency and goodput at a matched
offered rate (WER under load is compared by compare.py's paired test on the served transcripts).

Server cells match on their identity plus `server_setup` (batcher settings, load plan, SLO), so a
rate found under one SLO is never compared with one found under another.
- max sustainable rate: each search brackets its answer between the highest rate that met the SLO
  and the lowest that did not; the change B/A is the ratio of the highest rates, its range the
  ratios of the brackets' ends ("unattainable" counts as 0, bracketed by the synchronous rate). A
  regression needs B's whole bracket below A's (the range excludes 1) and a change beyond the
  threshold.
- p99 at a matched offered rate: the highest open-loop offered rate both cells probed within
  MATCH_TOLERANCE of each other; ratio of the p99s of the requests' latencies from their scheduled
  send, percentile bootstrap; p: Mann–Whitney U.
- goodput at that rate: B − A, Newcombe's hybrid score interval from the two Wilson intervals.
"""

from __future__ import annotations

import math
from typing import Any

from asrperf.measure.paired import ratio_of_quantiles_ci
from asrperf.report.compare import IMPROVEMENT, NOT_TESTED, MetricChange, verdict

MATCH_TOLERANCE = 0.10  # offered rates within 10% of each other are the same load
FEW_REQUESTS = 100  # below this, a p99 is the top one or two requests
Row = dict[str, Any]


def _latencies(probe: Row) -> list[float]:
    return [r["latency_s"] for r in probe.get("requests") or () if r.get("outcome") == "ok" and not r.get("warmup")
            and r.get("latency_s")]


def _bracket(r: Row) -> tuple[float, float] | None:
    """(highest rate met, lowest missed) of a search; unattainable: (0, the synchronous rate)."""
    status = r.get("search_status")
    if status is None:
        return None
    lo = r.get("max_sustainable_rate_rps") or 0.0
    hi = r.get("upper_rate_rps") or r.get("saturation_rate_rps") or lo
    return lo, max(hi, lo)


def max_rate(ra: Row, rb: Row, threshold: float, notes: list[str]) -> MetricChange | None:
    ba, bb = _bracket(ra), _bracket(rb)
    if ba is None or bb is None:
        return None
    how = (f"A {ra.get('search_status')} [{ba[0]:.3g}, {ba[1]:.3g}] req/s, B {rb.get('search_status')} "
           f"[{bb[0]:.3g}, {bb[1]:.3g}] req/s")
    for side, r in (("A", ra), ("B", rb)):
        if not r.get("resolved"):
            notes.append(f"{side}'s max rate is unresolved ({r.get('note') or 'a probe CI straddles the SLO'})")
    a, b = ba[0], bb[0]
    if a <= 0:
        v = "no change" if b <= 0 else (IMPROVEMENT if bb[0] > ba[1] else "within noise")
        return MetricChange("max sustainable rate", "req/s", a, b, "ratio", None, None, None, v, how)
    ratio, ci = b / a, (bb[0] / ba[1], bb[1] / ba[0])
    return MetricChange("max sustainable rate", "req/s", a, b, "ratio", ratio, ci, None,
                        verdict(ratio, ci, 1.0, abs(ratio - 1) > threshold, False), how)


def matched_probes(ra: Row, rb: Row) -> tuple[Row, Row] | None:
    """The pair of open-loop probes at the highest offered rate both cells probed (within the tolerance)."""
    def probes(r: Row) -> list[Row]:
        return [p for p in r.get("server_probes") or () if p.get("open_loop") and p.get("offered_rate_rps")
                and _latencies(p)]

    pairs = [(pa, pb) for pa in probes(ra) for pb in probes(rb)
             if abs(pa["offered_rate_rps"] - pb["offered_rate_rps"])
             <= MATCH_TOLERANCE * max(pa["offered_rate_rps"], pb["offered_rate_rps"])]
    return max(pairs, key=lambda x: min(x[0]["offered_rate_rps"], x[1]["offered_rate_rps"])) if pairs else None


def _goodput(pa: Row, pb: Row, threshold: float, at: str) -> MetricChange:
    ga, gb = pa.get("goodput_fraction"), pb.get("goodput_fraction")
    if ga is None or gb is None:
        return MetricChange(f"goodput {at}", "fraction", ga, gb, "delta", None, None, None,
                            "missing: a probe measured no request", "")
    la, ua, lb, ub = pa["goodput_ci_low"], pa["goodput_ci_high"], pb["goodput_ci_low"], pb["goodput_ci_high"]
    d = gb - ga
    ci = (d - math.hypot(gb - lb, ua - ga), d + math.hypot(ub - gb, ga - la))
    return MetricChange(f"goodput {at}", "fraction", ga, gb, "delta", d, ci, None,
                        verdict(d, ci, 0.0, abs(d) > threshold * ga if ga > 0 else d != 0, False),
                        f"{pa.get('n_requests')} vs {pb.get('n_requests')} requests; Newcombe interval")


def server_metrics(ra: Row, rb: Row, threshold: float, notes: list[str]) -> list[MetricChange]:
    """Every serving metric of one matched pair of server cells (WER is compared by the caller)."""
    out = [m for m in (max_rate(ra, rb, threshold, notes),) if m is not None]
    if ra.get("knee_rate_rps") is not None or rb.get("knee_rate_rps") is not None:
        a, b = ra.get("knee_rate_rps"), rb.get("knee_rate_rps")
        out.append(MetricChange("knee rate", "req/s", a, b, "ratio", b / a if a and b else None, None, None,
                                NOT_TESTED, "the sweep's knee: one value per cell"))
    pair = matched_probes(ra, rb)
    if pair is None:
        out.append(MetricChange("p99 at matched rate", "s", None, None, "ratio", None, None, None,
                                f"missing: no open-loop offered rate within {100 * MATCH_TOLERANCE:g}% in both", ""))
        return out
    pa, pb = pair
    at = f"at {pa['offered_rate_rps']:.3g}/{pb['offered_rate_rps']:.3g} req/s"
    sa, sb = _latencies(pa), _latencies(pb)
    lat = ratio_of_quantiles_ci(sa, sb, 0.99)
    out.append(MetricChange(f"p99 {at}", "s", lat.stat_a, lat.stat_b, "ratio", lat.ratio, (lat.ci_low, lat.ci_high),
                            lat.p_value, verdict(lat.ratio, (lat.ci_low, lat.ci_high), 1.0,
                                                 abs(lat.ratio - 1) > threshold, True),
                            f"p99 of {lat.n_a} vs {lat.n_b} answered requests, from the scheduled send"))
    if min(lat.n_a, lat.n_b) < FEW_REQUESTS:
        notes.append(f"p99 {at} rests on {lat.n_a} vs {lat.n_b} requests: the top one or two of each; its CI is rough")
    out.append(_goodput(pa, pb, threshold, at))
    return out
