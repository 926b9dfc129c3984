"""Run one cell: load the engine, measure, and return the row. Also the subprocess entry point.

    python -m asrperf.run.worker PAYLOAD.json RESULT.json

The payload names the cell, where its clips are cached and the timing policy; the result is the
row plus raw timings. Anything that goes wrong becomes a failed row with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from typing import Any

from asrperf.config import ModelConfig, TimingConfig
from asrperf.data.clips import ClipCache
from asrperf.engines.base import quiet_library_logs
from asrperf.errors import AsrperfError

# the fork server preloads this module before torch and transformers: quiet their import noise there
quiet_library_logs()


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
    info = engine.info() if engine is not None else {}
    torch = sys.modules.get("torch")
    if torch is not None and "torch_version" in info:  # torch runs the model: its pool size matters
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


def energy_readers(device: str, enabled: bool) -> tuple[list[Any], str | None]:
    """The energy readers for a cell on `device`, or none with the reason energy is missing."""
    if not enabled:
        return [], "energy off (energy = false)"
    from asrperf.errors import ConfigError
    from asrperf.measure.energy import default_readers

    gpus = [] if device == "cpu" else [int(device.partition(":")[2] or 0)]
    try:
        return default_readers(gpus), None
    except ConfigError as exc:  # e.g. a GPU without readable NVML: missing, never a CPU-only number
        return [], str(exc)


def peak_rss_bytes() -> int:
    """The process's peak RSS so far (measure/memory.py: VmHWM, never the parent's ru_maxrss)."""
    from asrperf.measure.memory import process_hwm_bytes

    return process_hwm_bytes()[0]


def execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Measure the cell described by `payload`; never raises (a failure is a row)."""
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.scenarios.latency import flops_fields, run_latency

    cell = payload["cell"]
    set_threads(cell["threads"])
    model = ModelConfig(**cell["model"])
    row: dict[str, Any] = {
        "engine": model.engine, "model": model.display, "model_name": model.name, "weights_requested": model.weights,
        "dtype": model.dtype, "variant": model.variant, "device": cell["device"], "threads": cell["threads"],
        "clip_length_s": cell["clip_length_s"], "batch_size": cell["batch_size"], "scenario": cell["scenario"],
        "isolated": payload.get("isolated", False),
    }
    engine = None
    try:
        clips = ClipCache(payload["cache_dir"]).load(payload["clip_key"], payload["n_clips"])
        if clips is None:
            raise AsrperfError(f"clips {payload['clip_key']} are not in the cache; run `asrperf prepare` first")
        spec = dataclasses.replace(resolve(model.name), options=model.options)
        engine = create(model.engine, payload["cache_dir"])
        t0 = time.perf_counter()
        engine.load(spec, model.weights, model.dtype, cell["device"])
        row["load_s"] = time.perf_counter() - t0
        set_threads(cell["threads"])  # torch may have been imported by the load itself
        row["rss_after_load_bytes"] = peak_rss_bytes()
        from asrperf.measure.memory import memory_meter, weights_fields

        row.update(weights_fields(engine.loaded_weights(), engine.name))
        info = engine.info()
        # WER exists only for real weights: random outputs are noise, never a number to compare
        score = payload["score"] and info.get("weights") == "real"
        if cell["scenario"] == "max_throughput":
            row.update(engine.info())
            row.update(_max_throughput(engine, clips, cell["device"], TimingConfig(**payload["timing"]), payload))
            row.update(status="ok", timed_region=list(payload["timed_region"]), n_clips=len(clips),
                       timing_policy=payload["timing"])
            return _finish(row, engine, cell)
        if cell["scenario"] in ("profile", "decode"):
            row.update(_analysis(engine, clips, cell, model.dtype, TimingConfig(**payload["timing"]), payload))
            row.update(engine.info())
            row.update(status="ok", timed_region=list(payload["timed_region"]), n_clips=len(clips),
                       timing_policy=payload["timing"])
            return _finish(row, engine, cell)
        readers, energy_missing = energy_readers(cell["device"], payload.get("energy", True))
        # idle power only means something for real counters (the estimate has no idle draw), and
        # its window must be at least as long as each counter's update period
        measured = [r for r in readers if r.method.startswith("measured")]
        idle_s = max([payload.get("energy_idle_s", 0.0)] + [r.min_window_s for r in measured]) if measured else 0.0
        memory = memory_meter(cell["device"], engine.runs_torch, engine.name)
        metrics, timed = run_latency(engine, clips, cell["batch_size"], TimingConfig(**payload["timing"]), score,
                                     readers, idle_s, memory=memory, contention=_guard(cell))
        if energy_missing:
            row.update(energy_j=None, energy_missing_reason=energy_missing)
        if payload.get("flops"):
            peak = _peak(cell["device"], model.dtype, engine)
            row.update(peak)
            row.update(flops_fields(engine, clips, cell["batch_size"], metrics["latency_s_p50"],
                                    peak.get("peak_matmul_flops_per_s")))
        row.update(engine.info())  # after the calls: long-form and token policy are known now
        row.update(metrics)
        if row.get("compiled_graphs_per_call") is not None:  # torch.compile: did a timed call compile?
            first = metrics["warmup_calls"]
            row["recompilations_timed"] = sum(row["compiled_graphs_per_call"][first:first + metrics["n_calls"]])
        if not score:
            row["wer"] = None
            row["wer_missing_reason"] = ("random weights: outputs are not speech recognition"
                                         if info.get("weights") != "real" else "accuracy off (loop clips or accuracy=false)")
        row.update(
            status="ok", timed_region=list(payload["timed_region"]), n_clips=len(clips),
            clip_ids=[c.id for c in clips], speech_s_mean=sum(c.speech_s for c in clips) / len(clips),
            timing_policy=payload["timing"], warmup_s=timed.warmup_s, samples_s=timed.samples_s,
        )
    except AsrperfError as exc:
        row.update(status="failed", error=str(exc))
    except MemoryError:
        row.update(status="failed", error="out of memory (MemoryError) in the cell")
    except Exception as exc:  # a crashing cell is recorded, the run goes on
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="failed", error=f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})".replace("\n", " "))
    return _finish(row, engine, cell)


