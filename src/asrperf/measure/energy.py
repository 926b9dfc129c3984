"""Energy over the timed region: real counters where the machine has them, else a labelled estimate.

Readers, one per source, share one shape (`EnergyReader`): `available()` says whether the source
can be read here and why not; `start()` / `stop()` bracket a window and `stop()` returns joules
per domain. `measure_energy(readers)` is the context manager around a timed region (it combines
with the timer and the memory measurer in an `ExitStack`); its `result` is an `EnergyResult`
whose `method` always says where the joules came from:

    measured: rapl package+dram     Intel/AMD RAPL counters in /sys/class/powercap (CPU socket, DRAM)
    measured: nvml counter          NVIDIA total-energy counter (Volta and newer)
    measured: nvml power sampling   NVIDIA power readings integrated over time (older GPUs)
    estimated: ...                  CPU time x a TDP share, when no CPU counter is readable

Several readers in one meter add their domains and join their methods with " + ", so a result
that is part measured, part estimated says so. `default_readers()` picks them for a machine.
Counters tick at a finite rate: each reader has `min_window_s`, the shortest window whose reading
is within ~10-20% of the truth; repeat calls until the timed region is at least that long.
"""

from __future__ import annotations

import importlib
import itertools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from asrperf.errors import ConfigError, MeasurementError

RAPL_ROOT = Path("/sys/class/powercap")

# EstimatedCpuEnergy's default power per busy logical CPU: Intel Xeon Platinum 8380 (Ice Lake-SP,
# a common cloud server part): 270 W TDP shared by 40 cores x 2 threads = 80 logical CPUs,
# 3.375 W each. TDP is the sustained all-core package power, so this is the share of one busy
# logical CPU when the whole socket is busy; a lone busy core at turbo draws more, idle cores less.
DEFAULT_TDP_W = 270.0
DEFAULT_TDP_CPUS = 80


