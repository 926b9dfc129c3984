"""Expand a RunConfig into cells: engine x model x variant x device x threads x length x batch x scenario
(x chunk size, for the streaming scenario)."""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass

from asrperf.config import ModelConfig, RunConfig


@dataclass(frozen=True)
class Cell:
    """One benchmark measurement; its key identifies it within a run for resume."""

    model: ModelConfig
    device: str
    threads: int
    clip_length_s: float
    batch_size: int
    scenario: str
    chunk_ms: int = 0  # streaming: audio per chunk fed to the model; 0 for every other scenario

    @property
    def key(self) -> str:
        m = self.model
        return "|".join([
            # the variant is the dtype for the baseline, so keys from before variants existed still match
            m.engine, m.name, f"weights={m.weights}", m.variant, self.device, f"threads={self.threads}",
            f"{self.clip_length_s:g}s", f"batch={self.batch_size}", self.scenario,
        ] + ([f"chunk={self.chunk_ms}ms"] if self.chunk_ms else []))  # keys of other scenarios are unchanged

    def to_dict(self) -> dict:
        return asdict(self)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def expand(cfg: RunConfig) -> list[Cell]:
    """All cells, grouped by model so a run's table fills model by model; threads 0 = all usable cores.

    Each scenario says which batch sizes it has cells for (`Scenario.batch_sizes`): latency one per
    configured size, max_throughput one searched cell, profile and decode the smallest size only,
    server one per `[server] max_batch_size`;
    and which chunk sizes (`Scenario.chunk_sizes_ms`): streaming each of `chunk_ms`, the others none.
    """
    from asrperf.scenarios import SCENARIOS

    threads = sorted({t or usable_cores() for t in cfg.threads})
    cells = []
    for m, d, t, s in itertools.product(cfg.models, cfg.devices, threads, cfg.scenarios):
        batches = SCENARIOS[s].cell_batch_sizes(cfg)
        chunks = SCENARIOS[s].chunk_sizes_ms(cfg.chunk_ms)
        cells += [Cell(m, d, t, length, b, s, c) for c in chunks for b in batches for length in cfg.clip_lengths_s]
    return cells
