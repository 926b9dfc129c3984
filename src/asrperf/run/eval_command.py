"""The `asrperf eval` command: WER/CER with CIs and RTFx over a whole dataset, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asrperf.errors import ConfigError
from asrperf.run.source_flags import FOLDER_OPTION, HF_CONFIG_OPTION, HF_DATASET_OPTION, MANIFEST_OPTION, source_table

console = Console(stderr=True)
out = Console() if Console().is_terminal else Console(width=200)


def _source(manifest: Path | None, folder: Path | None, hf_dataset: str | None, hf_config: str | None,
            split: str | None, builtin_sentences: int | None) -> dict[str, Any]:
    given = source_table(manifest, folder, hf_dataset, hf_config, split, "test")
    if builtin_sentences is not None and given:
        raise ConfigError("--builtin-sentences applies to the built-in corpus only; drop it with a data source")
    return given or {"kind": "builtin", **({"n_sentences": builtin_sentences} if builtin_sentences is not None else {})}


def _batch(text: str) -> int:
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--batch: '{text}' is not a whole number >= 1 or 'auto'")
    return int(text)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def eval_command(
    model: str = typer.Option("whisper-tiny.en", "--model", "-m", help="Catalog name, Hub id or local checkpoint dir."),
    engine: str = typer.Option("transformers", "--engine", "-e", help="Engine (transformers, ct2, ort, ...)."),
    dtype: Optional[str] = typer.Option(None, help="The engine's dtype (default: the engine's own default)."),
    weights: str = typer.Option("auto", help="auto | real | random (random: transcripts, no WER)."),
    batch: str = typer.Option("auto", help="Utterances per call, or auto: the max-throughput search on the longest."),
    max_batch: int = typer.Option(64, help="Largest batch the auto search tries."),
    memory_budget_gib: float = typer.Option(0.0, help="Auto search: stop before this much device memory (0: none)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, help="CPU threads per engine (0: all cores; on Ray, the cluster's CPUs / actors)."),
    manifest: Optional[Path] = MANIFEST_OPTION,
    folder: Optional[Path] = FOLDER_OPTION,
    hf_dataset: Optional[str] = HF_DATASET_OPTION,
    hf_config: Optional[str] = HF_CONFIG_OPTION,
    split: Optional[str] = typer.Option(None, help="Dataset split (default test)."),
    builtin_sentences: Optional[int] = typer.Option(None, help="Built-in corpus (the default source): its first N sentences (default all 120)."),
    ray: bool = typer.Option(False, "--ray", help="Shard the batches over a Ray Data actor pool (pip install 'asrperf[ray]')."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster: auto or HOST:PORT (default: start a local one)."),
    actors: int = typer.Option(1, help="Ray actors, one engine each (1 GPU each on CUDA, else --threads CPUs)."),
    worst: int = typer.Option(10, help="Worst utterances to keep and print."),
    store: Path = typer.Option(Path("asrperf-results/results.sqlite"), help="Results database (SQLite)."),
    cache_dir: Path = typer.Option(Path(".asrperf-cache"), help="Where corpora and converted weights are cached."),
) -> None:
    """Transcribe every utterance of a dataset: corpus WER/CER with bootstrap 95% CIs, RTFx, the worst utterances."""
    from asrperf.config import ModelConfig, default_dtype
    from asrperf.run.evaluate import EvalConfig, evaluate

    if ray_address and not ray:
        raise ConfigError("--ray-address needs --ray")
    cfg = EvalConfig(
        model=ModelConfig(name=model, engine=engine, weights=weights, dtype=dtype or default_dtype(engine)),
        source=_source(manifest, folder, hf_dataset, hf_config, split, builtin_sentences), device=device,
        threads=threads, batch_size=_batch(batch), max_batch=max_batch, memory_budget_gib=memory_budget_gib, ray=ray,
        ray_address=ray_address, actors=actors, n_worst=worst, store=str(store), cache_dir=str(cache_dir),
    ).validate()
    with console.status("eval") as status:
        summary = evaluate(cfg, on_batch=lambda d, n: status.update(f"eval: batch {d}/{n}"),
                           on_stage=lambda what: status.update(escape(f"eval: {what}")))
    print_eval(summary.row)
    note = "read back from the store (already evaluated)" if summary.reused else "stored"
    console.print(f"run {summary.run_id}: {note} in {summary.store}", highlight=False)


def print_eval(row: Any) -> None:
    """The evaluation's figures, its padding warning and the worst utterances."""
    t = Table(title=escape(f"asrperf eval: {row['model']} ({row['engine']}, {row['dtype']}, {row['device']}) on "
                           f"{row['dataset_source_key']}"))
    for col in ("metric", "value", "how"):
        t.add_column(col)
    ci = lambda lo, hi: "" if lo is None else f"95% CI {_pct(lo)} to {_pct(hi)}, bootstrap over utterances"  # noqa: E731
    wer_how = ci(row.get("wer_ci_low"), row.get("wer_ci_high")) if row.get("wer") is not None else row.get("wer_missing_reason") or ""
    searched = row.get("dataset_batch_mode") == "searched"
    rows = [
        ("WER", _pct(row.get("wer")), wer_how + "; Whisper English normaliser"),
        ("CER", _pct(row.get("cer")), ci(row.get("cer_ci_low"), row.get("cer_ci_high"))),
        ("utterances", str(row["n_utterances"]), f"{row['audio_s_total']:.1f} s of audio, {row['utterance_s_min']:.2f}"
                                                 f"-{row['utterance_s_max']:.2f} s each, sorted longest first"),
        ("batch", str(row["batch_size"]), (f"searched (stopped: {row.get('dataset_batch_stop_reason')})" if searched
                                           else "given") + f"; {row['dataset_n_batches']} batches"),
        ("RTFx", f"{row['dataset_rtfx']:.1f}", row["dataset_rtfx_method"]),
        ("wall RTFx", f"{row['wall_rtfx']:.1f}", f"audio s / {row['dataset_wall_s']:.1f} s wall"
                                                 + (" (the Ray job: actor start and model loads included)"
                                                    if row.get("dataset_executor") == "ray" else " (transcription loop)")),
        ("executor", str(row.get("dataset_executor")), (f"{row.get('ray_actors')} actor(s), "
                                                        f"{row.get('ray_resources_per_actor')} each"
                                                        if row.get("dataset_executor") == "ray" else "one process")
                                                       + (f"; {row.get('threads')} thread(s)" if row.get("threads")
                                                          else "; threads: all cores (--threads 0)")),
        ("padding", str(row.get("padding_policy")), f"{row.get('padding')}; check: {row.get('padding_check')}"),
    ]
    for r in rows:
        t.add_row(*(escape(x) for x in r))
    out.print(t)
    if row.get("padding_policy") in ("unmasked", "unknown") or row.get("padding_changes_output"):
        console.print(f"[yellow]warning: padding: {escape(str(row.get('padding')))}; "
                      f"{escape(str(row.get('padding_check')))}. WER may change with the batch size and the "
                      f"batches' composition: compare at --batch 1[/yellow]", highlight=False)
    worst = row.get("worst_utterances") or []
    if worst:
        w = Table(title="worst utterances (most word edits)")
        for col in ("utterance", "edits / ref words", "reference", "hypothesis"):
            w.add_column(col)
        for u in worst:
            w.add_row(escape(u["clip"]), f"{u['word_edits']} / {u['ref_words']}", escape(u["ref"]), escape(u["hyp"]))
        out.print(w)
