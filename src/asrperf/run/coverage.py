"""Which declared engines could run the measured models: the report's "not measured" line.

report/ does not import engines, so the run layer reads the declarations
(engines/capabilities.py) and the catalog's model families here and hands plain data over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from asrperf.report.summary import EngineOffer


def engine_offers(rows: Iterable[Mapping[str, Any]]) -> list[EngineOffer]:
    """Every built-in engine with the measured models whose family it runs (an unknown family: any)."""
    from asrperf.engines.capabilities import ENGINES
    from asrperf.engines.catalog import CATALOG

    names = list(dict.fromkeys(str(r.get("model_name") or r["model"]) for r in rows))
    offers = []
    for decl in ENGINES.values():
        if decl.plugin_module:  # a plugin's engine is offered by its own package, not here
            continue
        models = tuple(n for n in names if decl.runs(CATALOG[n].family if n in CATALOG else ""))
        if models:
            offers.append(EngineOffer(decl.name, models, decl.requires))
    return offers
