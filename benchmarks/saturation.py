"""Served saturation against offline max throughput, side by side (issue "Serving under load").

    python benchmarks/saturation.py [--engine ct2] [--dtype int8] [--batch 16] [--duration 60]

Offline: the engine's batch call on `--batch` clips of 15 s, in its own process, 4 calls, before
and after the served probes (so a machine whose speed drifts shows in the spread). Served: an
asrperf server (max_batch_size = --batch, niced as asrperf load starts it) under 2 x --batch
closed-loop clients, its steady-state completion rate; then a Poisson probe for the generator's
lateness. Prints the load average before and after.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time

import numpy as np


def offline(engine: str, dtype: str, batch: int, cache: str) -> list[float]:
    """Seconds per batch call, in this process (called through a child for isolation)."""
    import soundfile as sf

    from asrperf.config import ModelConfig
    from asrperf.load.workload import load_workload
    from asrperf.run.plan import usable_cores
    from asrperf.serve.server import engine_transcriber, load_engine

    clips, _ = load_workload({"kind": "builtin"}, cache, 15.0, 8)
    audios = [sf.read(io.BytesIO(c.wav), dtype="float32")[0] for c in clips]
    eng, _ = load_engine(ModelConfig(name="whisper-tiny.en", engine=engine, dtype=dtype, weights="real"), "cpu",
                         usable_cores(), cache)
    f, times = engine_transcriber(eng), []
    for _ in range(4):
        t = time.perf_counter()
        f((audios * batch)[:batch])
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="ct2")
    ap.add_argument("--dtype", default="int8")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--offline-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.offline_only:
        print(" ".join(f"{t:.3f}" for t in offline(a.engine, a.dtype, a.batch, a.cache_dir)))
        return
    from asrperf.load.arrivals import Arrivals
    from asrperf.load.generator import Bounds, Target, run_load
    from asrperf.load.launch import SERVER_NICE, asrperf_serve_argv, server_process
    from asrperf.load.metrics import completion_rate_rps
    from asrperf.load.workload import load_workload

    def off() -> list[float]:
        out = subprocess.run([sys.executable, __file__, "--offline-only", "--engine", a.engine, "--dtype", a.dtype,
                              "--batch", str(a.batch), "--cache-dir", a.cache_dir], capture_output=True, text=True)
        return [float(x) for x in out.stdout.split()]

    print("load before", open("/proc/loadavg").read().strip())
    calls = off()
    clips, _ = load_workload({"kind": "builtin"}, a.cache_dir, 15.0, 8)
    argv = asrperf_serve_argv(["-m", "whisper-tiny.en", "-e", a.engine, "--dtype", a.dtype, "--weights", "real",
                               "--max-batch-size", str(a.batch), "--max-wait-ms", "20", "--max-queue", "256",
                               "--cache-dir", a.cache_dir])
    with server_process(argv, die_with_parent=True, nice=SERVER_NICE) as s:
        t = Target(s.url, "whisper-tiny.en")
        sat = run_load(t, clips, Arrivals("concurrency", clients=2 * a.batch), Bounds(400, a.duration, 120.0, 2.0))
        ok = [r for r in sat.records if r.outcome == "ok"]
        served = completion_rate_rps(sat)
        poi = run_load(t, clips, Arrivals("poisson", rate_rps=0.5), Bounds(400, 40.0, 60.0, 2.0))
        late = [r.lateness_s for r in poi.records if r.outcome == "ok" and not r.warmup]
    calls += off()
    rate = a.batch / float(np.median(calls))
    print(f"offline b{a.batch} calls s: {', '.join(f'{c:.2f}' for c in calls)}; {rate:.3f} clips/s at the median")
    print(f"served: completion {served or 0:.3f} req/s = {(served or 0) / rate:.0%} of offline; batch compute p50 "
          f"{np.median([r.compute_s for r in ok]):.2f} s; batches {sorted({r.batch_size for r in ok})}; "
          f"generator {sat.policy}")
    print(f"poisson 0.5: {len(late)} requests, lateness p50 {1000 * np.median(late):.2f} ms, "
          f"p99 {1000 * np.percentile(late, 99):.2f} ms, max {1000 * max(late):.2f} ms")
    print("load after", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
