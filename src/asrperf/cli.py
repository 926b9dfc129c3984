"""The one CLI: `asrperf run | prepare | eval | report | compare | profile | optimize | doctor`.

It reaches engines and scenarios only through run/, and the results through report/ and results/.
Nothing imports this module.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages hold "asrperf[ct2]"-style extras that rich would eat as markup

from asrperf.config import RunConfig, config_from_dict, default_config_dict, default_dtype, load_config
from asrperf.errors import AsrperfError, ConfigError
from asrperf.run.source_flags import FOLDER_OPTION, HF_CONFIG_OPTION, HF_DATASET_OPTION, MANIFEST_OPTION, source_table

app = typer.Typer(add_completion=False, no_args_is_help=False,
                  help="Benchmark and profile ASR models: measured latency, throughput, RTFx, memory and WER.",
                  context_settings={"help_option_names": ["-h", "--help"]})
WAIT_QUIET_DEFAULT_S = 600.0  # `run --wait-quiet` without SECONDS: wait at most 10 minutes per cell
# tables and status lines follow the terminal (or $COLUMNS); piped to a file without COLUMNS, they are
# not wrapped at 80 columns
console = (Console(stderr=True) if Console(stderr=True).is_terminal or os.environ.get("COLUMNS")
           else Console(stderr=True, width=200))
out = Console() if Console().is_terminal or os.environ.get("COLUMNS") else Console(width=200)


def _floats(text: str | None, key: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{key}: '{text}' is not a comma-separated list of numbers") from None


def _ints(text: str | None, key: str) -> tuple[int, ...] | None:
    """A comma-separated list of whole numbers: "1.5" is refused, never rounded."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{key}: '{text}' is not a comma-separated list of whole numbers") from None


def _build_config(
    config: Optional[Path], models: list[str], lengths: str | None, batch: str | None, device: list[str],
    threads: str | None, n_clips: int | None, store: Path | None, cache_dir: Path | None, isolate: bool | None,
    timeout: float | None, manifest: Path | None, folder: Path | None, hf_dataset: str | None,
    hf_config: str | None, split: str | None, weights: str | None, dtype: str | None,
    quant: str | None = None, attn: str | None = None, compile_: bool | None = None, longform: str | None = None,
    scenario: list[str] | None = None, chunk_ms: str | None = None, engines: list[str] | None = None,
    executor: str | None = None, ray_address: str | None = None,
) -> RunConfig:
    base = load_config(config) if config else config_from_dict(default_config_dict(), "embedded default")
    changes: dict = {}
    if models:
        changes["models"] = tuple(dataclasses.replace(base.models[0], name=m, label="", weights="auto") for m in models)
    per_model = {k: v for k, v in (("weights", weights), ("dtype", dtype), ("quant", quant), ("attn", attn),
                                   ("compile", compile_), ("longform", longform)) if v is not None}
    if engines:  # the same checkpoints through several engines, side by side (before validation: --dtype int8 -e ct2)
        changes["models"] = tuple(dataclasses.replace(m, engine=e, dtype=default_dtype(e)) for e in engines
                                  for m in changes.get("models", base.models))
    if per_model:
        changes["models"] = tuple(dataclasses.replace(m, **per_model) for m in changes.get("models", base.models))
    for key, value in (("clip_lengths_s", _floats(lengths, "lengths")),
                       ("batch_sizes", _ints(batch, "batch") or None),
                       ("threads", _ints(threads, "threads") or None),
                       ("devices", tuple(device) or None), ("n_clips", n_clips), ("isolate", isolate),
                       ("scenarios", tuple(x.strip() for s in scenario or () for x in s.split(",") if x.strip()) or None),
                       ("chunk_ms", _ints(chunk_ms, "chunk-ms") or None),
                       ("cell_timeout_s", timeout), ("store", str(store) if store else None),
                       ("cache_dir", str(cache_dir) if cache_dir else None),
                       ("executor", executor), ("ray_address", ray_address)):
        if value is not None:
            changes[key] = value
    source = source_table(manifest, folder, hf_dataset, hf_config, split, "validation")
    if source:
        changes["source"] = source
    return dataclasses.replace(base, **changes).validate()


