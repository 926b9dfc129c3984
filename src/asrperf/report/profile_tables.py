"""Tables for the profile and decode scenarios: op categories, stages, roofline, decoder per token.

Pure data in, `report.tables.Table` out; no torch. Every figure says how it was measured in the
table's notes; a row that could not measure something shows "—" with its reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from asrperf.measure.ops import CATEGORIES
from asrperf.report.tables import MISSING, Table, _short_labels, column_label

CURVE_POSITIONS = (1, 10, 50)
CURVE_SETTINGS = (("greedy", True), ("greedy", False), ("beam4", True), ("beam4", False))


def profile_tables(rows: Iterable[dict[str, Any]]) -> list[Table]:
    """Per device: op categories and stages per (clip length, batch), the roofline, and decode."""
    by_device: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("scenario") in ("profile", "decode"):
            by_device[r["device"]][r["scenario"]].append(r)
    tables: list[Table] = []
    for device, by_scenario in by_device.items():
        prof = by_scenario.get("profile", [])
        for (length, batch), rs in _by_cell(prof).items():
            where = f"{device}, {length:g} s, batch {batch}"
            tables += [_category_table(where, rs), _stage_table(where, rs), _roofline_table(where, rs)]
        if by_scenario.get("decode"):
            tables.append(_decode_table(device, by_scenario["decode"]))
    return tables


def _by_cell(rows: list[dict[str, Any]]) -> dict[tuple[float, int], list[dict[str, Any]]]:
    out: dict[tuple[float, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["clip_length_s"], r["batch_size"])].append(r)
    return dict(sorted(out.items()))


def _columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Column keys (model, engine, dtype) in first-seen order, and their display labels."""
    keys = list(dict.fromkeys(column_label(r) for r in rows))
    short = _short_labels(keys)
    return keys, [short[k] for k in keys]


def _blocked(r: dict[str, Any] | None, reason_key: str) -> str | None:
    """Text for a cell that has no figures: no row, a failed row, or a row with a missing reason."""
    if r is None:
        return MISSING
    if r.get("status") != "ok":
        return "failed"
    if r.get(reason_key):
        return f"{MISSING} ({r[reason_key]})"
    return None


def _failures(t: Table, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r.get("status") != "ok":
            t.notes.append(f"failed: {column_label(r)} {r['clip_length_s']:g} s: {r.get('error')}")


# -- profile -----------------------------------------------------------------------------------
def _category_table(where: str, rows: list[dict[str, Any]]) -> Table:
    keys, labels = _columns(rows)
    cell = {column_label(r): r for r in rows}
    t = Table(f"op categories, share of op self time (ms per call): {where}", labels, corner="category")
    present = {c["category"] for r in rows for c in (r.get("op_categories") or [])}
    for category in [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES)):
        values = []
        for k in keys:
            r = cell[k]
            if (text := _blocked(r, "profile_missing_reason")) is not None:
                values.append(text)
                continue
            c = next((c for c in r["op_categories"] if c["category"] == category), None)
            values.append("0.0%" if c is None else f"{100 * c['share']:.1f}% ({c['self_ms']:,.1f})")
        t.rows.append((category, values))
    t.rows.append(("profiled call ms", [_blocked(cell[k], "profile_missing_reason")
                                        or f"{1000 * cell[k]['profiled_latency_s']:,.1f}" for k in keys]))
    for k in keys:
        r = cell[k]
        if r.get("status") == "ok" and r.get("op_categories"):
            if r.get("uncategorised_ops"):
                names = ", ".join(f"{o['name']} ({o['self_ms']:.2f} ms)" for o in r["uncategorised_ops"][:5])
                t.notes.append(f"{k}: largest uncategorised ('other') ops: {names}")
            t.notes.append(f"{k}: Chrome trace {r.get('trace_path')}")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("op_categories")]
    if ok:
        timeline = sorted({str(r.get("op_timeline")) for r in ok})
        t.notes.append(f"torch.profiler self time per op ({'/'.join(timeline)} timeline), summed by category over "
                       f"{ok[0].get('profiled_calls')} profiled call(s) after 1 skipped and 1 warm-up call; shares sum "
                       "to 100%; 'host (no op)' is time inside stage marks that ran no op (Python, numpy feature "
                       "extraction, tokenizer)")
    _failures(t, rows)
    return t


