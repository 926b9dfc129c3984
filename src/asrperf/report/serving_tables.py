"""The serving table: the maximum rate under the SLO per configuration (model x engine x variant x
batcher settings), one table per device and clip length, from server-scenario rows. Pure data in.

Every figure is a field of the server section (results/sections.py); a cell's row carries its
answer probe's figures (load/cell.py) and every probe in `server_probes`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from asrperf.report.tables import MISSING, Table, column_label

Row = dict[str, Any]


def server_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("scenario") == "server" and r.get("cell_key", "").count("|")]


def server_column(r: Row) -> str:
    """A configuration: model, engine, variant and the batcher's settings."""
    wait = r.get("max_wait_ms")
    return f"{column_label(r)}, batch ≤ {r.get('batch_size')}, wait {MISSING if wait is None else format(wait, 'g')} ms"


def _ms(v: float | None) -> str:
    return MISSING if v is None else f"{1000 * v:,.0f}"


def _rate(v: float | None) -> str:
    return MISSING if v is None else f"{v:.3g}"


def _pct(v: float | None) -> str:
    return MISSING if v is None else f"{100 * v:.1f}"


def max_rate_text(r: Row) -> str:
    """The search's answer with its status and bracket; the mode when the cell did not search."""
    status = r.get("search_status")
    if status is None:
        return f"{MISSING} (mode {r.get('mode')}: no search)"
    resolved = "resolved" if r.get("resolved") else "unresolved"
    if r.get("max_sustainable_rate_rps") is None:
        return f"none ({status}; below {_rate(r.get('upper_rate_rps'))} req/s, {resolved})"
    return (f"{_rate(r['max_sustainable_rate_rps'])} ({resolved}; missed at {_rate(r.get('upper_rate_rps'))}, "
            f"{status})")


def _probes(r: Row) -> str:
    parts = []
    for p in r.get("server_probes") or ():
        verdict = p.get("slo_verdict") or ("met" if p.get("slo_met") else MISSING)
        parts.append(f"{p.get('probe_role')} {_rate(p.get('offered_rate_rps'))}: p99 {_ms(p.get('latency_s_p99'))} ms, "
                     f"{p.get('n_ok')}/{p.get('n_requests')} ok, {verdict}")
    return "; ".join(parts) or MISSING


def _batches(r: Row) -> str:
    counts = r.get("batch_size_counts") or {}
    largest = max((p.get("batch_size_max") or 0 for p in r.get("server_probes") or ()), default=0)
    if r.get("batch_size_mean") is None:
        return MISSING
    shown = ", ".join(f"{k}:{v}" for k, v in counts.items())
    return f"mean {r['batch_size_mean']:.1f} ({shown}); largest in any probe {largest}"


def _failures(r: Row) -> str:
    probes = r.get("server_probes") or ()
    rejected = sum(p.get("n_rejected") or 0 for p in probes)
    timeouts = sum(p.get("n_timeouts") or 0 for p in probes)
    errors = sum((p.get("n_errors") or 0) - (p.get("n_rejected") or 0) - (p.get("n_timeouts") or 0) for p in probes)
    return f"{rejected} rejected (429), {timeouts} timed out, {errors} other errors"


def _wer(r: Row) -> str:
    if r.get("wer") is None:
        return f"{MISSING} ({r.get('wer_missing_reason') or 'not scored'})"
    off = r.get("offline_wer")
    match = r.get("served_offline_match_share")
    return (f"{_pct(r['wer'])} [{_pct(r.get('wer_ci_low'))}–{_pct(r.get('wer_ci_high'))}] vs offline "
            f"{_pct(off)}; {MISSING if match is None else f'{100 * match:.0f}%'} of answers = offline transcript")


ROWS = (
    ("plan", lambda r: f"{r.get('mode')} {r.get('arrival')}, SLO {r.get('slo') or MISSING}"),
    ("max rate under SLO, req/s", max_rate_text),
    ("synchronous / saturation req/s", lambda r: f"{_rate(r.get('sync_rate_rps'))} / {_rate(r.get('saturation_rate_rps'))}"),
    ("knee req/s (sweep)", lambda r: _rate(r.get("knee_rate_rps"))),
    ("at that rate: offered / achieved req/s", lambda r: f"{_rate(r.get('offered_rate_rps'))} / "
                                                         f"{_rate(r.get('achieved_rate_rps'))}"),
    ("at that rate: latency p50 / p99 ms", lambda r: f"{_ms(r.get('latency_s_p50'))} / {_ms(r.get('latency_s_p99'))}"),
    ("at that rate: queue / compute p50 ms", lambda r: f"{_ms(r.get('queue_s_p50'))} / {_ms(r.get('compute_s_p50'))}"),
    ("at that rate: goodput (95% CI)", lambda r: MISSING if r.get("goodput_fraction") is None else (
        f"{r['goodput_fraction']:.3f} ({r['goodput_ci_low']:.3f}–{r['goodput_ci_high']:.3f})")),
    ("at that rate: audio s per s", lambda r: MISSING if r.get("audio_s_per_s") is None else f"{r['audio_s_per_s']:.2f}"),
    ("batch sizes formed (requests per size)", _batches),
    ("failures over all probes", _failures),
    ("WER under load % [95% CI] vs offline", _wer),
    ("generator lateness p99 ms (worst probe)", lambda r: MISSING if r.get("lateness_s_p99") is None else (
        f"{1000 * r['lateness_s_p99']:.2f} ({'ok' if r.get('lateness_ok') else 'over the 2 ms bound'})")),
    ("probes", _probes),
    ("server start s / exit code", lambda r: f"{MISSING if r.get('server_startup_s') is None else format(r['server_startup_s'], '.1f')}"
                                            f" / {r.get('server_exit_code')}"),
)


def serving_tables(rows: Iterable[Row]) -> list[Table]:
    """One serving table per device and clip length (failed cells show as 'failed', reason in notes)."""
    groups: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for r in server_rows(rows):
        groups[(r["device"], r["clip_length_s"])].append(r)
    return [_table(device, length, rs) for (device, length), rs in sorted(groups.items())]


def _table(device: str, length: float, rows: list[Row]) -> Table:
    rows = sorted(rows, key=lambda r: (column_label(r), r.get("batch_size") or 0, r.get("max_wait_ms") or 0))
    keys = list(dict.fromkeys(server_column(r) for r in rows))
    by_key = {server_column(r): r for r in rows}
    t = Table(f"Serving under load, {device}, {length:g} s clips", keys, corner="asrperf serve, per configuration")
    for name, render in ROWS:
        t.rows.append((name, [MISSING if (r := by_key.get(k)) is None else
                              ("failed" if r.get("status") != "ok" else render(r)) for k in keys]))
    for r in rows:
        if r.get("status") != "ok":
            t.notes.append(f"failed: {server_column(r)}: {r.get('error')}")
        elif r.get("note"):
            t.notes.append(f"{server_column(r)}: {r['note']}")
    t.notes.append("max rate: the highest offered rate whose probe met every SLO term (point estimates); resolved "
                   "only when that probe passed and the one above failed with their Wilson 95% CIs clear of the "
                   "target; 'at that rate' figures are that probe's (sweep: the knee's; none met: the synchronous "
                   "probe's); latency from the scheduled send (no coordinated omission)")
    return t
