"""`asrperf eval`: one model over every whole utterance of a source, locally or on Ray, one stored row.

Locally everything runs in this process: read the utterances, load the engine, choose the batch
(given, or the max-throughput search), transcribe the length-sorted batches, score, commit. On
Ray (run/ray_shards.py) the batches are sharded over an actor pool and merged here. Either way the
result is one `dataset` scenario row (results/sections.py `Dataset` + the accuracy section, with
every utterance's transcript), and the per-batch transcription seconds go to the samples table.

The run id is the evaluation's identity (model, engine, dtype, source, device, threads, batch,
executor and actors, asrperf's version): re-running an evaluation already stored ok reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrperf.config import DEFAULT_MAX_BATCH, ModelConfig, check_variant
from asrperf.data.audio import SAMPLE_RATE, Utterance
from asrperf.engines.base import TIMED_REGION, Engine
from asrperf.errors import ConfigError, DataError

AUTO_BATCH = 0  # batch_size 0: the search chooses (as max_throughput's SEARCHED_BATCH)


@dataclass(frozen=True)
class EvalConfig:
    """One dataset evaluation."""

    model: ModelConfig
    source: dict[str, Any]  # a source table, as [source] in a run config
    device: str = "cpu"
    threads: int = 0  # 0: every core locally; on Ray, the cluster's CPUs shared by the actors
    batch_size: int = AUTO_BATCH  # 0: the largest-throughput batch found by the search
    max_batch: int = DEFAULT_MAX_BATCH  # the search's largest batch
    memory_budget_gib: float = 0.0  # the search stops before this much device memory (0: none)
    ray: bool = False
    ray_address: str | None = None  # None: the running Ray session, else a new local cluster
    actors: int = 1
    n_worst: int = 10
    store: str = "asrperf-results/results.sqlite"
    cache_dir: str = ".asrperf-cache"

    def validate(self) -> "EvalConfig":
        check_variant(self.model, self.device)
        for key, ok, what in (("batch", self.batch_size >= 0, ">= 1, or auto"), ("max_batch", self.max_batch >= 1, ">= 1"),
                              ("threads", self.threads >= 0, ">= 0 (0: all cores)"), ("actors", self.actors >= 1, ">= 1"),
                              ("memory_budget_gib", self.memory_budget_gib >= 0, ">= 0 GiB (0: none)")):
            if not ok:
                raise ConfigError(f"eval {key}: {getattr(self, key if key != 'batch' else 'batch_size')!r} must be {what}")
        if self.actors > 1 and not self.ray:
            raise ConfigError(f"--actors {self.actors} needs --ray (locally the evaluation is one process)")
        return self

    def identity(self) -> str:
        from asrperf import __version__

        d = dataclasses.asdict(self)
        for key in ("store", "cache_dir", "ray_address", "n_worst"):
            d.pop(key)
        d["asrperf_version"] = __version__
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def cell_key(self, source_key: str) -> str:
        m = self.model
        executor = f"ray={self.actors}" if self.ray else "local"
        batch = "auto" if self.batch_size == AUTO_BATCH else str(self.batch_size)
        return "|".join([m.engine, m.display, m.weights, m.variant, self.device, f"t={self.threads}",
                         f"source={source_key}", f"batch={batch}", "dataset", executor])


@dataclass
class EvalSummary:
    run_id: str
    cell_key: str
    store: Path
    row: dict[str, Any]
    reused: bool = False  # read back from the store: this evaluation was already stored ok


def load_engine(model: ModelConfig, device: str, threads: int, cache_dir: str) -> tuple[Engine, float]:
    """The model loaded on `device` with `threads` CPU threads (as a cell's process loads it); load seconds."""
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.run.worker import set_threads

    if threads:
        set_threads(threads)
    spec = dataclasses.replace(resolve(model.name), options=model.options)
    engine = create(model.engine, cache_dir)
    t0 = time.perf_counter()
    engine.load(spec, model.weights, model.dtype, device)
    load_s = time.perf_counter() - t0
    if threads:
        set_threads(threads)  # the load may have imported torch
    return engine, load_s


def batch_search(engine: Engine, utts: list[Utterance], device: str, max_batch: int,
                 memory_budget_bytes: int | None) -> tuple[int, dict[str, Any]]:
    """The searched batch size and its row fields (CUDA: device memory is what runs out)."""
    from asrperf.scenarios.dataset import search_batch_size, search_fields

    peak = reset = None
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and engine.runs_torch:
        index = torch.device(device).index or 0
        peak = lambda: torch.cuda.max_memory_allocated(index)  # noqa: E731
        reset = lambda: torch.cuda.reset_peak_memory_stats(index)  # noqa: E731
    result = search_batch_size(engine, utts, max_batch, memory_budget_bytes, peak, reset)
    if result.best is None:
        raise DataError(f"batch search: no batch size could transcribe the longest utterance "
                        f"({result.probes[0].error if result.probes else 'no probe ran'}); pass --batch 1")
    return result.best.batch_size, search_fields(result)


def read_utterances(source_spec: dict[str, Any], cache_dir: str) -> tuple[Any, list[Utterance]]:
    from asrperf.data.sources import source_from_spec

    source = source_from_spec(source_spec, Path(cache_dir))
    utts = list(source.utterances(SAMPLE_RATE))
    if not utts:
        raise DataError(f"source {source.key} holds no scorable utterances; check the source")
    return source, utts


def evaluate(cfg: EvalConfig, on_batch: Callable[[int, int], None] | None = None,
             on_stage: Callable[[str], None] | None = None) -> EvalSummary:
    """Run (or read back) one dataset evaluation and commit its row."""
    from asrperf.engines.capabilities import declaration
    from asrperf.engines.catalog import resolve
    from asrperf.results import env as envmod
    from asrperf.results.schema import engine_fields
    from asrperf.results.store import Store, check_writable
    from asrperf.run.preflight import check_devices
    from asrperf.run.worker import _device_facts

    cfg.validate()
    resolve(cfg.model.name)
    check_devices([cfg.device])
    check_writable(cfg.store)
    stage = on_stage or (lambda what: None)
    stage("reading utterances")
    source, utts = read_utterances(cfg.source, cfg.cache_dir)
    run_id, key = cfg.identity(), cfg.cell_key(source.key)
    with Store(cfg.store) as store:
        if store.cell_status(run_id).get(key) == "ok":
            row = dict(next(r for r in store.rows(run_id) if r.get("cell_key") == key))
            return EvalSummary(run_id, key, Path(cfg.store), row, reused=True)
    started = time.time()
    budget = int(cfg.memory_budget_gib * 2**30) or None
    auto = cfg.batch_size == AUTO_BATCH
    m = cfg.model
    row: dict[str, Any] = {"engine": m.engine, "model": m.display, "model_name": m.name, "weights_requested": m.weights,
                           "dtype": m.dtype, "variant": m.variant, "device": cfg.device, "threads": cfg.threads,
                           "scenario": "dataset", "isolated": False, "dataset_source": source.describe(),
                           "dataset_source_key": source.key}
    if cfg.ray:
        from asrperf.run.ray_shards import EngineSpec, evaluate_on_ray
        from asrperf.scenarios.dataset import corpus_fields

        stage(f"Ray: probing the engine, then {cfg.actors} actor(s)")
        spec = EngineSpec(m, cfg.device, cfg.threads, cfg.cache_dir)
        got = evaluate_on_ray(spec, utts, None, cfg.batch_size or 1, cfg.actors, cfg.ray_address,
                              cfg.max_batch if auto else None, budget)
        probe = got.probe
        score = probe["weights_real"]
        fields = corpus_fields(utts, got.outputs, score, cfg.n_worst)
        fields.update({k: probe[k] for k in ("padding_policy", "padding", "padding_changes_output", "padding_check")},
                      dataset_executor="ray", dataset_wall_s=got.wall_s,
                      wall_rtfx=fields["audio_s_total"] / got.wall_s, ray_actors=got.actors,
                      ray_address=cfg.ray_address or "local (started by the evaluation)",
                      ray_resources_per_actor=got.resources, dataset_shards=got.shards, load_s=probe["load_s"])
        if auto:
            fields.update(probe["search"][1])
        row.update(probe["engine"], **probe["device_facts"], threads=got.threads)
        batch_size, outputs = probe["batch_size"], got.outputs
    else:
        from asrperf.scenarios.dataset import evaluate_local

        stage("loading the model")
        engine, load_s = load_engine(m, cfg.device, cfg.threads, cfg.cache_dir)
        score = engine.info().get("weights") == "real"
        search: dict[str, Any] = {"dataset_batch_mode": "given"}
        batch_size = cfg.batch_size
        if auto:
            stage("searching the batch size")
            batch_size, search = batch_search(engine, utts, cfg.device, cfg.max_batch, budget)
        stage(f"transcribing {len(utts)} utterances at batch {batch_size}")
        fields, outputs = evaluate_local(engine, utts, batch_size, score, cfg.n_worst, on_batch)
        fields.update(search, load_s=load_s)
        row.update(engine_fields(engine.info()), runs_torch=engine.runs_torch, **_device_facts(engine, cfg.device))
    fields.setdefault("dataset_batch_mode", "given")
    row.update(fields, batch_size=batch_size, accuracy_reference=declaration(m.engine).accuracy_reference,
               status="ok", timed_region=list(TIMED_REGION))
    if not score:
        row.update(wer=None, wer_missing_reason="random weights: outputs are not speech recognition")
    with Store(cfg.store) as store:
        store.begin_run(run_id, {"eval": dataclasses.asdict(cfg)}, envmod.capture())
        store.commit_cell(run_id, key, row, started, samples_s=[b.transcribe_s for b in outputs])
        row = dict(next(r for r in store.rows(run_id) if r.get("cell_key") == key))
    return EvalSummary(run_id, key, Path(cfg.store), row)
