"""Harness overhead: asrperf's measured latency vs a bare hand-written loop over the same engine call.

    python benchmarks/overhead.py [--lengths 5,60] [--calls 10] [--rounds 2]

For each clip length, alternating A/B for `rounds` rounds so drift on a shared machine hits both:
  A. `asrperf run` measures whisper-tiny.en (real weights) on one clip in an isolated cell;
  B. a fresh Python process loads the same engine and times `engine.transcribe([clip])` in a
     plain perf_counter loop, the way one would by hand.
Both take the median of the same number of calls after one warm-up call, in their own process.
Prints the ratio asrperf p50 / bare p50 (1.00 = no overhead) per round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asrperf.config import config_from_dict
from asrperf.results.store import Store
from asrperf.run.runner import prepare, run


def bare(cache_dir: str, clip_key: str, calls: int) -> float:
    """The hand-written loop: load, one warm-up call, then `calls` timed calls; returns the median."""
    from asrperf.data.clips import ClipCache
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine

    clip = ClipCache(cache_dir).load(clip_key, 1)[0]
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    engine.transcribe([clip.audio], clip.sample_rate)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        engine.transcribe([clip.audio], clip.sample_rate)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="5,60")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--bare", nargs=2, metavar=("CLIP_KEY", "CALLS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        print(json.dumps(bare(args.cache_dir, args.bare[0], int(args.bare[1]))))
        return
    lengths = [float(x) for x in args.lengths.split(",")]
    print("| clip | round | asrperf p50 ms | bare loop p50 ms | ratio | calls |")
    print("|---|---|---|---|---|---|")
    for length in lengths:
        for rnd in range(args.rounds):
            store = Path(tempfile.mkdtemp()) / "overhead.sqlite"
            cfg = config_from_dict({
                "models": [{"name": "whisper-tiny.en", "weights": "real"}],
                "timing": {"warmup_calls": 1, "min_calls": args.calls, "max_calls": args.calls, "min_time_s": 0},
                "run": {"clip_lengths_s": [length], "n_clips": 1, "store": str(store),
                        "cache_dir": args.cache_dir, "accuracy": False},
            })
            run(cfg)
            with Store(store) as s:
                ours = s.rows()[0]["latency_s_p50"]
            key = prepare(cfg)[length]  # cached by now: where the clip is
            out = subprocess.run([sys.executable, __file__, "--cache-dir", args.cache_dir, "--bare", key, str(args.calls)],
                                 capture_output=True, text=True, check=True)
            theirs = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {length:g} s | {rnd + 1} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | {ours / theirs:.3f} | {args.calls} |",
                  flush=True)


if __name__ == "__main__":
    main()
