"""The one shape of a scenario: it declares its cells and runs one of them on a loaded engine.

A scenario is a `Scenario` object in the plain dict `asrperf.scenarios.SCENARIOS`. The worker
loads the engine and the clips, builds the meters the scenario asks for, calls `run`, and
builds the row; the scenario returns its own fields (declared in a schema section,
results/schema.py). Adding a scenario is one module and one dict entry (`register`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from asrperf.config import ModelConfig, RunConfig, ServerConfig, StreamingConfig, TimingConfig
    from asrperf.data.clips import Clip
    from asrperf.engines.base import Engine
    from asrperf.measure.energy import EnergyReader


@dataclass(frozen=True)
class ScenarioSettings:
    """The run settings scenarios read, as the config resolved them (no defaults here: config has them)."""

    energy: bool  # measure energy over the timed calls
    energy_idle_s: float  # idle power measured this long first (real counters only)
    flops: bool  # count FLOPs of one call and measure the device's peaks
    max_batch: int  # max_throughput: largest batch the search may try
    memory_budget_bytes: int | None  # max_throughput: stop before this much device memory
    trace_dir: str  # profile: where Chrome traces go
    decode_tokens: int  # decode: tokens in the per-token curve (0: none)
    decode_curve_length_s: float  # decode: the clip length whose cell measures the curve
    streaming: StreamingConfig | None = None  # streaming: policies, clock, capacity search (None: not a streaming run)
    capacity_length_s: float = 0.0  # streaming: the clip length whose cells search the stream capacity
    server: ServerConfig | None = None  # server: batcher settings and load plan (None: not a server run)


@dataclass
class Meters:
    """The measurers the worker built for a cell, entered by the scenario around its timed window."""

    energy_readers: list[EnergyReader] = field(default_factory=list)
    energy_missing_reason: str | None = None  # why there are no readers
    energy_idle_s: float = 0.0  # the idle window, at least each real counter's update period
    memory: AbstractContextManager | None = None  # measure.memory.MemoryMeter
    contention: Any = None  # measure.contention.ContentionGuard: the busy-machine guard of the timed windows


@dataclass
class CellContext:
    """Everything a scenario runs on: the loaded engine, the cell's clips and settings, the meters."""

    engine: Engine
    clips: list[Clip]
    device: str
    dtype: str
    clip_length_s: float
    batch_size: int
    timing: TimingConfig
    score: bool  # score WER: real weights and accuracy on (random outputs are not speech recognition)
    score_missing_reason: str | None  # why not, when not
    settings: ScenarioSettings
    trace_name: str  # a file-name-safe name for this cell's artefacts
    meters: Meters
    chunk_ms: int = 0  # streaming: audio per chunk
    model: ModelConfig | None = None  # the cell's model as configured (streaming capacity: one engine per process)
    cache_dir: str = ""  # where the clips and converted weights are cached
    # the raw seconds of each warm-up and timed call, kept in the store's samples table
    warmup_s: list[float] = field(default_factory=list)
    samples_s: list[float] = field(default_factory=list)


class Scenario:
    """Base of every scenario plugin."""

    name: ClassVar[str] = ""
    meters: ClassVar[tuple[str, ...]] = ()  # measurers the worker builds for it: "energy", "memory", "contention"
    scores_accuracy: ClassVar[bool] = False  # its row carries WER (latency: transcripts of every clip)

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        """The batch sizes it has cells for, given the configured ones (default: each of them)."""
        return configured

    def cell_batch_sizes(self, cfg: RunConfig) -> tuple[int, ...]:
        """The batch sizes of its cells in run `cfg` (default: `batch_sizes` of the configured ones)."""
        return self.batch_sizes(cfg.batch_sizes)

    def chunk_sizes_ms(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        """The streaming chunk sizes it has cells for (default: none, the single value 0)."""
        return (0,)

    def run(self, ctx: CellContext) -> dict[str, Any]:
        """Measure one cell; returns the row fields of its sections (results/schema.py)."""
        raise NotImplementedError


def device_peaks(ctx: CellContext) -> dict[str, Any]:
    """The device's measured matmul and copy peaks in the cell's dtype (torch engines only)."""
    if not ctx.engine.runs_torch or ctx.dtype not in ("fp32", "fp16", "bf16"):
        return {}
    from asrperf.measure.peak import measure_peak

    p = measure_peak(ctx.device, ctx.dtype)
    return {"peak_matmul_flops_per_s": p.matmul_flops_per_s, "peak_copy_bytes_per_s": p.copy_bytes_per_s,
            "peak_method": p.method}
