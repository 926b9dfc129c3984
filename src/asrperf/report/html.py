"""One self-contained HTML page from the results store, the answer first.

The first screen says what was measured (machine, models, engines, lengths), the recommendations
with a line each and a link to the row behind them, the WER-against-latency Pareto plot when two
configurations have a WER, and what was not measured that could change the answer (with the
command that measures it). Then a nav bar's worth of sections (report/page_sections.py: all
cells, latency, max throughput, profile, decode, streaming, ..., each with its definitions).

Self-contained: inline CSS, plots as base64 PNG data URIs, one small inline script (sort, filter,
open a row's provenance) and no network, so the file opens the same from file://, a mail
attachment or a CI artifact. Every value that comes from the data is HTML-escaped.

Plots are static PNGs, not interactive: the same bytes are the `--plots-dir` export, the page
stays small (an inlined Plotly is 3+ MB), and the number behind a point with its CI and
provenance is one click away in the sortable cells table.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from asrperf.report.cells_table import row_anchor
from asrperf.report.html_parts import (
    CSS,
    SCRIPT,
    definitions_html,
    e,
    plot_html,
    table_html,
)
from asrperf.report.page_sections import SECTIONS, PageData, section_plots
from asrperf.report.plots import Plot, make_plots
from asrperf.report.summary import EngineOffer, first_screen_caveats, measured_lines, not_measured

__all__ = ["render_html", "table_html"]


def _recommendations(rows: list[Mapping[str, Any]], thresholds: Any, allow_contended: bool) -> list[Any]:
    from asrperf.report.recommend import Thresholds, recommend

    return recommend(rows, thresholds if thresholds is not None else Thresholds(), allow_contended=allow_contended)


def _recs_html(recs: list[Any], rows: list[Mapping[str, Any]]) -> str:
    from asrperf.report.recommend import pick_lines, recommendations_table

    if not recs:
        return '<p class="missing">No successful rows: nothing to recommend.</p>\n'
    devices = {r.device for r in recs}
    items = []
    for r, (name, _, why, caveats) in zip(recs, pick_lines(recs)):
        full = "; ".join((r.why, *r.caveats))
        if r.choice is None:
            choice = '<span class="none">no answer</span>'
        elif r.cell_key is not None:
            choice = f'<a href="#{e(row_anchor(r.run_id, r.cell_key))}">{e(r.choice)}</a>'
        else:
            choice = e(r.choice)
        items.append(f'<li data-scenario="{e(r.scenario)}"><span class="scenario">{e(name)}</span>: {choice}'
                     f'<div class="why" title="{e(full)}">{e(why)}</div>'
                     + (f'<div class="caveats" title="{e(caveats)}">caveats: {e(caveats)}</div>' if caveats else "")
                     + "</li>")
    common = "".join(f'<p class="caveats">every recommendation{"" if len(devices) == 1 else f" [{e(d)}]"}: '
                     f'{e("; ".join(c))}</p>' for d, c in first_screen_caveats(recs, rows).items() if c)
    return (f'<ol class="recs">{"".join(items)}</ol>\n{common}<details><summary>Rules, ties and caveats</summary>'
            f"{table_html(recommendations_table(recs))}</details>\n")


def _gaps_html(data: PageData, offers: Sequence[EngineOffer], allow_contended: bool) -> str:
    gaps = not_measured(data.rows, data.runs, offers, allow_contended)
    if not gaps:
        return ""
    items = "".join(f"<li>{e(g.what)}: <code>{e(g.command)}</code></li>" for g in gaps)
    return (f'<h3 id="not-measured">Not measured (could change the answer)</h3><ul class="gaps">{items}</ul>\n')


def _first_screen(data: PageData, recs: list[Any], offers: Sequence[EngineOffer], allow_contended: bool) -> str:
    measured = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in measured_lines(data.rows, data.runs))
    pareto = next((p for p in data.plots if p.name.startswith("wer-vs-latency") and p.png is not None), None)
    if pareto is not None:
        data.shown.add(pareto.name)
        side = f'<div class="hero">{plot_html(pareto)}{_gaps_html(data, offers, allow_contended)}</div>'
    else:
        absent = next((p for p in data.plots if p.name.startswith("wer-vs-latency")), None)
        if absent is not None:
            data.shown.add(absent.name)
        side = (f'<div class="hero">{plot_html(absent) if absent else ""}{_gaps_html(data, offers, allow_contended)}</div>')
    return (f'<dl class="measured">{measured}</dl>\n<div class="answer">'
            '<div><h2 id="recommendations">Recommendations</h2><p class="note">Among the configurations measured '
            'here only; each links to the cell behind it.</p>' + _recs_html(recs, data.rows) + f"</div>{side}</div>\n")


def render_html(rows: list[Mapping[str, Any]], runs: list[Mapping[str, Any]], plots: list[Plot] | None = None,
                title: str = "asrperf report", thresholds: Any = None, allow_contended: bool = False,
                engine_offers: Sequence[EngineOffer] = ()) -> str:
    """The whole report page for `rows` and the `runs` they came from (Store.rows() / Store.runs()).

    `plots` defaults to make_plots(rows) (pass them in to reuse the PNGs); `thresholds` go to the
    recommendations (asrperf.report.recommend.Thresholds; None: its defaults); `engine_offers` (from
    asrperf.run.coverage.engine_offers) let "not measured" name the installed engines that were not run.
    """
    from asrperf.report.dataset_tables import is_whole_utterance

    # `asrperf eval` rows have no clip length: only the dataset section reads them
    whole = [r for r in rows if is_whole_utterance(r)]
    rows = [r for r in rows if not is_whole_utterance(r)]
    data = PageData(rows, list(runs), make_plots(rows) if plots is None else list(plots), utterance_rows=whole)
    recs = _recommendations(rows, thresholds, allow_contended)
    n_failed = sum(r.get("status") != "ok" for r in rows)
    n_contended = sum(r.get("status") == "ok" and r.get("contended") is True for r in rows)
    run_ids = ", ".join(str(r["run_id"]) for r in data.runs) or "none"
    evaluations = f", {len(whole)} dataset evaluation(s)" if whole else ""
    first = _first_screen(data, recs, engine_offers, allow_contended)
    sections, absent, claimed = [], [], set()
    for s in SECTIONS:
        mine = section_plots(s, data.plots)
        claimed |= {p.name for p in mine}
        if not s.applies(data):
            absent += [plot_html(p) for p in mine if p.png is None and p.name not in data.shown] or [
                f'<p class="missing">{e(s.title)}: not measured in this run (no {e(" / ".join(s.scenarios))} rows)</p>\n']
            continue
        figures = "".join(plot_html(p) if p.name not in data.shown else
                          f'<p class="note">{e(p.title)}: shown at the top.</p>\n' for p in mine)
        sections.append((s, f'<section id="{e(s.id)}"><h2>{e(s.title)}</h2>\n{definitions_html(s.definitions)}'
                            f"{s.body(data)}{figures}</section>\n"))
    others = [p for p in data.plots if p.name not in claimed]
    nav = "".join(f'<a href="#{e(s.id)}">{e(s.title)}</a>' for s, _ in sections)
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request, even when served over http
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f'<nav aria-label="sections"><a href="#recommendations">Answer</a>{nav}'
        + ('<a href="#other-plots">Other plots</a>' if others else "") + "</nav><main>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">runs: {e(run_ids)}; {len(rows)} cell(s){e(evaluations)}, {n_failed} failed, {n_contended} contended; '
        f'generated {e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))} from the results store.</p>',
        first,
        *(html for _, html in sections),
        ('<section id="other-plots"><h2>Other plots</h2>' + "".join(plot_html(p) for p in others) + "</section>"
         if others else ""),
        ('<section id="not-in-run"><h2>Not in these rows</h2>' + "".join(absent) + "</section>" if absent else ""),
        f"</main><script>{SCRIPT}</script></body></html>\n",
    ]
    return "\n".join(parts)
