"""The long-form results table: one row per cell, one column per metric, provenance as badges.

Each value keeps its number (for sorting) beside its display text; the flags that qualify a row
(random weights, estimated energy, contended, failed) are badges on that row, each with its full
text on hover; the whole provenance is a details row. Pure data in; the HTML is escaped here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from asrperf.report.plots import series_label
from asrperf.report.tables import MISSING, contention_note

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """A numeric column: its header names the unit; `value` gives the number or None."""

    key: str
    header: str
    value: Callable[[Row], float | None]
    fmt: str  # format spec of the shown number


def _ms(key: str) -> Callable[[Row], float | None]:
    return lambda r: None if r.get(key) is None else 1000 * r[key]


def _mib(key: str) -> Callable[[Row], float | None]:
    return lambda r: None if r.get(key) is None else r[key] / 2**20


def _pct(key: str) -> Callable[[Row], float | None]:
    return lambda r: None if r.get(key) is None else 100 * r[key]


def _samples_per_s(r: Row) -> float | None:
    return r.get("max_throughput_samples_per_s") if r.get("scenario") == "max_throughput" \
        else r.get("throughput_samples_per_s")


def _batch(r: Row) -> float | None:
    if r.get("scenario") == "max_throughput":
        return r.get("max_throughput_batch_size")
    return r.get("batch_size")


METRICS: tuple[Metric, ...] = (
    Metric("clip", "clip s", lambda r: r.get("clip_length_s"), "g"),
    Metric("batch", "batch", _batch, "d"),
    Metric("threads", "threads", lambda r: r.get("threads"), "d"),
    Metric("p50", "latency p50 ms", _ms("latency_s_p50"), ",.1f"),
    Metric("p90", "latency p90 ms", _ms("latency_s_p90"), ",.1f"),
    Metric("rtfx", "RTFx (audio s / s)", lambda r: r.get("rtfx"), ",.1f"),
    Metric("sps", "throughput samples/s", _samples_per_s, ",.2f"),
    Metric("wer", "WER %", _pct("wer"), ".1f"),
    Metric("energy", "energy J / audio s", lambda r: r.get("energy_j_per_audio_s"), ".3g"),
    Metric("rss", "peak RSS MiB", _mib("rss_peak_timed_bytes"), ",.0f"),
    Metric("first", "first call ms", _ms("first_call_s"), ",.0f"),
    Metric("load", "load s", lambda r: r.get("load_s"), ".2f"),
)
FILTERS = (("device", "device"), ("engine", "engine"), ("model", "model"), ("length", "clip length"))


@dataclass
class Badge:
    kind: str  # css class: "random", "estimated", "contended", "failed", "real", "measured"
    text: str
    title: str  # the full text, on hover


@dataclass
class CellRow:
    """One cell of the long-form table."""

    anchor: str  # id of the row, linked from the recommendations
    label: str
    sub: str  # engine and variant
    filters: dict[str, str]
    values: list[tuple[float | None, str]]  # (number, text) per METRICS entry
    badges: list[Badge] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def row_anchor(run_id: Any, cell_key: Any) -> str:
    """The id of a cell's row on the page: stable from the run id and cell key."""
    import re

    return "cell-" + re.sub(r"[^A-Za-z0-9_-]+", "-", f"{run_id}-{cell_key}").strip("-")


def _badges(r: Row) -> list[Badge]:
    out = []
    if r.get("status") != "ok":
        out.append(Badge("failed", "failed", str(r.get("error") or "no error recorded")))
    weights = r.get("weights") or r.get("weights_requested")
    if weights == "random":
        out.append(Badge("random", "random weights", str(r.get("weights_note") or r.get("wer_missing_reason")
                                                         or "random weights: speed and memory only, no WER")))
    elif weights:
        out.append(Badge("real", f"{weights} weights", f"{weights} weights"))
    if r.get("energy_j_per_audio_s") is not None:
        measured = bool(r.get("energy_measured"))
        out.append(Badge("measured" if measured else "estimated", "energy measured" if measured else "energy estimated",
                         str(r.get("energy_method") or ("measured" if measured else "estimated"))))
    if r.get("contended") is True:
        out.append(Badge("contended", "contended", contention_note(r)))
    return out


