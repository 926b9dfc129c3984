"""The busy-machine guard: was anything else using the CPUs (or the GPU) while a cell was timed?

A number measured while other jobs shared the cores is not the cell's number (on a 2-core VM, a
whisper tiny.en call read 48.3 s beside other jobs and 4.3 s quiet). `ContentionGuard` is a
measurer like the energy and memory ones: a context manager around the timed calls. It reads,
at the start and the end of the window (procfs.py has the files):

    own CPU         this process's CPU time (all threads, `time.process_time`), against
                    wall x the threads it asked for: `own_cpu_share` (a figure only; a decoder
                    loop legitimately leaves cores idle)
    own wait        the run-queue wait of its threads (/proc/self/task/*/schedstat): time a thread
                    was ready to run while something else had its CPU. own_got_share =
                    own CPU / (own CPU + own wait): the share of the CPU it wanted that it got
    others          busy time of the CPUs this process may run on (/proc/stat, its affinity set)
                    minus its own CPU time, plus their steal time (a hypervisor running another
                    guest). others_cores = that / wall. The cores the cell left free
                    (allowed CPUs - threads) absorb others' work harmlessly; what is left over
                    lands on the cell's cores: others_share = max(0, others_cores - spare) / threads
    run queue       procs_running (/proc/stat), the larger of the two readings; includes the cell
    CPU frequency   mean scaling_cur_freq of the allowed CPUs (not exposed on most VMs)
    GPU (CUDA)      other compute processes on the cell's GPU, SM clock and its maximum, and
                    the clock event ("throttle") reasons, from NVML (pynvml, imported lazily)

The window is **contended** when others_share > `max_others_share`, or own_got_share <
`min_got_share`, or another process computes on the cell's GPU. The flag is a typed boolean
with the figures and the reason codes beside it (`ContentionResult.to_row()`), never prose.

Thresholds. A cell that gets a share g of the CPU its threads were ready to use runs up to 1/g
slower when it is CPU-bound: at the default min_got_share 0.85 that is an 18% error, well beyond
the 5% that `compare` resolves, while housekeeping on an otherwise idle machine (kernel threads,
interrupts, this process's own sampler threads) costs a few percent at most. max_others_share 0.25
flags a quarter of a core per asked thread taken by others beyond the spare cores. A cell asking for
more threads than it may use CPUs waits on its own threads: its expected share is cpus / threads,
and the limit scales with it. Verified on every test run: a cell beside one spinning process per
allowed CPU (tests/test_contention.py) reads others_share ~0.9 and own_got_share <= 0.11 on the
2-core development VM. The quiet side of the calibration needs a machine nobody else uses: the
development VM was shared with other jobs (load ~12 on 2 cores, where even a cell at nice -20 got
only 36% of its CPU: the other jobs sit in other cgroups); `benchmarks/contention.py` prints the
deciding figures of one cell quiet and beside a CPU hog, to confirm the thresholds there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from asrperf.measure import procfs

MAX_OTHERS_SHARE = 0.25  # others may use up to a quarter of the cores the cell asked for
MIN_GOT_SHARE = 0.85  # the cell must get >= 85% of the CPU time its threads were ready to use

# NVML clock event reasons (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*): bit -> name
GPU_CLOCK_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
NVML_CLOCK_SM = 1  # pynvml.NVML_CLOCK_SM

REASON_OTHERS = "others_cpu"  # others used more than max_others_share of the cell's cores
REASON_WAIT = "cpu_wait"  # the cell got less than min_got_share (x expected_got_share) of the CPU it was ready to use
REASON_GPU = "gpu_processes"  # another process computed on the cell's GPU
REASONS = (REASON_OTHERS, REASON_WAIT, REASON_GPU)


@dataclass(frozen=True)
class ContentionPolicy:
    """When a window counts as contended (see the module docstring for the calibration)."""

    max_others_share: float = MAX_OTHERS_SHARE
    min_got_share: float = MIN_GOT_SHARE


@dataclass(frozen=True)
class GpuSample:
    """One NVML reading of a GPU: other compute processes, SM clock, clock event reasons."""

    other_processes: int | None
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    clock_reasons: tuple[str, ...] = ()
    missing: str = ""  # why NVML could not be read


@dataclass(frozen=True)
class MachineSample:
    """The readings at one end of a window; None where a file or counter is not readable here."""

    wall_s: float  # time.perf_counter()
    own_cpu_s: float  # time.process_time(): this process, all threads
    cpu: procfs.CpuTimes | None
    sched: dict[int, tuple[int, int]] | None
    procs_running: int | None
    cpu_freq_mhz: float | None
    gpu: GpuSample | None = None


class Reader(Protocol):
    """Where samples come from: the machine (`MachineReader`) or a test's literal figures."""

    n_cpus: int

    def sample(self) -> MachineSample: ...


