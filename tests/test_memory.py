"""Memory measurers against known allocations, NVML per-process memory against recorded readings,
weights sizes against hand counts."""

import mmap
import os
import sys
import time
import types
import warnings
from collections import namedtuple
from pathlib import Path

import pytest

from asrperf.engines.base import LoadedWeights
from asrperf.measure import memory
from asrperf.measure.memory import (
    MemoryMeter,
    NvmlProcessMemory,
    current_rss_bytes,
    file_weights,
    memory_meter,
    module_weights,
    process_hwm_bytes,
    weights_fields,
)

MIB = 2**20
linux_proc = pytest.mark.skipif(current_rss_bytes() is None, reason="no /proc/self/statm (not Linux)")


def _touch(n_bytes: int) -> mmap.mmap:
    """n_bytes of fresh pages made resident: one write per page. An anonymous mapping, not a
    bytearray: malloc may hand back heap memory an earlier test left resident (then RSS does not
    grow), and deleting the mapping unmaps it at once."""
    buf = mmap.mmap(-1, n_bytes)
    for i in range(0, n_bytes, 4096):
        buf[i] = 1
    return buf


# --- RSS, calibrated with known allocations ---------------------------------------------------

@linux_proc
@pytest.mark.parametrize("kernel_hwm", [True, False], ids=["kernel-hwm", "sampled"])
def test_window_peak_sees_a_known_allocation(kernel_hwm):
    if kernel_hwm and not memory.reset_hwm():
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    before = current_rss_bytes()
    meter = MemoryMeter(kernel_hwm=kernel_hwm, period_s=0.005)
    with meter:
        buf = _touch(128 * MIB)
        time.sleep(0.05)  # held for 10 sampling periods: the sampler must see it
        del buf
    r = meter.result
    assert (r.rss_method.startswith("kernel") if kernel_hwm else r.rss_method.startswith("sampled every 0.005 s"))
    assert r.rss_peak_bytes - before > 0.95 * 128 * MIB
    assert r.rss_peak_bytes - before < 160 * MIB  # nothing else of that size ran
    assert current_rss_bytes() - before < 64 * MIB, "the buffer was given back after the window"


@linux_proc
def test_window_peak_excludes_what_came_before_and_process_mark_keeps_it():
    buf = _touch(256 * MIB)  # the "load": a peak before the timed window
    del buf
    before = current_rss_bytes()
    with MemoryMeter() as meter:
        small = _touch(8 * MIB)
        del small
    assert meter.result.rss_peak_bytes < before + 64 * MIB  # the 256 MiB peak is outside the window
    hwm, method = process_hwm_bytes()
    assert hwm > before + 200 * MIB and "whole cell" in method  # ... but not lost for the whole cell


def test_meter_refuses_a_non_positive_period():
    with pytest.raises(ValueError, match="period_s=0"):
        MemoryMeter(period_s=0)


# --- NVML per-process memory, against recorded readings ---------------------------------------

Proc = namedtuple("Proc", "pid usedGpuMemory")  # the fields of pynvml's c_nvmlProcessInfo_t we read
ME = os.getpid()


def _fake_pynvml(readings=(), init_error=None):
    """A pynvml stand-in whose process list steps through `readings`, then repeats the last one."""
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    state = {"i": 0}

    def init():
        if init_error:
            raise NVMLError(init_error)

    def processes(handle):
        assert handle == "handle-1"
        reading = readings[min(state["i"], len(readings) - 1)]
        state["i"] += 1
        return list(reading)

    mod.NVMLError = NVMLError
    mod.nvmlInit = init
    mod.nvmlDeviceGetHandleByIndex = lambda i: f"handle-{i}"
    mod.nvmlDeviceGetComputeRunningProcesses = processes
    mod.state = state
    return mod


# one reading per call: the availability probe, then the window; other pids never count, and a
# pid with two contexts counts both
RECORDED = [
    [],  # probe
    [Proc(ME, 100 * MIB), Proc(ME + 1, 5000 * MIB)],
    [Proc(ME, 300 * MIB), Proc(ME, 20 * MIB)],  # two contexts: 320 MiB
    [Proc(ME + 1, 9000 * MIB)],  # this pid not listed in this reading
    [Proc(ME, 200 * MIB)],
]


def test_nvml_reader_follows_recorded_readings(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(RECORDED))
    reader = NvmlProcessMemory(1)
    assert reader.available()
    assert [reader.read_bytes() for _ in range(4)] == [100 * MIB, 320 * MIB, None, 200 * MIB]


def test_nvml_peak_over_a_window_is_the_max_of_the_samples(monkeypatch):
    fake = _fake_pynvml(RECORDED)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = MemoryMeter(nvml=NvmlProcessMemory(1), period_s=0.005)
    with meter:
        while fake.state["i"] < len(RECORDED) + 2:  # until every reading has been taken
            time.sleep(0.005)
    r = meter.result
    assert r.nvml_process_peak_bytes == 320 * MIB and not r.nvml_missing_reason
    assert r.nvml_samples >= 3
    assert r.to_row()["nvml_process_peak_bytes"] == 320 * MIB


