import time

import pytest

from asrperf.config import TimingConfig
from asrperf.measure.timer import time_calls, time_once


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("work", [time.sleep, _busy], ids=["sleep", "busy"])
def test_timer_reads_known_work_and_nothing_else(work):
    # calibration against an independent clock: 200 ms of sleep (or busy loop) can never read
    # less than 200 ms, nor more than the wall time measured around the timer itself. A loaded
    # machine moves both bounds together; a broken timer (wrong unit, the work outside the
    # interval, counted twice) falls outside them.
    t0 = time.monotonic()
    dt, _ = time_once(lambda: work(0.2), lambda: None)
    around = time.monotonic() - t0
    assert 0.2 <= dt <= around


def test_synchronize_is_inside_the_timed_interval():
    # a device whose queued work finishes only at synchronize(): the timer must wait for it
    dt, _ = time_once(lambda: None, lambda: time.sleep(0.03))
    assert dt >= 0.03


def test_policy_warmup_then_minimum_count_and_time():
    calls = []
    policy = TimingConfig(warmup_calls=2, min_calls=3, min_time_s=0.1, max_calls=100, max_time_s=10)
    out = time_calls(lambda i: calls.append(i) or time.sleep(0.01), lambda: None, policy)
    assert len(out.warmup_s) == 2
    # 3 calls of >= 10 ms are not yet 0.1 s: it keeps going until both minimums hold, and stops at
    # the first call that makes them hold (however slow each call was on a loaded machine)
    assert len(out.samples_s) >= 3 and out.total_s >= 0.1
    assert sum(out.samples_s[:-1]) < 0.1
    assert calls == list(range(len(calls))), "call indices run on from warm-up"
    assert len(out.results) == len(out.samples_s)


def test_policy_stops_at_max_calls():
    policy = TimingConfig(warmup_calls=0, min_calls=2, min_time_s=100, max_calls=5, max_time_s=1000)
    out = time_calls(lambda i: None, lambda: None, policy)
    assert len(out.samples_s) == 5 and out.warmup_s == []


def test_policy_stops_at_max_time_after_min_calls():
    policy = TimingConfig(warmup_calls=0, min_calls=2, min_time_s=100, max_calls=1000, max_time_s=0.05)
    out = time_calls(lambda i: time.sleep(0.02), lambda: None, policy)
    # stops at the first call count >= min_calls whose total reaches 0.05 s: 3 calls (2 if slow)
    assert 2 <= len(out.samples_s) <= 3 and out.total_s >= 0.05
