"""The building blocks of the HTML page: escaping, tables, figures, the stylesheet and the one script.

The script is inline and small (sorting by a cell's number, filtering, opening a row's
provenance); it reads only data attributes and text, never builds markup from data, and makes no
request, so the page stays one self-contained file.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from asrperf.report.plots import Plot
from asrperf.report.tables import Table

# the rows of a study table that say what ran (styled apart from the measurements)
PROVENANCE = {"engine", "dtype", "weights", "variant", "threads", "decoder tokens"}

CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24; margin: 0; }
main { margin: 0 auto; padding: .4em 1.5em 4em; max-width: 1280px; }
nav { position: sticky; top: 0; z-index: 2; background: #24292f; padding: .35em 1.5em; display: flex;
      flex-wrap: wrap; gap: .2em 1.1em; font-size: 13px; }
nav a { color: #f0f3f6; text-decoration: none; } nav a:hover { text-decoration: underline; }
section, [id] { scroll-margin-top: 2.6em; }
h1 { font-size: 1.35em; margin: .3em 0 .1em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em;
margin: 1.6em 0 .4em; font-size: 1.25em; } h3 { font-size: 1.02em; margin: 1.2em 0 .3em; }
.meta, .note, .missing { color: #57606a; } .missing { font-style: italic; }
dl.measured { display: grid; grid-template-columns: max-content 1fr; gap: 0 .8em; margin: .2em 0 .5em;
              font-size: 13px; } dl.measured dt { font-weight: 600; color: #57606a; } dl.measured dd { margin: 0; }
.answer { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1.2em; align-items: start; }
.answer.single { grid-template-columns: minmax(0, 1fr); }
.answer h2 { margin-top: .3em; } .hero h3 { margin-top: .5em; }
ol.recs { list-style: none; padding: 0; margin: 0; }
ol.recs li { padding: .25em 0; border-bottom: 1px solid #eaeef2; }
ol.recs .scenario { font-weight: 600; } ol.recs .none { color: #9a6700; }
ol.recs .why { color: #57606a; font-size: 12.5px; display: -webkit-box; -webkit-line-clamp: 2;
               -webkit-box-orient: vertical; overflow: hidden; }
ol.recs .caveats { color: #9a6700; font-size: 12px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
p.caveats { color: #9a6700; font-size: 12px; margin: .2em 0; }
ul.gaps { margin: .2em 0; padding-left: 1.1em; font-size: 12px; line-height: 1.3; } ul.gaps code { background: #f6f8fa; }
.hero img { max-width: 100%; max-height: 42vh; height: auto; width: auto; display: block; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .4em 0; font-size: 12.5px; }
th, td { border: 1px solid #d0d7de; padding: .2em .45em; vertical-align: top; text-align: left;
         overflow-wrap: anywhere; }
thead th { background: #f6f8fa; }
table.study { table-layout: fixed; width: 100%; } table.study thead th:first-child { width: 17%; }
tbody th { font-weight: 600; background: #fafbfc; }
tr.prov td, tr.prov th { background: #eef4fb; }
tr.contended td { background: #fff4e5; }
td.num { font-variant-numeric: tabular-nums; }
table.cells { width: 100%; } table.cells th.name { min-width: 10em; } table.cells thead th { overflow-wrap: normal; }
table.cells td.num { text-align: right; overflow-wrap: normal; }
th.sortable { cursor: pointer; user-select: none; } th.sortable[aria-sort=ascending]::after { content: " ▲"; }
th.sortable[aria-sort=descending]::after { content: " ▼"; }
.sub { font-weight: normal; color: #57606a; font-size: 11.5px; }
button.more { border: 0; background: none; cursor: pointer; padding: 0 .2em; color: #57606a; }
tr.details td { background: #f6f8fa; font-size: 12px; } tr.details ul { margin: 0; padding-left: 1.2em; }
.badge { display: inline-block; border-radius: 8px; padding: 0 .45em; margin: 0 .2em .15em 0; font-size: 11px;
         border: 1px solid #d0d7de; white-space: nowrap; cursor: help; }
.badge.random { background: #fff8c5; border-color: #d4a72c; } .badge.estimated { background: #ddf4ff; }
.badge.contended { background: #ffebe9; border-color: #cf222e; } .badge.failed { background: #cf222e; color: #fff; }
.badge.real, .badge.measured { background: #dafbe1; }
.filters { font-size: 13px; display: flex; flex-wrap: wrap; gap: .3em 1em; align-items: center; }
ul.notes { color: #57606a; font-size: 12px; margin-top: .3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: .5em; margin: 0; font-size: 12px; }
details { margin: .4em 0; } summary { cursor: pointer; }
details.defs { background: #f6f8fa; padding: .2em .6em; font-size: 12.5px; } details.defs dt { font-weight: 600; }
details.defs dd { margin: 0 0 .3em 1em; }
td.text { max-width: 36em; }
"""

