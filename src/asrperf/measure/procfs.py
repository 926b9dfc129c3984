"""What the machine and this process are doing, from Linux's /proc and /sys (no dependency, no root).

Each reader returns None (or an empty value) where its file does not exist, so the callers can
say "not readable here" instead of guessing. The parsers take the file's text, so they are tested
on literal samples:

    /proc/stat              per-CPU cumulative times in USER_HZ ticks ("cpu3 user nice system idle
                            iowait irq softirq steal guest guest_nice"; guest time is already inside
                            user), and `procs_running`, the number of runnable tasks right now
    /proc/loadavg           "1.20 0.80 0.50 3/412 12345": load averages, running/total tasks
    /proc/self/task/*/schedstat
                            per thread: "on-CPU ns, run-queue wait ns, timeslices": the wait is the
                            time the thread was runnable but another task had its CPU
    /sys/devices/system/cpu/cpuN/cpufreq/scaling_cur_freq (kHz), scaling_governor;
    /sys/devices/system/cpu/smt/{control,active}; cpufreq/boost; intel_pstate/no_turbo
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SYS_CPU = Path("/sys/devices/system/cpu")
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # ticks per second in /proc/stat


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative seconds of a set of CPUs: busy (user, nice, system, irq, softirq), idle, steal."""

    busy_s: float
    idle_s: float  # idle + iowait
    steal_s: float  # time the hypervisor ran something else on these virtual CPUs
    n_cpus: int

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(self.busy_s - other.busy_s, self.idle_s - other.idle_s, self.steal_s - other.steal_s,
                        self.n_cpus)


def parse_cpu_times(stat_text: str, cpus: Collection[int] | None = None) -> CpuTimes:
    """Sum the `cpuN` lines of /proc/stat over `cpus` (None: every CPU listed)."""
    busy = idle = steal = 0
    n = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        f = [int(x) for x in rest.split()] + [0] * 10
        user, nice, system, idle_t, iowait, irq, softirq, steal_t = f[:8]
        busy += user + nice + system + irq + softirq
        idle += idle_t + iowait
        steal += steal_t
        n += 1
    return CpuTimes(busy / USER_HZ, idle / USER_HZ, steal / USER_HZ, n)


def parse_procs_running(stat_text: str) -> int | None:
    for line in stat_text.splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return None


def read_stat() -> str | None:
    return _read(PROC / "stat")


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity), or all of them where that is not known."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def parse_loadavg(text: str) -> tuple[float, float, float, int, int]:
    """(load 1 min, 5 min, 15 min, running tasks, total tasks) from /proc/loadavg."""
    a, b, c, tasks = text.split()[:4]
    running, total = tasks.split("/")
    return float(a), float(b), float(c), int(running), int(total)


def read_loadavg() -> tuple[float, float, float, int, int] | None:
    text = _read(PROC / "loadavg")
    return parse_loadavg(text) if text else None


def parse_schedstat(text: str) -> tuple[int, int]:
    """(on-CPU ns, run-queue wait ns) of one task."""
    on_cpu, wait = text.split()[:2]
    return int(on_cpu), int(wait)


def thread_schedstats(pid: int | str = "self") -> dict[int, tuple[int, int]] | None:
    """tid -> (on-CPU ns, run-queue wait ns) for every thread of `pid`; None where not readable."""
    tasks = PROC / str(pid) / "task"
    try:
        tids = [int(p.name) for p in tasks.iterdir()]
    except OSError:
        return None
    out = {}
    for tid in tids:
        text = _read(tasks / str(tid) / "schedstat")
        if text:  # a thread may end between the listing and the read
            out[tid] = parse_schedstat(text)
    return out or None


def schedstat_delta_ns(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(on-CPU ns, wait ns) of the threads alive at the end, since `before` (new threads: since birth).

    A thread that ended inside the window is not counted: its figures went with it.
    """
    on_cpu = wait = 0
    for tid, (c1, w1) in after.items():
        c0, w0 = before.get(tid, (0, 0))
        on_cpu += max(0, c1 - c0)
        wait += max(0, w1 - w0)
    return on_cpu, wait


def cpu_freq_mhz(cpus: Collection[int]) -> float | None:
    """Mean current frequency of `cpus` in MHz (cpufreq's scaling_cur_freq); None where not exposed."""
    values = []
    for c in cpus:
        text = _read(SYS_CPU / f"cpu{c}" / "cpufreq" / "scaling_cur_freq")
        if text and text.strip().isdigit():
            values.append(int(text) / 1000)
    return sum(values) / len(values) if values else None


def governors(cpus: Collection[int]) -> dict[str, int]:
    """cpufreq governor -> how many of `cpus` use it; empty where cpufreq is not exposed (e.g. VMs)."""
    out: dict[str, int] = {}
    for c in cpus:
        text = _read(SYS_CPU / f"cpu{c}" / "cpufreq" / "scaling_governor")
        if text:
            out[text.strip()] = out.get(text.strip(), 0) + 1
    return out


def boost() -> bool | None:
    """Whether turbo/boost is on: cpufreq/boost (acpi-cpufreq, amd-pstate) or intel_pstate/no_turbo."""
    text = _read(SYS_CPU / "cpufreq" / "boost")
    if text and text.strip() in ("0", "1"):
        return text.strip() == "1"
    text = _read(SYS_CPU / "intel_pstate" / "no_turbo")
    if text and text.strip() in ("0", "1"):
        return text.strip() == "0"
    return None


def smt() -> tuple[str | None, bool | None]:
    """(SMT control: on/off/forceoff/notsupported/notimplemented, whether sibling threads are active)."""
    control = _read(SYS_CPU / "smt" / "control")
    active = _read(SYS_CPU / "smt" / "active")
    return (control.strip() if control else None,
            active.strip() == "1" if active and active.strip() in ("0", "1") else None)


def isolated_cpus() -> str | None:
    """The kernel's isolated CPU list (isolcpus=), "" when none; None where not exposed."""
    text = _read(SYS_CPU / "isolated")
    return text.strip() if text is not None else None
