"""Engines by name: each engine's light declaration (engines/capabilities.py) names the module
that implements it, imported only when the engine is chosen."""

from __future__ import annotations

import importlib
from pathlib import Path

from asrperf.engines.base import Engine
from asrperf.engines.capabilities import ENGINES, declaration

__all__ = ["ENGINES", "create", "supports"]


def supports(engine: str, family: str) -> bool:
    """Whether `engine` runs models of `family`; an unknown family ("", a Hub id not yet read) may run."""
    return engine in ENGINES and ENGINES[engine].runs(family)


def create(name: str, cache_dir: str | Path) -> Engine:
    """Instantiate engine `name`; its heavy dependencies load in `Engine.load`, not here."""
    module, cls = declaration(name).target.split(":")
    return getattr(importlib.import_module(module), cls)(cache_dir=cache_dir)

