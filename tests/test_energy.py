"""Energy readers against recorded counters (fake sysfs, fake NVML), the estimator against known CPU work."""

import errno
import os
import sys
import time
import types
from pathlib import Path

import pytest

from asrperf.errors import MeasurementError
from asrperf.measure import energy
from asrperf.measure.energy import (
    EnergyResult,
    EstimatedCpuEnergy,
    NvmlReader,
    RaplReader,
    default_readers,
    idle_power_w,
    measure_energy,
)

PKG_MAX_UJ = 262_143_328_850  # max_energy_range_uj of a real package zone
DRAM_MAX_UJ = 65_712_999_613


# --- fake sysfs -------------------------------------------------------------------------------

def _zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int) -> None:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")


def _set(root: Path, counters: dict[str, int]) -> None:
    for zone, uj in counters.items():
        (root / zone / "energy_uj").write_text(f"{uj}\n")


@pytest.fixture
def rapl_root(tmp_path) -> Path:
    """Two sockets with DRAM, plus zones that must be ignored (core, uncore inside the package; psys)."""
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 0, PKG_MAX_UJ)
    _zone(root, "intel-rapl:0:0", "core", 0, PKG_MAX_UJ)
    _zone(root, "intel-rapl:0:1", "uncore", 0, PKG_MAX_UJ)
    _zone(root, "intel-rapl:0:2", "dram", 0, DRAM_MAX_UJ)
    _zone(root, "intel-rapl:1", "package-1", 0, PKG_MAX_UJ)
    _zone(root, "intel-rapl:1:0", "dram", 0, DRAM_MAX_UJ)
    _zone(root, "intel-rapl:2", "psys", 0, PKG_MAX_UJ)
    (root / "intel-rapl-mmio:0").mkdir()  # duplicates package-0 on some machines; not matched
    return root


# (zone -> energy_uj at start, at stop) and the joules each domain must read
RAPL_WINDOWS = [
    (
        {"intel-rapl:0": (10_000_000, 12_500_000), "intel-rapl:0:2": (500_000, 800_000),
         "intel-rapl:1": (PKG_MAX_UJ - 1_000_000, 1_500_000),  # wrapped: 1.0 + 1.5 J
         "intel-rapl:1:0": (7, 200_007), "intel-rapl:0:0": (0, 99_000_000), "intel-rapl:2": (0, 99_000_000)},
        {"package-0": 2.5, "dram-0": 0.3, "package-1": 2.5, "dram-1": 0.2},
    ),
    (
        {"intel-rapl:0": (12_500_000, 12_500_000), "intel-rapl:0:2": (DRAM_MAX_UJ - 1, 0),  # idle; wrap by 1 uJ
         "intel-rapl:1": (1_500_000, 2_000_000), "intel-rapl:1:0": (200_007, 200_007)},
        {"package-0": 0.0, "dram-0": 1e-6, "package-1": 0.5, "dram-1": 0.0},
    ),
]


@pytest.mark.parametrize("counters, expected_j", RAPL_WINDOWS, ids=["wrap-package", "idle-wrap-dram"])
def test_rapl_reads_recorded_counters(rapl_root, counters, expected_j):
    reader = RaplReader(rapl_root)
    assert reader.available()
    assert reader.method == "measured: rapl package+dram"
    _set(rapl_root, {z: v[0] for z, v in counters.items()})
    reader.start()
    _set(rapl_root, {z: v[1] for z, v in counters.items()})
    joules = reader.stop()
    assert joules.keys() == expected_j.keys(), "core, uncore and psys overlap the package and are left out"
    for domain, j in expected_j.items():
        assert joules[domain] == pytest.approx(j, abs=1e-9), domain


def test_rapl_in_meter_sums_domains(rapl_root):
    counters, expected_j = RAPL_WINDOWS[0]
    _set(rapl_root, {z: v[0] for z, v in counters.items()})
    with measure_energy([RaplReader(rapl_root)]) as meter:
        _set(rapl_root, {z: v[1] for z, v in counters.items()})
    r = meter.result
    assert r.method == "measured: rapl package+dram" and r.measured
    assert r.energy_j == pytest.approx(sum(expected_j.values()))
    assert r.domains == pytest.approx(expected_j)
    assert r.idle_w is None and r.min_window_s == RaplReader.min_window_s


