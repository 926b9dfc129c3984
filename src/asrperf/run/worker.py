"""Run one cell: load the engine, build the meters, run the scenario, build the row. Also the
subprocess entry point.

    python -m asrperf.run.worker PAYLOAD.json RESULT.json

The payload (`CellPayload`) names the cell, where its clips are cached, the timing policy and the
scenario settings; the result is the row (results/schema.py) plus the raw timings. Anything that
goes wrong becomes a failed row with a one-line reason. Nothing here knows a scenario or an
engine by name: the scenario comes from `SCENARIOS`, the engine from the registry.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from asrperf.config import ModelConfig, ServerConfig, StreamingConfig, TimingConfig
from asrperf.data.clips import ClipCache
from asrperf.engines.base import TIMED_REGION, quiet_library_logs
from asrperf.errors import AsrperfError
from asrperf.run.plan import Cell
from asrperf.scenarios.base import CellContext, Meters, ScenarioSettings

# the fork server preloads this module before torch and transformers: quiet their import noise there
quiet_library_logs()


@dataclass(frozen=True)
class CellPayload:
    """What crosses the process boundary to measure one cell (JSON both ways)."""

    cell: Cell
    cache_dir: str
    clip_key: str
    n_clips: int
    timing: TimingConfig
    accuracy: bool  # score WER where the weights are real
    isolated: bool
    settings: ScenarioSettings
    # modules outside asrperf that register scenarios or engines: imported first in the cell's process
    plugins: tuple[str, ...] = ()
    # where the clips are cached when not under cache_dir (a Ray node unpacks the shipped clips there)
    clips_dir: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CellPayload":
        d = json.loads(text)
        c = d["cell"]
        cell = Cell(ModelConfig(**c.pop("model")), **c)
        settings = dict(d["settings"])
        if settings.get("streaming") is not None:
            settings["streaming"] = StreamingConfig(**settings["streaming"])
        if settings.get("server") is not None:  # JSON lists back to the config's tuples
            settings["server"] = ServerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in settings["server"].items()})
        return cls(cell=cell, cache_dir=d["cache_dir"], clip_key=d["clip_key"], n_clips=d["n_clips"],
                   timing=TimingConfig(**d["timing"]), accuracy=d["accuracy"], isolated=d["isolated"],
                   settings=ScenarioSettings(**settings), plugins=tuple(d["plugins"]),
                   clips_dir=d.get("clips_dir", ""))


def set_threads(threads: int) -> None:
    """Size the CPU thread pools before any engine work (env vars for libraries not yet loaded)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _device_facts(engine: Any, device: str) -> dict[str, Any]:
    """What the cell ran on: the CPU model, or the GPU's name, CUDA version and peak memory."""
    from asrperf.results.env import cpu_model

    facts: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None and engine is not None and engine.runs_torch:  # torch runs the model: its pool size matters
        facts["torch_threads"] = torch.get_num_threads()
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        facts.update(device_name=props.name, cuda_version=torch.version.cuda)
        if engine is not None and engine.runs_torch:  # other runtimes allocate outside torch's allocator
            from asrperf.measure.memory import cuda_peaks_bytes

            facts["cuda_peak_allocated_bytes"], facts["cuda_peak_reserved_bytes"] = cuda_peaks_bytes(index)
    else:
        facts["device_name"] = cpu_model()
    return facts


def _meters(wanted: tuple[str, ...], device: str, threads: int, settings: ScenarioSettings, engine: Any) -> Meters:
    """The measurers a scenario asked for, built for this cell's device and engine."""
    meters = Meters()
    if "energy" in wanted:
        from asrperf.measure.energy import cell_readers

        meters.energy_readers, meters.energy_missing_reason = cell_readers(device, settings.energy)
        # idle power only means something for real counters (the estimate has no idle draw), and
        # its window must be at least as long as each counter's update period
        measured = [r for r in meters.energy_readers if r.method.startswith("measured")]
        meters.energy_idle_s = max([settings.energy_idle_s] + [r.min_window_s for r in measured]) if measured else 0.0
    if "memory" in wanted:
        from asrperf.measure.memory import memory_meter

        meters.memory = memory_meter(device, engine.runs_torch, engine.name)
    if "contention" in wanted:
        from asrperf.measure.contention import contention_guard

        meters.contention = contention_guard(threads, device)
    return meters