@dataclass(frozen=True)
class Availability:
    """Whether a source can be read here; falsy with the reason when not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class EnergyReader(Protocol):
    name: str  # "rapl", "nvml:0", "cpu-estimate"
    min_window_s: float  # shortest window the reading can be trusted over

    @property
    def method(self) -> str: ...  # "measured: ..." or "estimated: ..."

    @property
    def note(self) -> str: ...  # how the number was obtained, when a table needs a footnote

    def available(self) -> Availability: ...

    def start(self) -> None: ...

    def stop(self) -> dict[str, float]: ...  # joules per domain since start()


# --- RAPL -------------------------------------------------------------------------------------

def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


@dataclass(frozen=True)
class _RaplZone:
    domain: str  # "package-0", "dram-0"
    energy_path: Path
    max_range_uj: int


class RaplReader:
    """CPU package (and DRAM where present) energy from the powercap RAPL counters.

    `<root>/intel-rapl:N` is a package (name "package-N"); `intel-rapl:N:M` are its subzones,
    of which only "dram" is kept ("core" and "uncore" are inside the package, and the top-level
    "psys" covers the whole platform, so adding them would count twice). AMD CPUs expose the same
    files. Each `energy_uj` is a microjoule counter that wraps at `max_energy_range_uj` (~262 kJ,
    ~40 min at 100 W): a reading below the previous one is taken as one wrap. A window longer
    than one wrap period cannot be told apart, so keep windows well under that. The counters
    update every ~1 ms, so 50 ms windows are already within ~2%.
    """

    name = "rapl"
    min_window_s = 0.05

    def __init__(self, root: Path | str = RAPL_ROOT) -> None:
        self.root = Path(root)
        self._zones: list[_RaplZone] | None = None
        self._start_uj: dict[str, int] = {}

    def _discover(self) -> list[_RaplZone]:
        zones = []
        for zone in sorted(self.root.glob("intel-rapl:*")):
            ids = zone.name.split(":")[1:]  # ["0"] for a package, ["0", "2"] for a subzone
            zone_name = (zone / "name").read_text().strip()
            if len(ids) == 1 and zone_name.startswith("package"):
                domain = zone_name
            elif zone_name == "dram":
                domain = f"dram-{ids[0]}"
            else:
                continue
            zones.append(_RaplZone(domain, zone / "energy_uj", _read_int(zone / "max_energy_range_uj")))
        return zones

    def available(self) -> Availability:
        if not self.root.is_dir():
            return Availability(False, f"no {self.root} (VM or container without RAPL)")
        try:
            zones = self._discover()
            for z in zones:
                _read_int(z.energy_path)
        except PermissionError as exc:
            return Availability(False, f"permission denied reading {exc.filename or 'a RAPL file'}: energy_uj is "
                                       f"root-only since Linux 5.10 (CVE-2020-8694); run as root or "
                                       f"`sudo chmod a+r {self.root}/intel-rapl:*/energy_uj`")
        except (OSError, ValueError) as exc:
            return Availability(False, f"cannot read RAPL zones under {self.root}: {exc}")
        if not any(z.domain.startswith("package") for z in zones):
            return Availability(False, f"no intel-rapl:* package zone under {self.root} (VM without RAPL, "
                                       f"or the driver is not loaded: modprobe intel_rapl_msr)")
        self._zones = zones
        return Availability(True)

    def _ready_zones(self) -> list[_RaplZone]:
        if self._zones is None:
            ok = self.available()
            if not ok:
                raise MeasurementError(f"energy reader rapl is not available: {ok.reason}")
        assert self._zones is not None
        return self._zones

    @property
    def method(self) -> str:
        dram = any(z.domain.startswith("dram") for z in self._ready_zones())
        return "measured: rapl package+dram" if dram else "measured: rapl package"

    @property
    def note(self) -> str:
        return ""

    def read_uj(self) -> dict[str, int]:
        """Raw counters now, microjoules, per domain."""
        return {z.domain: _read_int(z.energy_path) for z in self._ready_zones()}

    def start(self) -> None:
        self._start_uj = self.read_uj()

    def stop(self) -> dict[str, float]:
        end_uj = self.read_uj()
        joules = {}
        for z in self._ready_zones():
            delta_uj = end_uj[z.domain] - self._start_uj[z.domain]
            if delta_uj < 0:  # the counter wrapped once
                delta_uj += z.max_range_uj
            joules[z.domain] = delta_uj / 1e6
        return joules


# --- NVML -------------------------------------------------------------------------------------

def open_nvml(index: int) -> tuple[Any, Any, type] | Availability:
    """(pynvml, handle of GPU `index`, pynvml's error class), or why NVML cannot be used here."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return Availability(False, "`pynvml` is not installed: pip install nvidia-ml-py")
    nvml_error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
        return nvml, nvml.nvmlDeviceGetHandleByIndex(index), nvml_error
    except nvml_error as exc:
        return Availability(False, f"NVML cannot open GPU {index}: {exc}")


class NvmlReader:
    """Energy of one NVIDIA GPU through NVML (`pip install nvidia-ml-py`, imported on first use).

    Preferred: `nvmlDeviceGetTotalEnergyConsumption`, a millijoule counter since driver load
    (Volta and newer). It advances in steps: ~every 100 ms on many GPUs, so `min_window_s` is
    1 s (one step is then <= 10% of the window). Where the counter is not supported, a background
    thread samples `nvmlDeviceGetPowerUsage` (milliwatts) every `sample_period_s` and integrates
    (trapezoids). On some GPUs (A100/H100 with recent drivers) that reading is itself an average
    over ~1 s, so the window's edges lag by up to ~1 s: `min_window_s` is 5 s then. The sampler
    waits on an Event between samples; it does not spin.
    """

    COUNTER_MIN_WINDOW_S = 1.0
    SAMPLING_MIN_WINDOW_S = 5.0

    def __init__(self, index: int = 0, sample_period_s: float = 0.05) -> None:
        self.index = index
        self.name = f"nvml:{index}"
        self.sample_period_s = sample_period_s
        self._nvml = None
        self._handle = None
        self._mode: str | None = None  # "counter" or "sampling", fixed by available()
        self._start_mj = 0
        self._samples: list[tuple[float, float]] = []  # (perf_counter s, power W)
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> Availability:
        if self._mode is not None:  # probed already; probing again would read the counter again
            return Availability(True)
        opened = open_nvml(self.index)
        if isinstance(opened, Availability):
            return opened
        nvml, handle, nvml_error = opened
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            mode = "counter"
        except nvml_error:
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
                mode = "sampling"
            except nvml_error as exc:
                return Availability(False, f"GPU {self.index} reports neither an energy counter nor power: {exc}")
        self._nvml, self._handle, self._mode = nvml, handle, mode
        return Availability(True)

    def _ready(self) -> str:
        if self._mode is None:
            ok = self.available()
            if not ok:
                raise MeasurementError(f"energy reader {self.name} is not available: {ok.reason}")
        assert self._mode is not None
        return self._mode

    @property
    def min_window_s(self) -> float:
        return self.COUNTER_MIN_WINDOW_S if self._ready() == "counter" else self.SAMPLING_MIN_WINDOW_S

    @property
    def method(self) -> str:
        return "measured: nvml counter" if self._ready() == "counter" else "measured: nvml power sampling"

    @property
    def note(self) -> str:
        if self._ready() == "counter":
            return ""
        return f"GPU {self.index} power sampled every {self.sample_period_s} s and integrated"

    def _power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3  # mW -> W

    def _sample_until_stopped(self) -> None:
        while not self._stop_event.wait(self.sample_period_s):
            self._samples.append((time.perf_counter(), self._power_w()))

    def start(self) -> None:
        if self._ready() == "counter":
            self._start_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            return
        self._samples = [(time.perf_counter(), self._power_w())]
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._sample_until_stopped, name=f"{self.name}-power", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        domain = f"gpu{self.index}"
        if self._ready() == "counter":
            end_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            return {domain: (end_mj - self._start_mj) / 1e3}
        # the window ends now, not when the sampler thread gets round to exiting (on a busy
        # machine the join can take tens of ms): close the curve here and drop later samples
        t_end, p_end = time.perf_counter(), self._power_w()
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
        s = [sample for sample in self._samples if sample[0] <= t_end] + [(t_end, p_end)]
        self._samples = s
        joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(s))
        return {domain: joules}