def test_rapl_package_only_method(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", 5, PKG_MAX_UJ)
    reader = RaplReader(tmp_path)
    assert reader.available() and reader.method == "measured: rapl package"


def test_rapl_missing_directory(tmp_path):
    ok = RaplReader(tmp_path / "no-powercap").available()
    assert not ok and "without RAPL" in ok.reason and "no-powercap" in ok.reason


def test_rapl_no_package_zone(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "psys", 5, PKG_MAX_UJ)
    ok = RaplReader(tmp_path).available()
    assert not ok and "no intel-rapl:* package zone" in ok.reason


def test_rapl_unreadable_counter(rapl_root, monkeypatch):
    target = rapl_root / "intel-rapl:0" / "energy_uj"
    target.chmod(0o000)  # what Linux >= 5.10 does for non-root users
    if os.access(target, os.R_OK):  # running as root, which reads anything: deny it the way the kernel would
        real = energy._read_int

        def deny(path: Path) -> int:
            if path == target:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(energy, "_read_int", deny)
    reader = RaplReader(rapl_root)
    ok = reader.available()
    assert not ok
    assert "permission denied" in ok.reason and str(target) in ok.reason and "chmod" in ok.reason
    with pytest.raises(MeasurementError, match="energy reader rapl is not available: permission denied"), \
            measure_energy([reader]):
        pass


# --- fake NVML --------------------------------------------------------------------------------

def _fake_pynvml(energy_mj=None, power_mw: float = 150_000.0, init_error: str | None = None):
    """A pynvml stand-in: `energy_mj` a list of counter readings (None: counter not supported)."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    readings = iter(energy_mj or [])

    def init():
        if init_error:
            raise NVMLError(init_error)

    def total_energy(handle):
        if energy_mj is None:
            raise NVMLError("Not Supported")
        return next(readings)

    mod.NVMLError = NVMLError
    mod.nvmlInit = init
    mod.nvmlDeviceGetHandleByIndex = lambda i: f"handle-{i}"
    mod.nvmlDeviceGetTotalEnergyConsumption = total_energy
    mod.nvmlDeviceGetPowerUsage = lambda handle: power_mw
    return mod


def test_nvml_counter_path(monkeypatch):
    # availability probes the counter once, then start and stop read it: 250 J over the window
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(energy_mj=[1_000, 1_000_000, 1_250_000]))
    reader = NvmlReader(0)
    assert reader.available()
    assert reader.method == "measured: nvml counter" and reader.min_window_s == 1.0
    with measure_energy([reader]) as meter:
        pass
    assert meter.result.domains == {"gpu0": 250.0} and meter.result.energy_j == 250.0
    assert meter.result.method == "measured: nvml counter" and meter.result.measured
    assert not meter.result.window_ok  # an empty block is far shorter than the counter's 1 s


def test_nvml_power_sampling_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(energy_mj=None, power_mw=150_000.0))
    reader = NvmlReader(1, sample_period_s=0.02)
    assert reader.available()
    assert reader.method == "measured: nvml power sampling" and reader.min_window_s == 5.0
    with measure_energy([reader]) as meter:
        time.sleep(0.2)
    r = meter.result
    assert list(r.domains) == ["gpu1"]
    # constant 150 W integrates to exactly 150 W x the sampled span; the span and the meter's
    # window differ only by thread start-up and scheduling (ms, more on a loaded machine)
    span = reader._samples[-1][0] - reader._samples[0][0]
    assert r.energy_j == pytest.approx(150.0 * span, rel=1e-9)
    assert abs(span - r.window_s) < 0.1
    assert len(reader._samples) >= 5, "the sampler thread kept sampling during the window"
    assert "sampled every 0.02 s" in r.note


@pytest.mark.parametrize(
    "module, reason",
    [(None, "pip install nvidia-ml-py"), (_fake_pynvml(init_error="Driver Not Loaded"), "Driver Not Loaded")],
    ids=["not-installed", "no-driver"],
)
def test_nvml_unavailable_says_why(monkeypatch, module, reason):
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None makes `import pynvml` raise ImportError
    ok = NvmlReader(0).available()
    assert not ok and reason in ok.reason


def test_default_readers_refuse_an_unreadable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(MeasurementError, match=r"nvml:0 is not available: `pynvml` is not installed"):
        default_readers(gpu_indices=[0])


def test_default_readers_fall_back_to_a_labelled_estimate():
    (reader,) = default_readers()
    if isinstance(reader, RaplReader):
        assert reader.method.startswith("measured: rapl")
    else:
        assert isinstance(reader, EstimatedCpuEnergy) and reader.method.startswith("estimated:")
        assert "RAPL not readable:" in reader.note


# --- estimate, calibrated against known CPU work ----------------------------------------------

def _burn_cpu_s(seconds: float) -> None:
    # a known amount of work: this thread's own CPU clock, so a busy machine lengthens the wall
    # time but not the work
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_estimate_reads_known_cpu_work():
    est = EstimatedCpuEnergy(tdp_w=200.0, tdp_cpus=40)  # 5 W per logical CPU
    with measure_energy([est]) as meter:
        _burn_cpu_s(0.2)
    r = meter.result
    assert est.last_cpu_s == pytest.approx(0.2, rel=0.2)
    assert r.energy_j == pytest.approx(5.0 * est.last_cpu_s)
    assert r.method == "estimated: process cpu time x 5 W per logical CPU" and not r.measured
    assert "energy_j = process_cpu_s x tdp_w / tdp_cpus" in r.note


def test_estimate_of_sleep_is_near_zero():
    est = EstimatedCpuEnergy()
    with measure_energy([est]) as meter:
        time.sleep(0.2)
    assert est.last_cpu_s < 0.04
    assert meter.result.energy_j < 0.04 * energy.DEFAULT_TDP_W / energy.DEFAULT_TDP_CPUS


def test_estimate_default_tdp_share():
    assert EstimatedCpuEnergy().w_per_cpu == 270.0 / 80 == 3.375


def test_measured_and_estimated_together_say_so(rapl_root):
    with measure_energy([RaplReader(rapl_root), EstimatedCpuEnergy()]) as meter:
        pass
    assert meter.result.method.startswith("measured: rapl package+dram + estimated: ")
    assert not meter.result.measured


# --- idle power and the unit helpers ----------------------------------------------------------

class ConstantPower:
    """A reader with a known power draw: joules = watts x elapsed."""

    name = "constant"
    min_window_s = 0.05
    method = "measured: constant"
    note = ""

    def __init__(self, watts: float) -> None:
        self.watts = watts
        self._t0 = 0.0

    def available(self):
        return energy.Availability(True)

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        return {"constant": self.watts * (time.perf_counter() - self._t0)}


def test_idle_power_reads_a_known_draw():
    assert idle_power_w(ConstantPower(40.0), 0.1) == pytest.approx(40.0, rel=0.01)


def test_idle_window_shorter_than_the_counter_allows_is_refused():
    with pytest.raises(MeasurementError, match="shorter than constant's min_window_s"):
        idle_power_w(ConstantPower(40.0), 0.01)


def test_meter_measures_idle_just_before_the_window():
    with measure_energy([ConstantPower(40.0)], idle_s=0.1) as meter:
        time.sleep(0.1)
    r = meter.result
    assert r.idle_w == pytest.approx(40.0, rel=0.01)
    assert r.net_energy_j == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda r: r.j_per_sample(10), 3.0),  # 30 J / 10 samples
        (lambda r: r.j_per_sample(10, net=True), 2.0),  # (30 - 5 W x 2 s) / 10
        (lambda r: r.j_per_audio_s(60.0), 0.5),  # 30 J / 60 s of audio
        (lambda r: r.j_per_audio_s(40.0, net=True), 0.5),  # 20 J / 40 s
        (lambda r: r.net_energy_j, 20.0),
        (lambda r: r.mean_power_w, 15.0),  # 30 J / 2 s
    ],
)
def test_result_unit_helpers(call, expected):
    r = EnergyResult(energy_j=30.0, window_s=2.0, method="measured: test", domains={"x": 30.0}, idle_w=5.0)
    assert call(r) == pytest.approx(expected)


def test_result_helpers_refuse_impossible_inputs():
    r = EnergyResult(energy_j=30.0, window_s=2.0, method="measured: test")
    with pytest.raises(ValueError, match="pass idle_s > 0"):
        _ = r.net_energy_j
    with pytest.raises(ValueError, match="n_samples=0"):
        r.j_per_sample(0)
    with pytest.raises(ValueError, match="audio_s=-1"):
        r.j_per_audio_s(-1)


def test_meter_refuses_no_readers_and_unavailable_ones(tmp_path):
    with pytest.raises(MeasurementError, match="no readers"), measure_energy([]):
        pass
    unavailable = RaplReader(tmp_path / "none")
    with pytest.raises(MeasurementError, match="rapl is not available: no .* without RAPL.*default_readers"), \
            measure_energy([unavailable]):
        pass


# --- the real counters of this machine (skip with the reason where there are none) -----------

def test_real_rapl_reads_busy_work():
    reader = RaplReader()
    ok = reader.available()
    if not ok:
        pytest.skip(f"RAPL not readable here: {ok.reason}")
    with measure_energy([reader]) as meter:
        _burn_cpu_s(0.2)
    assert meter.result.energy_j > 0 and meter.result.method.startswith("measured: rapl")
    assert 0.5 < meter.result.mean_power_w < 2000


@pytest.mark.gpu
def test_real_nvml_reads_a_window():
    reader = NvmlReader(0)
    ok = reader.available()
    if not ok:
        pytest.skip(f"NVML energy not readable here: {ok.reason}")
    with measure_energy([reader]) as meter:
        time.sleep(reader.min_window_s + 0.1)
    r = meter.result
    assert r.window_ok and r.energy_j > 0 and 1 < r.mean_power_w < 2000


def test_default_tdp_is_stated_as_assumed():
    assumed = EstimatedCpuEnergy().method
    assert assumed.startswith("estimated: process cpu time x 3.38 W per logical CPU (assumed 270 W TDP / 80 logical")
    assert "not looked up" in assumed
    assert "assumed" not in EstimatedCpuEnergy(tdp_w=200.0, tdp_cpus=40).method
