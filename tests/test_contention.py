"""The busy-machine guard: /proc parsing and the verdict on literal figures, then the real thing
beside spinning processes this test starts and stops (calibrated: no timing is asserted)."""

import dataclasses
import os
import subprocess
import sys
import threading
import time
import types

import pytest

from asrperf.measure import procfs
from asrperf.measure.contention import (
    ContentionGuard,
    ContentionPolicy,
    ContentionResult,
    GpuSample,
    MachineSample,
    NvmlGpu,
    wait_quiet,
)

HZ = procfs.USER_HZ

STAT = """cpu  900 10 300 5000 20 5 5 40 0 0
cpu0 400 10 100 2500 10 2 3 20 0 0
cpu1 500 0 200 2500 10 3 2 20 0 0
intr 12345
ctxt 999
procs_running 3
procs_blocked 0
"""


def test_proc_stat_sums_the_allowed_cpus_in_seconds():
    both = procfs.parse_cpu_times(STAT)
    # busy = user + nice + system + irq + softirq; idle = idle + iowait; guest is inside user
    assert both.busy_s == pytest.approx((400 + 10 + 100 + 2 + 3 + 500 + 200 + 3 + 2) / HZ)
    assert both.idle_s == pytest.approx((2510 + 2510) / HZ) and both.steal_s == pytest.approx(40 / HZ)
    one = procfs.parse_cpu_times(STAT, {1})
    assert one.n_cpus == 1 and one.busy_s == pytest.approx(705 / HZ) and one.steal_s == pytest.approx(20 / HZ)
    assert procfs.parse_procs_running(STAT) == 3


@pytest.mark.parametrize("text, expected", [
    ("0.81 0.38 0.15 4/111 6929\n", (0.81, 0.38, 0.15, 4, 111)),
    ("12.00 7.50 3.25 10/1402 77\n", (12.0, 7.5, 3.25, 10, 1402)),
])
def test_loadavg(text, expected):
    assert procfs.parse_loadavg(text) == expected


def test_schedstat_delta_counts_threads_alive_at_the_end():
    before = {1: (1_000, 50), 2: (500, 500), 3: (9_999, 9_999)}  # thread 3 ends inside the window
    after = {1: (3_000, 150), 2: (700, 1_500), 4: (200, 100)}  # thread 4 is born inside it
    assert procfs.parse_schedstat("402518816 187173564 77\n") == (402518816, 187173564)
    assert procfs.schedstat_delta_ns(before, after) == (2_000 + 200 + 200, 100 + 1_000 + 100)


def sample(wall, own, busy=None, steal=0.0, wait=None, running=None, gpu=None, n_cpus=2):
    """A MachineSample with cumulative figures in seconds (wait: run-queue wait of thread 1)."""
    cpu = procfs.CpuTimes(busy, 0.0, steal, n_cpus) if busy is not None else None
    sched = {1: (int(own * 1e9), int(wait * 1e9))} if wait is not None else None
    return MachineSample(wall, own, cpu, sched, running, None, gpu)


def window(threads, n_cpus, wall, own, busy=None, steal=0.0, wait=None, gpu_others=None):
    """The result of one window whose deltas are the given figures (busy includes own)."""
    g0 = g1 = GpuSample(gpu_others) if gpu_others is not None else None
    start = sample(0.0, 0.0, 0.0 if busy is not None else None, 0.0, 0.0 if wait is not None else None, 2, g0, n_cpus)
    end = sample(wall, own, busy, steal, wait, 5, g1, n_cpus)
    return ContentionResult.between(start, end, threads, n_cpus)


