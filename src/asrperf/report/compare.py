"""Compare two runs cell by cell: is B slower, faster or less accurate than A, beyond the noise?

A cell of A is matched to the cell of B that measured the same thing (model, engine, dtype,
requested weights, clip length, batch, device, threads, scenario, variant). For each pair:
- latency: ratio of medians B/A of the raw timed calls, bootstrap 95% CI, Mann–Whitney U p;
- throughput and RTFx: batch / mean latency, so their ratio is the inverse ratio of mean
  latencies, with the same bootstrap;
- WER/CER: paired bootstrap over the clips both runs scored (unpaired when the clips differ);
- peak memory and energy per sample: one value per cell, shown as a plain change, never tested.
A change is a regression or an improvement only when its CI excludes "no change" AND it is larger
than the threshold; failed cells are listed, never compared. No torch here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrperf.errors import ConfigError, StoreError
from asrperf.measure.paired import WerDelta, ratio_of_means_ci, ratio_of_medians_ci, transcripts_delta
from asrperf.measure.stats import BOOTSTRAP_RESAMPLES
from asrperf.report.tables import MISSING, contention_note, md_escape

# what identifies a cell without its run; "model_name" is the model as configured (the display
# label may change between runs), "weights_requested" is known even for a cell that failed to load
IDENTITY = ("model_name", "engine", "dtype", "weights_requested", "clip_length_s", "batch_size", "device", "threads",
            "scenario", "variant", "chunk_ms",  # chunk_ms: streaming cells only (None elsewhere)
            "server_setup",  # server cells only: batcher settings, load plan and SLO (report/serving_compare.py)
            "dataset_source_key")  # asrperf eval cells only: the source's content key (None elsewhere)
ENV_KEYS = ("hostname", "cpu_model", "usable_cores", "memory_bytes", "gpus", "platform", "python", "asrperf_version",
            "asrperf_git_commit")
REGRESSION, IMPROVEMENT = "regression", "improvement"
FEW_CALLS = 10  # below this many timed calls a side, percentile-bootstrap CIs of a median undercover
NOT_TESTED = "not tested"  # one value per cell: no spread to test against


@dataclass(frozen=True)
class RunRef:
    """A run in a store, and the text the user named it with."""

    spec: str
    side: str  # "A" | "B"
    store: Path
    run_id: str


@dataclass
class MetricChange:
    """One metric of one matched cell: A, B, the change B vs A, its CI and the verdict."""

    metric: str
    unit: str  # of a and b: "s", "samples/s", "x", "fraction", "bytes", "J"
    a: float | None
    b: float | None
    kind: str  # "ratio": change = B/A; "delta": change = B - A (fractions)
    change: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    verdict: str
    method: str


@dataclass
class CellComparison:
    label: str
    identity: dict[str, Any]
    key_a: str
    key_b: str
    n_calls: tuple[int, int] | None = None  # timed calls in A and B
    metrics: list[MetricChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    a: RunRef
    b: RunRef
    threshold: float
    cells: list[CellComparison]
    only_a: list[str]
    only_b: list[str]
    failed: list[str]
    env_diff: list[tuple[str, str, str]]  # (what, A, B)
    notes: list[str] = field(default_factory=list)
    contended: list[str] = field(default_factory=list)  # cells left out: measured on a busy machine

    def flagged(self, verdict: str) -> list[tuple[str, str]]:
        return [(c.label, m.metric) for c in self.cells for m in c.metrics if m.verdict == verdict]

    @property
    def regressions(self) -> list[tuple[str, str]]:
        return self.flagged(REGRESSION)

    def summary(self) -> str:
        return (f"B vs A: {len(self.regressions)} regression(s), {len(self.flagged(IMPROVEMENT))} improvement(s) "
                f"beyond {100 * self.threshold:g}% in {len(self.cells)} matched cell(s); {len(self.only_a)} only in A, "
                f"{len(self.only_b)} only in B, {len(self.failed)} failed"
                + (f", {len(self.contended)} contended (not compared)" if self.contended else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"a": {"store": str(self.a.store), "run_id": self.a.run_id},
                "b": {"store": str(self.b.store), "run_id": self.b.run_id},
                "threshold": self.threshold, "summary": self.summary(),
                "cells": [asdict(c) for c in self.cells], "only_in_a": self.only_a, "only_in_b": self.only_b,
                "failed": self.failed, "contended": self.contended, "environment_differences": [list(d) for d in self.env_diff],
                "notes": self.notes, "methods": METHODS}


METHODS = [
    "latency: median of the raw per-call wall times; change = B/A - 1; 95% CI: percentile bootstrap "
    f"({BOOTSTRAP_RESAMPLES} resamples, each run resampled on its own) of the ratio; p: two-sided Mann–Whitney U",
    "throughput, RTFx: batch (audio) / mean latency; CI: the same bootstrap on the ratio of mean latencies",
    "WER, CER: corpus-level after Whisper English normalisation; change = B - A in points; 95% CI: paired bootstrap "
    "over clips (both runs scored on the same resample); threshold relative to A's WER",
    "peak RSS, energy: one value per cell, shown as a plain change and 'not tested'",
    "dataset cells (asrperf eval): RTFx = Σ audio s / Σ batch s, on the same batch plan CI by the same bootstrap "
    "over the batch seconds; wall RTFx a plain change; WER/CER paired over the utterances",
    "server cells: max sustainable rate (ratio, range from the searches' brackets), p99 and goodput at the highest "
    "offered rate both probed within 10% (bootstrap ratio of p99s; Newcombe interval), WER of the served transcripts "
    "(paired); see report/serving_compare.py",
    "verdict: regression/improvement only when the CI excludes no change and the change exceeds the threshold; "
    "'within threshold': CI excludes no change but the change is smaller; 'within noise': CI includes no change",
]


def resolve(spec: str, side: str, default_store: Path) -> RunRef:
    """A store path (its latest run), PATH:RUN_ID, or a run id in `default_store`."""
    path, sep, rid = spec.rpartition(":")
    if sep and path and Path(path).is_file():
        return RunRef(spec, side, Path(path), _known_run(Path(path), rid, side, spec))
    if sep and path and (Path(path).suffix in (".sqlite", ".db", ".sqlite3") or "/" in path):
        raise ConfigError(f"{side} '{spec}': no results store at {path}")
    if Path(spec).is_file():
        runs = _run_ids(Path(spec), side, spec)
        if not runs:
            raise ConfigError(f"{side} '{spec}': the store holds no runs yet")
        return RunRef(spec, side, Path(spec), runs[-1])
    if Path(spec).suffix in (".sqlite", ".db", ".sqlite3") or "/" in spec:
        raise ConfigError(f"{side} '{spec}': no results store at {spec}")
    if not Path(default_store).is_file():
        raise ConfigError(f"{side} '{spec}': not a store file or PATH:RUN_ID, and no store at {default_store} to look "
                          "the run id up in; pass --store")
    return RunRef(spec, side, Path(default_store), _known_run(Path(default_store), spec, side, spec))


def _run_ids(path: Path, side: str, spec: str) -> list[str]:
    from asrperf.results.store import Store

    try:
        with Store.open_readonly(path) as store:  # never changes the store; works on read-only media
            return [r["run_id"] for r in store.runs()]
    except StoreError as exc:
        raise ConfigError(f"{side} '{spec}': {exc}") from None
    except sqlite3.Error as exc:
        raise ConfigError(f"{side} '{spec}': {path} is not an asrperf results store ({exc})") from None


def _known_run(path: Path, run_id: str, side: str, spec: str) -> str:
    runs = _run_ids(path, side, spec)
    if run_id not in runs:
        raise ConfigError(f"{side} '{spec}': no run '{run_id}' in {path}; runs: {', '.join(runs) or 'none'}")
    return run_id


def _load(ref: RunRef) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[float]]]:
    from asrperf.results.store import Store

    with Store.open_readonly(ref.store) as store:
        env = next(r["env"] for r in store.runs() if r["run_id"] == ref.run_id)
        rows = store.rows(ref.run_id)
        samples = {r["cell_key"]: store.samples(ref.run_id, r["cell_key"]) for r in rows}
    from asrperf.load.cell import fold_load_run

    rows = fold_load_run(rows)  # an `asrperf load` run: one cell per plan, its probes inside
    return env, rows, {**samples, **{r["cell_key"]: [] for r in rows if r["cell_key"] not in samples}}


def identity(row: dict[str, Any]) -> tuple:
    """The cell's IDENTITY values; nested ones (a variant given as a table) as canonical JSON."""
    values = [row.get(k) for k in IDENTITY]
    return tuple(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for v in values)