# --- estimate ---------------------------------------------------------------------------------

def process_cpu_s() -> float:
    """User + system CPU seconds of this process, all threads (children not included)."""
    try:
        import resource
    except ImportError:  # Windows
        t = os.times()
        return t.user + t.system
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class EstimatedCpuEnergy:
    """Estimate when no CPU counter is readable: process CPU time x TDP share per logical CPU.

        energy_j = process_cpu_s x tdp_w / tdp_cpus
                 = (tdp_w / tdp_cpus) x utilisation x window_s,  utilisation = process_cpu_s / window_s

    `tdp_cpus` is the number of logical CPUs the TDP is shared by on the physical part (not the
    VM's vCPU count). Defaults: DEFAULT_TDP_W / DEFAULT_TDP_CPUS (see their derivation). Left
    out: idle and uncore power, DRAM, other processes, turbo above TDP. Every result carries
    method "estimated: ..." and the formula in `note`; `why` records why no counter was used.
    """

    name = "cpu-estimate"
    min_window_s = 0.1  # getrusage is tick-accounted (~1-10 ms) on some kernels

    def __init__(self, tdp_w: float = DEFAULT_TDP_W, tdp_cpus: int = DEFAULT_TDP_CPUS, why: str = "") -> None:
        if tdp_w <= 0 or tdp_cpus <= 0:
            raise ConfigError(f"EstimatedCpuEnergy: tdp_w={tdp_w}, tdp_cpus={tdp_cpus}; both must be > 0")
        self.tdp_w = tdp_w
        self.tdp_cpus = tdp_cpus
        self.why = why
        self.last_cpu_s = 0.0  # CPU seconds of the last window, kept for tables and calibration
        self._start_cpu_s = 0.0

    @property
    def w_per_cpu(self) -> float:
        return self.tdp_w / self.tdp_cpus

    @property
    def method(self) -> str:
        method = f"estimated: process cpu time x {self.w_per_cpu:.3g} W per logical CPU"
        if (self.tdp_w, self.tdp_cpus) == (DEFAULT_TDP_W, DEFAULT_TDP_CPUS):  # not this CPU's figure
            method += (f" (assumed {self.tdp_w:g} W TDP / {self.tdp_cpus} logical CPUs, a Xeon Platinum 8380's: "
                       "the CPU's own TDP is not looked up; no setting changes it)")
        return method

    @property
    def note(self) -> str:
        formula = (f"energy_j = process_cpu_s x tdp_w / tdp_cpus = process_cpu_s x {self.tdp_w:g} W / "
                   f"{self.tdp_cpus}; process_cpu_s = user+system time of this process over the window; "
                   f"idle, uncore, DRAM and other processes not included")
        return f"{formula}; {self.why}" if self.why else formula

    def available(self) -> Availability:
        return Availability(True)

    def start(self) -> None:
        self._start_cpu_s = process_cpu_s()

    def stop(self) -> dict[str, float]:
        self.last_cpu_s = process_cpu_s() - self._start_cpu_s
        return {"cpu-estimate": self.last_cpu_s * self.w_per_cpu}


