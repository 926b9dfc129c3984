"""The device's measured peaks: dense matmul FLOP/s in a dtype, and copy bandwidth.

MFU divides achieved FLOP/s by a peak *measured on the same device, dtype and thread count*, not
a datasheet figure: a 2-core VM slice or a power-capped GPU never reaches the datasheet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

MATMUL_N = 2048  # 2*N^3 = 17.2 GFLOP per matmul: ~0.1 s on 2 CPU cores, long enough to time
COPY_BYTES = 256 * 2**20  # well past every cache level, so the copy streams from DRAM / HBM
REPEATS = 5  # the best of several: a peak is what the device can do, not its average under noise
MIN_PROBE_S = 1.0  # ... and of at least this long: five 0.1 s calls can all land in one noisy moment
MAX_REPEATS = 50


@dataclass(frozen=True)
class DevicePeak:
    """Best measured dense-matmul FLOP/s and copy bandwidth on one device, dtype and thread count."""

    matmul_flops_per_s: float
    copy_bytes_per_s: float  # bytes read + bytes written per second
    dtype: str
    device: str
    method: str = (f"best of >= {REPEATS} calls and >= {MIN_PROBE_S:g} s each: {MATMUL_N}x{MATMUL_N} matmul; "
                   f"{COPY_BYTES // 2**20} MiB tensor copy")


def _best_time(fn: Any, sync: Any) -> float:
    fn()  # warm-up: first-touch allocation, kernel selection
    sync()
    best, spent, n = float("inf"), 0.0, 0
    while n < REPEATS or (spent < MIN_PROBE_S and n < MAX_REPEATS):
        t = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def measure_peak(device: str, dtype: str) -> DevicePeak:
    """Time a large matmul and a large copy in `dtype` ("fp32"/"fp16"/"bf16", or "int8": int8 x int8
    -> int32 through torch._int_mm, what int8 engines run their GEMMs as) on `device`."""
    import torch

    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dtype == "int8":
        a = torch.randint(-127, 128, (MATMUL_N, MATMUL_N), dtype=torch.int8, device=dev)
        b = torch.randint(-127, 128, (MATMUL_N, MATMUL_N), dtype=torch.int8, device=dev)
        mm_s = _best_time(lambda: torch._int_mm(a, b), sync)
    else:
        tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        a = torch.randn(MATMUL_N, MATMUL_N, device=dev).to(tdtype)
        b = torch.randn(MATMUL_N, MATMUL_N, device=dev).to(tdtype)
        mm_s = _best_time(lambda: torch.mm(a, b), sync)
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = _best_time(lambda: dst.copy_(src), sync)
    return DevicePeak(2 * MATMUL_N**3 / mm_s, 2 * COPY_BYTES / copy_s, dtype, device)