def _length(row: dict[str, Any]) -> str:
    """The clip length; an `asrperf eval` row has whole utterances of a source instead."""
    if row.get("clip_length_s") is None:
        return f"whole utterances of {row.get('dataset_source_key') or MISSING}"
    return f"{row['clip_length_s']:g} s"


def label(row: dict[str, Any]) -> str:
    variant = f" {row['variant']}" if row.get("variant") not in (None, "", "none") else ""
    batch = "searched" if row.get("scenario") == "max_throughput" else row.get("batch_size")
    return (f"{row['model']} ({row['engine']}, {row['dtype']}, {row.get('weights', row.get('weights_requested'))}"
            f"{variant}) {row['device']} t{row['threads']} {_length(row)} b{batch} {row['scenario']}"
            + (f" {row['chunk_ms']} ms chunks" if row.get("chunk_ms") else "")
            + (f" [{row['server_setup']}]" if row.get("server_setup") else ""))


def verdict(change: float, ci: tuple[float, float], null: float, exceeds: bool, higher_is_worse: bool) -> str:
    """The one rule: a direction only when the CI excludes `null` and the change exceeds the threshold."""
    lo, hi = ci
    if change == null and lo == null and hi == null:
        return "no change"
    up, down = lo > null and change > null, hi < null and change < null
    if not (up or down):
        return "within noise"
    if not exceeds:
        return "within threshold"
    return REGRESSION if up == higher_is_worse else IMPROVEMENT


