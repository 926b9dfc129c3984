"""The `ray` executor: each cell a Ray task on whichever node has its resources.

- Resources come from the cell: a CUDA cell asks for one GPU (and one CPU to drive it), a CPU cell
  for its `threads` CPUs. A cell no node could ever hold fails at once, naming what it asked for.
- Isolation: one process per cell, as locally. The Ray task only launches it: the cell runs in a
  process forked from the worker's fork server (run/runner.py `run_isolated`, torch and
  transformers imported once per worker), which exits with the cell, so no model, allocator or
  thread pool outlives it. Ray workers are reused: a worker's first cell starts its fork server
  (a cold `import torch, transformers`, ~3 s on 2 cores), its later cells start in a fraction of a
  second. (Ray starts workers on demand, so there is nothing to warm before the first cell.) The
  GPUs Ray gives a task (CUDA_VISIBLE_DEVICES) are passed to the cell's process. `max_retries=0`,
  so a lost cell is a failed row the runner commits, never a silent re-run.
- Timeout: counted from the moment the cell starts on its node (each task reports its start to a
  small actor on the driver's node), then `ray.cancel(force=True)` kills the worker.
- Clips: bundled once per cache entry on the driver (run/clip_bundle.py), put in the object store
  once, and unpacked on the node into a folder of its own after the bytes' hash is checked.
- Nodes: each task returns its node id and hostname; each node's environment (results/env.py) is
  captured once, by a zero-CPU task pinned to it (the driver's own node: the runner's capture),
  and its CPU, GPU and driver go into every row.
- A node lost mid-cell (its raylet killed, the machine gone) makes the cell a failed row whose
  reason starts "node died:"; the run goes on, and `--retry-failed` re-runs it elsewhere.

Ray is an extra (`pip install 'asrperf[ray]'`), imported only here and only when chosen.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from typing import Any

from asrperf.errors import ConfigError, require
from asrperf.run.clip_bundle import ClipBundle
from asrperf.run.executor import Event, Finished, Node, Started, node_from_env
from asrperf.run.worker import CellPayload, CellResult, identity_fields

# what Ray sets per task in a reused worker, and the cell's process must see as the task does
TASK_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_NUM_THREADS")
POLL_S = 0.5  # how often the driver checks starts, timeouts and finished cells
NODE_DEATH_WAIT_S = 30.0  # how long a crashed worker's node may take to be declared dead by Ray
ENV_WAIT_S = 60.0  # how long a node's environment capture may take before its rows go without it


def require_ray(needed_for: str = "executor ray") -> Any:
    """The `ray` module, or one MissingExtraError naming the extra and what `needed_for` it."""
    return require("ray", needed_for, "ray")


def cell_resources(device: str, threads: int) -> dict[str, float]:
    """What a cell asks Ray for: one GPU (and a CPU to drive it) for CUDA, else `threads` CPUs."""
    if device.startswith("cuda"):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": max(1, threads), "num_gpus": 0}


def _here() -> dict[str, str]:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


def _run_cell(index: int, payload_json: str, bundle: ClipBundle, clips_sha256: str, starts: Any,
              timeout_s: float) -> dict[str, Any]:
    """The Ray task: report the start, unpack and check the clips, measure in the cell's own process,
    return the row."""
    here = _here()
    starts.started.remote(index, here["node_id"], here["hostname"])
    from asrperf.run.runner import run_isolated

    payload = CellPayload.from_json(payload_json)
    with tempfile.TemporaryDirectory(prefix="asrperf-ray-clips-") as tmp:
        try:
            bundle.unpack(tmp, clips_sha256)
        except Exception as exc:  # a corrupted transfer: a failed row, never a measurement
            row = {**identity_fields(payload.cell, True), "status": "failed", "error": str(exc)}
            return {"result": dataclasses.asdict(CellResult(row)), **here}
        result = run_isolated(dataclasses.replace(payload, clips_dir=tmp, isolated=True), timeout_s,
                              {name: os.environ.get(name) for name in TASK_ENV})
    result.row["clips_sha256"] = clips_sha256
    return {"result": dataclasses.asdict(result), **here}


def _capture_env() -> dict[str, Any]:
    from asrperf.results.env import capture

    return capture()


class _Starts:
    """An actor on the driver's node: when and where each cell started (one clock for all nodes)."""

    def __init__(self) -> None:
        self._new: list[tuple[int, str, str, float]] = []

    def started(self, index: int, node_id: str, hostname: str) -> None:
        self._new.append((index, node_id, hostname, time.time()))

    def take(self) -> list[tuple[int, str, str, float]]:
        new, self._new = self._new, []
        return new


