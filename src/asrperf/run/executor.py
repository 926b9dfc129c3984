"""Executors turn claimed cells into rows; the runner (run/runner.py) claims, commits and resumes.

An executor takes cells (`submit`) and reports what became of them (`collect`): a cell started on
a node (`Started`) or finished with its row (`Finished`). The runner never knows where a cell ran:
claims, commits, resume and `--retry-failed` are the same for every executor, so a run started
with one executor can be finished with another (the executor is not part of the run identity).

- `local`: one cell at a time on this machine, in its own process (`run_isolated`) or in-process.
- `ray` (run/ray_executor.py): each cell a Ray task on whichever node has its resources.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from asrperf.run.worker import CellPayload, CellResult, execute


@dataclass(frozen=True)
class Node:
    """The machine that ran a cell, as the row records it (results/schema.py Provenance node_*)."""

    hostname: str
    node_id: str | None = None  # Ray's node id; None for the local executor
    cpu_model: str | None = None
    gpu_name: str | None = None
    gpu_driver: str | None = None

    @property
    def label(self) -> str:
        """Short name for progress lines: simulated Ray nodes share a hostname, so the id is added."""
        return f"{self.hostname} {self.node_id[:8]}" if self.node_id else self.hostname

    def row_fields(self) -> dict[str, Any]:
        fields = {"node_hostname": self.hostname, "node_id": self.node_id, "node_cpu_model": self.cpu_model,
                  "node_gpu_name": self.gpu_name, "node_gpu_driver": self.gpu_driver}
        return {k: v for k, v in fields.items() if v is not None}


def node_from_env(env: dict[str, Any], node_id: str | None = None) -> Node:
    """A Node from an environment captured by results/env.py `capture()`."""
    gpus = env.get("gpus") or []
    names = ", ".join(dict.fromkeys(g.get("name", "") for g in gpus)) or None
    drivers = ", ".join(dict.fromkeys(g.get("driver", "") for g in gpus)) or None
    return Node(env.get("hostname") or "unknown", node_id, env.get("cpu_model"), names, drivers)


@dataclass(frozen=True)
class Started:
    """Cell `index` began on `node`."""

    index: int
    node: Node


@dataclass(frozen=True)
class Finished:
    """Cell `index` is done: its result (a failed row when it crashed, timed out or lost its node)."""

    index: int
    result: CellResult
    started_at: float  # wall clock (time.time()) when the cell started, or was submitted if never seen starting
    node: Node | None = None  # None: it is not known where it ran (its node was lost before it reported)


Event = Started | Finished


class Executor(Protocol):
    """What the runner needs of an executor; a context manager that starts and stops its workers."""

    name: str
    submitted_state: str  # the runner's progress state of a submitted cell: "running" or "queued"

    def capacity(self) -> int:
        """How many cells may be submitted and not yet finished at once."""

    def submit(self, index: int, payload: CellPayload) -> None:
        """Start (or queue) cell `index`; its outcome comes back from `collect`."""

    def collect(self) -> list[Event]:
        """Block until something happened to a submitted cell; at least one event while any is pending."""

    def node_envs(self) -> dict[str, dict[str, Any]]:
        """Node id -> its environment (results/env.py), captured once per node; empty for local."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass
class LocalExecutor:
    """Today's loop: one cell at a time, on this machine; `collect` runs the submitted cell."""

    timeout_s: float
    isolate: bool
    env: dict[str, Any]  # this machine's environment, captured once by the runner
    name: str = "local"
    submitted_state: str = "running"
    _pending: list[tuple[int, CellPayload]] = field(default_factory=list)

    def capacity(self) -> int:
        return 1

    def submit(self, index: int, payload: CellPayload) -> None:
        self._pending.append((index, payload))

    def collect(self) -> list[Event]:
        from asrperf.run.runner import run_isolated

        index, payload = self._pending.pop(0)
        started = time.time()
        result = run_isolated(payload, self.timeout_s) if self.isolate else execute(payload)
        return [Finished(index, result, started, node_from_env(self.env))]

    def node_envs(self) -> dict[str, dict[str, Any]]:
        return {}

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending.clear()