@pytest.mark.parametrize(
    "readings, reason",
    [([[Proc(ME + 1, MIB)]], f"did not list pid {ME}"),
     ([[Proc(ME, None)]], "without a memory figure")],
    ids=["pid-not-listed", "no-memory-figure"],
)
def test_nvml_window_without_a_figure_says_why(monkeypatch, readings, reason):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(readings))
    with MemoryMeter(nvml=NvmlProcessMemory(1)) as meter:
        pass
    row = meter.result.to_row()
    assert row["nvml_process_peak_bytes"] is None and reason in row["nvml_process_missing_reason"]


@pytest.mark.parametrize(
    "module, reason",
    [(None, "pip install nvidia-ml-py"), (_fake_pynvml(init_error="Driver Not Loaded"), "Driver Not Loaded")],
    ids=["not-installed", "no-driver"],
)
def test_nvml_unavailable_is_missing_with_the_reason(monkeypatch, module, reason):
    monkeypatch.setitem(sys.modules, "pynvml", module)  # None makes `import pynvml` raise ImportError
    with MemoryMeter(nvml=NvmlProcessMemory(1)) as meter:
        pass
    assert meter.result.nvml_process_peak_bytes is None and reason in meter.result.nvml_missing_reason


def test_cpu_cell_has_no_gpu_memory_and_says_so():
    with memory_meter("cpu", torch_allocator=True, runtime="transformers") as meter:
        pass
    row = meter.result.to_row()
    assert row["cuda_peak_allocated_timed_bytes"] is None and row["nvml_process_peak_bytes"] is None
    assert row["cuda_memory_missing_reason"] == row["nvml_process_missing_reason"] == "device cpu: no GPU memory"


def test_a_runtime_outside_torch_gets_nvml_but_no_torch_peaks(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([[Proc(ME, 700 * MIB)]]))
    meter = memory_meter("cuda:1", torch_allocator=False, runtime="ct2")
    with meter:
        pass
    r = meter.result
    assert r.cuda_peak_allocated_bytes is None and "engine ct2 allocates outside torch" in r.cuda_missing_reason
    assert r.nvml_process_peak_bytes == 700 * MIB


# --- on a real GPU (skipped with the reason elsewhere) ----------------------------------------

@pytest.mark.gpu
def test_real_gpu_sees_a_known_cuda_allocation():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.zeros(1, device="cuda")  # the CUDA context exists before the window
    meter = memory_meter("cuda:0", torch_allocator=True, runtime="transformers")
    with meter:
        x = torch.empty(256 * MIB, dtype=torch.uint8, device="cuda")
        del x
    r = meter.result
    assert r.cuda_peak_allocated_bytes >= 256 * MIB and r.cuda_peak_reserved_bytes >= 256 * MIB
    if r.nvml_process_peak_bytes is None:
        pytest.skip(f"NVML per-process memory not readable here: {r.nvml_missing_reason}")
    assert r.nvml_process_peak_bytes >= 256 * MIB  # the driver's view includes the allocator's pool


# --- weights ----------------------------------------------------------------------------------

def test_torch_module_weights_match_the_hand_count():
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)  # 40 float32 = 160 B
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # tied: one tensor, counted once
            self.proj = torch.nn.Linear(4, 3).half()  # (12 + 3) float16 = 30 B
            self.register_buffer("scale", torch.ones(5))  # 5 float32 = 20 B
            self.register_buffer("steps", torch.zeros(2, dtype=torch.int64), persistent=False)  # 16 B

    w = module_weights(Tiny())
    assert w.by_dtype == {"float16": 30, "float32": 160 + 20, "int64": 16}
    assert w.total_bytes == 226 and "in memory" in w.method


def test_quantized_module_weights_count_the_int8_bytes():
    torch = pytest.importorskip("torch")
    quantize_dynamic = getattr(getattr(torch, "ao", None) and torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        pytest.skip("this torch has no torch.ao.quantization.quantize_dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in recent torch, still present
        q = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4)), {torch.nn.Linear}, dtype=torch.qint8)
    # packed weight 4x8 qint8 = 32 B, bias 4 float32 = 16 B; the quantizer's scale (float32) and
    # zero point (int64) of the output: 4 + 8 B. Neither is a parameter or a buffer.
    assert list(q.parameters()) == [] and list(q.buffers()) == []
    assert module_weights(q).by_dtype == {"float32": 16 + 4, "int64": 8, "qint8": 32}


def test_file_weights_are_labelled_as_file_sizes(tmp_path: Path):
    (tmp_path / "model.bin").write_bytes(b"x" * 1000)
    (tmp_path / "extra.data").write_bytes(b"x" * 24)
    row = weights_fields(LoadedWeights(files=(tmp_path / "model.bin", tmp_path / "extra.data"),
                                       note="stored float16"), "ct2")
    assert row["weights_bytes"] == 1024
    assert row["weights_bytes_by_dtype"] == {"file:model.bin": 1000, "file:extra.data": 24}
    assert row["weights_bytes_method"].startswith("model file size on disk") and "stored float16" in row["weights_bytes_method"]
    assert file_weights((tmp_path / "model.bin",)).total_bytes == 1000


def test_an_engine_that_cannot_say_has_a_missing_reason():
    row = weights_fields(None, "nemo")
    assert row["weights_bytes"] is None and "engine nemo does not say" in row["weights_missing_reason"]