SCRIPT = """
(function () {
  "use strict";
  function value(body, col) {
    var cell = body.rows[0].cells[col];
    return cell && cell.hasAttribute("data-v") ? Number(cell.getAttribute("data-v")) : null;
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th.sortable").forEach(function (o) { o.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var bodies = Array.prototype.slice.call(table.tBodies);
    bodies.sort(function (a, b) {  // by number; cells without one go last either way
      var x = value(a, col), y = value(b, col);
      if (x === null || y === null) { return (x === null) - (y === null); }
      return asc ? x - y : y - x;
    });
    bodies.forEach(function (b) { table.appendChild(b); });
  }
  function applyFilters(id) {
    var table = document.getElementById(id);
    var selects = document.querySelectorAll('select[data-table="' + id + '"]');
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies, function (body) {
      var keep = Array.prototype.every.call(selects, function (s) {
        return !s.value || body.getAttribute("data-" + s.getAttribute("data-filter")) === s.value;
      });
      body.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    var count = document.querySelector('[data-count="' + id + '"]');
    if (count) { count.textContent = shown + " of " + table.tBodies.length + " cells shown"; }
  }
  document.querySelectorAll("table.cells").forEach(function (table) {
    table.querySelectorAll("th.sortable").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
    table.querySelectorAll("button.more").forEach(function (button) {
      button.addEventListener("click", function () {
        var row = button.closest("tbody").querySelector("tr.details");
        row.hidden = !row.hidden;
        button.setAttribute("aria-expanded", String(!row.hidden));
        button.textContent = row.hidden ? "\\u25b8" : "\\u25be";
      });
    });
    applyFilters(table.id);
  });
  document.querySelectorAll("select[data-filter]").forEach(function (s) {
    s.addEventListener("change", function () { applyFilters(s.getAttribute("data-table")); });
  });
})();
"""


def e(value: Any) -> str:
    """Text from data, escaped for HTML text and attribute values."""
    return escape(str(value), quote=True)


def table_html(t: Table, cls: str = "study") -> str:
    """A report Table as an HTML table whose cells wrap (it fits its box), its notes as a list below."""
    head = "".join(f'<th scope="col">{e(c)}</th>' for c in [t.corner, *t.columns])
    body = []
    for name, cells in t.rows:
        prov = ' class="prov"' if name in PROVENANCE else ""
        body.append(f'<tr{prov}><th scope="row">{e(name)}</th>' + "".join(f'<td class="num">{e(c)}</td>' for c in cells)
                    + "</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in dict.fromkeys(t.notes))
    return (f"<h3>{e(t.title)}</h3>\n<div class=\"scroll\"><table class=\"{cls}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>\n" + (f'<ul class="notes">{notes}</ul>\n' if notes else ""))


def plot_html(p: Plot) -> str:
    """A drawn plot as an inline PNG with its file name; an absent one as its one-line reason."""
    if p.png is None:
        return f'<p class="missing" id="plot-{e(p.name)}">{e(p.title)}: {e(p.missing)}</p>\n'
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure id="plot-{e(p.name)}"><img class="plot" src="data:image/png;base64,{data}" '
            f'alt="{e(p.title)}"><figcaption>{e(p.title)} (file: {e(p.name)}.png)</figcaption></figure>\n')


def definitions_html(items: tuple[tuple[str, str], ...]) -> str:
    """A section's definitions drawer (closed by default)."""
    if not items:
        return ""
    body = "".join(f"<dt>{e(term)}</dt><dd>{e(text)}</dd>" for term, text in items)
    return f'<details class="defs"><summary>Definitions</summary><dl>{body}</dl></details>\n'
