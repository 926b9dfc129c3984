"""Memory of a cell: process RSS, torch's CUDA allocator, what NVML sees for the process, weights.

Four figures, each with how it was measured (DESIGN.md "Memory"):

    rss_peak_timed_bytes      peak resident set of the process over the timed calls. Linux keeps
                              the exact high-water mark (VmHWM in /proc/self/status) and lets a
                              process reset it (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0):
                              reset at the window start, read at the end. Where the reset is not
                              allowed, a thread samples the current RSS (/proc/self/statm) every
                              `period_s` and keeps the maximum, which can miss a spike shorter
                              than the period.
    process_hwm_bytes()       the process's high-water mark over its whole life (load included):
                              VmHWM, kept across the window resets above. Not `ru_maxrss`: after
                              exec, Linux carries the *parent's* high-water mark into it.
    cuda_peak_*_timed_bytes   torch.cuda.max_memory_allocated / max_memory_reserved after
                              reset_peak_memory_stats at the window start: tensors live at the
                              peak, and what the caching allocator held from the driver. Only
                              for engines that allocate through torch. `cuda_peaks_bytes()`
                              keeps the whole-process peaks across these resets.
    nvml_process_peak_bytes   what the driver has given this pid on the GPU (CUDA context,
                              allocator pools, cuBLAS/cuDNN workspaces, other runtimes):
                              `nvmlDeviceGetComputeRunningProcesses`, sampled every `period_s`, max
                              over the window. NVML reports host pids: inside a container whose
                              pid namespace differs, this pid is not listed and the figure is
                              missing with that reason.

Weights: `weights_size` sums the bytes of a torch module's parameters and buffers by dtype (as they
sit in memory, after any dtype cast or quantization), or the size of the model files a runtime
that keeps its copy out of sight (CTranslate2, ONNX Runtime) loaded, labelled as a file size.
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asrperf.measure.energy import Availability, open_nvml

PROC_STATUS = Path("/proc/self/status")
PROC_STATM = Path("/proc/self/statm")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
DEFAULT_PERIOD_S = 0.02  # sampler period: NVML's process query takes ~0.1-1 ms, statm ~20 us

# the largest VmHWM / CUDA peaks seen before a window reset them, so whole-cell peaks survive
_hwm_floor_bytes = 0
_cuda_floor_bytes: dict[int, tuple[int, int]] = {}  # device index -> (allocated, reserved)


# --- process RSS ------------------------------------------------------------------------------

def _status_kib(key: str, status: Path = PROC_STATUS) -> int | None:
    """A "Key:   1234 kB" line of /proc/self/status, in KiB; None where there is no such file."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident set size now (/proc/self/statm: resident pages x page size); None off Linux."""
    try:
        resident_pages = int(PROC_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def process_hwm_bytes() -> tuple[int, str]:
    """The process's peak RSS over its whole life, and how it was read.

    VmHWM where /proc has it (kept across `reset_hwm()`); elsewhere `ru_maxrss` (kilobytes on
    Linux, bytes on macOS), which after exec may include the parent's high-water mark.
    """
    hwm_kib = _status_kib("VmHWM")
    if hwm_kib is not None:
        return max(hwm_kib * 1024, _hwm_floor_bytes), "process high-water mark (VmHWM), whole cell"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return maxrss * scale, "process high-water mark (ru_maxrss), whole cell"


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not allowed.

    The mark before the reset is kept for `process_hwm_bytes()`.
    """
    global _hwm_floor_bytes
    before = _status_kib("VmHWM")
    if before is None:
        return False
    try:
        PROC_CLEAR_REFS.write_text("5")  # 5: reset the peak RSS (man 5 proc, /proc/pid/clear_refs)
    except OSError:
        return False
    _hwm_floor_bytes = max(_hwm_floor_bytes, before * 1024)
    return True


# --- torch's CUDA allocator -------------------------------------------------------------------

def cuda_peaks_bytes(index: int) -> tuple[int, int]:
    """Peak bytes allocated and reserved by torch on CUDA device `index` over the whole process,
    across the window resets of `MemoryMeter`."""
    import torch

    floor_alloc, floor_reserved = _cuda_floor_bytes.get(index, (0, 0))
    return (max(floor_alloc, torch.cuda.max_memory_allocated(index)),
            max(floor_reserved, torch.cuda.max_memory_reserved(index)))


def _reset_cuda_peaks(index: int) -> None:
    import torch

    _cuda_floor_bytes[index] = cuda_peaks_bytes(index)
    torch.cuda.reset_peak_memory_stats(index)


# --- NVML per-process memory ------------------------------------------------------------------

class NvmlProcessMemory:
    """GPU memory NVML attributes to one pid on one GPU (`pip install nvidia-ml-py`).

    `read_bytes()` sums `usedGpuMemory` over this pid's entries in
    `nvmlDeviceGetComputeRunningProcesses` (one entry per context); None when the pid is not
    listed or NVML gives no figure (`usedGpuMemory` None: MIG, or no permission); `listed` and
    `reported` remember which, for the missing reason.
    """

    def __init__(self, index: int = 0, pid: int | None = None) -> None:
        self.index = index
        self.pid = os.getpid() if pid is None else pid
        self._nvml: Any = None
        self._handle: Any = None
        self.listed = False  # the pid appeared in at least one reading
        self.reported = False  # ... with a memory figure

    def available(self) -> Availability:
        if self._nvml is not None:
            return Availability(True)
        opened = open_nvml(self.index)
        if isinstance(opened, Availability):
            return opened
        nvml, handle, nvml_error = opened
        try:
            nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml_error as exc:
            return Availability(False, f"NVML cannot list the processes on GPU {self.index}: {exc}")
        self._nvml, self._handle = nvml, handle
        return Availability(True)

    def read_bytes(self) -> int | None:
        procs = [p for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle) if p.pid == self.pid]
        if not procs:
            return None
        self.listed = True
        used = [p.usedGpuMemory for p in procs if p.usedGpuMemory is not None]
        if not used:
            return None
        self.reported = True
        return sum(used)

    def missing_reason(self) -> str:
        """Why a window had no reading (call after one)."""
        if self.listed:
            return (f"NVML lists pid {self.pid} on GPU {self.index} without a memory figure "
                    f"(usedGpuMemory not available: MIG, or no permission)")
        return (f"NVML did not list pid {self.pid} among GPU {self.index}'s compute processes "
                f"(in a container NVML reports host pids)")


# --- the meter --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryResult:
    """Memory over one window; a None figure comes with its `*_missing_reason`."""

    window_s: float
    rss_peak_bytes: int | None
    rss_method: str
    rss_missing_reason: str = ""
    cuda_peak_allocated_bytes: int | None = None
    cuda_peak_reserved_bytes: int | None = None
    cuda_missing_reason: str = ""
    nvml_process_peak_bytes: int | None = None
    nvml_samples: int = 0
    nvml_missing_reason: str = ""

    def to_row(self) -> dict[str, Any]:
        """Row fields, units in the names; "timed" = over the timed calls only."""
        row: dict[str, Any] = {
            "memory_window_s": self.window_s,
            "rss_peak_timed_bytes": self.rss_peak_bytes, "rss_peak_timed_method": self.rss_method,
            "cuda_peak_allocated_timed_bytes": self.cuda_peak_allocated_bytes,
            "cuda_peak_reserved_timed_bytes": self.cuda_peak_reserved_bytes,
            "nvml_process_peak_bytes": self.nvml_process_peak_bytes, "nvml_process_samples": self.nvml_samples,
        }
        for key, reason in (("rss_peak_timed_missing_reason", self.rss_missing_reason),
                            ("cuda_memory_missing_reason", self.cuda_missing_reason),
                            ("nvml_process_missing_reason", self.nvml_missing_reason)):
            if reason:
                row[key] = reason
        return row


class MemoryMeter:
    """Context manager around a timed region; leaves `result` (a MemoryResult).

    `cuda_index`: the torch CUDA device whose allocator peaks to read (None: `cuda_missing` says
    why not). `nvml`: the per-process reader (None: `nvml_missing` says why not). `kernel_hwm=False`
    forces the RSS sampler even where the kernel's mark can be reset (for tests).
    """

    def __init__(self, cuda_index: int | None = None, cuda_missing: str = "", nvml: NvmlProcessMemory | None = None,
                 nvml_missing: str = "", period_s: float = DEFAULT_PERIOD_S, kernel_hwm: bool = True) -> None:
        if period_s <= 0:
            raise ValueError(f"MemoryMeter: period_s={period_s}; pass a positive sampling period in seconds")
        self.cuda_index, self.cuda_missing = cuda_index, cuda_missing
        self.nvml, self.nvml_missing = nvml, nvml_missing
        self.period_s = period_s
        self.kernel_hwm = kernel_hwm
        self.result: MemoryResult | None = None
        self._use_kernel = False
        self._rss: list[int] = []
        self._gpu: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _probes(self) -> list[tuple[Callable[[], int | None], list[int]]]:
        probes: list[tuple[Callable[[], int | None], list[int]]] = []
        if not self._use_kernel:
            probes.append((current_rss_bytes, self._rss))
        if self.nvml is not None:
            probes.append((self.nvml.read_bytes, self._gpu))
        return probes

    def _sample(self) -> None:
        for probe, into in self._probes():
            value = probe()
            if value is not None:
                into.append(value)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def __enter__(self) -> MemoryMeter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self.nvml is not None:
            ok = self.nvml.available()
            if not ok:
                self.nvml, self.nvml_missing = None, ok.reason
        if self.cuda_index is not None:
            import torch

            torch.cuda.synchronize(self.cuda_index)
            _reset_cuda_peaks(self.cuda_index)
        self._use_kernel = self.kernel_hwm and reset_hwm()
        self._rss, self._gpu = [], []
        self._sample()
        if self._probes():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="asrperf-memory", daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        window_s = time.perf_counter() - self._t0
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()  # the window's last state, after the thread is gone
        cuda_alloc = cuda_reserved = None
        if self.cuda_index is not None:
            import torch

            torch.cuda.synchronize(self.cuda_index)
            cuda_alloc = torch.cuda.max_memory_allocated(self.cuda_index)
            cuda_reserved = torch.cuda.max_memory_reserved(self.cuda_index)
        if self._use_kernel:
            rss = _status_kib("VmHWM")
            rss_peak = None if rss is None else rss * 1024
            rss_method = "kernel high-water mark (VmHWM), reset at the window start"
        else:
            rss_peak = max(self._rss) if self._rss else None
            rss_method = f"sampled every {self.period_s:g} s (/proc/self/statm), max over the window"
        nvml_peak = max(self._gpu) if self._gpu else None
        nvml_missing = self.nvml_missing
        if self.nvml is not None and nvml_peak is None:
            nvml_missing = self.nvml.missing_reason()
        self.result = MemoryResult(
            window_s=window_s, rss_peak_bytes=rss_peak, rss_method=rss_method,
            rss_missing_reason="" if rss_peak is not None else "no /proc/self/statm or VmHWM (not Linux)",
            cuda_peak_allocated_bytes=cuda_alloc, cuda_peak_reserved_bytes=cuda_reserved,
            cuda_missing_reason="" if self.cuda_index is not None else self.cuda_missing,
            nvml_process_peak_bytes=nvml_peak, nvml_samples=len(self._gpu),
            nvml_missing_reason="" if nvml_peak is not None else nvml_missing,
        )


def memory_meter(device: str, torch_allocator: bool, runtime: str, period_s: float = DEFAULT_PERIOD_S) -> MemoryMeter:
    """The meter for a cell on `device` whose engine (`runtime`, for messages) does or does not
    allocate device memory through torch (`torch_allocator`)."""
    kind, _, index_text = device.partition(":")
    if kind != "cuda":
        why = f"device {device}: no GPU memory"
        return MemoryMeter(cuda_missing=why, nvml_missing=why, period_s=period_s)
    index = int(index_text or 0)
    cuda_index, cuda_missing = index, ""
    if not torch_allocator:
        cuda_index = None
        cuda_missing = f"engine {runtime} allocates outside torch's CUDA allocator (see NVML process memory)"
    elif "torch" not in sys.modules or not sys.modules["torch"].cuda.is_available():
        cuda_index, cuda_missing = None, "torch sees no CUDA device"
    return MemoryMeter(cuda_index, cuda_missing, NvmlProcessMemory(index), period_s=period_s)


# --- weights ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedWeights:
    """What holds a loaded model's weights, as an engine reports it, so they can be sized."""

    module: Any = None  # a torch.nn.Module: its parameters and buffers, as they sit in memory
    files: tuple[Path, ...] = ()  # the model files a runtime loaded, when its in-memory copy is out of sight
    note: str = ""  # how those files relate to what is in memory (stored vs compute precision)


@dataclass(frozen=True)
class WeightsSize:
    """Bytes of a model's weights, per dtype, and what was measured (in memory or on disk)."""

    total_bytes: int
    by_dtype: dict[str, int] = field(default_factory=dict)  # "float32" -> bytes; files: "file:model.bin"
    method: str = ""

    kind: str = "in_memory"  # or "file_size": a runtime's model files on disk

    def to_row(self) -> dict[str, Any]:
        return {"weights_bytes": self.total_bytes, "weights_bytes_by_dtype": self.by_dtype,
                "weights_bytes_method": self.method, "weights_bytes_kind": self.kind}


def module_weights(module: Any) -> WeightsSize:
    """Parameters and buffers of a torch module, each tensor once (tied weights are one tensor).

    Quantized modules keep their int8 weights in packed objects that are neither parameters nor
    buffers; `state_dict()` unpacks them, so its tensors not already seen are added too.
    """
    import torch

    seen: dict[int, torch.Tensor] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        seen.setdefault(id(t), t)
    for value in module.state_dict(keep_vars=True).values():
        for t in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(t, torch.Tensor):
                seen.setdefault(id(t), t)
    by_dtype: dict[str, int] = {}
    for t in seen.values():
        name = str(t.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + t.numel() * t.element_size()
    return WeightsSize(sum(by_dtype.values()), dict(sorted(by_dtype.items())),
                       "parameters + buffers in memory (numel x element size, by dtype)")


def file_weights(files: tuple[Path, ...], note: str = "") -> WeightsSize:
    """Total size of model files on disk: what a runtime loaded, not its in-memory copy."""
    sizes = {f"file:{Path(f).name}": Path(f).stat().st_size for f in files}
    method = "model file size on disk, not the runtime's in-memory copy" + (f" ({note})" if note else "")
    return WeightsSize(sum(sizes.values()), sizes, method, kind="file_size")


def weights_fields(weights: LoadedWeights | None, runtime: str) -> dict[str, Any]:
    """Row fields for an engine's loaded weights, or a missing reason."""
    if weights is None:
        return {"weights_bytes": None, "weights_missing_reason": f"engine {runtime} does not say where its weights are"}
    if weights.module is not None:
        return module_weights(weights.module).to_row()
    if weights.files:
        return file_weights(weights.files, weights.note).to_row()
    return {"weights_bytes": None, "weights_missing_reason": weights.note or f"engine {runtime}: no weights to size"}
