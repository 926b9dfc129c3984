"""Capacity probes with one process per stream: each stream loads its own engine (one replica per
caller, `capacity_threads` CPU threads each), then all start together on the wall clock.

    python -m asrperf.scenarios.stream_process JOB.json

The child loads the model and warms it up, prints "ready", reads its start time (unix seconds)
from stdin, streams its clip in real time and prints its trace as one JSON line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.errors import ModelError
from asrperf.measure.streaming import StreamTrace, Update
from asrperf.scenarios.stream_capacity import START_LEAD_S, StreamJob

READY = "ready"
STDERR_TAIL_CHARS = 600


def trace_to_dict(trace: StreamTrace) -> dict[str, Any]:
    return dataclasses.asdict(trace)


def trace_from_dict(d: dict[str, Any]) -> StreamTrace:
    updates = tuple(Update(**{**u, "committed": tuple(u["committed"]), "tentative": tuple(u["tentative"])})
                    for u in d["updates"])
    return StreamTrace(d["clip_id"], d["chunk_s"], d["audio_s"], updates,
                       tuple(tuple(b) for b in d["utterances_s"]), tuple(tuple(w) for w in d["utterance_words"]),
                       tuple(d["reference_end_s"]))


def process_probe(job: dict[str, Any], jobs: list[StreamJob], sample_rate: int, chunk_s: float, n: int,
                  threads: int, timeout_s: float) -> list[StreamTrace]:
    """`n` real-time streams, one process and engine each; `job` names the model and policy
    (model, weights, device, cache_dir, policy, streaming settings, plugins)."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    with tempfile.TemporaryDirectory(prefix="asrperf-streams-") as tmp:
        procs = []
        try:
            for i in range(n):
                s = jobs[i % len(jobs)]
                audio = Path(tmp) / f"audio-{i}.npy"
                np.save(audio, s.audio)
                spec = Path(tmp) / f"job-{i}.json"
                spec.write_text(json.dumps({**job, "audio": str(audio), "clip_id": s.clip_id, "fields": s.fields,
                                            "sample_rate": sample_rate, "chunk_s": chunk_s}))
                err = open(Path(tmp) / f"stderr-{i}.txt", "w")
                procs.append((subprocess.Popen([sys.executable, "-m", "asrperf.scenarios.stream_process", str(spec)],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                               env=env), err, Path(err.name)))
            for p, _, err_path in procs:
                if p.stdout.readline().strip() != READY:
                    raise ModelError(f"a stream process did not load its engine: {_tail(p, err_path)}")
            start = time.time() + START_LEAD_S
            for i, (p, _, _) in enumerate(procs):
                p.stdin.write(f"{start + i * chunk_s / n!r}\n")
                p.stdin.flush()
            traces = []
            for p, _, err_path in procs:
                line = p.stdout.readline()
                if p.wait(timeout=timeout_s) != 0 or not line.strip():
                    raise ModelError(f"a stream process failed: {_tail(p, err_path)}")
                traces.append(trace_from_dict(json.loads(line)))
            return traces
        finally:
            for p, err, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
                err.close()


def _tail(p: subprocess.Popen, err_path: Path) -> str:
    if p.poll() is None:
        p.kill()
        p.wait()
    lines = err_path.read_text(errors="replace").strip().splitlines()
    return (lines[-1][:STDERR_TAIL_CHARS] if lines else f"exit code {p.returncode}")


def main(argv: list[str]) -> int:
    from asrperf.config import ModelConfig, StreamingConfig
    from asrperf.engines.base import quiet_library_logs
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.scenarios.stream_clock import run_stream
    from asrperf.scenarios.stream_policies import make_policy

    quiet_library_logs()
    job = json.loads(Path(argv[0]).read_text())
    for module in job.get("plugins", []):
        importlib.import_module(module)
    model = ModelConfig(**job["model"])
    engine = create(model.engine, job["cache_dir"])
    engine.load(dataclasses.replace(resolve(model.name), options=model.options), job["weights"], model.dtype,
                job["device"])
    rate = job["sample_rate"]
    audio = np.load(job["audio"])
    policy = make_policy(job["policy"], engine, rate, StreamingConfig(**job["streaming"]))
    policy.warm_up(audio)
    print(READY, flush=True)
    start_epoch = float(sys.stdin.readline())
    start = time.perf_counter() + (start_epoch - time.time())
    fields = job["fields"]
    trace = run_stream(policy, audio, rate, job["chunk_s"], "realtime", job["clip_id"], start_at=start,
                       utterances_s=tuple(tuple(b) for b in fields["utterances_s"]),
                       utterance_words=tuple(tuple(w) for w in fields["utterance_words"]),
                       reference_end_s=tuple(fields["reference_end_s"]))
    print(json.dumps(trace_to_dict(trace)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