# threads, CPUs, wall s, own CPU s, busy s (all processes), steal s, own wait s, other GPU procs
#   -> contended, reasons, others_share, own_got_share
VERDICTS = [
    # alone on 2 cores: 0.05 s of background, the cell got 99% of what it wanted
    ((2, 2, 1.0, 1.95, 2.0, 0.0, 0.02, None), False, [], 0.025, 1.95 / 1.97),
    # one spinner beside a 2-thread cell: it took a core, the cell waited as long as it ran
    ((2, 2, 1.0, 1.0, 2.0, 0.0, 1.0, None), True, ["others_cpu", "cpu_wait"], 0.5, 0.5),
    # a 1-thread cell on 2 cores beside a 0.9-core job: the free core absorbs it
    ((1, 2, 1.0, 1.0, 1.9, 0.0, 0.01, None), False, [], 0.0, 1.0 / 1.01),
    # ... a 1.5-core job does not fit in the free core: half a core lands on the cell's
    ((1, 2, 1.0, 1.0, 2.5, 0.0, 0.05, None), True, ["others_cpu"], 0.5, 1.0 / 1.05),
    # exactly at the limit (0.25 of 2 cores = 0.5 cores) is not over it
    ((2, 2, 2.0, 3.0, 4.0, 0.0, 0.0, None), False, [], 0.25, 1.0),
    # steal counts with the others: the hypervisor ran another guest on the cell's vCPUs
    ((2, 2, 1.0, 1.4, 1.4, 0.6, 0.0, None), True, ["others_cpu"], 0.3, 1.0),
    # others quiet but the cell waited 20% of its time for a CPU (e.g. a burst between readings)
    ((2, 2, 1.0, 1.6, 1.65, 0.0, 0.4, None), True, ["cpu_wait"], 0.025, 0.8),
    # a quiet CPU, another process on the cell's GPU
    ((1, 2, 1.0, 1.0, 1.0, 0.0, 0.0, 1), True, ["gpu_processes"], 0.0, 1.0),
    ((1, 2, 1.0, 1.0, 1.0, 0.0, 0.0, 0), False, [], 0.0, 1.0),
    # 4 threads on 2 CPUs wait on each other: half the CPU is all they can get, and that is not contention
    ((4, 2, 1.0, 2.0, 2.02, 0.0, 2.0, None), False, [], 0.005, 0.5),
    # ... but a quarter of it is (others' core, a quarter of the 4 asked, is just at its limit)
    ((4, 2, 1.0, 1.0, 2.0, 0.0, 3.0, None), True, ["cpu_wait"], 0.25, 0.25),
    # nothing readable (no /proc, no schedstat, no NVML): the verdict is unknown, not quiet
    ((2, 2, 1.0, 1.9, None, 0.0, None, None), None, [], None, None),
]


@pytest.mark.parametrize("figures, contended, reasons, others_share, got", VERDICTS)
def test_verdict_on_literal_figures(figures, contended, reasons, others_share, got):
    threads, n_cpus, wall, own, busy, steal, wait, gpu = figures
    r = window(threads, n_cpus, wall, own, busy, steal, wait, gpu)
    assert r.contended is contended and r.reasons == reasons
    assert r.others_share == (pytest.approx(others_share) if others_share is not None else None)
    assert r.own_got_share == (pytest.approx(got) if got is not None else None)
    row = r.to_row()
    assert row["contended"] is contended and row["contention_reasons"] == reasons
    assert row["contention_runqueue_max"] == 5 and row["contention_threads"] == threads


def test_the_thresholds_are_the_policy():
    spinner = ((2, 2, 1.0, 1.0, 2.0, 0.0, 1.0, None))
    strict = ContentionResult.between(*_ends(spinner), 2, 2, ContentionPolicy(max_others_share=0.6, min_got_share=0.4))
    assert strict.contended is False
    assert strict.to_row()["contention_max_others_share"] == 0.6 and strict.to_row()["contention_min_got_share"] == 0.4


def _ends(figures):
    threads, n_cpus, wall, own, busy, steal, wait, gpu = figures
    return (sample(0.0, 0.0, 0.0, 0.0, 0.0, n_cpus=n_cpus), sample(wall, own, busy, steal, wait, n_cpus=n_cpus))


ROW_KEYS = {
    "contended", "contention_reasons", "contention_windows", "contention_windows_contended", "contention_wall_s",
    "contention_threads", "contention_cpus", "contention_own_cpu_s", "contention_own_cpu_share",
    "contention_own_wait_s", "contention_own_got_share", "contention_others_cpu_s", "contention_steal_s",
    "contention_others_cores", "contention_others_share", "contention_runqueue_max", "contention_cpu_freq_mhz",
    "contention_gpu_other_processes", "contention_gpu_sm_clock_mhz", "contention_gpu_sm_clock_max_mhz",
    "contention_gpu_clock_reasons", "contention_max_others_share", "contention_min_got_share", "contention_method",
}