def _details(r: Row) -> list[str]:
    pol = r.get("timing_policy") or {}
    lines = [f"configuration: {series_label(r)}, {r['device']}"
             + (f" ({r['device_name']})" if r.get("device_name") else ""),
             f"scenario: {r.get('scenario') or 'latency'}; cell {r.get('cell_key')}, run {r.get('run_id')}"]
    if r.get("n_calls") is not None:
        lines.append(f"timing: {r.get('n_calls')} timed call(s) after {pol.get('warmup_calls', '?')} warm-up; region "
                     + " + ".join(r.get("timed_region") or []))
    for key, what in (("tokens_policy", "decoder tokens"), ("longform", "long-form"), ("decoding", "decoding"),
                      ("energy_method", "energy"), ("rss_peak_timed_method", "memory"),
                      ("max_throughput_stop_reason", "batch search stopped")):
        if r.get(key):
            lines.append(f"{what}: {r[key]}")
    if r.get("wer") is not None and r.get("wer_ci_low") is not None:
        lines.append(f"WER {100 * r['wer']:.2f}% [95% CI {100 * r['wer_ci_low']:.2f}–{100 * r['wer_ci_high']:.2f}]"
                     + (f" over {r['ref_words']} words" if r.get("ref_words") else ""))
    elif r.get("wer_missing_reason"):
        lines.append(f"WER: {r['wer_missing_reason']}")
    if r.get("contended") is True:
        lines.append(f"contended: {contention_note(r)}")
    if r.get("status") != "ok":
        lines.append(f"error: {r.get('error') or 'no error recorded'}")
    return lines


def cell_rows(rows: Iterable[Row]) -> list[CellRow]:
    """The latency and batch-search cells, in store order."""
    out = []
    for r in rows:
        if (r.get("scenario") or "latency") not in ("latency", "max_throughput"):
            continue
        values = []
        for m in METRICS:
            v = m.value(r) if r.get("status") == "ok" or m.key in ("clip", "batch", "threads") else None
            text = MISSING if v is None else format(v, m.fmt)
            if m.key == "wer" and v is not None and r.get("wer_ci_low") is not None:
                text += f" [{100 * r['wer_ci_low']:.1f}–{100 * r['wer_ci_high']:.1f}]"
            values.append((None if v is None else float(v), text))
        variant = r.get("variant") or r.get("dtype")
        sub = f"{r['engine']} · {variant}" + (" · batch search" if r.get("scenario") == "max_throughput" else "")
        out.append(CellRow(row_anchor(r.get("run_id"), r.get("cell_key")), str(r["model"]), sub,
                           {"device": str(r["device"]), "engine": str(r["engine"]), "model": str(r["model"]),
                            "length": f"{r['clip_length_s']:g} s"},
                           values, _badges(r), _details(r)))
    return out


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def cells_table_html(rows: Iterable[Row], table_id: str = "cells-table") -> str:
    """The long-form table with its filter bar; sorting and filtering come from the page's script."""
    cells = cell_rows(rows)
    if not cells:
        return '<p class="missing">No latency or batch-search cell in these rows.</p>\n'
    bar = []
    for key, name in FILTERS:
        options = sorted({c.filters[key] for c in cells}, key=lambda s: (len(s), s) if key == "length" else s)
        opts = "".join(f'<option value="{_e(o)}">{_e(o)}</option>' for o in options)
        bar.append(f'<label>{_e(name)} <select data-filter="{key}" data-table="{table_id}">'
                   f'<option value="">all</option>{opts}</select></label>')
    head = '<th scope="col" class="name">model · engine · variant</th>' + "".join(
        f'<th scope="col" class="num sortable" data-col="{i + 1}" tabindex="0" aria-sort="none">{_e(m.header)}</th>'
        for i, m in enumerate(METRICS)) + '<th scope="col">flags</th>'
    bodies = []
    for c in cells:
        attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in c.filters.items())
        badges = "".join(f'<span class="badge {b.kind}" title="{_e(b.title)}">{_e(b.text)}</span>' for b in c.badges)
        tds = "".join('<td class="num"' + ("" if v is None else f' data-v="{v!r}"') + f">{_e(t)}</td>" for v, t in c.values)
        details = "".join(f"<li>{_e(line)}</li>" for line in c.details)
        bodies.append(
            f'<tbody class="cell"{attrs}><tr id="{_e(c.anchor)}"><th scope="row" class="name">'
            f'<button type="button" class="more" aria-expanded="false" title="provenance">▸</button> '
            f'{_e(c.label)}<div class="sub">{_e(c.sub)}</div></th>{tds}<td class="flags">{badges}</td></tr>'
            f'<tr class="details" hidden><td colspan="{len(METRICS) + 2}"><ul>{details}</ul></td></tr></tbody>')
    return (f'<div class="filters">{"".join(bar)} <span class="count" data-count="{table_id}"></span></div>\n'
            f'<div class="scroll"><table class="cells" id="{table_id}"><thead><tr>{head}</tr></thead>'
            + "".join(bodies) + "</table></div>\n")