class NvmlGpu:
    """Other compute processes and clocks of GPU `index`; `own_context`: this process holds a CUDA
    context there (a CUDA cell does; the runner waiting for quiet does not)."""

    def __init__(self, index: int, own_context: bool = True) -> None:
        self.index, self.own_context = index, own_context
        self._opened: Any = None

    def sample(self) -> GpuSample:
        from asrperf.measure.energy import Availability, open_nvml

        if self._opened is None:
            self._opened = open_nvml(self.index)
        if isinstance(self._opened, Availability):
            return GpuSample(None, missing=self._opened.reason)
        nvml, handle, nvml_error = self._opened
        try:
            pids = [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        except nvml_error as exc:
            return GpuSample(None, missing=f"NVML process list: {exc}")
        others = [p for p in pids if p != os.getpid()]
        if self.own_context and len(others) == len(pids) and pids:
            # NVML lists host pids: inside a container's pid namespace our own pid is not among
            # them, and one of the listed contexts is this process's
            others = others[1:]
        clock = max_clock = None
        reasons: tuple[str, ...] = ()
        try:
            clock = nvml.nvmlDeviceGetClockInfo(handle, NVML_CLOCK_SM)
            max_clock = nvml.nvmlDeviceGetMaxClockInfo(handle, NVML_CLOCK_SM)
            get = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nvml.nvmlDeviceGetCurrentClocksThrottleReasons
            bits = int(get(handle))
            reasons = tuple(name for bit, name in GPU_CLOCK_REASONS.items() if bits & bit)
        except (nvml_error, AttributeError):
            pass  # clocks are figures; the process list is what decides
        return GpuSample(len(others), clock, max_clock, reasons)


class MachineReader:
    """Samples this Linux machine for the process it runs in, over the CPUs it may run on."""

    def __init__(self, gpu: NvmlGpu | None = None) -> None:
        self.cpus = procfs.allowed_cpus()
        self.n_cpus = len(self.cpus)
        self.gpu = gpu

    def sample(self) -> MachineSample:
        stat = procfs.read_stat()
        return MachineSample(
            wall_s=time.perf_counter(), own_cpu_s=time.process_time(),
            cpu=procfs.parse_cpu_times(stat, self.cpus) if stat else None,
            sched=procfs.thread_schedstats(),
            procs_running=procfs.parse_procs_running(stat) if stat else None,
            cpu_freq_mhz=procfs.cpu_freq_mhz(self.cpus),
            gpu=self.gpu.sample() if self.gpu is not None else None,
        )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class ContentionResult:
    """The figures of one timed window (or several, merged) and the verdict drawn from them."""

    wall_s: float
    threads: int
    n_cpus: int
    own_cpu_s: float
    own_wait_s: float | None  # None: schedstat not readable
    others_cpu_s: float | None  # None: /proc/stat not readable
    steal_s: float | None
    runqueue_max: int | None = None
    cpu_freq_mhz: float | None = None
    gpu_other_processes: int | None = None
    gpu_sm_clock_mhz: int | None = None
    gpu_sm_clock_max_mhz: int | None = None
    gpu_clock_reasons: tuple[str, ...] = ()
    gpu_missing: str = ""
    policy: ContentionPolicy = field(default_factory=ContentionPolicy)
    windows: int = 1
    windows_contended: int | None = None  # set by `merge`: how many of the windows were contended
    merged_reasons: tuple[str, ...] | None = None  # set by `merge`: every window's reasons

    @property
    def own_cpu_share(self) -> float | None:
        """Own CPU time / (wall x threads asked)."""
        return _ratio(self.own_cpu_s, self.wall_s * self.threads)

    @property
    def own_got_share(self) -> float | None:
        """Own CPU time / (own CPU + run-queue wait): the share of the CPU it wanted that it got."""
        if self.own_wait_s is None:
            return None
        return _ratio(self.own_cpu_s, self.own_cpu_s + self.own_wait_s) if self.own_cpu_s + self.own_wait_s > 0 else 1.0

    @property
    def expected_got_share(self) -> float:
        """The share a cell can get with nobody else about: 1, or cpus / threads when it asked for
        more threads than it may use CPUs (they wait on each other)."""
        return min(1.0, self.n_cpus / self.threads)

    @property
    def others_cores(self) -> float | None:
        """Cores' worth of other processes' CPU and steal time on the allowed CPUs over the window."""
        if self.others_cpu_s is None:
            return None
        return _ratio(self.others_cpu_s + (self.steal_s or 0.0), self.wall_s)

    @property
    def others_share(self) -> float | None:
        """Others' cores beyond those the cell left free, as a share of the cores it asked for."""
        cores = self.others_cores
        if cores is None:
            return None
        spare = max(0, self.n_cpus - self.threads)
        return max(0.0, cores - spare) / self.threads

    @property
    def reasons(self) -> list[str]:
        """The reason codes (REASONS) of a contended window; empty when quiet."""
        if self.merged_reasons is not None:
            return list(self.merged_reasons)
        out = []
        if self.others_share is not None and self.others_share > self.policy.max_others_share:
            out.append(REASON_OTHERS)
        if self.own_got_share is not None and self.own_got_share < self.policy.min_got_share * self.expected_got_share:
            out.append(REASON_WAIT)
        if self.gpu_other_processes:
            out.append(REASON_GPU)
        return out

    @property
    def measured(self) -> bool:
        """Whether anything that decides was readable (else the verdict is unknown, not 'quiet')."""
        return self.others_cpu_s is not None or self.own_wait_s is not None or self.gpu_other_processes is not None

    @property
    def contended(self) -> bool | None:
        if self.windows_contended is not None:
            return self.windows_contended > 0
        return bool(self.reasons) if self.measured else None

    @property
    def method(self) -> str:
        parts = []
        parts.append("others: /proc/stat busy+steal on the allowed CPUs minus own CPU" if self.others_cpu_s is not None
                     else "others: not readable (/proc/stat)")
        parts.append("wait: schedstat run-queue wait of own threads" if self.own_wait_s is not None
                     else "wait: not readable (/proc/self/task/*/schedstat)")
        if self.gpu_other_processes is not None:
            parts.append("gpu: NVML compute processes")
        elif self.gpu_missing:
            parts.append(f"gpu: not read ({self.gpu_missing})")
        return "; ".join(parts)

    def to_row(self) -> dict[str, Any]:
        """The row keys of the guard, all produced here: `contended` and `contention_*` figures."""
        def r(x: float | None, nd: int = 4) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "contended": self.contended,
            "contention_reasons": self.reasons,
            "contention_windows": self.windows,
            "contention_windows_contended": self.windows_contended if self.windows_contended is not None
            else int(bool(self.contended)),
            "contention_wall_s": r(self.wall_s), "contention_threads": self.threads, "contention_cpus": self.n_cpus,
            "contention_own_cpu_s": r(self.own_cpu_s), "contention_own_cpu_share": r(self.own_cpu_share),
            "contention_own_wait_s": r(self.own_wait_s), "contention_own_got_share": r(self.own_got_share),
            "contention_others_cpu_s": r(self.others_cpu_s), "contention_steal_s": r(self.steal_s),
            "contention_others_cores": r(self.others_cores), "contention_others_share": r(self.others_share),
            "contention_runqueue_max": self.runqueue_max, "contention_cpu_freq_mhz": r(self.cpu_freq_mhz, 1),
            "contention_gpu_other_processes": self.gpu_other_processes,
            "contention_gpu_sm_clock_mhz": self.gpu_sm_clock_mhz,
            "contention_gpu_sm_clock_max_mhz": self.gpu_sm_clock_max_mhz,
            "contention_gpu_clock_reasons": list(self.gpu_clock_reasons),
            "contention_max_others_share": self.policy.max_others_share,
            "contention_min_got_share": self.policy.min_got_share,
            "contention_method": self.method,
        }

    @classmethod
    def between(cls, start: MachineSample, end: MachineSample, threads: int, n_cpus: int,
                policy: ContentionPolicy = ContentionPolicy()) -> "ContentionResult":
        """The figures of the window from `start` to `end`."""
        wall = max(end.wall_s - start.wall_s, 1e-9)
        own = max(0.0, end.own_cpu_s - start.own_cpu_s)
        others = steal = None
        if start.cpu is not None and end.cpu is not None:
            d = end.cpu - start.cpu
            # /proc/stat counts in ticks (10 ms), own CPU in ns: clamp the rounding at zero
            others, steal = max(0.0, d.busy_s - own), max(0.0, d.steal_s)
        wait = None
        if start.sched is not None and end.sched is not None:
            wait = procfs.schedstat_delta_ns(start.sched, end.sched)[1] / 1e9
        running = [x for x in (start.procs_running, end.procs_running) if x is not None]
        freqs = [x for x in (start.cpu_freq_mhz, end.cpu_freq_mhz) if x is not None]
        g0, g1 = start.gpu, end.gpu
        gpu_others = None
        if g0 is not None and g1 is not None and g0.other_processes is not None and g1.other_processes is not None:
            gpu_others = max(g0.other_processes, g1.other_processes)
        g = g1 or g0
        return cls(
            wall_s=wall, threads=max(1, threads), n_cpus=n_cpus, own_cpu_s=own, own_wait_s=wait, others_cpu_s=others,
            steal_s=steal, runqueue_max=max(running) if running else None,
            cpu_freq_mhz=sum(freqs) / len(freqs) if freqs else None, gpu_other_processes=gpu_others,
            gpu_sm_clock_mhz=g.sm_clock_mhz if g else None, gpu_sm_clock_max_mhz=g.sm_clock_max_mhz if g else None,
            gpu_clock_reasons=tuple(sorted(set((g0.clock_reasons if g0 else ()) + (g1.clock_reasons if g1 else ())))),
            gpu_missing=(g.missing if g else ""), policy=policy,
        )

    @classmethod
    def merge(cls, results: Sequence["ContentionResult"]) -> "ContentionResult":
        """Several windows of one cell (the max-throughput probes): figures summed, contended if any was."""
        if len(results) == 1:
            return results[0]
        first = results[0]

        def total(key: str) -> float | None:
            vals = [getattr(r, key) for r in results]
            return None if any(v is None for v in vals) else sum(vals)

        def most(key: str) -> Any:
            vals = [getattr(r, key) for r in results if getattr(r, key) is not None]
            return max(vals) if vals else None

        freqs = [r.cpu_freq_mhz for r in results if r.cpu_freq_mhz is not None]
        merged = cls(
            wall_s=sum(r.wall_s for r in results), threads=first.threads, n_cpus=first.n_cpus,
            own_cpu_s=sum(r.own_cpu_s for r in results), own_wait_s=total("own_wait_s"),
            others_cpu_s=total("others_cpu_s"), steal_s=total("steal_s"), runqueue_max=most("runqueue_max"),
            cpu_freq_mhz=sum(freqs) / len(freqs) if freqs else None, gpu_other_processes=most("gpu_other_processes"),
            gpu_sm_clock_mhz=min((r.gpu_sm_clock_mhz for r in results if r.gpu_sm_clock_mhz is not None), default=None),
            gpu_sm_clock_max_mhz=most("gpu_sm_clock_max_mhz"),
            gpu_clock_reasons=tuple(sorted({x for r in results for x in r.gpu_clock_reasons})),
            gpu_missing=first.gpu_missing, policy=first.policy, windows=len(results),
            windows_contended=sum(bool(r.contended) for r in results),
            merged_reasons=tuple(sorted({x for r in results for x in r.reasons}, key=REASONS.index)),
        )
        return merged


