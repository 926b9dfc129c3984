"""The profile scenario: where one cell's time goes, per stage and per op category.

The nanoGPT bench.py recipe: torch.profiler with a wait / warmup / active schedule, one
`prof.step()` per call, the device synchronized before each step so a call's kernels land in its
own step. Each active call is also timed with perf_counter, so the profiled latency can be set
against the plain timer's (the profiler's own overhead shows as the difference).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from asrperf.data.clips import Clip
from asrperf.engines.base import Engine
from asrperf.measure.ops import category_table
from asrperf.scenarios.base import CellContext, Scenario, device_peaks
from asrperf.scenarios.latency import batch_for_call

STAGE_PREFIX = "asrperf::"


def profile_cell(engine: Engine, clips: list[Clip], batch_size: int, out_dir: str | Path,
                 wait: int = 1, warmup: int = 1, active: int = 3, name: str = "profile") -> dict[str, Any]:
    """Profile `wait + warmup + active` calls of one cell; only the active calls are recorded.

    Returns op_categories ([{category, self_s, share}], self time over the active calls, on the
    device timeline when the engine runs on CUDA, else the CPU), uncategorised_top ([{name,
    self_s}] of "other"), stages ({stage: host seconds per call}: every "asrperf::<stage>" range,
    inclusive of what it encloses, averaged over the active calls; nested ranges such as Whisper's
    encoder / decoder inside "model" are listed too, so only engine.stages() add up to a call),
    profiled_calls, profiled_latency_s (perf_counter per active call, mean; each call in
    profiled_latencies_s) and trace_path (Chrome
    trace JSON, open in chrome://tracing or Perfetto).
    """
    import torch

    if min(wait, warmup) < 0 or active < 1:
        raise ValueError(f"profile schedule wait={wait} warmup={warmup} active={active}: "
                         "need wait >= 0, warmup >= 0 and active >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trace_path = out_dir / f"{name}.trace.json"
    on_cuda = engine.device_type() == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    rate = clips[0].sample_rate
    latencies_s: list[float] = []
    n_calls = wait + warmup + active
    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path)),
        record_shapes=False,
    ) as prof:
        for i in range(n_calls):
            audios = [c.audio for c in batch_for_call(clips, batch_size, i)]
            engine.synchronize()
            t0 = time.perf_counter()
            engine.transcribe(audios, rate)
            engine.synchronize()
            if i >= wait + warmup:
                latencies_s.append(time.perf_counter() - t0)
            prof.step()
    events = prof.key_averages()
    rows, other = category_table(events, timeline="device" if on_cuda else "cpu")
    stages = {ev.key[len(STAGE_PREFIX):]: ev.cpu_time_total / 1e6 / active
              for ev in events if ev.key.startswith(STAGE_PREFIX)}
    return {
        "op_categories": rows,
        "op_timeline": "device" if on_cuda else "cpu",
        "uncategorised_top": other,
        "stages": stages,
        "stage_order": list(engine.stages()),
        "profiled_calls": active,
        "profiled_latency_s": sum(latencies_s) / len(latencies_s),
        "profiled_latencies_s": latencies_s,
        "trace_path": str(trace_path),
    }


def _gzip(path: Path) -> Path:
    """Compress a Chrome trace in place (chrome://tracing and Perfetto open .json.gz directly)."""
    import gzip
    import shutil

    out = path.with_name(path.name + ".gz")
    with path.open("rb") as src, gzip.open(out, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return out


def run_profile(engine: Engine, clips: list[Clip], batch_size: int, trace_dir: str | Path, name: str,
                active: int, peak_flops_per_s: float | None, peak_bytes_per_s: float | None) -> dict[str, Any]:
    """The profile scenario's row fields: op categories, stages, the trace, and the stage rooflines.

    op_categories: [{category, self_ms (per call), share}]; uncategorised_ops: [{name, self_ms}];
    stages: [{stage, ms (per call), share (of the profiled call), nested (inside another stage)}];
    trace_path: gzipped Chrome trace under `trace_dir`; roofline: `measure.roofline` per stage,
    timed over `active` unprofiled calls on the cell's first batch after the profiled ones, whose
    wall times are roofline_calls_s.
    """
    if not engine.runs_torch:
        return {"profile_missing_reason": f"engine {engine.name} does not run its model on torch: "
                                          "torch.profiler cannot see its ops"}
    from asrperf.measure.roofline import BYTES_METHOD, OVERHEAD_FACTOR, TIME_METHOD, measure_roofline

    res = profile_cell(engine, clips, batch_size, trace_dir, wait=1, warmup=1, active=active, name=name)
    per_call_s = res["profiled_latency_s"]
    top = list(res["stage_order"])
    order = top + sorted(s for s in res["stages"] if s not in top)
    row: dict[str, Any] = {
        "op_categories": [{"category": r["category"], "self_ms": 1000 * r["self_s"] / active, "share": r["share"]}
                          for r in res["op_categories"]],
        "op_timeline": res["op_timeline"],
        "uncategorised_ops": [{"name": o["name"], "self_ms": 1000 * o["self_s"] / active}
                              for o in res["uncategorised_top"]],
        "stages": [{"stage": s, "ms": 1000 * res["stages"][s], "share": res["stages"][s] / per_call_s,
                    "nested": s not in top} for s in order if s in res["stages"]],
        "profiled_calls": active,
        "profiled_latency_s": per_call_s,
        "profiled_latencies_s": res["profiled_latencies_s"],
        "trace_path": str(_gzip(Path(res["trace_path"]))),
    }
    if not (peak_flops_per_s and peak_bytes_per_s):
        row.update(roofline=None, roofline_missing_reason="no measured device peak for this dtype")
        return row
    rate = clips[0].sample_rate
    audios = [c.audio for c in batch_for_call(clips, batch_size, 0)]
    try:
        stages, calls_s = measure_roofline(lambda: engine.transcribe(audios, rate), engine.synchronize, active,
                                           peak_flops_per_s, peak_bytes_per_s, engine.flop_stages())
    except Exception as exc:  # a counter failure loses the roofline, never the profile
        row.update(roofline=None, roofline_missing_reason=f"roofline failed: {type(exc).__name__}: {exc}")
        return row
    row.update(
        roofline=stages, roofline_calls_s=calls_s,
        roofline_bytes_method=BYTES_METHOD, roofline_time_method=TIME_METHOD,
        roofline_overhead_factor=OVERHEAD_FACTOR,
    )
    return row


class ProfileScenario(Scenario):
    """torch.profiler op categories, stages, a Chrome trace and the stage rooflines, at one batch size."""

    name = "profile"

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return (min(configured),)  # where the time goes per call, not how it scales: latency measures that

    def run(self, ctx: CellContext) -> dict[str, Any]:
        peak = device_peaks(ctx)
        return {**peak, **run_profile(ctx.engine, ctx.clips, ctx.batch_size, ctx.settings.trace_dir, ctx.trace_name,
                                      max(1, ctx.timing.min_calls), peak.get("peak_matmul_flops_per_s"),
                                      peak.get("peak_copy_bytes_per_s"))}
