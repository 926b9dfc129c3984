"""One self-contained HTML page from the results store: tables, plots, failures, transcripts, environment.

Self-contained: inline CSS, plots as base64 PNG data URIs, no script and no network, so the file
opens the same from file://, a mail attachment or a CI artifact. Every value that comes from the
data (model names, transcripts, paths, errors, environment strings) is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
import time
from html import escape
from typing import Any

from asrperf.report.plots import Plot, make_plots, series_label
from asrperf.report.tables import Table, contention_note, environment_lines, study_tables

# the rows of a study table that say what ran (styled apart from the measurements)
_PROVENANCE = {"engine", "dtype", "weights", "variant", "threads", "decoder tokens"}

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       margin: 0 auto; padding: 1.5em 2em 4em; max-width: 1280px; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em;
margin-top: 2em; } h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.meta, .note, .missing { color: #57606a; } .missing { font-style: italic; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .4em 0; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; vertical-align: top; text-align: left; }
thead th { background: #f6f8fa; position: sticky; top: 0; }
tbody th { font-weight: 600; white-space: nowrap; background: #fafbfc; }
tr.prov td, tr.prov th { background: #eef4fb; }
tr.contended td { background: #fff4e5; }
td.num { white-space: nowrap; font-variant-numeric: tabular-nums; }
ul.notes { color: #57606a; font-size: 12.5px; margin-top: .3em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: .5em; margin: 0; font-size: 12px; }
details { margin: .4em 0; } summary { cursor: pointer; }
td.text { max-width: 36em; }
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def table_html(t: Table) -> str:
    """A report Table as an HTML table, its notes as a list below it."""
    head = "".join(f"<th>{_e(c)}</th>" for c in [t.corner, *t.columns])
    body = []
    for name, cells in t.rows:
        cls = ' class="prov"' if name in _PROVENANCE else ""
        body.append(f"<tr{cls}><th>{_e(name)}</th>" + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in dict.fromkeys(t.notes))
    return (f"<h3>{_e(t.title)}</h3>\n<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>\n" + (f'<ul class="notes">{notes}</ul>\n' if notes else ""))


def _plot_html(p: Plot) -> str:
    if p.png is None:
        return f'<p class="missing">{_e(p.title)}: {_e(p.missing)}</p>\n'
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure id="plot-{_e(p.name)}"><img class="plot" src="data:image/png;base64,{data}" '
            f'alt="{_e(p.title)}"><figcaption>{_e(p.title)} (file: {_e(p.name)}.png)</figcaption></figure>\n')


def _recommendations_html(rows: list[dict[str, Any]], thresholds: Any = None, allow_contended: bool = False) -> str:
    try:  # written alongside this module; the page simply has no such section without it
        from asrperf.report.recommend import Thresholds, recommend, recommendations_table
    except ImportError:
        return ""
    recs = recommend(rows, thresholds if thresholds is not None else Thresholds(), allow_contended=allow_contended)
    return "<h2>Recommendations</h2>\n" + table_html(recommendations_table(recs))


def _contended_html(rows: list[dict[str, Any]]) -> str:
    """The rows the busy-machine guard flagged, with the figures that decided it."""
    busy = [r for r in rows if r.get("status") == "ok" and r.get("contended") is True]
    if not busy:
        measured = any(r.get("contended") is not None for r in rows)
        return ('<p class="note">No cell was contended.</p>\n' if measured
                else '<p class="missing">The busy-machine guard did not run for these rows.</p>\n')
    body = "".join(
        f'<tr class="contended"><td>{_e(series_label(r))}</td>'
        f'<td class="num">{_e(format(r.get("clip_length_s", 0), "g"))} s</td>'
        f'<td class="num">{_e(r.get("batch_size"))}</td><td>{_e(", ".join(r.get("contention_reasons") or []))}</td>'
        f'<td>{_e(contention_note(r))}</td></tr>' for r in busy)
    return ('<p class="note">Measured while other processes used the cores (or the GPU): shown with '
            '[contended] in the tables, left out of the recommendations.</p>\n'
            '<div class="scroll"><table><thead><tr><th>model</th><th>clip</th><th>batch</th><th>reasons</th>'
            f"<th>figures</th></tr></thead><tbody>{body}</tbody></table></div>\n")


def _profile_tables_html(rows: list[dict[str, Any]]) -> str:
    try:  # written alongside this module, like the recommendations
        from asrperf.report.profile_tables import profile_tables
    except ImportError:
        return ""
    tables = profile_tables(rows)
    return "<h2>Profile and decoder</h2>\n" + "".join(table_html(t) for t in tables) if tables else ""


def _streaming_tables_html(rows: list[dict[str, Any]]) -> str:
    from asrperf.report.streaming_tables import streaming_tables

    tables = streaming_tables(rows)
    return "<h2>Streaming</h2>\n" + "".join(table_html(t) for t in tables) if tables else ""


def serving_section_html(rows: list[dict[str, Any]]) -> str:
    """The serving section (max rate under the SLO per configuration); "" without server rows.
    Its plot is drawn with the others (report/serving_plots.py)."""
    from asrperf.report.serving_tables import serving_tables

    tables = serving_tables(rows)
    return "<h2>Serving under load</h2>\n" + "".join(table_html(t) for t in tables) if tables else ""


def _failed_html(rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if r.get("status") != "ok"]
    if not failed:
        return '<p class="note">No cell failed.</p>\n'
    body = "".join(
        f"<tr><td>{_e(series_label(r))}</td><td class=\"num\">{_e(format(r.get('clip_length_s', 0), 'g'))} s</td>"
        f"<td class=\"num\">{_e(r.get('batch_size'))}</td><td>{_e(r.get('scenario', 'latency'))}</td>"
        f"<td><pre>{_e(r.get('error') or 'no error recorded')}</pre></td><td>{_e(r.get('cell_key', ''))}</td></tr>"
        for r in failed
    )
    return ('<div class="scroll"><table><thead><tr><th>model</th><th>clip</th><th>batch</th><th>scenario</th>'
            f"<th>error</th><th>cell</th></tr></thead><tbody>{body}</tbody></table></div>\n")


def _transcripts_html(rows: list[dict[str, Any]]) -> str:
    """Per-clip reference and hypothesis, one collapsible block per model column and clip length."""
    seen: dict[tuple, dict[str, Any]] = {}
    for r in sorted((r for r in rows if r.get("status") == "ok" and r.get("transcripts")),
                    key=lambda r: r["batch_size"]):
        seen.setdefault((r.get("run_id"), r["device"], series_label(r), r["clip_length_s"]), r)
    if not seen:
        return '<p class="missing">No transcripts stored in these rows.</p>\n'
    out = []
    for (_, device, label, length), r in seen.items():
        wer = f"WER {100 * r['wer']:.1f}%" if r.get("wer") is not None else (r.get("wer_missing_reason") or "no WER")
        trs = "".join(f"<tr><td>{_e(t.get('clip', ''))}</td><td class=\"text\">{_e(t.get('ref', ''))}</td>"
                      f"<td class=\"text\">{_e(t.get('hyp', ''))}</td></tr>" for t in r["transcripts"])
        out.append(f"<details><summary>{_e(label)}, {_e(device)}, {_e(format(length, 'g'))} s clips, batch "
                   f"{_e(r['batch_size'])}: {_e(wer)} ({len(r['transcripts'])} clip(s))</summary>"
                   f"<div class=\"scroll\"><table><thead><tr><th>clip</th><th>reference</th><th>hypothesis</th></tr>"
                   f"</thead><tbody>{trs}</tbody></table></div></details>\n")
    return "".join(out)


def _environment_html(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<p class="missing">No run environment recorded.</p>\n'
    out = []
    for run in runs:
        lines = "\n".join(line.strip() for line in environment_lines(run.get("env", {}), run["run_id"]))
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run["updated_at"])) if run.get("updated_at") else "?"
        env = json.dumps(run.get("env", {}), indent=1)
        out.append(f"<h3>run {_e(run['run_id'])}</h3><p class=\"meta\">last updated {_e(when)}</p>"
                   f"<pre>{_e(lines)}</pre><details><summary>full environment</summary><pre>{_e(env)}</pre>"
                   "</details><details><summary>run configuration</summary>"
                   f"<pre>{_e(json.dumps(run.get('config', {}), indent=1))}</pre></details>\n")
    return "".join(out)


def render_html(rows: list[dict[str, Any]], runs: list[dict[str, Any]], plots: list[Plot] | None = None,
                title: str = "asrperf report", thresholds: Any = None, allow_contended: bool = False) -> str:
    """The whole report page for `rows` and the `runs` they came from (Store.rows() / Store.runs()).

    `plots` defaults to make_plots(rows) (pass them in to reuse the PNGs); `thresholds` go to the
    recommendations (asrperf.report.recommend.Thresholds; None: its defaults).
    """
    rows = list(rows)
    plots = make_plots(rows) if plots is None else plots
    n_failed = sum(r.get("status") != "ok" for r in rows)
    n_contended = sum(r.get("status") == "ok" and r.get("contended") is True for r in rows)
    run_ids = ", ".join(r["run_id"] for r in runs) or "none"
    tables = "".join(table_html(t) for t in study_tables(rows)) or '<p class="missing">No rows in this run.</p>\n'
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request, even when served over http
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">runs: {_e(run_ids)}; {len(rows)} cell(s), {n_failed} failed, {n_contended} contended; generated '
        f'{_e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))} from the results store.</p>',
        "<h2>Results</h2>\n", tables,
        _profile_tables_html(rows),
        _streaming_tables_html(rows),
        serving_section_html(rows),
        "<h2>Busy-machine guard</h2>\n", _contended_html(rows),
        _recommendations_html(rows, thresholds, allow_contended),
        "<h2>Plots</h2>\n", "".join(_plot_html(p) for p in plots),
        "<h2>Failed cells</h2>\n", _failed_html(rows),
        "<h2>Transcripts</h2>\n", _transcripts_html(rows),
        "<h2>Environment</h2>\n", _environment_html(runs),
        "</body></html>\n",
    ]
    return "\n".join(parts)
