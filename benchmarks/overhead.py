"""Harness overhead: asrperf's measured latency vs a bare hand-written loop over the same engine call.

    python benchmarks/overhead.py [--lengths 5,60] [--calls 10]

For each clip length: (1) `asrperf run` measures whisper-tiny.en (real weights) on one clip in an
isolated cell; (2) this script loads the same engine and times `engine.transcribe([clip])` in a
plain perf_counter loop, the way one would by hand. Both take the median of the same number of
calls after one warm-up call. Prints the ratio asrperf p50 / bare p50 (1.00 = no overhead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from asrperf.config import config_from_dict
from asrperf.data.clips import ClipCache
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.results.store import Store
from asrperf.run.runner import prepare, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="5,60")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    args = ap.parse_args()
    lengths = [float(x) for x in args.lengths.split(",")]
    store = Path(tempfile.mkdtemp()) / "overhead.sqlite"
    cfg = config_from_dict({
        "models": [{"name": "whisper-tiny.en", "weights": "real"}],
        "timing": {"warmup_calls": 1, "min_calls": args.calls, "max_calls": args.calls, "min_time_s": 0},
        "run": {"clip_lengths_s": lengths, "n_clips": 1, "store": str(store), "cache_dir": args.cache_dir,
                "accuracy": False},
    })
    run(cfg)
    keys = prepare(cfg)  # cached by now: returns where each length's clips are
    with Store(store) as s:
        rows = {r["clip_length_s"]: r for r in s.rows()}
    engine = TransformersEngine(args.cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    print("| clip | asrperf p50 ms | bare loop p50 ms | ratio | calls |")
    print("|---|---|---|---|---|")
    for length in lengths:
        clip = ClipCache(args.cache_dir).load(keys[length], 1)[0]
        engine.transcribe([clip.audio], clip.sample_rate)  # warm-up
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            engine.transcribe([clip.audio], clip.sample_rate)
            times.append(time.perf_counter() - t)
        bare = statistics.median(times)
        ours = rows[length]["latency_s_p50"]
        print(f"| {length:g} s | {ours * 1e3:.1f} | {bare * 1e3:.1f} | {ours / bare:.3f} | {args.calls} |")


if __name__ == "__main__":
    main()
