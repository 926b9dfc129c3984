"""Capacity: the most concurrent real-time streams an engine keeps up with (Riva's "maximum
effective number of streams").

A probe runs N streams at once on the wall clock (`realtime`), stream i on clip i mod the clip
count, their starts staggered evenly over one chunk (live callers do not arrive in lockstep). N
*keeps up* when at most `max_miss_share` of all chunks miss their deadline and the p90
finalization latency is within `max_finalization_p90_s` (when it can be measured). The search
doubles N from 1 until a probe fails or `max_streams` is reached, then bisects between the last
N that kept up and the first that did not, so it ends on the exact boundary after about
2 log2(N) probes, each as long as one clip.

Workers: `threads` runs every stream as a thread of the cell's process on the cell's engine, one
engine call at a time (one model replica serving N streams); `processes` gives each stream its
own process and engine with `capacity_threads` threads (scenarios/stream_process.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asrperf.measure.streaming import StreamMetrics, StreamTrace, percentiles, stream_metrics
from asrperf.scenarios.stream_clock import run_stream
from asrperf.scenarios.stream_policies import Policy

START_LEAD_S = 0.2  # the first stream starts this long after the probe is set up


@dataclass(frozen=True)
class StreamJob:
    """One clip to stream in a probe: its audio and the trace fields (utterances, reference timing)."""

    clip_id: str
    audio: np.ndarray
    fields: dict[str, Any]


@dataclass(frozen=True)
class Probe:
    streams: int
    deadline_miss_share: float
    finalization_s_p90: float | None
    chunk_rtf_p50: float | None
    kept_up: bool
    why: str  # the bound it missed, or "kept up"

    def to_row(self) -> dict[str, Any]:
        return {"streams": self.streams, "deadline_miss_share": self.deadline_miss_share,
                "finalization_s_p90": self.finalization_s_p90, "chunk_rtf_p50": self.chunk_rtf_p50,
                "kept_up": self.kept_up, "why": self.why}


@dataclass(frozen=True)
class Capacity:
    streams: int  # the most streams that kept up (0: not even one)
    at: Probe | None  # the probe at that count
    stop_reason: str
    probes: tuple[Probe, ...]


def judge(n: int, traces: Sequence[StreamTrace], max_miss_share: float, max_finalization_p90_s: float) -> Probe:
    """Whether `n` concurrent streams kept up, from their traces."""
    total = StreamMetrics()
    for trace in traces:
        total.add(stream_metrics(trace)[0])
    miss = total.deadline_miss_share or 0.0
    p90 = percentiles(total.finalization_s, (90,))[90]
    rtf = percentiles(total.chunk_rtf, (50,))[50]
    if miss > max_miss_share:
        why = f"{100 * miss:.1f}% of chunks missed their deadline (bound {100 * max_miss_share:g}%)"
    elif p90 is not None and p90 > max_finalization_p90_s:
        why = f"p90 finalization {p90:.2f} s over {max_finalization_p90_s:g} s"
    else:
        why = "kept up"
    return Probe(n, miss, p90, rtf, why == "kept up", why)


def search(probe: Callable[[int], Probe], max_streams: int) -> Capacity:
    """Doubling, then bisection, for the largest N whose probe keeps up (module docstring)."""
    probes: list[Probe] = []
    by_n: dict[int, Probe] = {}

    def run(n: int) -> bool:
        p = probe(n)
        probes.append(p)
        by_n[n] = p
        return p.kept_up

    good, bad, n = 0, None, 1
    while True:
        if not run(n):
            bad = n
            break
        good = n
        if n == max_streams:
            break
        n = min(2 * n, max_streams)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if run(mid):
            good = mid
        else:
            bad = mid
    if bad is None:
        reason = f"max_streams ({max_streams}) kept up: raise streaming.max_streams to search further"
    else:
        reason = f"{bad} stream(s): {by_n[bad].why}"
    return Capacity(good, by_n.get(good), reason, tuple(probes))


def threaded_probe(make_policy: Callable[[], Policy], jobs: Sequence[StreamJob], sample_rate: int, chunk_s: float,
                   n: int, timer: Callable[[], float] = time.perf_counter) -> list[StreamTrace]:
    """`n` real-time streams as threads sharing one engine (calls one at a time); their traces."""
    lock = threading.Lock()
    t0 = timer() + START_LEAD_S
    traces: list[StreamTrace | None] = [None] * n
    errors: list[BaseException] = []
    policies = [make_policy() for _ in range(n)]

    def stream(i: int) -> None:
        job = jobs[i % len(jobs)]
        try:
            traces[i] = run_stream(policies[i], job.audio, sample_rate, chunk_s, "realtime", job.clip_id, timer=timer,
                                   engine_lock=lock, start_at=t0 + i * chunk_s / n, **job.fields)
        except BaseException as exc:  # re-raised in the caller: a failed stream fails the cell
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,), name=f"asrperf-stream-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [t for t in traces if t is not None]