def test_merged_windows_sum_the_figures_and_flag_any_contended_one():
    quiet = window(2, 2, 1.0, 1.95, 2.0, 0.0, 0.02)
    busy = window(2, 2, 1.0, 1.0, 2.0, 0.0, 1.0)
    m = ContentionResult.merge([quiet, busy, quiet])
    assert m.contended is True and m.windows == 3 and m.windows_contended == 1
    assert m.wall_s == pytest.approx(3.0) and m.own_cpu_s == pytest.approx(4.9)
    assert m.others_cpu_s == pytest.approx(0.05 + 1.0 + 0.05) and m.own_wait_s == pytest.approx(1.04)
    assert m.reasons == ["others_cpu", "cpu_wait"]
    row = m.to_row()
    assert set(row) == ROW_KEYS and row["contention_windows_contended"] == 1
    calm = ContentionResult.merge([quiet, quiet])
    assert calm.contended is False and calm.to_row()["contention_reasons"] == []


class FakeReader:
    """Cumulative samples that advance by one window each call: `busy` others' cores per window."""

    def __init__(self, others_cores: list[float], n_cpus: int = 2) -> None:
        self.n_cpus, self.others, self.t, self.busy = n_cpus, list(others_cores), 0.0, 0.0
        self.calls = 0

    def sample(self) -> MachineSample:
        if self.calls % 2 == 1:  # the end of a window: advance the clock and the others' CPU
            self.t += 1.0
            self.busy += self.others.pop(0) if len(self.others) > 1 else self.others[0]
        self.calls += 1
        return sample(self.t, 0.0, self.busy, wait=0.0, n_cpus=self.n_cpus)


def test_wait_quiet_stops_at_the_first_quiet_window():
    waits = []
    state = wait_quiet(2, "cpu", 60, reader=FakeReader([1.8, 1.2, 0.1]), sleep=lambda s: None, on_wait=waits.append)
    assert state.quiet and state.waited_s == pytest.approx(3.0) and len(waits) == 2
    assert "1.80 core(s) of 2" in waits[0].describe()


def test_wait_quiet_gives_up_at_its_bound():
    state = wait_quiet(2, "cpu", 4.5, reader=FakeReader([1.5]), sleep=lambda s: None)
    assert not state.quiet and state.waited_s == pytest.approx(5.0)  # the window that crossed the bound ends it
    assert state.last.others_cores == pytest.approx(1.5)


def test_nvml_other_processes_and_clock_reasons(monkeypatch):
    me = os.getpid()

    def fake(pids):
        return types.SimpleNamespace(
            NVMLError=RuntimeError, nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
            nvmlDeviceGetComputeRunningProcesses=lambda h: [types.SimpleNamespace(pid=p) for p in pids],
            nvmlDeviceGetClockInfo=lambda h, clock: 1410, nvmlDeviceGetMaxClockInfo=lambda h, clock: 1980,
            nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4 | 0x40)

    monkeypatch.setitem(sys.modules, "pynvml", fake([me, 4242]))
    s = NvmlGpu(0).sample()
    assert s.other_processes == 1 and (s.sm_clock_mhz, s.sm_clock_max_mhz) == (1410, 1980)
    assert s.clock_reasons == ("sw_power_cap", "hw_thermal_slowdown")
    # a container's pid namespace: NVML lists host pids, one of which is this CUDA process
    monkeypatch.setitem(sys.modules, "pynvml", fake([90001, 90002]))
    assert NvmlGpu(0).sample().other_processes == 1
    assert NvmlGpu(0, own_context=False).sample().other_processes == 2  # the runner holds no context
    monkeypatch.setitem(sys.modules, "pynvml", fake([]))
    assert NvmlGpu(0).sample().other_processes == 0


def test_without_nvml_the_gpu_figures_are_missing_with_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    s = NvmlGpu(0).sample()
    assert s.other_processes is None and "pynvml" in s.missing


# ---- the real machine: a CPU-bound cell whose worker threads persist (as an engine's pool does)

