"""Run a config: prepare clips, run each cell (in its own process by default), commit each row.

Resume: the run id is the config's identity, so re-running the same config skips cells already
committed as ok (and failed ones too unless `retry_failed`; the summary counts them). A cell that
crashes, runs out of memory or times out is committed as failed with its reason, and the run goes on.

Runs sharing a store claim each cell before measuring it (results/claims.py): a cell another live
run is measuring is put off and waited for after the others, a stale claim (its runner was killed)
is taken over, and an ok row is never replaced. With `wait_quiet_s`, each cell waits (at most that
long) until the machine is quiet enough not to contend it (measure/contention.py).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asrperf.config import RunConfig
from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import ClipCache, prepare_clips
from asrperf.engines.base import quiet_library_logs  # noqa: F401  (the CLI quiets library logs through run/)
from asrperf.results import env as envmod
from asrperf.results.claims import Owner
from asrperf.results.schema import SchemaError
from asrperf.results.store import Store, check_writable
from asrperf.run.plan import Cell, expand
from asrperf.run.worker import CellPayload, CellResult, execute, identity_fields
from asrperf.scenarios.base import ScenarioSettings

STDERR_TAIL_CHARS = 2000


@dataclass
class RunSummary:
    run_id: str
    store: Path
    ran: int = 0
    skipped: int = 0  # already committed (by an earlier attempt or, meanwhile, another run)
    failed: int = 0
    skipped_failed: int = 0  # of `skipped`: committed as failed, not retried (retry_failed=False)
    taken_over: int = 0  # stale claims of killed runs taken over
    not_quiet: int = 0  # cells measured after --wait-quiet gave up waiting


def prepare(cfg: RunConfig, progress: Callable[[str, int, int], None] | None = None) -> dict[float, str]:
    """Build (or reuse) the clips of every length; returns length -> clip cache key."""
    from asrperf.data.sources import source_from_spec

    cache_dir = Path(cfg.cache_dir)
    source = source_from_spec(cfg.source, cache_dir)
    if hasattr(source, "progress"):
        source.progress = (lambda d, t: progress("synthesising built-in corpus", d, t)) if progress else None
    cache = ClipCache(cache_dir)
    keys = {}
    for i, length in enumerate(cfg.clip_lengths_s):
        if progress:
            progress(f"clips of {length:g} s", i, len(cfg.clip_lengths_s))
        prepare_clips(lambda: source.utterances(SAMPLE_RATE), source.key, source.describe(), length,
                      cfg.n_clips, cache, cfg.clip_mode, min_speech_share=cfg.min_speech_share)
        keys[length] = cache.key(source.key, length, cfg.clip_mode, SAMPLE_RATE)
    return keys


def _signal_reason(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's OOM killer sends this when memory runs out)" if -code == signal.SIGKILL else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with code {code}"


# Imported once by the fork server, so each cell's process starts with them loaded (~3-9 s saved
# per cell on a 2-core machine). A module that is not installed is skipped by multiprocessing.
PRELOAD = ["asrperf.run.worker", "numpy", "torch", "transformers", "transformers.models.whisper.modeling_whisper",
           "transformers.models.wav2vec2.modeling_wav2vec2"]
_context = None


def _fork_server():
    # forkserver, not fork: the server is a clean single-threaded process (no OpenMP pool, no CUDA
    # context), so every cell forks from a known state, never from the runner's own process
    global _context
    if _context is None:
        import multiprocessing

        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _exit_with_runner(runner_pid: int) -> None:
    """A cell's process is the fork server's child, not the runner's: end it when the runner is gone."""
    import os
    import threading

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(runner_pid, 0)
            except ProcessLookupError:
                os._exit(3)  # nobody will read the result; do not keep a core busy

    threading.Thread(target=watch, daemon=True, name="asrperf-runner-watch").start()


def _cell_process(payload_path: str, result_path: str, stderr_path: str, runner_pid: int) -> None:
    import os

    from asrperf.run.worker import main

    _exit_with_runner(runner_pid)
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)  # keep the worker's tracebacks for the failure reason, off the user's console
    raise SystemExit(main([payload_path, result_path]))


def run_isolated(payload: CellPayload, timeout_s: float) -> CellResult:
    """Run one cell in its own process; a crash, OOM kill or timeout becomes a failed row."""
    with tempfile.TemporaryDirectory(prefix="asrperf-cell-") as tmp:
        p_in, p_out, p_err = Path(tmp) / "payload.json", Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        p_in.write_text(payload.to_json())
        proc = _fork_server().Process(target=_cell_process, args=(str(p_in), str(p_out), str(p_err), os.getpid()),
                                      daemon=True)
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            return _failed(payload, f"timeout: the cell ran past {timeout_s:g} s (cell_timeout_s)")
        if p_out.is_file():
            return CellResult(**json.loads(p_out.read_text()))
        err = p_err.read_text(errors="replace").strip().splitlines() if p_err.is_file() else []
        tail = err[-1][:STDERR_TAIL_CHARS] if err else ""
        return _failed(payload, f"{_signal_reason(proc.exitcode)}; {tail}".rstrip("; "))


def _failed(payload: CellPayload, error: str) -> CellResult:
    """The row of a cell whose process never wrote one: its identity and the reason."""
    return CellResult({**identity_fields(payload.cell, payload.isolated), "status": "failed", "error": error})


def check(cfg: RunConfig) -> None:
    """Fail fast on model names and devices (engines, dtypes and options are checked by the config),
    before any clip or cell work."""
    from asrperf.engines.catalog import resolve
    from asrperf.run.preflight import check_devices

    for m in cfg.models:
        resolve(m.name)
    check_devices(cfg.devices)