class ContentionGuard:
    """Context manager around a timed window; re-enterable: each window appends to `results`."""

    def __init__(self, threads: int, reader: Reader | None = None,
                 policy: ContentionPolicy = ContentionPolicy()) -> None:
        self.threads = threads
        self.reader = reader if reader is not None else MachineReader()
        self.policy = policy
        self.results: list[ContentionResult] = []
        self._start: MachineSample | None = None

    def __enter__(self) -> "ContentionGuard":
        self._start = self.reader.sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self.reader.sample()
        self.results.append(ContentionResult.between(self._start, end, self.threads, self.reader.n_cpus, self.policy))

    @property
    def result(self) -> ContentionResult | None:
        """The last window's result."""
        return self.results[-1] if self.results else None

    def merged(self) -> ContentionResult | None:
        return ContentionResult.merge(self.results) if self.results else None


def _gpu_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)


def contention_guard(threads: int, device: str, policy: ContentionPolicy = ContentionPolicy()) -> ContentionGuard:
    """The guard of a cell with `threads` CPU threads on `device` (a CUDA device adds the NVML figures)."""
    index = _gpu_index(device)
    return ContentionGuard(threads, MachineReader(NvmlGpu(index) if index is not None else None), policy)


@dataclass(frozen=True)
class QuietWait:
    """The outcome of `wait_quiet`: whether the machine went quiet, after how long, the last figures."""

    quiet: bool
    waited_s: float
    last: ContentionResult | None

    def describe(self) -> str:
        r = self.last
        if r is None:
            return "machine load not readable here"
        figures = [f"others used {r.others_cores:.2f} core(s) of {r.n_cpus}" if r.others_cores is not None else ""]
        if r.gpu_other_processes:
            figures.append(f"{r.gpu_other_processes} other process(es) on the GPU")
        return ", ".join(f for f in figures if f)


