"""The one timer: warm-up, then repeat until a minimum count and a minimum time are reached.

The engine supplies `synchronize()` (a no-op on CPU, a device sync on CUDA); the timer calls it
before reading the host clock on both sides of each call, so asynchronous device work is inside
the measured interval. It never looks at which engine or device it is timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asrperf.config import TimingConfig


@dataclass
class TimedCalls:
    """Raw per-call wall times in seconds, warm-up kept apart, and each call's return value."""

    warmup_s: list[float] = field(default_factory=list)
    samples_s: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # one per timed call

    @property
    def total_s(self) -> float:
        return sum(self.samples_s)


def time_once(fn: Callable[[], Any], synchronize: Callable[[], None]) -> tuple[float, Any]:
    """Wall time of one call, with the device drained before and after."""
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return time.perf_counter() - start, out


def time_calls(
    fn: Callable[[int], Any],
    synchronize: Callable[[], None],
    policy: TimingConfig,
    on_call: Callable[[int], None] | None = None,
) -> TimedCalls:
    """Call `fn(i)` (i = call index, warm-up included) under `policy`.

    Warm-up: at least `warmup_calls` calls and `warmup_min_s` seconds, discarded from the
    statistics but kept. Timed: at least `min_calls` calls and `min_time_s` seconds; then stop
    at `max_calls` calls or `max_time_s` seconds, whichever first.
    """
    out = TimedCalls()
    i = 0
    while len(out.warmup_s) < policy.warmup_calls or sum(out.warmup_s) < policy.warmup_min_s:
        dt, _ = time_once(lambda: fn(i), synchronize)
        out.warmup_s.append(dt)
        i += 1
    while True:
        n, total = len(out.samples_s), out.total_s
        enough = n >= policy.min_calls and total >= policy.min_time_s
        if enough or n >= policy.max_calls or (n >= policy.min_calls and total >= policy.max_time_s):
            break
        dt, res = time_once(lambda: fn(i), synchronize)
        out.samples_s.append(dt)
        out.results.append(res)
        i += 1
        if on_call is not None:
            on_call(len(out.samples_s))
    return out