# --- result and meter -------------------------------------------------------------------------

@dataclass(frozen=True)
class EnergyResult:
    """Joules over one window, where they came from, and the per-work figures derived from them."""

    energy_j: float  # sum over domains
    window_s: float  # wall seconds the readers were running
    method: str  # "measured: ..." / "estimated: ...", joined with " + " over readers
    domains: dict[str, float] = field(default_factory=dict)  # joules per domain ("package-0", "gpu0")
    idle_w: float | None = None  # power just before the window, same readers; None if not measured
    note: str = ""
    min_window_s: float = 0.0  # longest min_window_s of the readers

    @property
    def measured(self) -> bool:
        """True only if no part of the energy is an estimate."""
        return "estimated" not in self.method

    @property
    def window_ok(self) -> bool:
        return self.window_s >= self.min_window_s

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.window_s

    @property
    def net_energy_j(self) -> float:
        """Energy above idle: energy_j - idle_w x window_s."""
        if self.idle_w is None:
            raise ValueError("net_energy_j: no idle power was measured; pass idle_s > 0 to measure_energy")
        return self.energy_j - self.idle_w * self.window_s

    def j_per_sample(self, n_samples: int, net: bool = False) -> float:
        """Joules per sample (batch size x calls in the window)."""
        if n_samples <= 0:
            raise ValueError(f"j_per_sample: n_samples={n_samples}; pass the samples processed in the window")
        return (self.net_energy_j if net else self.energy_j) / n_samples

    def j_per_audio_s(self, audio_s: float, net: bool = False) -> float:
        """Joules per second of audio processed in the window."""
        if audio_s <= 0:
            raise ValueError(f"j_per_audio_s: audio_s={audio_s}; pass the audio seconds processed in the window")
        return (self.net_energy_j if net else self.energy_j) / audio_s


def _check_available(readers: Sequence[EnergyReader]) -> None:
    if not readers:
        raise MeasurementError("measure_energy: no readers; use default_readers() for this machine")
    for r in readers:
        ok = r.available()
        if not ok:
            raise MeasurementError(f"energy reader {r.name} is not available: {ok.reason}; "
                              f"use default_readers() to fall back to a labelled estimate")


