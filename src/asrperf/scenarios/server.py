"""The server scenario: each cell serves its own configuration with asrperf's server and runs the
`[server]` load plan against it (`asrperf load`'s search, sweep or single probe).

Per cell (model x engine x variant x device x threads x clip length x `max_batch_size`):
1. the cell's engine (loaded by the worker) transcribes each clip once, alone on the machine: the
   offline transcripts that WER under load is held against;
2. the cell's engine releases its model (the server loads its own copy), and `asrperf serve` for
   the same configuration starts as a child process on 127.0.0.1, on a free port, with the cell's
   thread count and the batcher settings (load/launch.py); the kernel sends it SIGTERM if the
   cell's process dies (a cell past cell_timeout_s is killed), and it is always stopped with
   SIGTERM (drained) when the plan ends or fails;
3. the load plan runs (load/session.py), each probe bounded in requests and time.

One row per cell: the row's latency, rate, goodput and batch figures are those of the cell's
*answer* probe (search: the probe at the maximum sustainable rate, or the synchronous probe when
none met the SLO; sweep: the probe at the knee; single: the probe), its samples are that probe's
per-request latencies, and every probe, with its requests, is in `server_probes`. `wer` is over
every answered request of every probe. A probe is not a row of its own: the runner's unit of
resume, claim and comparison is the cell, and a search's probes only mean something together.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from asrperf.errors import AsrperfError
from asrperf.load.cell import cell_row, setup_label
from asrperf.scenarios.base import CellContext, Scenario

UPLOAD_HEADROOM = 2.0  # the server's upload limit: at least this x the largest clip's WAV


def _plugin_path(modules: tuple[str, ...]) -> str:
    """PYTHONPATH for the server: this asrperf's source tree, the plugin modules' roots, then the caller's."""
    import asrperf

    roots = [str(Path(asrperf.__file__).resolve().parents[1])]
    for name in modules:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            path = Path(module.__file__).resolve()
            depth = len(name.split(".")) - 1 + (path.name == "__init__.py")
            roots.append(str(path.parents[depth]))
    roots += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(roots))


def serve_argv(ctx: CellContext, max_batch_size: int, threads: int) -> tuple[list[str], tuple[str, ...]]:
    """`asrperf serve` arguments for the cell's configuration, and the plugin modules it must import."""
    from asrperf.engines.capabilities import plugin_modules

    m, s = ctx.model, ctx.settings.server
    resolved = ctx.engine.info().get("weights")
    weights = resolved if resolved in ("real", "random") else m.weights  # the server loads what the cell got
    largest = max(len(c.audio) for c in ctx.clips) * 4 + 1024  # float32 WAV bytes
    plugins = plugin_modules()
    args = ["-m", m.name, "-e", m.engine, "--dtype", m.dtype, "--weights", weights, "--quant", m.quant,
            "--attn", m.attn, "--compile" if m.compile else "--no-compile", "--longform", m.longform,
            "--device", ctx.device, "--threads", str(threads), "--max-batch-size", str(max_batch_size),
            "--max-wait-ms", f"{s.max_wait_ms:g}", "--max-queue", str(s.max_queue),
            "--max-upload-mb", f"{max(25.0, UPLOAD_HEADROOM * largest / 2**20):.3f}",
            "--max-audio-s", f"{max(600.0, 2 * ctx.clip_length_s):g}", "--drain-timeout-s", f"{s.timeout_s:g}",
            "--cache-dir", ctx.cache_dir or ".asrperf-cache"]
    for module in plugins:
        args += ["--plugin", module]
    return args, plugins


class ServerScenario(Scenario):
    """asrperf's own server for the cell's configuration, under the `[server]` load plan."""

    name = "server"
    scores_accuracy = True

    def cell_batch_sizes(self, cfg: Any) -> tuple[int, ...]:
        return tuple(int(b) for b in cfg.server.max_batch_size)  # the batcher's largest batch

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from asrperf.engines.base import cpu_threads
        from asrperf.load.generator import Target
        from asrperf.load.launch import SERVER_NICE, asrperf_serve_argv, server_process
        from asrperf.load.session import execute
        from asrperf.load.workload import WorkClip, encode_wav

        settings = ctx.settings.server
        if settings is None or ctx.model is None:
            raise AsrperfError("server cell without [server] settings or its model; run it through asrperf run")
        plan = settings.load_plan()
        refs = {c.id: c.text if ctx.score else None for c in ctx.clips}
        work = [WorkClip(c.id, c.audio_s, encode_wav(c.audio, c.sample_rate), refs[c.id]) for c in ctx.clips]
        # offline first, while the engine has the machine to itself: the transcripts served ones must equal
        offline = ({c.id: ctx.engine.transcribe([c.audio], c.sample_rate).texts[0] for c in ctx.clips}
                   if ctx.score else None)
        threads = cpu_threads()
        args, plugins = serve_argv(ctx, ctx.batch_size, threads)
        ctx.engine.release()  # the server loads its own copy: never hold the model twice (GPU memory)
        setup = setup_label(settings.max_wait_ms, settings.max_queue, plan.mode, plan.arrivals.label, settings.slo)
        t0 = time.perf_counter()
        with server_process(asrperf_serve_argv(args), startup_timeout_s=settings.startup_timeout_s,
                            stop_timeout_s=settings.timeout_s + 30, env={"PYTHONPATH": _plugin_path(plugins)},
                            die_with_parent=True, nice=SERVER_NICE) as server:
            startup_s = time.perf_counter() - t0
            try:
                rows = execute(plan, Target(server.url, ctx.model.name), work,
                               {"clip_length_s": ctx.clip_length_s, "n_clips": len(work)})
            except Exception as exc:
                tail = server.log_tail().splitlines()
                raise AsrperfError(f"{type(exc).__name__}: {exc}" + (f"; server log: {tail[-1]}" if tail else "")) \
                    from exc
            proc = server.process
        row, samples = cell_row(rows, refs, offline, setup)
        ctx.samples_s.extend(samples)
        row.update(server_startup_s=startup_s, server_exit_code=proc.returncode, server_threads=threads,
                   target_url=server.url, max_batch_size=ctx.batch_size)
        return row