class RayExecutor:
    """Cells as Ray tasks; `collect` streams their rows back as they finish."""

    name = "ray"
    submitted_state = "queued"

    def __init__(self, address: str, timeout_s: float, driver_env: dict[str, Any] | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self._driver_env = driver_env  # this machine's environment, captured by the runner: the driver's node's
        self._driver_node = ""
        self._ray: Any = None
        self._owns_ray = False
        self._bundles: dict[str, tuple[Any, str]] = {}  # clip key -> (object ref, sha256)
        self._refs: dict[Any, int] = {}  # task ref -> cell index
        self._cells: dict[int, CellPayload] = {}
        self._submitted_at: dict[int, float] = {}
        self._started: dict[int, tuple[Node, float]] = {}
        self._failed_now: list[Finished] = []  # cells that could never run (no node holds them)
        self._env_refs: dict[str, Any] = {}  # node id -> its pending environment capture
        self._envs: dict[str, dict[str, Any]] = {}

    # -- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> RayExecutor:
        ray = self._ray = require_ray()
        if not ray.is_initialized():
            try:  # "" starts a Ray for this run on this machine; "auto" or HOST:PORT joins a cluster
                local = {} if self.address else {"include_dashboard": False}  # joining: the cluster decides
                ray.init(address=self.address or "local", log_to_driver=False, logging_level="ERROR", **local)
            except (ConnectionError, RuntimeError) as exc:
                raise ConfigError(f"ray_address (--ray-address) '{self.address}': cannot join a Ray cluster "
                                  f"there ({exc}); start one with `ray start --head` or pass '' to start one "
                                  "for the run") from None
            self._owns_ray = True
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = self._driver_node = ray.get_runtime_context().get_node_id()
        self._starts = ray.remote(num_cpus=0)(_Starts).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self._task = ray.remote(max_retries=0)(_run_cell)
        self._capture = ray.remote(num_cpus=0, max_retries=0)(_capture_env)
        self._ray.get(self._starts.take.remote())  # the actor is up: cells' starts reach it without delay
        return self

    def __exit__(self, *exc: object) -> None:
        ray = self._ray
        for ref in list(self._refs):
            ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns_ray:
            ray.shutdown()

    # -- the Executor protocol --------------------------------------------------------------------
    def capacity(self) -> int:
        """Enough cells in flight to fill every CPU and GPU of the cluster as it is now."""
        total = self._ray.cluster_resources()
        return max(1, int(total.get("CPU", 0)) + int(total.get("GPU", 0)))

    def node_envs(self) -> dict[str, dict[str, Any]]:
        return dict(self._envs)

    def submit(self, index: int, payload: CellPayload) -> None:
        cell = payload.cell
        need = cell_resources(cell.device, cell.threads)
        self._cells[index], self._submitted_at[index] = payload, time.time()
        missing = self._unschedulable(need)
        if missing:
            self._failed_now.append(self._failed(index, missing))
            return
        bundle, sha = self._bundle(payload)
        ref = self._task.options(**need).remote(index, payload.to_json(), bundle, sha, self._starts, self.timeout_s)
        self._refs[ref] = index

    def collect(self) -> list[Event]:
        ray = self._ray
        while True:
            events: list[Event] = list(self._failed_now)
            self._failed_now.clear()
            events += self._take_starts()
            events += self._timeouts()
            if self._refs:
                ready, rest = ray.wait(list(self._refs), num_returns=1, timeout=0 if events else POLL_S)
                if ready and rest:  # whatever else finished meanwhile, without waiting
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                events += [self._finished(ref) for ref in ready]
            if events or not self._refs:
                return events

    # -- helpers ----------------------------------------------------------------------------------
    def _unschedulable(self, need: dict[str, float]) -> str | None:
        """Why no live node could ever run a cell asking for `need` (None when one could)."""
        nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
        fits = [r for r in nodes if r.get("CPU", 0) >= need["num_cpus"] and r.get("GPU", 0) >= need["num_gpus"]]
        if fits:
            return None
        most = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
        return (f"no Ray node can hold this cell: it asks for {need['num_cpus']:g} CPU(s) and {need['num_gpus']:g} "
                f"GPU(s), the largest node has {most[0]:g} CPU(s) and {most[1]:g} GPU(s); lower threads or add a node")

    def _bundle(self, payload: CellPayload) -> tuple[Any, str]:
        key = payload.clip_key
        if key not in self._bundles:
            bundle = ClipBundle.from_cache(payload.cache_dir, key, payload.n_clips)
            self._bundles[key] = (self._ray.put(bundle), bundle.sha256)
        return self._bundles[key]

    def _take_starts(self) -> list[Event]:
        out: list[Event] = []
        running = set(self._refs.values())
        for index, node_id, hostname, at in self._ray.get(self._starts.take.remote()):
            node = self._node(node_id, hostname)
            if index not in running:  # its start arrived after its end (or its timeout): nothing to report
                continue
            self._started[index] = (node, at)
            out.append(Started(index, node))
        return out

    def _node(self, node_id: str, hostname: str) -> Node:
        """The node as rows record it; its environment is captured the first time it is seen."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if node_id not in self._envs and node_id == self._driver_node and self._driver_env is not None:
            self._envs[node_id] = self._driver_env  # not captured again, by a task in a cold worker
        if node_id not in self._envs and node_id not in self._env_refs:
            self._env_refs[node_id] = self._capture.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        ref = self._env_refs.pop(node_id, None)
        if ref is not None:
            try:
                self._envs[node_id] = self._ray.get(ref, timeout=ENV_WAIT_S)
            except Exception:  # the node is gone or too slow: its rows keep hostname and id only
                self._envs[node_id] = {"hostname": hostname, "capture_failed": True}
        env = self._envs[node_id]
        return dataclasses.replace(node_from_env(env, node_id), hostname=hostname)

    def _timeouts(self) -> list[Event]:
        out: list[Event] = []
        now = time.time()
        for ref, index in list(self._refs.items()):
            started = self._started.get(index)
            if started is not None and now - started[1] > self.timeout_s:
                self._ray.cancel(ref, force=True)
                del self._refs[ref]
                out.append(self._failed(index, f"timeout: the cell ran past {self.timeout_s:g} s (cell_timeout_s)"))
        return out

    def _finished(self, ref: Any) -> Finished:
        ray = self._ray
        index = self._refs.pop(ref)
        try:
            got = ray.get(ref)
        except Exception as exc:
            return self._failed(index, self._reason(index, exc))
        self._started.setdefault(index, (self._node(got["node_id"], got["hostname"]), self._submitted_at[index]))
        node, at = self._started.pop(index)
        return Finished(index, CellResult(**got["result"]), at, node)

    def _failed(self, index: int, error: str) -> Finished:
        node, at = self._started.pop(index, (None, self._submitted_at[index]))
        row = {**identity_fields(self._cells[index].cell, True), "status": "failed", "error": error}
        return Finished(index, CellResult(row), at, node)

    def _reason(self, index: int, exc: Exception) -> str:
        """A lost task's one-line reason: "node died: ..." when its node is gone, else what Ray says."""
        ex = self._ray.exceptions
        what = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        if isinstance(exc, ex.RayTaskError):  # an exception raised in the task's own code
            return f"the Ray task raised {what}"
        node = self._started.get(index, (None, 0.0))[0]
        system = tuple(getattr(ex, n) for n in ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError",
                                                "ActorDiedError", "ObjectLostError", "OwnerDiedError")
                       if hasattr(ex, n))
        if isinstance(exc, system) and (isinstance(exc, getattr(ex, "NodeDiedError", ())) or self._dead(node)):
            where = f"{node.label} (Ray node {node.node_id})" if node else "the cell's node"
            return f"node died: {where} was lost while the cell ran ({what})"
        if isinstance(exc, getattr(ex, "OutOfMemoryError", ())):
            return f"out of memory: Ray's memory monitor killed the cell's worker ({what})"
        if isinstance(exc, ex.WorkerCrashedError):
            return f"worker crashed: the cell's Ray worker process died ({what})"
        return f"Ray lost the task: {what}"

    def _dead(self, node: Node | None) -> bool:
        """Whether `node` is (or within NODE_DEATH_WAIT_S becomes) dead to Ray: a worker that died with
        its node is often reported before Ray's health checks declare the node dead."""
        if node is None:
            return False
        deadline = time.monotonic() + NODE_DEATH_WAIT_S
        while True:
            alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
            if node.node_id not in alive:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)


__all__ = ["RayExecutor", "cell_resources", "require_ray"]