def identity_fields(cell: Cell, isolated: bool) -> dict[str, Any]:
    m = cell.model
    return {"engine": m.engine, "model": m.display, "model_name": m.name, "weights_requested": m.weights,
            "dtype": m.dtype, "variant": m.variant, "device": cell.device, "threads": cell.threads,
            "clip_length_s": cell.clip_length_s, "batch_size": cell.batch_size, "scenario": cell.scenario,
            "isolated": isolated, **({"chunk_ms": cell.chunk_ms} if cell.chunk_ms else {})}


@dataclass(frozen=True)
class CellResult:
    """A measured cell: its flat row (validated when committed) and the raw per-call seconds."""

    row: dict[str, Any]
    warmup_s: list[float] = dataclasses.field(default_factory=list)
    samples_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.row.get("status") == "ok"


def execute(payload: CellPayload) -> CellResult:
    """Measure the cell described by `payload`; never raises (a failure is a row)."""
    from asrperf.engines.capabilities import declaration
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.measure.memory import process_hwm_bytes, weights_fields
    from asrperf.results.schema import engine_fields
    from asrperf.scenarios import SCENARIOS

    cell = payload.cell
    set_threads(cell.threads)
    row: dict[str, Any] = identity_fields(cell, payload.isolated)
    engine, ctx = None, None
    try:
        for module in payload.plugins:
            importlib.import_module(module)
        scenario = SCENARIOS[cell.scenario]
        clips = ClipCache(payload.clips_dir or payload.cache_dir).load(payload.clip_key, payload.n_clips)
        if clips is None:
            raise AsrperfError(f"clips {payload.clip_key} are not in the cache; run `asrperf prepare` first")
        spec = dataclasses.replace(resolve(cell.model.name), options=cell.model.options)
        engine = create(cell.model.engine, payload.cache_dir)
        t0 = time.perf_counter()
        engine.load(spec, cell.model.weights, cell.model.dtype, cell.device)
        row["load_s"] = time.perf_counter() - t0
        set_threads(cell.threads)  # torch may have been imported by the load itself
        row["rss_after_load_bytes"] = process_hwm_bytes()[0]
        row.update(weights_fields(engine.loaded_weights(), engine.name))
        real = engine.info().get("weights") == "real"
        # WER exists only for real weights: random outputs are noise, never a number to compare
        score = payload.accuracy and real
        why_not = None if score else ("random weights: outputs are not speech recognition" if not real
                                      else "accuracy off (loop clips or accuracy=false)")
        ctx = CellContext(
            engine=engine, clips=clips, device=cell.device, dtype=cell.model.dtype,
            clip_length_s=cell.clip_length_s, batch_size=cell.batch_size, timing=payload.timing, score=score,
            score_missing_reason=why_not, settings=payload.settings, trace_name=_file_name(cell.key),
            meters=_meters(scenario.meters, cell.device, cell.threads, payload.settings, engine),
            chunk_ms=cell.chunk_ms, model=cell.model, cache_dir=payload.cache_dir,
        )
        fields = scenario.run(ctx)
        # after the calls: long-form and token policy are known now
        row.update(engine_fields(engine.info()), runs_torch=engine.runs_torch,
                   accuracy_reference=declaration(cell.model.engine).accuracy_reference)
        row.update(fields)
        if scenario.scores_accuracy and not score:
            row.update(wer=None, wer_missing_reason=why_not)
        row.update(status="ok", timed_region=list(TIMED_REGION), n_clips=len(clips),
                   clip_ids=[c.id for c in clips], speech_s_mean=sum(c.speech_s for c in clips) / len(clips),
                   timing_policy=dataclasses.asdict(payload.timing))
    except AsrperfError as exc:
        row.update(status="failed", error=str(exc))
    except MemoryError:
        row.update(status="failed", error="out of memory (MemoryError) in the cell")
    except Exception as exc:  # a crashing cell is recorded, the run goes on
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="failed", error=f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})".replace("\n", " "))
    _finish(row, engine, cell)
    if ctx is None or row["status"] != "ok":
        return CellResult(row)
    return CellResult(row, list(ctx.warmup_s), list(ctx.samples_s))


def _file_name(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in key)


def _finish(row: dict[str, Any], engine: Any, cell: Cell) -> None:
    from asrperf.measure.memory import process_hwm_bytes

    row.update(_device_facts(engine, cell.device))
    row["peak_rss_bytes"], row["peak_rss_method"] = process_hwm_bytes()


def main(argv: list[str]) -> int:
    payload_path, result_path = argv
    payload = CellPayload.from_json(open(payload_path).read())
    result = execute(payload)
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dataclasses.asdict(result), f)
    os.replace(tmp, result_path)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