def _stage_table(where: str, rows: list[dict[str, Any]]) -> Table:
    keys, labels = _columns(rows)
    cell = {column_label(r): r for r in rows}
    t = Table(f"stages, ms per call (share of the profiled call): {where}", labels, corner="stage")
    order: dict[str, bool] = {}
    for r in rows:
        for s in r.get("stages") or []:
            order.setdefault(s["stage"], s.get("nested", False))
    for stage, nested in order.items():
        values = []
        for k in keys:
            r = cell[k]
            if (text := _blocked(r, "profile_missing_reason")) is not None:
                values.append(text)
                continue
            s = next((s for s in r["stages"] if s["stage"] == stage), None)
            values.append(MISSING if s is None else f"{s['ms']:,.1f} ({100 * s['share']:.1f}%)")
        t.rows.append((f"  {stage} (inside model)" if nested else stage, values))
    if any(r.get("stages") for r in rows):
        t.notes.append("host time inside each `asrperf::<stage>` mark (torch.profiler record_function), mean over "
                       "the profiled calls; indented stages run inside 'model' (encoder forward; decoder_first_step = "
                       "the first decoder step after each encoder pass: prompt and cross-attention keys/values; "
                       "decoder = every later step; LM head excluded), so only the others add up to a call")
    _failures(t, rows)
    return t


