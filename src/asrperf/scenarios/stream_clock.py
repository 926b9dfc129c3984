"""Feed one clip to a streaming policy chunk by chunk, on one of two clocks.

- `simulated`: the computationally aware simulation of ufal/whisper_streaming without its sleeps.
  The stream's clock is virtual: an update starts when its chunk has been spoken and the previous
  update is done, and ends its measured compute time later; whatever chunks have arrived by then
  go into the next update. Nothing waits, so a 60 s clip costs only its compute.
- `realtime`: chunks arrive on the wall clock (the stream sleeps until the next one is spoken);
  waiting for a shared engine and contention with other streams show up as lateness.

Either way an update takes every chunk that has arrived and has not been taken, and its compute
time is measured on `timer` (perf_counter) around the policy's update.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np

from asrperf.config import STREAM_CLOCKS as CLOCKS
from asrperf.measure.streaming import StreamTrace, Update, chunk_arrivals_s
from asrperf.scenarios.stream_policies import Policy


def run_stream(policy: Policy, audio: np.ndarray, sample_rate: int, chunk_s: float, clock: str,
               clip_id: str = "", timer: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep, engine_lock: threading.Lock | None = None,
               start_at: float | None = None, **trace_fields: Any) -> StreamTrace:
    """Stream `audio` through `policy` in chunks of `chunk_s` seconds; returns the trace.

    `engine_lock`: held around each engine call when streams share one engine (capacity runs).
    `start_at`: the `timer` reading at which the first sample is spoken (realtime; default now).
    `trace_fields`: the clip's utterances and reference timing, passed on to the StreamTrace.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock '{clock}' is not one of {', '.join(CLOCKS)}")
    audio_s = len(audio) / sample_rate
    arrivals = chunk_arrivals_s(audio_s, chunk_s)
    realtime = clock == "realtime"
    t0 = (timer() if start_at is None else start_at) if realtime else 0.0
    lock = engine_lock if engine_lock is not None else nullcontext()
    updates: list[Update] = []
    fed, free_s = 0, 0.0
    while fed < len(arrivals):
        if realtime:
            wait = arrivals[fed] - (timer() - t0)
            if wait > 0:
                sleep(wait)
            ready = timer() - t0
        else:
            ready = max(free_s, arrivals[fed])
        available = fed + 1
        while available < len(arrivals) and arrivals[available] <= ready:
            available += 1
        end = min(int(round(arrivals[available - 1] * sample_rate)), len(audio))
        final = available == len(arrivals)
        with lock:
            c0 = timer()
            shown = policy.update(audio[:end], final)
            compute = timer() - c0
        done = timer() - t0 if realtime else ready + compute
        updates.append(Update(end / sample_rate, available - fed, ready, done, compute, shown.committed,
                              shown.tentative, shown.final_until_s))
        fed, free_s = available, done
    return StreamTrace(clip_id, chunk_s, audio_s, tuple(updates), **trace_fields)