def _peak(device: str, dtype: str, engine: Any) -> dict[str, Any]:
    """The device's measured matmul and copy peaks in the cell's dtype (torch engines only)."""
    if not engine.runs_torch or dtype not in ("fp32", "fp16", "bf16"):
        return {}
    from asrperf.measure.peak import measure_peak

    p = measure_peak(device, dtype)
    return {"peak_matmul_flops_per_s": p.matmul_flops_per_s, "peak_copy_bytes_per_s": p.copy_bytes_per_s,
            "peak_method": p.method}


def _analysis(engine: Any, clips: list, cell: dict[str, Any], dtype: str, timing: TimingConfig,
              payload: dict[str, Any]) -> dict[str, Any]:
    """The profile scenario (op categories, stages, trace, roofline) or the decode scenario."""
    if cell["scenario"] == "profile":
        from asrperf.scenarios.profile import run_profile

        peak = _peak(cell["device"], dtype, engine)
        name = "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in payload["cell_key"])
        return {**peak, **run_profile(engine, clips, cell["batch_size"], payload["trace_dir"], name,
                                      max(1, timing.min_calls), peak.get("peak_matmul_flops_per_s"),
                                      peak.get("peak_copy_bytes_per_s"))}
    from asrperf.scenarios.decode import run_decode

    curve_at = payload.get("decode_curve_length_s", cell["clip_length_s"])
    curve = payload.get("decode_tokens", 0) if cell["clip_length_s"] == curve_at else 0
    return run_decode(engine, clips, cell["batch_size"], timing, curve,
                      f"measured once per model, in the {curve_at:g} s cell: the curve decodes the first 30 s "
                      "window, the same work at every clip length")


def _finish(row: dict[str, Any], engine: Any, cell: dict[str, Any]) -> dict[str, Any]:
    from asrperf.measure.memory import process_hwm_bytes

    row.update(_device_facts(engine, cell["device"]))
    row["peak_rss_bytes"], row["peak_rss_method"] = process_hwm_bytes()
    return row


def _max_throughput(engine: Any, clips: list, device: str, timing: TimingConfig, payload: dict) -> dict[str, Any]:
    """Search batch sizes for the best samples/s (DESIGN.md "Max throughput")."""
    from asrperf.scenarios.max_throughput import SearchPolicy, measure_with_engine, search

    peak, reset = None, None
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None:  # device memory is what runs out there
        index = torch.device(device).index or 0
        peak, reset = (lambda: torch.cuda.max_memory_allocated(index)), (lambda: torch.cuda.reset_peak_memory_stats(index))
    policy = SearchPolicy(max_batch=payload.get("max_batch", 64), memory_budget_bytes=payload.get("memory_budget_bytes"))
    guard = _guard(payload["cell"])
    result = search(measure_with_engine(engine, clips, timing, peak, reset, contention=guard), policy)
    merged = guard.merged()
    return {**result.to_row(), **(merged.to_row() if merged is not None else {})}


def _guard(cell: dict[str, Any]) -> Any:
    """The busy-machine guard of the cell's timed windows (measure/contention.py)."""
    from asrperf.measure.contention import contention_guard

    return contention_guard(cell["threads"], cell["device"])


def main(argv: list[str]) -> int:
    payload_path, result_path = argv
    payload = json.loads(open(payload_path).read())
    row = execute(payload)
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(row, f)
    os.replace(tmp, result_path)
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