def idle_power_w(reader: EnergyReader, seconds: float) -> float:
    """Mean power in watts of `reader`'s domains over `seconds` of sleep (call it just before a window)."""
    _check_available([reader])
    if seconds < reader.min_window_s:
        raise MeasurementError(f"idle window {seconds} s is shorter than {reader.name}'s min_window_s "
                          f"{reader.min_window_s} s; measure idle for at least that long")
    reader.start()
    t0 = time.perf_counter()
    time.sleep(seconds)
    joules = reader.stop()
    return sum(joules.values()) / (time.perf_counter() - t0)


class EnergyMeter:
    """Context manager: starts every reader on entry, stops them on exit, leaves `result`."""

    def __init__(self, readers: Sequence[EnergyReader], idle_s: float = 0.0) -> None:
        self.readers = list(readers)
        self.idle_s = idle_s
        self.result: EnergyResult | None = None
        self._t0 = 0.0
        self._idle_w: float | None = None

    def __enter__(self) -> EnergyMeter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        _check_available(self.readers)
        self._idle_w = sum(idle_power_w(r, self.idle_s) for r in self.readers) if self.idle_s > 0 else None
        for r in self.readers:
            r.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        window_s = time.perf_counter() - self._t0
        domains: dict[str, float] = {}
        for r in reversed(self.readers):
            for domain, joules in r.stop().items():
                if domain in domains:
                    raise MeasurementError(f"energy domain {domain} is read twice (reader {r.name}); "
                                      f"pass each device's reader once")
                domains[domain] = joules
        self.result = EnergyResult(
            energy_j=sum(domains.values()),
            window_s=window_s,
            method=" + ".join(r.method for r in self.readers),
            domains=dict(sorted(domains.items())),
            idle_w=self._idle_w,
            note="; ".join(r.note for r in self.readers if r.note),
            min_window_s=max(r.min_window_s for r in self.readers),
        )


def measure_energy(readers: Sequence[EnergyReader], idle_s: float = 0.0) -> EnergyMeter:
    """`with measure_energy(readers) as meter: ...` then `meter.result` is the EnergyResult.

    With `idle_s > 0`, idle power is measured with the same readers over `idle_s` seconds of sleep
    just before the window (it must be at least each reader's `min_window_s`).
    """
    return EnergyMeter(readers, idle_s)


def default_readers(gpu_indices: Sequence[int] = ()) -> list[EnergyReader]:
    """RAPL if readable, else the CPU estimate (noting why); plus NVML for each GPU the engine uses.

    A GPU in `gpu_indices` whose NVML energy cannot be read is an error, not a silent CPU-only
    number: install nvidia-ml-py, or pass no GPU indices and accept CPU-only energy.
    """
    rapl = RaplReader()
    ok = rapl.available()
    readers: list[EnergyReader] = [rapl] if ok else [EstimatedCpuEnergy(why=f"RAPL not readable: {ok.reason}")]
    for i in gpu_indices:
        gpu = NvmlReader(i)
        gpu_ok = gpu.available()
        if not gpu_ok:
            raise MeasurementError(f"energy reader {gpu.name} is not available: {gpu_ok.reason}; "
                                   f"or measure CPU energy only by passing no GPU indices")
        readers.append(gpu)
    return readers


def cell_readers(device: str, enabled: bool) -> tuple[list[EnergyReader], str | None]:
    """The energy readers for a cell on `device`, or none with the reason energy is missing."""
    if not enabled:
        return [], "energy off (energy = false)"
    gpus = [] if device == "cpu" else [int(device.partition(":")[2] or 0)]
    try:
        return default_readers(gpus), None
    except MeasurementError as exc:  # e.g. a GPU without readable NVML: missing, never a CPU-only number
        return [], str(exc)
