"""Expand a RunConfig into cells: engine x model x variant x device x threads x length x batch x scenario."""

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

    @property
    def key(self) -> str:
        m = self.model
        return "|".join([
            # the variant is the dtype for the baseline, so keys from before variants existed still match
            m.engine, m.name, f"weights={m.weights}", m.variant, self.device, f"threads={self.threads}",
            f"{self.clip_length_s:g}s", f"batch={self.batch_size}", self.scenario,
        ])

    def to_dict(self) -> dict:
        return asdict(self)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


SEARCHED_BATCH = 0  # batch_size of a max_throughput cell: the search chooses the batches
ANALYSIS_SCENARIOS = ("profile", "decode")  # one batch size each: the smallest configured


def expand(cfg: RunConfig) -> list[Cell]:
    """All cells, grouped by model so a run's table fills model by model; threads 0 = all usable cores.

    A max_throughput cell has no batch axis: it searches batch sizes itself. The analysis
    scenarios (profile, decode) run at the smallest configured batch only (1 by default): where
    the time goes per call and per token, not how it scales with batch, which latency measures.
    """
    threads = sorted({t or usable_cores() for t in cfg.threads})
    cells = []
    for m, d, t, s in itertools.product(cfg.models, cfg.devices, threads, cfg.scenarios):
        batches = cfg.batch_sizes
        if s == "max_throughput":
            batches = (SEARCHED_BATCH,)
        elif s in ANALYSIS_SCENARIOS:
            batches = (min(cfg.batch_sizes),)
        cells += [Cell(m, d, t, length, b, s) for b in batches for length in cfg.clip_lengths_s]
    return cells