def _speed(ra: dict, rb: dict, sa: list[float], sb: list[float], threshold: float,
           notes: list[str]) -> list[MetricChange]:
    if not sa or not sb:
        side = "A" if not sa else "B"
        return [MetricChange("latency p50", "s", ra.get("latency_s_p50"), rb.get("latency_s_p50"), "ratio", None, None,
                             None, f"missing: no raw timed samples in {side}", "")]
    lat = ratio_of_medians_ci(sa, sb)
    out = [MetricChange("latency p50", "s", lat.stat_a, lat.stat_b, "ratio", lat.ratio, (lat.ci_low, lat.ci_high),
                        lat.p_value, verdict(lat.ratio, (lat.ci_low, lat.ci_high), 1.0, abs(lat.ratio - 1) > threshold,
                                             True), f"median of {lat.n_a} vs {lat.n_b} timed calls")]
    mean = ratio_of_means_ci(sa, sb)
    # throughput = batch / mean latency and RTFx = audio per call / mean latency (measure.stats):
    # at a fixed batch and clip length both change by mean(A)/mean(B)
    ratio, ci = 1 / mean.ratio, (1 / mean.ci_high, 1 / mean.ci_low)
    v = verdict(ratio, ci, 1.0, abs(ratio - 1) > threshold, False)
    for key, name, unit in (("throughput_samples_per_s", "throughput", "samples/s"), ("rtfx", "RTFx", "x")):
        out.append(MetricChange(name, unit, ra.get(key), rb.get(key), "ratio", ratio, ci, mean.p_value, v,
                                f"1 / mean of {mean.n_a} vs {mean.n_b} timed calls"))
    if min(lat.n_a, lat.n_b) < FEW_CALLS and any(m.verdict in (REGRESSION, IMPROVEMENT) for m in out):
        notes.append(f"speed verdict rests on only {lat.n_a} vs {lat.n_b} timed calls, where bootstrap CIs are too "
                     f"narrow; Mann–Whitney p = {lat.p_value:.2g}")
    return out


def _transcripts(row: dict) -> dict[str, tuple[str, str]] | None:
    t = row.get("transcripts")
    return {x["clip"]: (x.get("ref") or "", x.get("hyp") or "") for x in t} if t else None