def _fmt(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return MISSING if v is None else format(v * scale, fmt)


ROOFLINE_COLUMNS = ["unit", "per call", "ms", "GFLOPs", "MB moved (lower bound)", "FLOP/byte",
                    "GFLOP/s (% peak)", "GB/s (% peak)", "lower-bound ms", "measured / bound", "bound"]


def _roofline_table(where: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(f"roofline per stage: {where}", list(ROOFLINE_COLUMNS), corner="model · stage")
    short = _short_labels(list(dict.fromkeys(column_label(r) for r in rows)))
    for r in rows:
        label = short[column_label(r)]
        if r.get("status") != "ok":
            t.rows.append((label, ["failed"] + [""] * (len(ROOFLINE_COLUMNS) - 1)))
            continue
        if not r.get("roofline"):
            why = r.get("profile_missing_reason") or r.get("roofline_missing_reason") or "not recorded"
            t.rows.append((label, [f"{MISSING} ({why})"] + [""] * (len(ROOFLINE_COLUMNS) - 1)))
            continue
        for p in r["roofline"]:
            share = lambda v: "" if v is None else f" ({100 * v:.0f}%)"  # noqa: E731
            t.rows.append((f"{label} · {p['stage']}", [
                p["unit"], f"{p['invocations_per_call']:g}", f"{1000 * p['time_s']:,.2f}",
                _fmt(p["flops"], ",.3f", 1e-9), f"{p['bytes'] / 1e6:,.1f}", _fmt(p["intensity_flops_per_byte"], ",.1f"),
                _fmt(p["achieved_flops_per_s"], ",.1f", 1e-9) + share(p["flops_share_of_peak"]),
                f"{p['achieved_bytes_per_s'] / 1e9:,.2f}" + share(p["bytes_share_of_peak"]),
                f"{1000 * p['lower_bound_s']:,.2f}", f"{p['time_over_lower_bound']:.1f}x", p["bound"],
            ]))
        t.notes.append(f"{label}: peaks measured in the cell: {r['peak_matmul_flops_per_s'] / 1e9:,.1f} GFLOP/s "
                       f"{r.get('dtype')} matmul, {r['peak_copy_bytes_per_s'] / 1e9:,.2f} GB/s copy "
                       f"({r.get('peak_method')}); ridge {r['roofline'][0]['ridge_flops_per_byte']:.1f} FLOP/byte")
    ok = [r for r in rows if r.get("roofline")]
    if ok:
        r0 = ok[0]
        t.notes += [
            f"time: {r0.get('roofline_time_method')}; FLOPs: counted on one call (torch FlopCounterMode, "
            "attention formulas added); per invocation, averaged over the stage's invocations",
            f"bytes: {r0.get('roofline_bytes_method')}",
            f"lower-bound time = max(FLOPs / peak FLOP/s, bytes / peak bytes/s); bound: launch/overhead when "
            f"measured > {r0.get('roofline_overhead_factor', 3):g}x the lower bound, else compute when FLOPs / peak "
            "FLOP/s >= bytes / peak bytes/s, else memory",
        ]
    return t


# -- decode ------------------------------------------------------------------------------------
def _curve_ms(r: dict[str, Any], decoding: str, kv: bool, position: int) -> str:
    for p in r["decode_curve"]:
        if p["decoding"] == decoding and p["kv_cache"] == kv and p["position"] == position:
            return f"{p['ms']:,.2f}"
    return f"{MISSING} (curve has {r.get('decode_curve_tokens')} tokens)"


def _no_decoder(r: dict[str, Any] | None) -> str | None:
    """Short text for a decode cell with nothing to show; the full reason goes in the notes once."""
    if r is None or r.get("status") != "ok":
        return _blocked(r, "decode_missing_reason")
    if r.get("decode_missing_reason"):
        return f"{MISSING} (no autoregressive decoder)" if r.get("autoregressive_decoder") is False else \
            f"{MISSING} (see notes)"
    return None


def _decode_table(device: str, rows: list[dict[str, Any]]) -> Table:
    keys, labels = _columns(rows)
    t = Table(f"decoder: {device}, batch {rows[0]['batch_size']}", labels, corner="metric")
    for k in keys:
        why = next((r["decode_missing_reason"] for r in rows
                    if column_label(r) == k and r.get("decode_missing_reason")), "")
        if why:
            t.notes.append(f"{k}: {why}")
    by: dict[tuple[str, float], dict[str, Any]] = {(column_label(r), r["clip_length_s"]): r for r in rows}
    lengths = sorted({r["clip_length_s"] for r in rows})

    def per_length(name: str, key: str, fmt: str, scale: float = 1.0) -> None:
        for length in lengths:
            values = []
            for k in keys:
                r = by.get((k, length))
                text = _no_decoder(r)
                values.append(text if text is not None else _fmt(r.get(key), fmt, scale))
            t.rows.append((f"{name}, {length:g} s", values))

    per_length("tokens/s (engine's greedy decoding, KV cache)", "tokens_per_s", ",.1f")
    per_length("first-token ms", "first_token_ms", ",.1f")
    per_length("decode share of latency %", "decode_share", ".1f", 100)
    per_length("decoder steps per call", "decoder_steps_per_call", ".1f")
    curve_rows = {k: next((r for r in rows if column_label(r) == k and r.get("decode_curve")), None) for k in keys}
    for decoding, kv in CURVE_SETTINGS:
        for pos in CURVE_POSITIONS:
            values = []
            for k in keys:
                r = curve_rows[k]
                if r is None:
                    any_row = next((r for r in rows if column_label(r) == k), None)
                    values.append(_no_decoder(any_row) or f"{MISSING} (no curve measured)")
                else:
                    values.append(_curve_ms(r, decoding, kv, pos))
            t.rows.append((f"ms/token @ position {pos}, {decoding}, KV cache {'on' if kv else 'off'}", values))
    for decoding, kv in CURVE_SETTINGS:
        values = []
        for k in keys:
            r = curve_rows[k]
            s = next((s for s in (r or {}).get("decode_curve_summary", [])
                      if s["decoding"] == decoding and s["kv_cache"] == kv), None)
            any_row = next((r for r in rows if column_label(r) == k), None)
            values.append((_no_decoder(any_row) or MISSING) if s is None else _fmt(s["tokens_per_s"], ",.1f"))
        t.rows.append((f"tokens/s over the curve, {decoding}, KV cache {'on' if kv else 'off'}", values))
    ok = [r for r in rows if r.get("status") == "ok" and r.get("autoregressive_decoder")]
    if ok:
        t.notes.append(f"tokens/s, first token, share: {ok[0].get('decode_share_method')}; tokens/s = decoder steps x "
                       "batch / decode time; first token = call start to the end of the first decoder step")
    for k in keys:
        r = curve_rows[k]
        if r is not None:
            t.notes.append(f"{k}: curve from the {r['clip_length_s']:g} s cell, {r.get('decode_curve_tokens')} tokens, "
                           f"median of {r.get('decode_curve_repeats')} run(s): {r.get('decode_curve_method')}")
    _failures(t, rows)
    return t
