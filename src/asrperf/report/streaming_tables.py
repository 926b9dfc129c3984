"""The streaming table: one column per model configuration and chunk size, one table per device and
clip length; and the "live captions" recommendation. Pure data in (rows), no torch.

Every figure is a field of the streaming section (results/sections.py); definitions in
measure/streaming.py and the README's "Streaming metrics".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from asrperf.report.tables import MISSING, Table, _short_labels, column_label, pct as _pct

Row = dict[str, Any]


def streaming_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("scenario") == "streaming"]


ENDPOINT_LABELS = {"vad": "VAD endpoint", "none": "no endpoint"}  # rows from before endpoints have none


def endpoint_suffix(r: Row) -> str:
    """", VAD endpoint" / ", no endpoint" for LocalAgreement rows, so rows with and without one stay apart."""
    endpoint = ENDPOINT_LABELS.get(r.get("stream_endpoint"))
    return f", {endpoint}" if endpoint else ""


def stream_column(r: Row) -> str:
    return f"{column_label(r)}, {r.get('chunk_ms')} ms{endpoint_suffix(r)}"


def _s(v: float | None) -> str:
    return MISSING if v is None else f"{v:.2f}"


def _cell(r: Row | None, render) -> str:
    if r is None:
        return MISSING
    if r.get("status") != "ok":
        return "failed"
    return render(r)


def _finalization(r: Row) -> str:
    if r.get("finalization_s_p50") is None:
        return f"{MISSING} ({r.get('finalization_missing_reason') or 'not measured'})"
    missing = f", {r['finalization_missing']} without" if r.get("finalization_missing") else ""
    return (f"{_s(r['finalization_s_p50'])} / {_s(r['finalization_s_p90'])} / {_s(r['finalization_s_p99'])} "
            f"(n {r.get('finalization_n')}{missing}; {r.get('finalization_method')})")


def _emission(r: Row) -> str:
    if r.get("emission_delay_s_p50") is None:
        return f"{MISSING} ({r.get('emission_delay_missing_reason') or 'no timed reference word'})"
    return (f"{_s(r['emission_delay_s_p50'])} / {_s(r['emission_delay_s_p90'])} / {_s(r['emission_delay_s_p99'])} "
            f"(n {r.get('emission_delay_n')})")


def _wer(r: Row, key: str) -> str:
    if r.get(key) is None:
        return f"{MISSING} ({r.get('wer_missing_reason') or 'not scored'})"
    ci = (f" [{_pct(r['wer_ci_low'])}–{_pct(r['wer_ci_high'])}]" if key == "wer" and r.get("wer_ci_low") is not None
          else "")
    return f"{_pct(r[key])}{ci}"


def _delta(r: Row) -> str:
    if r.get("stream_wer_delta") is None:
        return f"{MISSING} ({r.get('wer_missing_reason') or 'not scored'})"
    paired = "" if r.get("stream_wer_delta_paired") else ", unpaired"
    return (f"{100 * r['stream_wer_delta']:+.2f} [{100 * r['stream_wer_delta_ci_low']:+.2f}, "
            f"{100 * r['stream_wer_delta_ci_high']:+.2f}], {r.get('stream_wer_n_worse')}/{r.get('n_scored')} worse{paired}")


def _capacity(r: Row) -> str:
    if r.get("capacity_streams") is None:
        return f"{MISSING} ({r.get('capacity_missing_reason') or 'not searched'})"
    at = (f"; at N: p90 finalization {_s(r.get('capacity_finalization_s_p90'))} s, "
          f"{_pct(r.get('capacity_deadline_miss_share'))}% missed" if r["capacity_streams"] else "")
    return (f"{r['capacity_streams']} ({r.get('capacity_workers')}, {r.get('capacity_threads')} thread(s){at}; "
            f"stop: {r.get('capacity_stop_reason')})")


ROWS = (
    ("policy", lambda r: str(r.get("stream_policy_label") or r.get("stream_policy"))),
    ("clock", lambda r: str(r.get("stream_clock"))),
    ("streams x updates", lambda r: f"{r.get('stream_n_streams')} x {r.get('stream_n_updates')} "
                                    f"({r.get('stream_n_chunks')} chunks)"),
    ("first partial s p50 (max)", lambda r: f"{_s(r.get('first_partial_s_p50'))} ({_s(r.get('first_partial_s_max'))})"),
    ("finalization s p50 / p90 / p99", _finalization),
    ("word emission delay s p50 / p90 / p99", _emission),
    ("per-chunk compute RTF p50 / p99", lambda r: f"{_s(r.get('chunk_rtf_p50'))} / {_s(r.get('chunk_rtf_p99'))}"),
    ("chunks past deadline %", lambda r: _pct(r.get("deadline_miss_share"))),
    ("keeps up in real time", lambda r: MISSING if r.get("keeps_up") is None else ("yes" if r["keeps_up"] else "no")),
    ("shown words later revised %", lambda r: _pct(r.get("revised_word_share"))),
    ("streamed WER % [95% CI]", lambda r: _wer(r, "wer")),
    ("offline WER %, same clips", lambda r: _wer(r, "offline_wer")),
    ("ΔWER streamed − offline pts [95% CI], worse clips", _delta),
    ("max real-time streams", _capacity),
)


def streaming_tables(rows: Iterable[Row]) -> list[Table]:
    """One streaming table per device and clip length (failed cells show as 'failed', reason in notes)."""
    groups: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for r in streaming_rows(rows):
        groups[(r["device"], r["clip_length_s"])].append(r)
    return [_table(device, length, rs) for (device, length), rs in sorted(groups.items())]


def _table(device: str, length: float, rows: list[Row]) -> Table:
    rows = sorted(rows, key=lambda r: (column_label(r), r.get("chunk_ms") or 0))
    keys = list(dict.fromkeys(stream_column(r) for r in rows))
    by_key = {stream_column(r): r for r in rows}
    t = Table(f"Streaming, {device}, {length:g} s clips", list(_short_labels(keys).values()))
    for name, render in ROWS:
        t.rows.append((name, [_cell(by_key.get(k), render) for k in keys]))
    for r in rows:
        if r.get("status") != "ok":
            t.notes.append(f"failed: {stream_column(r)}: {r.get('error')}")
    ok = [r for r in rows if r.get("status") == "ok"]
    for ref in sorted({r["emission_delay_reference"] for r in ok if r.get("emission_delay_reference")}):
        t.notes.append(f"word end times: {ref}")
    t.notes.append("first partial: start of speech to the first shown word; finalization: end of an utterance to "
                   "its text final (frontier: finalised audio passed it; aligned: its last aligned word committed); "
                   "emission delay: commit time minus the word's reference end; definitions in the README")
    t.notes.append("a chunk misses its deadline when its update finishes after the next chunk arrives; "
                   "keeps up: at most streaming.max_miss_share of chunks miss")
    return t


def live_captions_candidates(rows: Iterable[Row], wer_bound: float) -> tuple[list[Row], list[str]]:
    """Streaming rows that keep up in real time, within the WER bound on streamed WER (when any row
    has a WER; otherwise every row that keeps up, flagged), with a p90 finalization latency."""
    ok = [r for r in streaming_rows(rows) if r.get("status") == "ok" and r.get("finalization_s_p90") is not None]
    caveats = []
    up = [r for r in ok if r.get("keeps_up")]
    if len(up) < len(ok):
        caveats.append(f"do not keep up in real time: {', '.join(stream_column(r) for r in ok if not r.get('keeps_up'))}")
    scored = [r for r in up if r.get("wer") is not None]
    if scored:
        over = [r for r in scored if r["wer"] > wer_bound]
        if over:
            caveats.append(f"streamed WER over the bound: {', '.join(stream_column(r) for r in over)}")
        return [r for r in scored if r["wer"] <= wer_bound], caveats
    if up:
        caveats.append("no streaming row has a WER (random weights): the WER bound was not checked")
    return up, caveats