_CONFIG_ARG = typer.Argument(None, help="TOML run description; flags override it. Default: the embedded default run.")


@app.command()
def run(
    config: Optional[Path] = _CONFIG_ARG,
    model: list[str] = typer.Option([], "--model", "-m", help="Catalog name, Hub id or local checkpoint dir (repeatable)."),
    engine: list[str] = typer.Option([], "--engine", "-e", help="transformers | ct2 | ort | nemo | whispercpp | openai-whisper (repeatable: every model through each)."),
    lengths: Optional[str] = typer.Option(None, help="Clip lengths in seconds, e.g. 5,15,30,60."),
    batch: Optional[str] = typer.Option(None, help="Batch sizes, e.g. 1,4,16."),
    device: list[str] = typer.Option([], help="cpu, cuda or cuda:N (repeatable)."),
    threads: Optional[str] = typer.Option(None, help="CPU threads per cell, e.g. 1,2 (0 = all cores)."),
    n_clips: Optional[int] = typer.Option(None, help="Clips per length."),
    weights: Optional[str] = typer.Option(None, help="auto | real | random, for every model."),
    dtype: Optional[str] = typer.Option(None, help="fp32 | fp16 | bf16 (engines transformers, ct2); int8 | int8_float32 | int8_float16 | int8_bfloat16 (engine ct2); fp32 | int8 (engine ort); fp32 (engine nemo); fp16 (default) | q8_0 | q5_1 | q5_0 (engine whispercpp)."),
    quant: Optional[str] = typer.Option(None, help="none | int8_dynamic | int8_weight_only, for every model (engine transformers)."),
    attn: Optional[str] = typer.Option(None, help="sdpa | eager | flash_attention_2 (CUDA, fp16/bf16), for every model (engine transformers)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile every model; Whisper decodes with a static KV cache (engine transformers)."),
    longform: Optional[str] = typer.Option(None, help="sequential | batched: Whisper clips over 30 s one window after another (OpenAI), or cut at pauses into windows decoded together (engines transformers, ct2)."),
    scenario: list[str] = typer.Option([], "--scenario", "-s", help="latency | max_throughput | profile | decode | streaming | server (repeatable or comma-separated; default latency)."),
    chunk_ms: Optional[str] = typer.Option(None, "--chunk-ms", help="Streaming chunk sizes in ms, e.g. 500,1000 (scenario streaming)."),
    manifest: Optional[Path] = MANIFEST_OPTION,
    folder: Optional[Path] = FOLDER_OPTION,
    hf_dataset: Optional[str] = HF_DATASET_OPTION,
    hf_config: Optional[str] = HF_CONFIG_OPTION,
    split: Optional[str] = typer.Option(None, help="Dataset split (default validation)."),
    store: Optional[Path] = typer.Option(None, help="Results database (SQLite)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where corpora, clips and converted weights are cached."),
    isolate: Optional[bool] = typer.Option(None, "--isolate/--no-isolate", help="One process per cell (default on)."),
    timeout: Optional[float] = typer.Option(None, help="Per-cell timeout in seconds."),
    executor: Optional[str] = typer.Option(None, help="local (one process per cell on this machine, the default) | ray (one Ray task per cell on a cluster)."),
    ray_address: Optional[str] = typer.Option(None, help="Executor ray: '' starts a Ray for the run (default), 'auto' or HOST:PORT joins a running cluster; implies --executor ray."),
    retry_failed: bool = typer.Option(False, help="Re-run cells that failed in an earlier attempt of this run."),
    wait_quiet: Optional[float] = typer.Option(
        None, "--wait-quiet", metavar="[SECONDS]",
        help=f"Before each cell, wait until other processes leave its cores (and GPU) free, at most SECONDS "
             f"(default {WAIT_QUIET_DEFAULT_S:g}); then measure anyway, flagged if contended."),
    allow_contended: bool = typer.Option(False, help="Let rows measured on a busy machine into the recommendations."),
) -> None:
    """Benchmark: prepare clips, measure every cell, store the rows, print the table."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from asrperf.run.runner import check
    from asrperf.run.runner import run as run_cells

    cfg = _build_config(config, model, lengths, batch, device, threads, n_clips, store, cache_dir, isolate,
                        timeout, manifest, folder, hf_dataset, hf_config, split, weights, dtype,
                        quant=quant, attn=attn, compile_=compile_, longform=longform, scenario=scenario,
                        chunk_ms=chunk_ms, engines=engine,
                        executor=executor or ("ray" if ray_address is not None else None), ray_address=ray_address)
    check(cfg)
    if wait_quiet is not None and wait_quiet < 0:
        raise ConfigError(f"--wait-quiet: {wait_quiet:g} must be >= 0 seconds")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        prep = progress.add_task("preparing clips", total=None)
        cells_task = progress.add_task("cells", total=None, visible=False)

        def on_prepare(what: str, done: int, total: int) -> None:
            progress.update(prep, description=what, completed=done, total=total)

        finished: set[int] = set()
        node_tasks: dict = {}

        def on_node(node: str, running: int, done: int) -> None:  # one line per node (executor ray)
            if cfg.executor == "local":
                return
            if node not in node_tasks:
                node_tasks[node] = progress.add_task("", total=None)
            total = progress.tasks[cells_task].total  # the node's done cells out of the sweep's
            progress.update(node_tasks[node], description=escape(f"  node {node}: {running} running"), completed=done,
                            total=total)

        started: dict[int, float] = {}

        def on_cell(cell, state: str, i: int, n: int) -> None:
            progress.update(prep, visible=False)
            chunk = f" {cell.chunk_ms} ms chunks" if cell.chunk_ms else ""
            label = f"{cell.model.display} {cell.clip_length_s:g} s b{cell.batch_size}{chunk} {cell.device}"
            if state.startswith(("ok", "failed", "skipped")):
                finished.add(i)
            progress.update(cells_task, visible=True, total=n, completed=len(finished),
                            description=escape(f"{label}: {state}"[:100]))
            if not console.is_terminal:  # no progress bar off a terminal: one plain line per state change
                now = time.monotonic()
                took = f" after {now - started[i]:.1f} s" if i in started and i in finished else ""
                started.setdefault(i, now)
                console.print(f"{time.strftime('%H:%M:%S')} cell {len(finished)}/{n} done; {label}: {state}{took}",
                              markup=False, highlight=False, soft_wrap=True)
            elif state.startswith("failed"):
                console.print(f"[red]{escape(label)}: {escape(state)}[/red]")
            elif state.startswith(("not quiet", "taking over")):
                console.print(f"[yellow]{escape(label)}: {escape(state)}[/yellow]")

        try:
            summary = run_cells(cfg, retry_failed=retry_failed, on_cell=on_cell, on_prepare=on_prepare,
                                wait_quiet_s=wait_quiet, on_node=on_node)
        except AsrperfError:  # the error is the one line to show: no half-filled progress bars above it
            for task in progress.task_ids:
                progress.update(task, visible=False)
            raise
    console.print(f"run {summary.run_id}: {summary.ran} cell(s) measured, {summary.skipped} already done, "
                  f"{summary.failed} failed; results in {summary.store}")
    if cfg.executor != "local" and summary.cells_per_node:
        console.print("cells per node: " + ", ".join(f"{k}: {v}" for k, v in summary.cells_per_node.items()),
                      markup=False, highlight=False)
    if summary.skipped_failed:
        console.print(f"[red]{summary.skipped_failed} cell(s) are stored as failed (by an earlier attempt or another "
                      "run on this store) and were not re-run[/red]; --retry-failed re-runs them", soft_wrap=True)
    _print_report(summary.store, summary.run_id, "table", allow_contended=allow_contended)
    if summary.failed or summary.skipped_failed:
        raise typer.Exit(3)


@app.command()
def prepare(
    config: Optional[Path] = _CONFIG_ARG,
    lengths: Optional[str] = typer.Option(None, help="Clip lengths in seconds."),
    n_clips: Optional[int] = typer.Option(None, help="Clips per length."),
    manifest: Optional[Path] = typer.Option(None), folder: Optional[Path] = typer.Option(None),
    hf_dataset: Optional[str] = typer.Option(None), hf_config: Optional[str] = typer.Option(None),
    split: Optional[str] = typer.Option(None), cache_dir: Optional[Path] = typer.Option(None),
) -> None:
    """Build and cache the exact-length clips (done by `run` too)."""
    from asrperf.run.runner import prepare as prepare_clips

    cfg = _build_config(config, [], lengths, None, [], None, n_clips, None, cache_dir, None, None, manifest, folder,
                        hf_dataset, hf_config, split, None, None)
    with console.status("preparing clips") as status:
        keys = prepare_clips(cfg, lambda what, d, t: status.update(f"{what} {d}/{t}"))
    for length, key in keys.items():
        out.print(f"{length:g} s: {cfg.n_clips} clip(s) in {Path(cfg.cache_dir) / 'clips' / key}")


def _print_report(store_path: Path, run_id: str | None, fmt: str, output: Path | None = None,
                  thresholds: Path | None = None, html: Path | None = None, plots_dir: Path | None = None,
                  scenarios: tuple[str, ...] = (), allow_contended: bool = False) -> None:
    """The report of one run (or every run): tables, recommendations, environment; `scenarios`
    limits the tables to those scenarios' sections (the profile command shows only its own)."""
    from asrperf.report.recommend import Thresholds, load_thresholds, recommend, recommendations_table
    from asrperf.report.profile_tables import profile_tables
    from asrperf.report.serving_tables import serving_tables
    from asrperf.report.streaming_tables import streaming_tables
    from asrperf.report.tables import environment_lines, md_escape, render_rich, study_tables, to_markdown
    from asrperf.results.store import Store, export_rows

    limits = load_thresholds(thresholds) if thresholds else Thresholds()

    with Store.open_readonly(store_path) as store:  # never changes the store; works on read-only media
        runs = store.runs()
        if not runs:
            raise ConfigError(f"{store_path} holds no runs yet; run `asrperf run` first")
        rid = run_id or runs[-1]["run_id"]
        if run_id != "all" and rid not in {r["run_id"] for r in runs}:
            raise ConfigError(f"run '{rid}' is not in {store_path}; runs: {', '.join(r['run_id'] for r in runs)}")
        rows = store.rows(None if run_id == "all" else rid)
        envs = [(r["run_id"], r["env"]) for r in runs if run_id == "all" or r["run_id"] == rid]
    if html or plots_dir:
        _write_html(rows, [r for r in runs if run_id == "all" or r["run_id"] == rid], html, plots_dir, limits,
                    allow_contended)
        return
    if fmt in ("csv", "json"):
        path = output or Path(f"asrperf-{rid}.{fmt}")
        export_rows(rows, path)
        console.print(f"wrote {len(rows)} row(s) to {path}")
        return
    if scenarios:
        failed = [r for r in rows if r.get("status") != "ok"]
        for r in failed:
            console.print(f"[red]{escape(str(r.get('cell_key')))}: failed: {escape(str(r.get('error')))}[/red]")
        tables = profile_tables(rows)
        for r in rows:
            if r.get("trace_path"):
                console.print(f"trace (open in chrome://tracing or Perfetto): {escape(r['trace_path'])}")
    else:
        from asrperf.report.dataset_tables import dataset_tables, is_whole_utterance

        clip_rows = [r for r in rows if not is_whole_utterance(r)]  # `asrperf eval` rows: the dataset table only
        recs = recommend(clip_rows, limits, allow_contended=allow_contended)
        tables = (study_tables(clip_rows) + profile_tables(clip_rows) + streaming_tables(clip_rows)
                  + serving_tables(clip_rows) + dataset_tables(rows) + [recommendations_table(recs)])
    env_text = [line for r, e in envs for line in environment_lines(e, r)]
    if fmt == "markdown":
        md_tables = tables if scenarios else tables[-1:] + tables[:-1]  # the recommendations first
        text = to_markdown(md_tables) + "\n" + "\n".join(f"- {md_escape(line.strip(), cell=False)}" for line in env_text) + "\n"
        if output:
            output.write_text(text)
        else:
            out.print(text, markup=False, highlight=False, soft_wrap=True)  # markdown rows must stay one line
        return
    if not scenarios:  # the answer first: what ran, the recommendations, what was not measured
        from asrperf.report.summary import render_answer_rich
        from asrperf.run.coverage import engine_offers

        out.print(render_answer_rich(clip_rows, [r for r in runs if run_id == "all" or r["run_id"] == rid], recs,
                                     engine_offers(clip_rows), allow_contended))
        out.print()
    out.print(render_rich(tables))
    for line in env_text:
        out.print(line, style="dim", markup=False, highlight=False)


