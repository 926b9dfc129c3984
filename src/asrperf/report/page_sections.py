"""The page's sections, one per scenario (plus the cross-cutting ones), each with its definitions.

A section is one `PageSection` in `SECTIONS`: the scenarios whose rows make it appear, a body
(rows -> HTML), its definitions drawer and the plot names it shows. The page (report/html.py)
draws the nav bar and every section from this list, so a new scenario adds its section with one
entry (`register_section`), e.g.

    register_section(PageSection("serving", "Serving under load", ("serving",), serving_body,
                                 SERVING_DEFINITIONS, plots=("serving-",)), before="guard")

Plots whose names no section claims are shown in an "Other plots" section, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asrperf.report.cells_table import cells_table_html
from asrperf.report.html_parts import e, table_html
from asrperf.report.plots import Plot, series_label
from asrperf.report.tables import (
    MISSING,
    Table,
    column_label,
    contention_note,
    environment_lines,
    study_tables,
)

Row = Mapping[str, Any]


@dataclass
class PageData:
    """What every section body reads."""

    rows: list[Row]  # rows of clips (every row with a clip length)
    runs: list[Mapping[str, Any]]
    plots: list[Plot]
    shown: set[str] = field(default_factory=set)  # plot names already on the page (the first screen's)
    utterance_rows: list[Row] = field(default_factory=list)  # asrperf eval: whole utterances, no clip length

    def scenario_rows(self, scenarios: tuple[str, ...]) -> list[Row]:
        return [r for r in self.rows + self.utterance_rows if (r.get("scenario") or "latency") in scenarios]


@dataclass(frozen=True)
class PageSection:
    """One section of the page; `scenarios` empty: always shown."""

    id: str  # the anchor the nav bar links to
    title: str
    scenarios: tuple[str, ...]
    body: Callable[[PageData], str]
    definitions: tuple[tuple[str, str], ...] = ()
    plots: tuple[str, ...] = ()  # prefixes of the plot names shown at the section's end

    def applies(self, data: PageData) -> bool:
        return not self.scenarios or bool(data.scenario_rows(self.scenarios))


# ---- bodies ----

def _cells(data: PageData) -> str:
    return ('<p class="note">One row per cell; click a header to sort by its number, pick a device, engine, model '
            'or length to filter; ▸ opens the row\'s provenance. Badges qualify the row they sit on.</p>\n'
            + cells_table_html(data.rows))


def _study(data: PageData) -> str:
    tables = study_tables(data.rows)
    return "".join(table_html(t) for t in tables) or '<p class="missing">No latency rows in this run.</p>\n'


def _max_throughput(data: PageData) -> str:
    searched = [r for r in data.rows if r.get("scenario") == "max_throughput"]
    if not searched:
        return ('<p class="note">No batch-size search in these rows (<code>--scenario max_throughput</code> runs '
                'one); the curve below, when drawn, is the latency cells\' batch sweep.</p>\n')
    t = Table("Batch-size search", ["clip s", "best batch", "samples/s", "p50 ms per batch", "stop reason"],
              corner="configuration")
    for r in searched:
        ok = r.get("status") == "ok" and r.get("max_throughput_samples_per_s") is not None
        p50 = r.get("max_throughput_latency_s_p50")
        t.rows.append((f"{column_label(r)}, {r['device']}", [
            f"{r['clip_length_s']:g}", str(r.get("max_throughput_batch_size")) if ok else MISSING,
            f"{r['max_throughput_samples_per_s']:.2f}" if ok else "failed" if r.get("status") != "ok" else MISSING,
            f"{1000 * p50:,.0f}" if ok and p50 is not None else MISSING, str(r.get("max_throughput_stop_reason") or
                                                                         r.get("error") or MISSING)]))
    return table_html(t)


def _profile_of(scenario: str) -> Callable[[PageData], str]:
    def body(data: PageData) -> str:
        from asrperf.report.profile_tables import profile_tables

        return "".join(table_html(t) for t in profile_tables(data.scenario_rows((scenario,))))

    return body


def _serving(data: PageData) -> str:
    from asrperf.report.serving_tables import serving_tables

    return "".join(table_html(t) for t in serving_tables(data.rows))


def _streaming(data: PageData) -> str:
    from asrperf.report.streaming_tables import streaming_tables

    return "".join(table_html(t) for t in streaming_tables(data.rows))


def _dataset(data: PageData) -> str:
    from asrperf.report.dataset_tables import dataset_tables, evaluation_label, source_text, worst_utterances

    evaluations = data.scenario_rows(("dataset",))
    out = ["".join(table_html(t) for t in dataset_tables(evaluations))]
    for r in evaluations:
        if r.get("status") != "ok":
            continue
        worst = worst_utterances(r)
        what = f"{evaluation_label(r)}, {r['device']}, {source_text(r)}, batch {r.get('batch_size')}"
        if not worst:
            why = r.get("wer_missing_reason") if r.get("wer") is None else "no utterance has a word edit"
            out.append(f'<p class="missing">Worst utterances of {e(what)}: none ({e(why or "not scored")})</p>\n')
            continue
        trs = "".join(f"<tr><td>{e(u.get('clip', ''))}</td><td class=\"num\">{e(format(100 * u['wer'], '.1f'))}</td>"
                      f"<td class=\"num\">{e(u.get('word_edits'))} / {e(u.get('ref_words'))}</td>"
                      f"<td class=\"text\">{e(u.get('ref', ''))}</td><td class=\"text\">{e(u.get('hyp', ''))}</td></tr>"
                      for u in worst)
        out.append(f"<details><summary>Worst utterances of {e(what)} ({len(worst)}, most word edits first)"
                   f"</summary><div class=\"scroll\"><table><thead><tr><th>utterance</th><th>WER %</th>"
                   f"<th>edits / ref words</th><th>reference</th><th>hypothesis</th></tr></thead><tbody>{trs}"
                   f"</tbody></table></div></details>\n")
    return "".join(out)


def _guard(data: PageData) -> str:
    """The rows the busy-machine guard flagged, with the figures that decided it."""
    rows = data.rows
    busy = [r for r in rows if r.get("status") == "ok" and r.get("contended") is True]
    if not busy:
        measured = any(r.get("contended") is not None for r in rows)
        return ('<p class="note">No cell was contended.</p>\n' if measured
                else '<p class="missing">The busy-machine guard did not run for these rows.</p>\n')
    body = "".join(
        f'<tr class="contended"><td>{e(series_label(r))}</td><td class="num">{e(format(r["clip_length_s"], "g"))} s</td>'
        f'<td class="num">{e(r.get("batch_size"))}</td><td>{e(", ".join(r.get("contention_reasons") or []))}</td>'
        f"<td>{e(contention_note(r))}</td></tr>" for r in busy)
    return ('<p class="note">Measured while other processes used the cores (or the GPU): shown with '
            '[contended] in the tables and a badge on the cell, left out of the recommendations.</p>\n'
            '<div class="scroll"><table><thead><tr><th>model</th><th>clip</th><th>batch</th><th>reasons</th>'
            f"<th>figures</th></tr></thead><tbody>{body}</tbody></table></div>\n")


def _failed(data: PageData) -> str:
    failed = [r for r in data.rows if r.get("status") != "ok"]
    if not failed:
        return '<p class="note">No cell failed.</p>\n'
    body = "".join(
        f"<tr><td>{e(series_label(r))}</td><td class=\"num\">{e(format(r['clip_length_s'], 'g'))} s</td>"
        f"<td class=\"num\">{e(r.get('batch_size'))}</td><td>{e(r.get('scenario') or 'latency')}</td>"
        f"<td><pre>{e(r.get('error') or 'no error recorded')}</pre></td><td>{e(r.get('cell_key') or '')}</td></tr>"
        for r in failed)
    return ('<div class="scroll"><table><thead><tr><th>model</th><th>clip</th><th>batch</th><th>scenario</th>'
            f"<th>error</th><th>cell</th></tr></thead><tbody>{body}</tbody></table></div>\n")


def _transcripts(data: PageData) -> str:
    """Per-clip reference and hypothesis, one collapsible block per model column and clip length."""
    seen: dict[tuple, Row] = {}
    for r in sorted((r for r in data.rows if r.get("status") == "ok" and r.get("transcripts")),
                    key=lambda r: r["batch_size"]):
        seen.setdefault((r.get("run_id"), r["device"], series_label(r), r["clip_length_s"]), r)
    if not seen:
        return '<p class="missing">No transcripts stored in these rows.</p>\n'
    out = []
    for (_, device, label, length), r in seen.items():
        wer = f"WER {100 * r['wer']:.1f}%" if r.get("wer") is not None else (r.get("wer_missing_reason") or "no WER")
        trs = "".join(f"<tr><td>{e(t.get('clip', ''))}</td><td class=\"text\">{e(t.get('ref', ''))}</td>"
                      f"<td class=\"text\">{e(t.get('hyp', ''))}</td></tr>" for t in r["transcripts"])
        out.append(f"<details><summary>{e(label)}, {e(device)}, {e(format(length, 'g'))} s clips, batch "
                   f"{e(r['batch_size'])}: {e(wer)} ({len(r['transcripts'])} clip(s))</summary>"
                   f"<div class=\"scroll\"><table><thead><tr><th>clip</th><th>reference</th><th>hypothesis</th></tr>"
                   f"</thead><tbody>{trs}</tbody></table></div></details>\n")
    return "".join(out)


def _environment(data: PageData) -> str:
    import json
    import time

    if not data.runs:
        return '<p class="missing">No run environment recorded.</p>\n'
    out = []
    for run in data.runs:
        lines = "\n".join(line.strip() for line in environment_lines(run.get("env") or {}, run["run_id"]))
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run["updated_at"])) if run.get("updated_at") else "?"
        out.append(f"<h3>run {e(run['run_id'])}</h3><p class=\"meta\">last updated {e(when)}</p>"
                   f"<pre>{e(lines)}</pre><details><summary>full environment</summary>"
                   f"<pre>{e(json.dumps(run.get('env') or {}, indent=1))}</pre></details><details><summary>run "
                   f"configuration</summary><pre>{e(json.dumps(run.get('config') or {}, indent=1))}</pre></details>\n")
    return "".join(out)


# ---- definitions (DESIGN.md's metric definitions, in a line each) ----

_TIMING = ("latency", "wall time of one call on one batch over the timed region (features, host-to-device, "
           "forward and decoding, detokenize), device synchronised; warm-up calls discarded; p50 / p90 over the "
           "timed calls")
_RTFX = ("RTFx", "audio seconds processed per compute second (higher is better)")
_WER = ("WER", "corpus-level word error rate after Whisper's English normalisation, 95% bootstrap CI over clips; "
        "random-weight models have none")
_BADGES = (("badges", "real / random weights; energy measured (counters: RAPL, NVML) or estimated (a power "
            "model, not a reading); contended: the busy-machine guard saw other processes use the cores; hover "
            "a badge for its full text"),)

SECTIONS: list[PageSection] = [
    PageSection("cells", "All cells", ("latency", "max_throughput"), _cells,
                (_TIMING, _RTFX, _WER, ("throughput", "samples/s = batch size × calls / timed seconds"),
                 ("energy J / audio s", "joules over the timed calls per second of audio"),
                 ("peak RSS", "resident memory high-water over the timed calls"), *_BADGES)),
    PageSection("latency", "Latency", ("latency",), _study,
                (_TIMING, _RTFX, _WER, ("first call", "the first (cold) call of the cell, before warm-up"),
                 ("ΔWER", "a variant's WER change against the fp32 reference on the same clips, paired by clip")),
                plots=("latency-vs-length", "wer-vs-latency", "energy")),
    PageSection("max-throughput", "Max throughput", ("latency", "max_throughput"), _max_throughput,
                (("throughput", "samples/s = batch size × calls / timed seconds"),
                 ("max throughput", "best samples/s over batch sizes found by the search, with its batch size and "
                                    "why the search stopped (OOM, plateau, limit)")),
                plots=("throughput-vs-batch",)),
    PageSection("profile", "Profile", ("profile",), _profile_of("profile"),
                (("op categories", "share of op self time on the profiler's timeline"),
                 ("stages", "ms per call per pipeline stage; nested stages sit inside another"),
                 ("MFU", "FLOPs / time / the device's peak as measured on that device")),
                plots=("profile",)),
    PageSection("decode", "Decode", ("decode",), _profile_of("decode"),
                (("per-token decode", "ms per decoder step at a token position, with and without the KV cache"),),
                plots=("decode-curve",)),
    PageSection("streaming", "Streaming", ("streaming",), _streaming,
                (("first-partial latency", "start of speech to the first emitted text"),
                 ("finalization latency", "end of an utterance to its text being committed"),
                 ("per-chunk RTF", "compute time ÷ chunk duration; a deadline miss is RTF > 1"),
                 ("max streams", "the largest N real-time streams with < 1% deadline misses")),
                plots=("streaming-",)),
    PageSection("serving", "Serving under load", ("server",), _serving,
                (("max sustainable rate", "the highest Poisson request rate whose probe meets the SLO (bisection "
                                          "between the synchronous and the saturation rate); unresolved when the "
                                          "probe's Wilson 95% CI straddles the target"),
                 ("latency", "from each request's scheduled send time to its answer (free of coordinated omission)"),
                 ("queue / compute", "the server's own X-Queue-Time-S and compute headers"),
                 ("goodput", "share of requests meeting the SLO, Wilson 95% CI"),
                 ("WER under load", "every answered request scored; offline: the same engine on the same clips")),
                plots=("serving-",)),
    PageSection("dataset", "Dataset evaluation", ("dataset",), _dataset,
                (("RTFx (OASR)", "sum of audio seconds / sum of per-batch transcription seconds, each batch timed "
                                 "between device synchronisations (the Open ASR Leaderboard's RTFx); decoding audio "
                                 "and loading the model are outside"),
                 ("wall RTFx", "audio seconds / wall seconds: locally the transcription loop, on Ray the whole "
                               "map_batches job with actor start and model loads"),
                 ("corpus WER", "word errors over all utterances / reference words, after Whisper's English "
                                "normaliser; 95% CI: bootstrap over utterances; random-weight models have none"),
                 ("batches", "utterances sorted longest first, cut into consecutive batches; auto: the max-"
                             "throughput search on the longest utterances"),
                 ("padding policy", "the engine's declared batch padding: fixed_window (each input padded alone "
                                    "to 30 s: batch-invariant), masked (padded to the longest, with an attention "
                                    "mask) or unmasked (zero-padded, no mask: outputs depend on the batch); the "
                                    "padding check transcribes the shortest utterance alone and in a batch with "
                                    "the longest"))),
    PageSection("guard", "Busy-machine guard", (), _guard,
                (("contended", "a timed window in which other processes used more than a set share of the cores "
                               "the cell could run on, or the cell got too little of the CPU it was ready to use"),)),
    PageSection("failed", "Failed cells", (), _failed),
    PageSection("transcripts", "Transcripts", (), _transcripts),
    PageSection("environment", "Environment", (), _environment),
]


def register_section(section: PageSection, before: str | None = None) -> PageSection:
    """Add (or replace, by id) a section; placed before section `before` (default: before the guard)."""
    SECTIONS[:] = [s for s in SECTIONS if s.id != section.id]
    ids = [s.id for s in SECTIONS]
    anchor = before or "guard"
    SECTIONS.insert(ids.index(anchor) if anchor in ids else len(SECTIONS), section)
    return section


def section_plots(section: PageSection, plots: list[Plot]) -> list[Plot]:
    return [p for p in plots if any(p.name.startswith(prefix) for prefix in section.plots)]
