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
    on_cuda = getattr(getattr(engine, "device", None), "type", "cpu") == "cuda"
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