@app.command()
def report(
    store: Path = typer.Option(Path("asrperf-results/results.sqlite"), help="Results database."),
    run_id: Optional[str] = typer.Option(None, "--run", help="Run id (default: the latest; 'all' for every run)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | csv | json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File for markdown/csv/json."),
    thresholds: Optional[Path] = typer.Option(None, help="TOML file with a recommend table: wer_bound, realtime_clip_s, ... (see asrperf.report.recommend)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write one self-contained HTML page (tables, plots)."),
    plots_dir: Optional[Path] = typer.Option(None, "--plots-dir",
                                             help="Write each plot as <name>.png here (with or without --html)."),
    allow_contended: bool = typer.Option(False, help="Let rows measured on a busy machine into the recommendations."),
) -> None:
    """Print the study-style tables and the recommendations (or export rows) from the results store."""
    if fmt not in ("table", "markdown", "csv", "json"):
        raise ConfigError(f"--format: '{fmt}' is not one of table, markdown, csv, json")
    _print_report(store, run_id, fmt, output, thresholds, html, plots_dir, allow_contended)


def _write_html(rows: list[dict], runs: list[dict], html: Path | None, plots_dir: Path | None,
                limits: object, allow_contended: bool = False) -> None:
    from asrperf.report.html import render_html
    from asrperf.report.plots import make_plots, write_pngs
    from asrperf.run.coverage import engine_offers

    from asrperf.report.dataset_tables import is_whole_utterance

    plots = make_plots([r for r in rows if not is_whole_utterance(r)])  # `asrperf eval` rows have no clip length
    for p in plots:
        if p.missing:
            console.print(f"plot {p.title}: {p.missing}", markup=False, highlight=False)
    if plots_dir:
        written = write_pngs(plots, plots_dir)
        console.print(f"wrote {len(written)} plot(s) to {plots_dir}", markup=False, highlight=False)
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(rows, runs, plots, thresholds=limits, allow_contended=allow_contended,
                                    engine_offers=engine_offers([r for r in rows if not is_whole_utterance(r)])),
                        encoding="utf-8")
        console.print(f"wrote {html} ({len(rows)} cell(s), {sum(p.png is not None for p in plots)} plot(s))",
                      markup=False, highlight=False)


