"""Checks a run makes before any clip or cell work that depend on this machine: every value that cannot
run here is an error now, not a failed row later (what an engine accepts is checked by the config)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from asrperf.errors import ConfigError


def cuda_device_count() -> tuple[int, str]:
    """(CUDA devices the installed runtimes see, what was asked): the larger of torch's and
    CTranslate2's counts; 0 when neither is installed or neither finds a device."""
    counts, asked = [], []
    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: PLC0415  (only when a CUDA device is asked for)

        counts.append(torch.cuda.device_count() if torch.cuda.is_available() else 0)
        asked.append(f"torch {torch.__version__}: {counts[-1]}" + ("" if torch.version.cuda else " (a CPU-only build)"))
    if importlib.util.find_spec("ctranslate2") is not None:
        import ctranslate2  # noqa: PLC0415

        counts.append(ctranslate2.get_cuda_device_count())
        asked.append(f"ctranslate2 {ctranslate2.__version__}: {counts[-1]}")
    return max(counts, default=0), "; ".join(asked) or "neither torch nor ctranslate2 is installed"


def check_devices(devices: Iterable[str]) -> None:
    """A CUDA device must exist here; cuda:N must be below the device count."""
    wanted = [d for d in devices if d.startswith("cuda")]
    if not wanted:
        return
    count, seen = cuda_device_count()
    for d in wanted:
        index = int(d.partition(":")[2] or 0)
        if count == 0:
            raise ConfigError(f"device '{d}': this machine has no CUDA device ({seen}); use --device cpu, or "
                              "install a CUDA build of torch on a machine with an NVIDIA GPU")
        if index >= count:
            raise ConfigError(f"device '{d}': only {count} CUDA device(s) here (cuda:0..cuda:{count - 1}); "
                              "pick one of them")


__all__ = ["check_devices", "cuda_device_count"]
