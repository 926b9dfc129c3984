"""Dataset evaluation sharded over a Ray Data actor pool (`asrperf eval --ray`).

The driver plans the length-sorted batches (scenarios/dataset.py) and makes each planned batch one
Ray Data row, so `map_batches(..., batch_size=1)` hands every actor call exactly one planned batch:
shards transcribe the same batches as a local run, whatever the number of actors. Each actor
(`ShardTranscriber`) loads the engine once; a CUDA actor asks for 1 GPU, a CPU actor for `threads`
CPUs. The driver merges the batches and computes the corpus metrics.

Before the pool starts, one Ray task on the same resources loads the engine to read its padding
policy, run the padding check and, for batch "auto", the batch-size search (one more model load).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asrperf.config import ModelConfig
from asrperf.data.audio import Utterance
from asrperf.errors import ConfigError, require
from asrperf.run.ray_executor import require_ray
from asrperf.scenarios.dataset import BatchOutput


@dataclass(frozen=True)
class EngineSpec:
    """What an actor needs to load the same engine as the driver would."""

    model: ModelConfig
    device: str
    threads: int  # CPU threads of the engine's pool (CPU actors ask Ray for this many CPUs)
    cache_dir: str


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ShardTranscriber:
    """A Ray Data actor: loads the engine once, then transcribes one planned batch per call."""

    def __init__(self, spec: EngineSpec) -> None:
        from asrperf.run.evaluate import load_engine

        self.engine, self.load_s = load_engine(spec.model, spec.device, spec.threads, spec.cache_dir)
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from asrperf.scenarios.dataset import transcribe_timed

        out: dict[str, list] = {"batch": [], "texts_json": [], "transcribe_s": [], "worker": [], "node": []}
        for j in range(len(batch["batch"])):
            audio = np.asarray(batch["audio"][j], dtype=np.float32)
            cuts = np.cumsum(np.asarray(batch["lengths"][j], dtype=np.int64))[:-1]
            texts, seconds = transcribe_timed(self.engine, np.split(audio, cuts), int(batch["sample_rate"][j]))
            out["batch"].append(int(batch["batch"][j]))
            out["texts_json"].append(json.dumps(texts))
            out["transcribe_s"].append(seconds)
            out["worker"].append(_worker_name())
            out["node"].append(self.node)
        return {k: np.asarray(v) for k, v in out.items()}


def _probe(spec: EngineSpec, utts: list[Utterance], search_max_batch: int | None,
           memory_budget_bytes: int | None) -> dict[str, Any]:
    """One engine load on the pool's resources: its provenance, padding facts and (with a max
    batch) the batch-size search. Runs as a Ray task."""
    from asrperf.results.schema import engine_fields
    from asrperf.run.evaluate import batch_search, load_engine
    from asrperf.run.worker import _device_facts
    from asrperf.scenarios.dataset import engine_facts

    engine, load_s = load_engine(spec.model, spec.device, spec.threads, spec.cache_dir)
    out: dict[str, Any] = {"load_s": load_s, **engine_facts(engine, utts)}
    if search_max_batch is not None:
        out["search"] = batch_search(engine, utts, spec.device, search_max_batch, memory_budget_bytes)
    out["engine"] = {**engine_fields(engine.info()), "runs_torch": engine.runs_torch}
    out["weights_real"] = engine.info().get("weights") == "real"
    out["device_facts"] = _device_facts(engine, spec.device)
    return out


@dataclass
class RayRun:
    """What the Ray path gives the driver: the batches, the probe's facts and the pool's shape."""

    outputs: list[BatchOutput]
    probe: dict[str, Any]
    wall_s: float
    actors: int
    resources: dict[str, float]
    threads: int  # CPU threads of each actor's engine
    shards: list[dict[str, Any]] = field(default_factory=list)


def connect(address: str | None) -> tuple[Any, bool]:
    """ray, connected (to `address`, the running session, or a new local cluster); True when this
    call started it (the caller shuts it down)."""
    ray = require_ray("asrperf eval --ray")
    # `ray.data` is imported on first use: a broken Ray Data install fails here, not mid-evaluation
    require("ray.data", "asrperf eval --ray", "ray", package="ray")
    if ray.is_initialized():
        return ray, False
    # "local": always a new cluster on this machine, never one some other process left running
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return ray, True


def resources(device: str, threads: int, actors: int, cluster_cpus: float) -> tuple[dict[str, float], int]:
    """Per-actor Ray resources and the engine's CPU threads: 1 GPU for CUDA, else `threads` CPUs
    (threads 0: the cluster's CPUs shared evenly by the actors, at least 1)."""
    if threads == 0:
        threads = max(1, int(cluster_cpus) // actors)
    if device.startswith("cuda"):
        return {"num_gpus": 1.0}, threads
    return {"num_cpus": float(threads)}, threads


def evaluate_on_ray(spec: EngineSpec, utts: Sequence[Utterance], plan: Sequence[tuple[int, ...]] | None,
                    batch_size: int, actors: int, address: str | None,
                    search_max_batch: int | None = None, memory_budget_bytes: int | None = None) -> RayRun:
    """Probe the engine on the cluster, then transcribe every planned batch on `actors` actors.
    With `search_max_batch`, the probe searches the batch size and `batch_size`/`plan` are replanned."""
    from asrperf.scenarios.dataset import length_order, plan_batches

    if actors < 1:
        raise ConfigError(f"--actors: {actors} must be >= 1")
    ray, started = connect(address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        res, threads = resources(spec.device, spec.threads, actors, ray.cluster_resources().get("CPU", 1))
        spec = EngineSpec(spec.model, spec.device, threads, spec.cache_dir)
        order = length_order([u.duration_s for u in utts])
        wanted = order[: max(search_max_batch or 1, 1)] + [order[-1]]  # the longest (search) and the shortest (padding)
        probe_utts = [utts[i] for i in dict.fromkeys(wanted)]
        probe_task = ray.remote(_probe).options(**res)
        probe = ray.get(probe_task.remote(spec, probe_utts, search_max_batch, memory_budget_bytes))
        if search_max_batch is not None:
            batch_size = probe["search"][0]
        if plan is None or search_max_batch is not None:
            plan = plan_batches([u.duration_s for u in utts], batch_size)
        items = [{"batch": k, "sample_rate": utts[0].sample_rate,
                  "audio": np.concatenate([utts[i].audio for i in members]),
                  "lengths": np.array([len(utts[i].audio) for i in members], dtype=np.int64)}
                 for k, members in enumerate(plan)]
        t0 = time.perf_counter()
        # one block per planned batch, so the pool's actors share the batches
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        done = ds.map_batches(ShardTranscriber, fn_constructor_kwargs={"spec": spec}, concurrency=actors,
                              batch_size=1, batch_format="numpy", **res).take_all()
        wall_s = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    outputs, shards = [], {}
    for r in done:
        k = int(r["batch"])
        members = plan[k]
        b = BatchOutput(k, tuple(members), tuple(json.loads(str(r["texts_json"]))), float(r["transcribe_s"]),
                        sum(utts[i].duration_s for i in members), worker=str(r["worker"]))
        outputs.append(b)
        s = shards.setdefault(b.worker, {"worker": b.worker, "node": str(r["node"]), "batches": 0, "utterances": 0,
                                         "transcribe_s": 0.0})
        s["batches"] += 1
        s["utterances"] += len(members)
        s["transcribe_s"] += b.transcribe_s
    outputs.sort(key=lambda b: b.batch)
    return RayRun(outputs, {**probe, "batch_size": batch_size}, wall_s, actors, res, threads,
                  sorted(shards.values(), key=lambda s: s["worker"]))