def _accuracy(ra: dict, rb: dict, threshold: float, notes: list[str]) -> list[MetricChange]:
    ta, tb = _transcripts(ra), _transcripts(rb)
    if ta is None or tb is None:
        r = ra if ta is None else rb
        why = r.get("wer_missing_reason") or "no transcripts stored"
        return [MetricChange("WER", "fraction", ra.get("wer"), rb.get("wer"), "delta", None, None, None,
                             f"missing: {'A' if ta is None else 'B'}: {why}", "")]
    d: WerDelta = transcripts_delta(ra["transcripts"], rb["transcripts"])
    if d.paired:
        how = f"paired over {d.n_utts} clips: {d.n_worse} worse, {d.n_better} better"
    else:
        shared = len(set(ta) & set(tb))
        how = f"UNPAIRED: the clips differ (A {len(ta)}, B {len(tb)}, {shared} with the same id and text)"
        notes.append(f"WER/CER compared unpaired: the runs scored different clips ({how.split(': ', 1)[1]})")
    out = []
    for name, base, var, delta, ci in (("WER", d.wer_base, d.wer_variant, d.delta, (d.ci_low, d.ci_high)),
                                       ("CER", d.cer_base, d.cer_variant, d.cer_delta, (d.cer_ci_low, d.cer_ci_high))):
        # the threshold is relative to A's rate: 5% of a 14% WER is 0.7 points
        exceeds = abs(delta) > threshold * base if base > 0 else delta != 0
        out.append(MetricChange(name, "fraction", base, var, "delta", delta, ci, None,
                                verdict(delta, ci, 0.0, exceeds, True), how))
    return out


def _plain(ra: dict, rb: dict, key: str, name: str, unit: str, method: Callable[[dict], str],
           missing: Callable[[dict], str]) -> MetricChange:
    a, b = ra.get(key), rb.get(key)
    if a is None or b is None:
        side, r = ("A", ra) if a is None else ("B", rb)
        return MetricChange(name, unit, a, b, "ratio", None, None, None, f"missing: {side}: {missing(r)}", "")
    return MetricChange(name, unit, a, b, "ratio", b / a if a else None, None, None, NOT_TESTED,
                        f"A {method(ra)}, B {method(rb)}")


def _energy_how(r: dict) -> str:
    return "measured" if r.get("energy_measured") else "ESTIMATED"


def _energy_notes(side: str, rows: list[dict]) -> list[str]:
    methods = sorted({str(r.get("energy_method")) for r in rows if r.get("energy_j_per_sample") is not None})
    return [f"energy in {side}: {m}" for m in methods]


def compare_cells(ra: dict, rb: dict, sa: list[float], sb: list[float], threshold: float) -> CellComparison:
    """All metric changes of one matched pair of ok cells."""
    cell = CellComparison(label(ra), dict(zip(IDENTITY, identity(ra))), ra["cell_key"], rb["cell_key"])
    if ra.get("scenario") == "max_throughput":
        cell.metrics.append(_plain(ra, rb, "max_throughput_samples_per_s", "max throughput", "samples/s",
                                   lambda r: f"best at b{r.get('max_throughput_batch_size')} "
                                             f"(stop: {r.get('max_throughput_stop_reason')})",
                                   lambda r: f"no batch succeeded ({r.get('max_throughput_stop_reason')})"))
    elif ra.get("scenario") == "streaming":  # no timed calls: the stream's own figures, and the streamed WER
        for key, name, unit in (("finalization_s_p90", "finalization p90", "s"),
                                ("deadline_miss_share", "chunks past deadline", "fraction"),
                                ("capacity_streams", "max real-time streams", "streams")):
            cell.metrics.append(_plain(ra, rb, key, name, unit, lambda r: f"{r.get('stream_clock')} clock",
                                       lambda r: r.get("finalization_missing_reason") or r.get("capacity_missing_reason")
                                       or "not recorded"))
        cell.metrics += _accuracy(ra, rb, threshold, cell.notes)
    elif ra.get("scenario") == "dataset":  # one call per planned batch: RTFx from the batch seconds, corpus WER
        from asrperf.report.dataset_compare import dataset_metrics

        cell.metrics += dataset_metrics(ra, rb, sa, sb, threshold, cell.notes)
        cell.metrics += _accuracy(ra, rb, threshold, cell.notes)
    elif ra.get("scenario") == "server":  # load probes inside the cell: rate, p99 and goodput, served WER
        from asrperf.report.serving_compare import server_metrics

        cell.metrics += server_metrics(ra, rb, threshold, cell.notes)
        if ra.get("transcripts") or rb.get("transcripts"):
            cell.metrics += _accuracy(ra, rb, threshold, cell.notes)
    else:
        cell.metrics += _speed(ra, rb, sa, sb, threshold, cell.notes)
        cell.n_calls = (len(sa), len(sb)) if sa and sb else None
        cell.metrics += _accuracy(ra, rb, threshold, cell.notes)
        cell.metrics.append(_plain(ra, rb, "energy_j_per_sample", "energy J/sample", "J", _energy_how,
                                   lambda r: r.get("energy_missing_reason") or "not recorded"))
    cell.metrics.append(_plain(ra, rb, "peak_rss_bytes", "peak RSS", "bytes", lambda r: "process",
                               lambda r: "not recorded"))
    if ra.get("cuda_peak_allocated_bytes") is not None or rb.get("cuda_peak_allocated_bytes") is not None:
        cell.metrics.append(_plain(ra, rb, "cuda_peak_allocated_bytes", "CUDA peak allocated", "bytes",
                                   lambda r: "torch", lambda r: "not recorded"))
    for key, what in (("weights", "weights resolved"), ("decoding", "decoding settings"),
                      ("engine_version", "engine version"), ("longform", "long-form decoding")):
        if ra.get(key) != rb.get(key):
            cell.notes.append(f"{what} differ: A {ra.get(key)}, B {rb.get(key)}")
    return cell