CLAIM_POLL_S = 2.0  # how often a run re-checks cells another live run is measuring


def run(
    cfg: RunConfig,
    retry_failed: bool = False,
    on_cell: Callable[[Cell, str, int, int], None] | None = None,
    on_prepare: Callable[[str, int, int], None] | None = None,
    wait_quiet_s: float | None = None,
) -> RunSummary:
    """Execute every cell of `cfg` not yet committed; returns counts. `on_cell(cell, state, i, n)`.

    `wait_quiet_s`: before each cell, wait up to this long for a quiet machine (None: do not wait).
    """
    from asrperf.engines.capabilities import plugin_modules as engine_plugins
    from asrperf.results.claims import BUSY, CLAIMED, DONE_OK, Heartbeat, claim, release
    from asrperf.scenarios import plugin_modules as scenario_plugins

    check(cfg)
    plugins = tuple(dict.fromkeys(scenario_plugins() + engine_plugins()))

    def payload_of(cell: Cell) -> CellPayload:
        return CellPayload(cell=cell, cache_dir=cfg.cache_dir, clip_key=keys[cell.clip_length_s], n_clips=cfg.n_clips,
                           timing=cfg.timing, accuracy=cfg.scores_accuracy, isolated=cfg.isolate, settings=settings,
                           plugins=plugins)

    settings = ScenarioSettings(
        energy=cfg.energy, energy_idle_s=cfg.energy_idle_s, flops=cfg.flops, max_batch=cfg.max_batch,
        memory_budget_bytes=int(cfg.memory_budget_gib * 2**30) or None,
        # profile cells write their Chrome traces beside the store; the decode curve (the first 30 s
        # window, the same work at any clip length) is measured once per model
        trace_dir=str(Path(cfg.store).parent / "traces" / cfg.identity()),
        decode_tokens=cfg.decode_tokens, decode_curve_length_s=min(cfg.clip_lengths_s),
        # the stream-capacity search (N concurrent real-time streams) runs once per model and chunk size
        streaming=cfg.streaming if "streaming" in cfg.scenarios else None,
        capacity_length_s=min(cfg.clip_lengths_s),
        server=cfg.server if "server" in cfg.scenarios else None,
    )
    run_id = cfg.identity()
    cells = expand(cfg)
    summary = RunSummary(run_id, Path(cfg.store))
    owner = Owner.here()
    notify = on_cell or (lambda *a: None)
    check_writable(cfg.store)  # a store that cannot be written fails before any clip is built
    keys = prepare(cfg, on_prepare)  # ... and clips that cannot be built leave no store behind
    with Store(cfg.store) as store, Heartbeat(cfg.store, owner):
        store.begin_run(run_id, cfg.to_dict(), envmod.capture())
        pending = list(enumerate(cells))
        while pending:
            deferred = []
            for i, cell in pending:
                got = claim(store, run_id, cell.key, owner, retry_failed)
                if got.state == BUSY:
                    deferred.append((i, cell))
                    notify(cell, f"waiting: {got.holder.describe()} is measuring it", i, len(cells))
                    continue
                if got.state != CLAIMED:
                    summary.skipped += 1
                    summary.skipped_failed += got.state != DONE_OK
                    notify(cell, f"skipped (already {got.state})", i, len(cells))
                    continue
                if got.taken_over:
                    summary.taken_over += 1
                    notify(cell, f"taking over a stale claim ({got.holder.describe()}: {got.taken_over})", i, len(cells))
                try:
                    _measure(cfg, payload_of(cell), i, len(cells), run_id, store, owner, summary, notify, wait_quiet_s)
                except BaseException:
                    release(store, run_id, cell.key, owner)
                    raise
            if deferred:
                time.sleep(CLAIM_POLL_S)
            pending = deferred
    return summary


def _measure(cfg: RunConfig, payload: CellPayload, i: int, n: int, run_id: str, store: Store, owner: Owner,
             summary: RunSummary, notify: Callable[[Cell, str, int, int], None], wait_quiet_s: float | None) -> None:
    """Measure one claimed cell (after waiting for quiet, if asked) and commit its row."""
    cell = payload.cell
    if wait_quiet_s is not None:
        from asrperf.measure.contention import wait_quiet

        state = wait_quiet(cell.threads, cell.device, wait_quiet_s,
                           on_wait=lambda w: notify(cell, f"waiting for a quiet machine ({w.describe()}; "
                                                          f"{w.waited_s:.0f}/{wait_quiet_s:g} s)", i, n))
        if not state.quiet:
            summary.not_quiet += 1
            notify(cell, f"not quiet after {state.waited_s:.0f} s ({state.describe()}): measuring anyway", i, n)
    notify(cell, "running", i, n)
    started = time.time()
    result = run_isolated(payload, cfg.cell_timeout_s) if cfg.isolate else execute(payload)
    row = result.row
    try:
        written = store.commit_cell(run_id, cell.key, row, started, result.warmup_s, result.samples_s,
                                    claim_token=owner.token)
    except SchemaError as exc:  # a bug in asrperf, not in the cell: recorded, and the run goes on
        row = {**identity_fields(cell, cfg.isolate), "status": "failed",
               "error": f"asrperf bug: the cell's row does not match the schema ({exc})"}
        written = store.commit_cell(run_id, cell.key, row, started, claim_token=owner.token)
    if not written:
        # another run committed it ok meanwhile (it took over our claim while we were stalled)
        summary.skipped += 1
        notify(cell, "skipped (already ok: committed by another run meanwhile)", i, n)
        return
    summary.ran += 1
    summary.failed += row["status"] != "ok"
    notify(cell, row["status"] if row["status"] == "ok" else f"failed: {row.get('error')}", i, n)
