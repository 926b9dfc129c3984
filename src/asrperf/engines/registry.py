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
}


def create(name: str, cache_dir: str | Path) -> Engine:
    """Instantiate engine `name`; its heavy dependencies load in `Engine.load`, not here."""
    try:
        module, cls = ENGINES[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown engine '{name}'; known: {', '.join(ENGINES)}") from None
    return getattr(importlib.import_module(module), cls)(cache_dir=cache_dir)
