"""Run a config: prepare clips, run each cell (in its own process by default), commit each row.

Resume: the run id is the config's identity, so re-running the same config skips cells already
committed as ok (and failed ones too unless `retry_failed`; the summary counts them). A cell that
crashes, runs out of memory or times out is committed as failed with its reason, and the run goes on.

Runs sharing a store claim each cell before measuring it (results/claims.py): a cell another live
run is measuring is put off and waited for after the others, a stale claim (its runner was killed)
is taken over, and an ok row is never replaced. With `wait_quiet_s`, each cell waits (at most that
long) until the machine is quiet enough not to contend it (measure/contention.py).

Where cells run is the executor (run/executor.py: `local`, one process per cell here; `ray`, one
Ray task per cell on a cluster): the loop below claims cells up to its capacity and commits each
row as it finishes, the same for both, so resume and `retry_failed` work across executors.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from asrperf.config import RunConfig
from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import ClipCache, prepare_clips
from asrperf.engines.base import quiet_library_logs  # noqa: F401  (the CLI quiets library logs through run/)
from asrperf.errors import ConfigError
from asrperf.results import env as envmod
from asrperf.results.claims import Owner
from asrperf.results.schema import SchemaError
from asrperf.results.store import Store, check_writable
from asrperf.run.executor import Event, Executor, Finished, LocalExecutor, Node, Started
from asrperf.run.plan import Cell, expand
from asrperf.run.worker import CellPayload, CellResult, identity_fields
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
    cells_per_node: dict[str, int] = field(default_factory=dict)  # node label -> cells it finished (this attempt)


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


def _cell_process(payload_path: str, result_path: str, stderr_path: str, runner_pid: int,
                  env: dict[str, str | None] | None = None) -> None:
    import os

    from asrperf.run.worker import main

    for name, value in (env or {}).items():  # before any CUDA call: the fork server's environment is its first caller's
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _exit_with_runner(runner_pid)
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)  # keep the worker's tracebacks for the failure reason, off the user's console
    raise SystemExit(main([payload_path, result_path]))


def run_isolated(payload: CellPayload, timeout_s: float, env: dict[str, str | None] | None = None) -> CellResult:
    """Run one cell in its own process; a crash, OOM kill or timeout becomes a failed row. `env`: variables
    the cell's process sets (None: removes) first, e.g. the GPUs Ray gave this task."""
    with tempfile.TemporaryDirectory(prefix="asrperf-cell-") as tmp:
        p_in, p_out, p_err = Path(tmp) / "payload.json", Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        p_in.write_text(payload.to_json())
        proc = _fork_server().Process(target=_cell_process, args=(str(p_in), str(p_out), str(p_err), os.getpid(), env),
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
    """Fail fast on model names, devices and the executor (engines, dtypes and options are checked by
    the config), before any clip or cell work. On Ray the devices are the cluster's, checked when it starts."""
    from asrperf.engines.catalog import resolve
    from asrperf.run.preflight import check_devices

    for m in cfg.models:
        resolve(m.name)
    if cfg.executor == "ray":
        from asrperf.run.ray_executor import require_ray

        require_ray()
    else:
        check_devices(cfg.devices)


CLAIM_POLL_S = 2.0  # how often a run re-checks cells another live run is measuring


def _executor(cfg: RunConfig, env: dict) -> Executor:
    if cfg.executor == "ray":
        from asrperf.run.ray_executor import RayExecutor

        return RayExecutor(cfg.ray_address, cfg.cell_timeout_s, env)
    return LocalExecutor(cfg.cell_timeout_s, cfg.isolate, env)


def run(
    cfg: RunConfig,
    retry_failed: bool = False,
    on_cell: Callable[[Cell, str, int, int], None] | None = None,
    on_prepare: Callable[[str, int, int], None] | None = None,
    wait_quiet_s: float | None = None,
    on_node: Callable[[str, int, int], None] | None = None,
) -> RunSummary:
    """Execute every cell of `cfg` not yet committed; returns counts. `on_cell(cell, state, i, n)`;
    `on_node(node, running, done)` after each cell starts or ends on a node (per-node progress).

    `wait_quiet_s`: before each cell, wait up to this long for a quiet machine (None: do not wait);
    local executor only (it watches this machine).
    """
    from asrperf.engines.capabilities import plugin_modules as engine_plugins
    from asrperf.results.claims import Heartbeat, release
    from asrperf.scenarios import plugin_modules as scenario_plugins

    check(cfg)
    if wait_quiet_s is not None and cfg.executor != "local":
        raise ConfigError(f"--wait-quiet watches this machine's load; it applies to executor 'local', not "
                          f"'{cfg.executor}' (Ray nodes are not watched); drop --wait-quiet")
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
    loop = _Loop(cfg, cells, run_id, owner, summary, on_cell or (lambda *a: None), on_node or (lambda *a: None),
                 retry_failed, wait_quiet_s, payload_of)
    check_writable(cfg.store)  # a store that cannot be written fails before any clip is built
    keys = prepare(cfg, on_prepare)  # ... and clips that cannot be built leave no store behind
    env = envmod.capture()
    with Store(cfg.store) as store, Heartbeat(cfg.store, owner), _executor(cfg, env) as executor:
        loop.store, loop.executor, loop.env = store, executor, env
        prior = next((r["env"].get("nodes", {}) for r in store.runs() if r["run_id"] == run_id), {})
        loop.nodes = dict(prior)  # nodes of earlier attempts (another executor may finish the run)
        store.begin_run(run_id, cfg.to_dict(), {**env, **({"nodes": loop.nodes} if loop.nodes else {})})
        try:
            loop.go()
        except BaseException:
            for i in loop.in_flight:
                release(store, run_id, cells[i].key, owner)
            raise
    return summary


@dataclass
class _Loop:
    """The one runner loop: claim cells up to the executor's capacity, commit each as it finishes."""

    cfg: RunConfig
    cells: list[Cell]
    run_id: str
    owner: Owner
    summary: RunSummary
    notify: Callable[[Cell, str, int, int], None]
    on_node: Callable[[str, int, int], None]
    retry_failed: bool
    wait_quiet_s: float | None
    payload_of: Callable[[Cell], CellPayload]
    store: Store | None = None
    executor: Executor | None = None
    env: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)  # node id -> environment, in the run's env as "nodes"
    in_flight: dict[int, Node | None] = field(default_factory=dict)  # index -> where it started, if known
    per_node: dict[str, list[int]] = field(default_factory=dict)  # node label -> [running, done]

    def go(self) -> None:
        from asrperf.results.claims import BUSY, CLAIMED, DONE_OK, claim

        n, todo, busy = len(self.cells), deque(enumerate(self.cells)), []
        while todo or busy or self.in_flight:
            while todo and len(self.in_flight) < self.executor.capacity():
                i, cell = todo.popleft()
                got = claim(self.store, self.run_id, cell.key, self.owner, self.retry_failed)
                if got.state == BUSY:
                    busy.append((i, cell))
                    self.notify(cell, f"waiting: {got.holder.describe()} is measuring it", i, n)
                    continue
                if got.state != CLAIMED:
                    self.summary.skipped += 1
                    self.summary.skipped_failed += got.state != DONE_OK
                    self.notify(cell, f"skipped (already {got.state})", i, n)
                    continue
                if got.taken_over:
                    self.summary.taken_over += 1
                    self.notify(cell, f"taking over a stale claim ({got.holder.describe()}: {got.taken_over})", i, n)
                self.in_flight[i] = None
                self._wait_quiet(i, cell)
                self.executor.submit(i, self.payload_of(cell))
                self.notify(cell, self.executor.submitted_state, i, n)
            if self.in_flight:
                for event in self.executor.collect():
                    self._on_event(event)
            elif busy:
                time.sleep(CLAIM_POLL_S)
                todo.extend(busy)
                busy = []

    def _wait_quiet(self, i: int, cell: Cell) -> None:
        if self.wait_quiet_s is None:
            return
        from asrperf.measure.contention import wait_quiet

        n, limit = len(self.cells), self.wait_quiet_s
        state = wait_quiet(cell.threads, cell.device, limit,
                           on_wait=lambda w: self.notify(cell, f"waiting for a quiet machine ({w.describe()}; "
                                                               f"{w.waited_s:.0f}/{limit:g} s)", i, n))
        if not state.quiet:
            self.summary.not_quiet += 1
            self.notify(cell, f"not quiet after {state.waited_s:.0f} s ({state.describe()}): measuring anyway", i, n)

    def _count(self, node: Node | None, running: int, done: int) -> None:
        label = node.label if node else "node unknown"
        counts = self.per_node.setdefault(label, [0, 0])
        counts[0] += running
        counts[1] += done
        self.summary.cells_per_node[label] = counts[1]
        self.on_node(label, *counts)

    def _on_event(self, event: Event) -> None:
        cell, n = self.cells[event.index], len(self.cells)
        if isinstance(event, Started):
            if event.index not in self.in_flight:  # an executor reported a start after the end: ignore it
                return
            self.in_flight[event.index] = event.node
            self._count(event.node, 1, 0)
            self.notify(cell, f"running on {event.node.label}", event.index, n)
            return
        was_seen = self.in_flight.pop(event.index) is not None
        self._count(event.node, -1 if was_seen else 0, 1)
        envs = self.executor.node_envs()
        if any(k not in self.nodes for k in envs):  # a node's environment, captured once, joins the run's
            self.nodes.update(envs)
            self.store.begin_run(self.run_id, self.cfg.to_dict(), {**self.env, "nodes": self.nodes})
        self._commit(event)

    def _commit(self, event: Finished) -> None:
        """Commit one finished cell's row (with where it ran) in its own transaction."""
        cell, i, n, summary = self.cells[event.index], event.index, len(self.cells), self.summary
        result = event.result
        row = {**result.row, "executor": self.executor.name, **(event.node.row_fields() if event.node else {})}
        try:
            written = self.store.commit_cell(self.run_id, cell.key, row, event.started_at, result.warmup_s,
                                             result.samples_s, claim_token=self.owner.token)
        except SchemaError as exc:  # a bug in asrperf, not in the cell: recorded, and the run goes on
            row = {**identity_fields(cell, self.cfg.isolate), "status": "failed",
                   "error": f"asrperf bug: the cell's row does not match the schema ({exc})"}
            written = self.store.commit_cell(self.run_id, cell.key, row, event.started_at, claim_token=self.owner.token)
        if not written:
            # another run committed it ok meanwhile (it took over our claim while we were stalled)
            summary.skipped += 1
            self.notify(cell, "skipped (already ok: committed by another run meanwhile)", i, n)
            return
        summary.ran += 1
        summary.failed += row["status"] != "ok"
        self.notify(cell, row["status"] if row["status"] == "ok" else f"failed: {row.get('error')}", i, n)
