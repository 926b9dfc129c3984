"""Engines by name. A plain dict of import paths: an engine module is imported only when chosen."""

from __future__ import annotations

import importlib
from pathlib import Path

from asrperf.engines.base import Engine
from asrperf.errors import ConfigError

ENGINES: dict[str, str] = {
    "transformers": "asrperf.engines.hf:TransformersEngine",
    "ct2": "asrperf.engines.ct2:CTranslate2Engine",
    "ort": "asrperf.engines.ort:OnnxRuntimeEngine",
    "nemo": "asrperf.engines.nemo:NemoEngine",
    "whispercpp": "asrperf.engines.whispercpp:WhisperCppEngine",
    "openai-whisper": "asrperf.engines.openai_whisper:OpenAIWhisperEngine",
}
# model families each engine runs ("whisper": encoder-decoder, "ctc", "transducer": RNN-T/TDT);
# checked before any load
FAMILIES: dict[str, tuple[str, ...]] = {
    "transformers": ("whisper", "ctc", "transducer"),
    "ct2": ("whisper",),
    "ort": ("whisper", "ctc"),
    "nemo": ("nemo",),  # a .nemo checkpoint (CTC, RNNT, TDT or hybrid inside)
    "whispercpp": ("whisper",),
    "openai-whisper": ("whisper",),
}


# engines that cannot run the fp32 default: the dtype `asrperf run -e ENGINE` gives them unless told
DEFAULT_DTYPES: dict[str, str] = {"whispercpp": "fp16"}


def supports(engine: str, family: str) -> bool:
    """Whether `engine` runs models of `family`; an unknown family ("", a Hub id not yet read) may run."""
    return not family or family in FAMILIES.get(engine, ())


def create(name: str, cache_dir: str | Path) -> Engine:
    """Instantiate engine `name`; its heavy dependencies load in `Engine.load`, not here."""
    try:
        module, cls = ENGINES[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown engine '{name}'; known: {', '.join(ENGINES)}") from None
    return getattr(importlib.import_module(module), cls)(cache_dir=cache_dir)