def _near_miss(ident: tuple, others: list[tuple]) -> str:
    """For an unmatched cell: the other run's cell that differs in one field, and how."""
    for other in others:
        diff = [i for i, (x, y) in enumerate(zip(ident, other)) if x != y]
        if len(diff) == 1:
            i = diff[0]
            return f" (the other run has it with {IDENTITY[i]}={other[i]} instead of {ident[i]})"
    return ""


def env_differences(env_a: dict[str, Any], env_b: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, A, B) for each machine fact or package version that differs between the runs."""
    out = [(k, str(env_a.get(k)), str(env_b.get(k))) for k in ENV_KEYS if env_a.get(k) != env_b.get(k)]
    pa, pb = env_a.get("packages", {}), env_b.get("packages", {})
    out += [(k, str(pa.get(k)), str(pb.get(k))) for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return out


def _by_identity(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if (twin := out.get(identity(r))) is not None:  # e.g. two config entries differing only in label
            raise ConfigError(f"run {r['run_id']}: cells {twin['cell_key']} and {r['cell_key']} measure the same "
                              "thing; compare cannot pair them (give the models distinct names)")
        out[identity(r)] = r
    return out


def compare(a_spec: str, b_spec: str, store: Path, threshold: float = 0.05,
            allow_contended: bool = False) -> Comparison:
    """Compare run B against run A (the baseline); see the module docstring for the rules.

    A pair in which either cell was measured on a busy machine (`contended`, measure/contention.py)
    is listed, not compared, unless `allow_contended`."""
    if not 0 <= threshold < 1:
        raise ConfigError(f"--threshold: {threshold} is not a fraction in [0, 1) (0.05 = 5%)")
    ref_a, ref_b = resolve(a_spec, "A", store), resolve(b_spec, "B", store)
    env_a, rows_a, samples_a = _load(ref_a)
    env_b, rows_b, samples_b = _load(ref_b)
    by_a, by_b = _by_identity(rows_a), _by_identity(rows_b)
    cells, failed = [], []
    for side, by in (("A", by_a), ("B", by_b)):
        failed += [f"{side}: {label(r)}: {r.get('error')}" for r in by.values() if r["status"] != "ok"]
    contended = []
    for ident, ra in by_a.items():
        rb = by_b.get(ident)
        if rb is not None and ra["status"] == "ok" and rb["status"] == "ok":
            busy = [(side, r) for side, r in (("A", ra), ("B", rb)) if r.get("contended") is True]
            if busy and not allow_contended:
                contended += [f"{side}: {label(r)}: {contention_note(r)}" for side, r in busy]
                continue
            cells.append(compare_cells(ra, rb, samples_a[ra["cell_key"]], samples_b[rb["cell_key"]], threshold))
            cells[-1].notes += [f"{side} was contended: {contention_note(r)}" for side, r in busy]
    lone_a, lone_b = [i for i in by_a if i not in by_b], [i for i in by_b if i not in by_a]
    only_a = [label(by_a[i]) + _near_miss(i, lone_b) for i in lone_a]
    only_b = [label(by_b[i]) + _near_miss(i, lone_a) for i in lone_b]
    notes = _energy_notes("A", rows_a) + _energy_notes("B", rows_b)
    few = [c for c in cells if c.n_calls and min(c.n_calls) < FEW_CALLS]
    if few:
        notes.append(f"{len(few)} cell(s) have fewer than {FEW_CALLS} timed calls in A or B (fewest: "
                     f"{min(min(c.n_calls) for c in few)}): their CIs are approximate; raise timing.min_calls")
    if contended:
        notes.append(f"{len(contended)} contended cell(s) not compared (--allow-contended compares them)")
    return Comparison(ref_a, ref_b, threshold, cells, only_a, only_b, failed, env_differences(env_a, env_b), notes,
                      contended)


# ---- rendering ----

def _value(m: MetricChange, x: float | None) -> str:
    if x is None:
        return MISSING
    if m.unit == "s":
        return f"{1000 * x:,.1f} ms"
    if m.unit == "fraction":
        return f"{100 * x:.2f}%"
    if m.unit == "bytes":
        return f"{x / 2**20:,.0f} MiB"
    return f"{x:,.3g} J" if m.unit == "J" else f"{x:,.2f}"


def _change(m: MetricChange, x: float | None) -> str:
    if x is None:
        return MISSING
    return f"{100 * x:+.2f} pts" if m.kind == "delta" else f"{100 * (x - 1):+.1f}%"


def rows(cmp: Comparison) -> list[list[str]]:
    """Display rows: cell, metric, A, B, change, 95% CI, p, verdict, how."""
    out = []
    for c in cmp.cells:
        for i, m in enumerate(c.metrics):
            ci = f"[{_change(m, m.ci[0])}, {_change(m, m.ci[1])}]" if m.ci else MISSING
            p = f"{m.p_value:.2g}" if m.p_value is not None else MISSING
            out.append([c.label if i == 0 else "", m.metric, _value(m, m.a), _value(m, m.b), _change(m, m.change),
                        ci, p, m.verdict, m.method])
    return out


HEADER = ["cell", "metric", "A", "B", "change B vs A", "95% CI", "p", "verdict", "how"]


def _text_lines(cmp: Comparison) -> list[str]:
    lines = [f"A: run {cmp.a.run_id} in {cmp.a.store}", f"B: run {cmp.b.run_id} in {cmp.b.store}"]
    lines += [f"note: {c.label}: {n}" for c in cmp.cells for n in c.notes] + cmp.notes
    lines += [f"only in A: {x}" for x in cmp.only_a] + [f"only in B: {x}" for x in cmp.only_b]
    lines += [f"failed (not compared): {x}" for x in cmp.failed]
    lines += [f"contended (not compared): {x}" for x in cmp.contended]
    if cmp.env_diff:
        lines.append("environment differs (speed may differ for this reason alone):")
        lines += [f"  {k}: A {a} | B {b}" for k, a, b in cmp.env_diff]
    return lines + [f"method: {m}" for m in METHODS] + [cmp.summary()]


def render_rich(cmp: Comparison):
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(title=escape(f"B ({cmp.b.run_id}) vs A ({cmp.a.run_id}), threshold {100 * cmp.threshold:g}%"),
              title_justify="left")
    for h in HEADER:
        t.add_column(h, overflow="fold")
    style = {REGRESSION: "bold red", IMPROVEMENT: "bold green"}
    for r in rows(cmp):
        t.add_row(*(escape(x) for x in r[:-2]), Text(r[-2], style=style.get(r[-2], "")), escape(r[-1]))
    return Group(t, *(Text(line, style="dim" if line.startswith("method") else "") for line in _text_lines(cmp)))


def to_markdown(cmp: Comparison) -> str:
    lines = [f"**B ({cmp.b.run_id}) vs A ({cmp.a.run_id}), threshold {100 * cmp.threshold:g}%**", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(md_escape(x) for x in r) + " |" for r in rows(cmp)]
    return "\n".join(lines + [""] + [f"- {md_escape(line, cell=False)}" for line in _text_lines(cmp)]) + "\n"


def to_csv(cmp: Comparison) -> str:
    """The comparison table as CSV, one row per cell and metric (the cell named on every row)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(HEADER)
    cell = ""
    for r in rows(cmp):
        cell = r[0] or cell
        writer.writerow([cell, *r[1:]])
    return buf.getvalue()


def to_json(cmp: Comparison) -> str:
    return json.dumps(cmp.to_dict(), indent=1)