@app.command()
def compare(
    a: str = typer.Argument(..., help="Baseline: a store file (its latest run), STORE:RUN_ID, or a run id in --store."),
    b: str = typer.Argument(..., help="Candidate, named the same ways."),
    store: Path = typer.Option(Path("asrperf-results/results.sqlite"), help="Store for bare run ids."),
    threshold: float = typer.Option(0.05, help="Smallest change that counts (0.05 = 5%; relative to A for WER)."),
    fail_on_regression: bool = typer.Option(True, "--fail-on-regression/--no-fail-on-regression",
                                            help="Exit 4 when a regression beyond the threshold is found."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | markdown | csv | json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File for markdown/csv/json."),
    allow_contended: bool = typer.Option(False, help="Compare cells measured on a busy machine too."),
) -> None:
    """Compare run B against run A cell by cell: changes with 95% CIs and a verdict per metric."""
    from asrperf.report.compare import compare as compare_runs
    from asrperf.report.compare import render_rich, to_csv, to_json, to_markdown

    writers = {"markdown": to_markdown, "csv": to_csv, "json": to_json}
    if fmt != "table" and fmt not in writers:
        raise ConfigError(f"--format: '{fmt}' is not one of table, markdown, csv, json")
    with console.status("comparing (bootstrap CIs, WER re-scored)"):
        result = compare_runs(a, b, store, threshold, allow_contended=allow_contended)
    if fmt == "table":
        out.print(render_rich(result))
    else:
        text = writers[fmt](result)
        if output:
            output.write_text(text)
            console.print(f"wrote the comparison to {output}")
        else:
            out.print(text, markup=False, highlight=False, soft_wrap=True)
    if result.regressions:
        by_cell: dict[str, list[str]] = {}
        for cell, metric in result.regressions:
            by_cell.setdefault(cell, []).append(metric)
        console.print(f"[red]{len(result.regressions)} regression(s) beyond {100 * threshold:g}%[/red]: "
                      + escape("; ".join(f"{c} ({', '.join(m)})" for c, m in by_cell.items())), highlight=False)
        if fail_on_regression:
            raise typer.Exit(4)


@app.command()
def profile(
    model: str = typer.Option("whisper-tiny.en", "--model", "-m", help="Catalog name, Hub id or local checkpoint dir."),
    engine: str = typer.Option("transformers", "--engine", "-e", help="Engine (its ops must run on torch)."),
    weights: str = typer.Option("auto", help="auto | real | random."),
    dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16."),
    length: float = typer.Option(5.0, help="Clip length in seconds."),
    batch: int = typer.Option(1, help="Batch size."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, help="CPU threads (0 = all usable cores)."),
    active: int = typer.Option(3, help="Profiled calls (after 1 skipped and 1 warm-up call)."),
    store: Path = typer.Option(Path("asrperf-results/results.sqlite"), help="Results database; traces go beside it."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where corpora, clips and converted weights are cached."),
) -> None:
    """Where the time goes: a one-cell run of the profile scenario (op categories, stages, roofline,
    Chrome/Perfetto trace), shown with the same tables as `asrperf report`."""
    from asrperf.run.runner import run as run_cells

    if active < 1:
        raise ConfigError(f"--active: {active} must be >= 1 (profiled calls)")
    cfg = _build_config(None, [model], str(length), str(batch), [device], str(threads), max(batch, 1), store,
                        cache_dir, None, None, None, None, None, None, None, weights, dtype)
    cfg = dataclasses.replace(
        cfg, models=tuple(dataclasses.replace(m, engine=engine) for m in cfg.models), scenarios=("profile",),
        accuracy=False, energy=False, timing=dataclasses.replace(cfg.timing, min_calls=active, max_calls=max(active, 50)),
    ).validate()
    with console.status("profile: preparing clips, loading the model, profiling") as status:
        summary = run_cells(cfg, on_cell=lambda cell, state, i, n: status.update(escape(f"profile: {state}"[:100])))
    _print_report(summary.store, summary.run_id, "table", scenarios=("profile",))
    if summary.failed:
        raise typer.Exit(3)


@app.command()
def optimize(
    model: str = typer.Argument(..., help="Catalog name, Hub id or local checkpoint dir."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run description for source, timing, store."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    length: float = typer.Option(60.0, help="Clip length in seconds."),
    batch: int = typer.Option(1, help="Batch size."),
    n_clips: Optional[int] = typer.Option(None, help="Clips (WER is scored over all of them)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (0 = all cores)."),
    weights: str = typer.Option("auto", help="auto | real | random (random: no accuracy gate)."),
    engine: list[str] = typer.Option([], "--engine", "-e", help="Restrict to these engines (repeatable)."),
    compile_: bool = typer.Option(True, "--compile/--no-compile", help="Try torch.compile variants (slow to build)."),
    wer_budget: float = typer.Option(0.5, help="Largest WER increase allowed, in absolute points."),
    output: Path = typer.Option(Path("asrperf-optimized.toml"), "--output", "-o", help="Where the winning config goes."),
    store: Optional[Path] = typer.Option(None, help="Results database (SQLite)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache for corpora, clips and converted weights."),
) -> None:
    """Try the variants that apply here; keep the fastest within the WER budget; write it as a config."""
    from rich.table import Table as RichTable

    from asrperf.run.optimize import TRIAL_COLUMNS, optimize as run_optimize, trials_table, write_winner

    if wer_budget < 0:
        raise ConfigError(f"--wer-budget: {wer_budget} must be >= 0 (absolute WER points)")
    base = _build_config(config, [model], None, None, [device], None if threads is None else str(threads), n_clips,
                         store, cache_dir, None, None, None, None, None, None, None, weights, None)
    with console.status("optimize: preparing clips") as status:
        result = run_optimize(
            model, base, device=device, clip_length_s=length, batch_size=batch, wer_budget=wer_budget / 100,
            engines=tuple(engine), compile=compile_,
            on_cell=lambda cell, state, i, n: status.update(escape(f"optimize: cell {i + 1}/{n}: {state}"[:100])),
            on_prepare=lambda what, d, t: status.update(escape(f"optimize: {what} {d}/{t}")),
        )
    table = RichTable(title=f"asrperf optimize {escape(model)}: {length:g} s clips, batch {batch}, {escape(device)}"
                            f" (run {result.run_id})")
    for col in TRIAL_COLUMNS:
        table.add_column(col)
    for row in trials_table(result):
        table.add_row(*(escape(v) for v in row))
    out.print(table)
    if result.note:
        console.print(f"[yellow]{escape(result.note)}[/yellow]")
    path = write_winner(result, base, output)
    w = result.winner
    console.print(f"fastest within +{wer_budget:g} WER points: {escape(w.row['model'])} "
                  f"({escape(w.model.engine)}, {escape(w.model.variant)}); wrote {escape(str(path))} "
                  f"(run it with `asrperf run {escape(str(path))}`)")


@app.command()
def doctor() -> None:
    """List the engines, extras, data sources and devices usable on this machine, and why not."""
    from rich.table import Table

    from asrperf.doctor import checks

    t = Table(title="asrperf doctor")
    for col in ("component", "status", "detail"):
        t.add_column(col)
    for name, ok, detail in checks():
        t.add_row(name, "[green]ok[/green]" if ok else "[red]missing[/red]", escape(detail))
    out.print(t)
    from asrperf.doctor import readiness

    r = Table(title="machine readiness for benchmarking (like pyperf system show)")
    for col in ("check", "state", "detail"):
        r.add_column(col)
    style = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "unknown": "[dim]unknown[/dim]"}
    for name, state, detail in readiness():
        r.add_row(escape(name), style[state], escape(detail))
    out.print(r)


def _optional_value(argv: list[str], option: str, default: str) -> list[str]:
    """`option` given with no value (last, or followed by another option) gets `default`:
    `--wait-quiet` alone means `--wait-quiet=<default>`; typer options cannot make a value optional."""
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg == option and (nxt is None or not _is_number(nxt)):
            out.append(f"{option}={default}")
        else:
            out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# `serve` and `load` keep their options beside their packages (serve/command.py, load/command.py)
from asrperf.load.command import load_command  # noqa: E402
from asrperf.run.eval_command import eval_command  # noqa: E402
from asrperf.serve.command import serve_command  # noqa: E402

app.command("serve")(serve_command)
app.command("load")(load_command)
app.command("eval")(eval_command)


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    from asrperf.run.runner import quiet_library_logs

    quiet_library_logs()
    sys.argv[1:] = _optional_value(sys.argv[1:], "--wait-quiet", f"{WAIT_QUIET_DEFAULT_S:g}")
    try:
        # without standalone mode, click returns a command's typer.Exit code instead of exiting with it
        code = app(standalone_mode=False)
    except AsrperfError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted; completed cells are kept in the store and a re-run resumes")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
