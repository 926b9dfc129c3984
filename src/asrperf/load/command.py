"""`asrperf load`: the typer command (cli.py registers it). Heavy imports happen inside."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from asrperf.errors import ConfigError


def _source(config: Path | None, manifest: Path | None, folder: Path | None,
            cache_dir: Path | None) -> tuple[dict[str, Any], str, str]:
    """(source table, cache dir, clip mode): the config's, overridden by the flags; default built-in."""
    from asrperf.config import RunConfig, load_config

    cfg = load_config(config) if config else None
    source = dict(cfg.source) if cfg else {"kind": "builtin"}
    if manifest and folder:
        raise ConfigError("give one of --manifest, --folder")
    if manifest:
        source = {"kind": "manifest", "path": str(manifest)}
    elif folder:
        source = {"kind": "folder", "path": str(folder)}
    cache = str(cache_dir) if cache_dir else (cfg or RunConfig(models=())).cache_dir
    return source, cache, cfg.clip_mode if cfg else "exact"


def _api_key(name: str) -> str | None:
    if not name:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise ConfigError(f"--api-key-env {name}: that environment variable is unset or empty; export it or drop the flag")
    return key


def _served_model(url: str, api_key: str | None) -> str:
    """The first model a server lists at /v1/models (for --url without --model)."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/v1/models", timeout=10, trust_env=False,
                      headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"{url}/v1/models does not name a model; pass --model NAME") from None


def load_command(
    url: Optional[str] = typer.Option(None, help="An OpenAI-compatible server (http://host:port); default: start asrperf serve."),
    model: str = typer.Option("", "--model", "-m", help="Model to send (with --url: default the first of /v1/models) or to serve."),
    engine: str = typer.Option("ct2", "--engine", "-e", help="Own server: transformers | ct2 | ort | nemo."),
    dtype: str = typer.Option("int8", help="Own server: the engine's dtype."),
    weights: str = typer.Option("auto", help="Own server: auto | real | random."),
    device: str = typer.Option("cpu", help="Own server: cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, help="Own server: CPU threads (0 = all usable cores)."),
    max_batch_size: int = typer.Option(8, help="Own server: requests per engine call (1 = batching off)."),
    max_wait_ms: float = typer.Option(10.0, help="Own server: how long a batch waits to fill."),
    max_queue: int = typer.Option(64, help="Own server: waiting requests before 429."),
    api_key_env: str = typer.Option("", help="Send 'Authorization: Bearer $NAME' (own server: and require it)."),
    rate: str = typer.Option("poisson:1", help="constant:R | poisson:R | gamma:R:BURSTINESS | concurrency:N | streams:N."),
    mode: str = typer.Option("single", help="single (one probe at --rate) | search (max rate meeting --slo) | sweep (latency vs load)."),
    slo: str = typer.Option("", help="e.g. 'p99<=2s', 'p90_per_audio_s<=0.2', 'goodput>=0.99' (comma-separated: all must hold)."),
    duration: float = typer.Option(60.0, help="Seconds of sending per probe."),
    requests: int = typer.Option(1000, help="Most requests per probe."),
    timeout: float = typer.Option(60.0, help="Per-request timeout in seconds."),
    warmup_s: float = typer.Option(0.0, help="Requests scheduled in the first seconds of a probe are sent but not measured."),
    max_in_flight: int = typer.Option(0, help="Open loop: at most this many requests at once (0 = no limit); waits count as latency."),
    seed: int = typer.Option(0, help="Seed of the arrival schedule (the same for every probe)."),
    precision: float = typer.Option(0.05, help="Search: stop when the bracket is within this share of its upper end."),
    max_probes: int = typer.Option(8, help="Search: bisection probes at most."),
    saturation_clients: int = typer.Option(0, help="Closed-loop clients of the saturation probe (0 = 2 x max batch, else 8)."),
    sweep_rates: Optional[str] = typer.Option(None, help="Sweep: these rates (e.g. 1,2,4); default fractions of saturation."),
    length: float = typer.Option(15.0, help="Clip length in seconds."),
    n_clips: int = typer.Option(8, help="Clips (requests cycle through them)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Run TOML whose [source], cache_dir and clip_mode to use."),
    manifest: Optional[Path] = typer.Option(None, help="CSV/TSV/JSONL manifest with audio and text columns."),
    folder: Optional[Path] = typer.Option(None, help="Folder of audio files with same-name .txt transcripts."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where corpora, clips and converted weights are cached."),
    store: Path = typer.Option(Path("asrperf-results/results.sqlite"), help="Results database (SQLite)."),
) -> None:
    """Load-test a transcription server: latency from the schedule, goodput, max rate under an SLO."""
    from contextlib import ExitStack

    from rich.console import Console
    from rich.markup import escape

    from asrperf.load.arrivals import parse_arrivals
    from asrperf.load.generator import Bounds, Target
    from asrperf.load.launch import SERVER_NICE, asrperf_serve_argv, server_process
    from asrperf.load.record import render_table, save_rows
    from asrperf.load.session import LoadPlan, execute
    from asrperf.load.slo import parse_slo
    from asrperf.load.workload import load_workload

    console = Console(stderr=True)
    out = Console() if Console().is_terminal else Console(width=220)
    try:
        rates = tuple(float(x) for x in (sweep_rates or "").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--sweep-rates: '{sweep_rates}' is not a comma-separated list of numbers") from None
    plan = LoadPlan(mode=mode, arrivals=parse_arrivals(rate), slo=parse_slo(slo) if slo else None, seed=seed,
                    bounds=Bounds(requests, duration, timeout, warmup_s, max_in_flight), precision=precision,
                    max_probes=max_probes, saturation_clients=saturation_clients, sweep_rates_rps=rates).validate()
    key = _api_key(api_key_env)
    source, cache, clip_mode = _source(config, manifest, folder, cache_dir)
    with console.status("preparing clips"):
        clips, clip_info = load_workload(source, cache, length, n_clips, clip_mode)
    with ExitStack() as stack:
        base = url
        if not url:
            args = ["-m", model or "whisper-tiny.en", "-e", engine, "--dtype", dtype, "--weights", weights,
                    "--device", device, "--threads", str(threads), "--max-batch-size", str(max_batch_size),
                    "--max-wait-ms", str(max_wait_ms), "--max-queue", str(max_queue), "--cache-dir", cache,
                    *(["--api-key-env", api_key_env] if api_key_env else [])]
            with console.status("starting asrperf serve (loading the model)"):
                base = stack.enter_context(server_process(asrperf_serve_argv(args), nice=SERVER_NICE)).url
        target = Target(base, model or (_served_model(base, key) if url else "whisper-tiny.en"), key)
        with console.status(f"{plan.mode}: probing {escape(base)}") as status:
            def on_probe(row: dict[str, Any]) -> None:
                p99 = row["latency_s_p99"]
                status.update(escape(f"{plan.mode}: {row['probe_role']} {row['arrival']}: "
                                     f"p99 {'-' if p99 is None else f'{p99:.3f} s'}, {row['n_ok']}/{row['n_requests']} ok"))

            rows = execute(plan, target, clips, {**clip_info, "source_kind": source.get("kind")}, on_probe)
    run_id = save_rows(store, {"load": {"mode": mode, "rate": rate, "slo": slo, "url": url or "own",
                                        "model": target.model, "length_s": length, "n_clips": n_clips}}, rows)
    out.print(render_table(rows, f"asrperf load {plan.mode} {target.model} at {base} ({length:g} s clips)"))
    result = rows[-1] if rows[-1].get("probe_role") == "result" else None
    if result and plan.mode == "search":
        rate_text = "none" if result["max_sustainable_rate_rps"] is None else f"{result['max_sustainable_rate_rps']:.3g} req/s"
        out.print(escape(f"max sustainable {plan.arrivals.kind} rate under '{slo}': {rate_text} "
                         f"(bracket up to {result['upper_rate_rps'] or 0:.3g} req/s, precision {precision:g}, "
                         f"{'resolved' if result['resolved'] else 'unresolved'}; {result['search_status']}"
                         f"{'; ' + result['note'] if result['note'] else ''})"), highlight=False)
    elif result:
        knee = result["knee_rate_rps"]
        out.print(f"knee: {'-' if knee is None else f'{knee:.3g} req/s'} (last rate whose p90 stays within 2x the "
                  f"lowest rate's)", highlight=False)
    console.print(f"stored {len(rows)} row(s) as run {run_id} in {store}", highlight=False)