class Pool:
    """`threads` threads that hash in a loop while `run(seconds)` lasts (hashlib releases the GIL)."""

    def __init__(self, threads: int) -> None:
        self.buf = os.urandom(1 << 18)
        self.go = [threading.Event() for _ in range(threads)]
        self.done = [threading.Event() for _ in range(threads)]
        self.until = 0.0
        for i in range(threads):
            threading.Thread(target=self._loop, args=(i,), daemon=True).start()

    def _loop(self, i: int) -> None:
        import hashlib

        while True:
            self.go[i].wait()
            self.go[i].clear()
            while time.perf_counter() < self.until:
                hashlib.sha256(self.buf).digest()
            self.done[i].set()

    def run(self, seconds: float) -> None:
        self.until = time.perf_counter() + seconds
        for e in self.go:
            e.set()
        for e in self.done:
            e.wait()
            e.clear()


def _check_consistent(r: ContentionResult) -> None:
    slack = 2 * r.n_cpus / procfs.USER_HZ + 0.05  # /proc/stat counts whole ticks per CPU
    assert 0 < r.own_cpu_s <= r.wall_s * (r.threads + 1) + slack  # + the main thread waiting on the pool
    assert r.others_cpu_s >= 0 and r.steal_s >= 0
    assert r.own_cpu_s + r.others_cpu_s + r.steal_s <= r.wall_s * r.n_cpus + slack
    assert 0 <= r.own_got_share <= 1 and r.own_wait_s >= 0
    assert r.runqueue_max >= 1


def test_a_cell_beside_spinning_processes_is_flagged():
    n = len(procfs.allowed_cpus())
    threads = min(n, 2)
    pool = Pool(threads)
    # one spinner per allowed CPU, plus one: the cell's threads must share every core
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n + 1)]
    try:
        time.sleep(0.3)  # let them start spinning
        guard = ContentionGuard(threads)
        with guard:
            pool.run(1.0)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    r = guard.result
    # the spinners saturate every allowed CPU, so busy time ~ wall x CPUs: had the guard counted
    # the cell's own CPU time among the others' too, own + others would pass that bound here
    _check_consistent(r)
    assert r.contended is True, r.to_row()
    assert "others_cpu" in r.reasons and r.others_cores >= 0.5, r.to_row()


def test_a_real_cell_row_carries_the_guard_figures_of_its_timed_window(tmp_path, cache_dir, tiny_source, monkeypatch):
    from asrperf.config import config_from_dict
    from asrperf.measure import contention
    from asrperf.measure.contention import QuietWait
    from asrperf.results.store import Store
    from asrperf.run.runner import run

    asked = []

    def never_quiet(threads, device, bound_s, **kw):  # --wait-quiet on a machine that stays busy
        asked.append((threads, device, bound_s))
        return QuietWait(False, bound_s, None)

    monkeypatch.setattr(contention, "wait_quiet", never_quiet)

    cfg = config_from_dict({
        "source": tiny_source, "models": [{"name": "wav2vec2-base", "weights": "random"}],
        "timing": {"warmup_calls": 1, "min_calls": 3, "min_time_s": 0.0, "max_calls": 3},
        "run": {"clip_lengths_s": [3], "n_clips": 1, "threads": [1], "store": str(tmp_path / "s.sqlite"),
                "cache_dir": str(cache_dir), "isolate": False, "energy": False, "accuracy": False}})
    states = []
    summary = run(cfg, on_cell=lambda cell, state, i, n: states.append(state), wait_quiet_s=7.0)
    assert summary.failed == 0 and summary.not_quiet == 1 and asked == [(1, "cpu", 7.0)]
    assert "not quiet after 7 s (machine load not readable here): measuring anyway" in states
    with Store(cfg.store) as s:
        (row,) = s.rows()
        timed = s.samples(row["run_id"], row["cell_key"])
    # every guard field is in the row's contention section; on a CPU cell the GPU figures (and a
    # frequency this VM may not expose) are None, which the stored flat row leaves out
    section = row.section("contention")
    assert ROW_KEYS <= {f.name for f in dataclasses.fields(section)} and row["contended"] in (True, False)
    gpu_or_freq = {k for k in ROW_KEYS if "gpu" in k or "freq" in k}
    assert all(row[k] is not None for k in ROW_KEYS - gpu_or_freq - {"contention_own_wait_s"}), section
    assert row["contention_threads"] == 1 and row["contention_windows"] == 1
    # the window is the timed calls' own: their wall time, not the warm-up or the load
    assert sum(timed) <= row["contention_wall_s"] <= sum(timed) + 0.05
    assert row["contention_own_cpu_s"] > 0 and 0 <= row["contention_own_got_share"] <= 1
