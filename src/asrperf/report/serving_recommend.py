"""The "serving" recommendation, from server-scenario rows: the configuration (model, engine,
variant, batcher settings) with the highest maximum sustainable rate under its SLO, within the WER
bound on WER under load. Rates found under different SLOs or clip lengths are not compared: the
choice is made among the rows of the most common (SLO, clip length) on the device. Pure data in.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from asrperf.report.recommend import Recommendation, Thresholds, _ms, _rec, _select, _wer_text
from asrperf.report.serving_tables import server_column, server_rows

SCENARIO = "serving"
Row = dict[str, Any]


def serving(device: str, rows: list[Row], th: Thresholds) -> Recommendation | None:
    """The serving choice on `device`; None when the device has no server rows that searched a rate."""
    searched = [r for r in server_rows(rows) if r.get("status") == "ok" and r.get("search_status") is not None]
    if not searched:
        return None
    (slo, length), _ = Counter((r.get("slo"), r["clip_length_s"]) for r in searched).most_common(1)[0]
    pool = [r for r in searched if (r.get("slo"), r["clip_length_s"]) == (slo, length)]
    criterion = (f"highest max sustainable rate under SLO '{slo}' ({r_kind(pool)} arrivals, {length:g} s clips); "
                 f"WER under load ≤ {100 * th.wer_bound:.1f}%")
    pick = _select(pool, lambda r: r.get("max_sustainable_rate_rps"), False, lambda v: f"{v:.3g} req/s", th,
                   "a rate meeting the SLO")
    left = len(searched) - len(pool)
    if left:
        pick.caveats.append(f"{left} server row(s) under another SLO or clip length not compared")
    unresolved = [server_column(r) for r in pool if r.get("max_sustainable_rate_rps") is not None and not r.get("resolved")]
    if unresolved:
        pick.caveats.append(f"unresolved (a probe's CI straddles the SLO; longer probes would settle it): "
                            f"{', '.join(unresolved)}")

    def why(r: Row, v: float) -> str:
        return (f"{v:.3g} req/s ({'resolved' if r.get('resolved') else 'unresolved'}; missed at "
                f"{r.get('upper_rate_rps') or 0:.3g}), max batch {r.get('batch_size')}, wait "
                f"{r.get('max_wait_ms'):g} ms: p99 {_ms(r['latency_s_p99']) if r.get('latency_s_p99') else '—'}, "
                f"batch mean {r.get('batch_size_mean') or 0:.1f}; {_wer_text(r)} under load"
                + (f" (offline {100 * r['offline_wer']:.1f}%)" if r.get("offline_wer") is not None else ""))

    rec = _rec(SCENARIO, device, criterion, pick, why)
    if rec.choice is not None:  # the batcher settings are part of the choice
        rec = dataclasses.replace(rec, choice=f"{rec.choice}, wait {pick.row.get('max_wait_ms'):g} ms")
    return rec


def r_kind(rows: list[Row]) -> str:
    return "/".join(sorted({str(r.get("arrival_kind") or "poisson") for r in rows}))