def is_quiet(r: ContentionResult) -> bool:
    """A window with nothing of ours running is quiet when others would not contend a cell of r.threads."""
    return not ((r.others_share is not None and r.others_share > r.policy.max_others_share)
                or r.gpu_other_processes)


def wait_quiet(threads: int, device: str, bound_s: float, policy: ContentionPolicy = ContentionPolicy(),
               sample_s: float = 1.0, reader: Reader | None = None,
               sleep: Callable[[float], None] = time.sleep,
               on_wait: Callable[[QuietWait], None] | None = None) -> QuietWait:
    """Wait until others leave room for a cell of `threads` threads on `device`, at most `bound_s`.

    Each check is a window of `sample_s` in which this process sleeps; the first quiet window ends
    the wait. Past the bound, the last figures are returned with quiet=False (the caller measures
    anyway; the guard then records whether the cell was contended).
    """
    if reader is None:
        index = _gpu_index(device)
        reader = MachineReader(NvmlGpu(index, own_context=False) if index is not None else None)
    waited = 0.0
    while True:
        guard = ContentionGuard(threads, reader, policy)
        with guard:
            sleep(sample_s)
        waited += guard.result.wall_s
        state = QuietWait(is_quiet(guard.result), waited, guard.result)
        if state.quiet or not guard.result.measured or waited >= bound_s:
            return state
        if on_wait is not None:
            on_wait(state)
