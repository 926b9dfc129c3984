"""Max throughput: the best samples/s over batch sizes, found by a geometric search.

DESIGN.md: "Max throughput = best samples/s over batch sizes, found by search, with the batch
size at which it was reached and the reason the search stopped (OOM, plateau)".

The search is pure: it only calls `measure(batch_size) -> Probe`, so its rules are tested with
literal tables; `measure_with_engine` builds that callable on top of `run_latency`.

Rules (each one is tested exactly in tests/test_max_throughput.py):

Growth. Probe batch sizes start, next(start), next(next(start)), ... where
next(b) = max(b + 1, round(b * growth)), capped at max_batch (max_batch itself is always
probed when growth reaches past it). Growth stops at the first of:

- **plateau**: `plateau_patience` ok probes in a row that each fall short of the best
  throughput of the ok probes before it by the gain: t < B * (1 + plateau_gain). (So with
  plateau_gain = 0.05, patience 1 and {1: 2.0, 2: 3.8, 4: 7.0, 8: 7.2}, batch 8 gives
  7.2 < 7.0 * 1.05 = 7.35: stop at 8. The plateau probe still counts: best = 8, because best is
  simply the highest samples/s. With patience 2 the search goes on to 16 and stops there if 16
  falls short too; one noisy probe on a shared machine no longer ends the search.)
- **max_batch**: an ok probe at max_batch that is not a plateau.
- **oom**: a probe with status "oom" (returned by `measure`, or `measure` raised an exception
  for which `is_oom` is True). It is recorded; the best ok probe is still returned.
- **memory_budget**: with memory_budget_bytes set, either
  (a) an ok probe whose measured peak_memory_bytes exceeds the budget: it is recorded with
  status "over_budget" and is not eligible as best; or
  (b) the next batch's *predicted* peak exceeds the budget: it is recorded, not run, as an
  "over_budget" probe with samples_per_s None and the prediction in `error`. The prediction is
  the straight line through the last two ok probes that report a peak (peak = fixed +
  per-sample x batch, slope clamped at >= 0); with fewer than two such probes nothing is
  predicted and the batch is measured.
- **failed**: a probe with status "failed" (or `measure` raised a non-OOM exception). It is
  recorded with its error. If nothing succeeded, the search ends with stop_reason "failed" and
  best None; otherwise growth stops, also with stop_reason "failed", and there is no refine.

Refine (policy.refine, not after "failed"): once, take the best ok probe and the smallest
recorded batch size larger than it (any status: a plateau probe, an OOM, an over-budget or a
max_batch neighbour); probe the midpoint (best + neighbour) // 2 if it is strictly between them
and not yet probed, subject to the same budget prediction. Its result is recorded and can become
best; it never changes stop_reason. With no larger neighbour (the best is the last probe)
nothing is refined.

Best: the ok probe with the highest samples_per_s; ties go to the smaller batch.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asrperf.config import DEFAULT_MAX_BATCH
from asrperf.errors import ConfigError
from asrperf.scenarios.base import CellContext, Scenario

PROBE_STATUSES = ("ok", "oom", "over_budget", "failed")
STOP_REASONS = ("oom", "plateau", "memory_budget", "max_batch", "failed")

# substrings (lower case) of messages that mean an allocation failed: PyTorch CUDA ("CUDA out of
# memory. Tried to allocate ..."), CUDA runtime ("CUDA error: out of memory"), CTranslate2 ("CUDA
# failed with error out of memory"), PyTorch CPU ("DefaultCPUAllocator: can't allocate memory")
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "failed to allocate memory")
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class SearchPolicy:
    """How batch sizes are chosen and when growth stops (see the module docstring)."""

    start_batch: int = 1
    growth: float = 2.0
    max_batch: int = DEFAULT_MAX_BATCH
    plateau_gain: float = 0.05  # a batch is a plateau probe when it is < +5% samples/s over the best so far
    # plateau probes in a row that stop the growth: 2, so that one noisy probe on a shared machine
    # does not end the search (it stopped tiny.en at batch 2 of 16: benchmarks/README.md)
    plateau_patience: int = 2
    memory_budget_bytes: int | None = None
    refine: bool = True

    def __post_init__(self) -> None:
        if self.start_batch < 1:
            raise ConfigError(f"max-throughput start_batch={self.start_batch}: must be >= 1")
        if not self.growth > 1:
            raise ConfigError(f"max-throughput growth={self.growth}: must be > 1 (e.g. 2)")
        if self.max_batch < self.start_batch:
            raise ConfigError(
                f"max-throughput max_batch={self.max_batch}: must be >= start_batch={self.start_batch}"
            )
        if self.plateau_patience < 1:
            raise ConfigError(f"max-throughput plateau_patience={self.plateau_patience}: must be >= 1 (e.g. 2)")
        if self.plateau_gain < 0:
            raise ConfigError(f"max-throughput plateau_gain={self.plateau_gain}: must be >= 0 (e.g. 0.05)")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ConfigError(
                f"max-throughput memory_budget_bytes={self.memory_budget_bytes}: must be > 0 or unset"
            )

    def next_batch(self, b: int) -> int:
        return min(self.max_batch, max(b + 1, int(round(b * self.growth))))


@dataclass
class Probe:
    """One batch size tried: its status and, when it ran, its throughput and memory."""

    batch_size: int
    status: str  # "ok" | "oom" | "over_budget" | "failed"
    samples_per_s: float | None = None
    latency_s_p50: float | None = None
    peak_memory_bytes: int | None = None
    error: str | None = None
    contended: bool | None = None  # the busy-machine guard's verdict on this probe's window

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SearchResult:
    probes: list[Probe] = field(default_factory=list)  # all, in the order they were tried
    best: Probe | None = None  # None only when no probe succeeded
    stop_reason: str = "failed"

    def to_row(self) -> dict[str, Any]:
        b = self.best
        return {
            "max_throughput_samples_per_s": b.samples_per_s if b else None,
            "max_throughput_batch_size": b.batch_size if b else None,
            "max_throughput_latency_s_p50": b.latency_s_p50 if b else None,
            "max_throughput_peak_memory_bytes": b.peak_memory_bytes if b else None,
            "max_throughput_stop_reason": self.stop_reason,
            "max_throughput_probes": [dataclasses.asdict(p) for p in self.probes],
        }


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def is_oom(exc: BaseException) -> bool:
    """True when `exc` (or the exception it was raised from) means memory ran out.

    torch.cuda.OutOfMemoryError is recognised through `sys.modules` (torch is never imported
    here) and, like any other framework's, by its class name; plus MemoryError and RuntimeErrors
    whose message names an allocation failure.
    """
    torch = sys.modules.get("torch")
    torch_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MemoryError):
            return True
        if isinstance(torch_oom, type) and isinstance(e, torch_oom):
            return True
        if any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MESSAGES):
            return True
        e = e.__cause__ or e.__context__
    return False


def _run_probe(measure: Callable[[int], Probe], batch_size: int) -> Probe:
    try:
        return measure(batch_size)
    except Exception as exc:  # a measure that raises instead of returning a probe
        return Probe(batch_size, "oom" if is_oom(exc) else "failed", error=_error_text(exc))


def _predict_peak(probes: list[Probe], batch_size: int) -> float | None:
    """Peak memory at `batch_size` on the line through the last two ok probes with a peak."""
    known = [p for p in probes if p.ok and p.peak_memory_bytes is not None]
    if len(known) < 2:
        return None
    (b1, m1), (b2, m2) = [(p.batch_size, p.peak_memory_bytes) for p in known[-2:]]
    if b1 == b2:
        return None
    slope = max(0.0, (m2 - m1) / (b2 - b1))
    return m2 + slope * (batch_size - b2)


def _best(probes: list[Probe]) -> Probe | None:
    ok = [p for p in probes if p.ok]
    return max(ok, key=lambda p: (p.samples_per_s, -p.batch_size)) if ok else None


def search(measure: Callable[[int], Probe], policy: SearchPolicy) -> SearchResult:
    """Grow the batch until OOM / memory budget / plateau / max batch, then refine once."""
    probes: list[Probe] = []
    budget = policy.memory_budget_bytes

    def attempt(b: int) -> Probe:
        """Probe b, unless its predicted peak is over budget; a measured peak over budget marks it."""
        if budget is not None:
            predicted = _predict_peak(probes, b)
            if predicted is not None and predicted > budget:
                p = Probe(b, "over_budget",
                          error=f"predicted peak {predicted:.0f} B > budget {budget} B (not run)")
                probes.append(p)
                return p
        p = _run_probe(measure, b)
        if p.status not in PROBE_STATUSES:
            p = dataclasses.replace(p, status="failed", error=f"unknown probe status {p.status!r}")
        if p.ok and p.samples_per_s is None:
            p = dataclasses.replace(p, status="failed", error="ok probe without samples_per_s")
        if p.ok and budget is not None and p.peak_memory_bytes is not None and p.peak_memory_bytes > budget:
            p = dataclasses.replace(
                p, status="over_budget", error=f"measured peak {p.peak_memory_bytes} B > budget {budget} B"
            )
        probes.append(p)
        return p

    b = policy.start_batch
    flat = 0  # plateau probes in a row
    while True:
        prior = _best(probes)
        p = attempt(b)
        if p.status == "oom":
            stop = "oom"
            break
        if p.status == "over_budget":
            stop = "memory_budget"
            break
        if p.status == "failed":
            stop = "failed"
            break
        flat = flat + 1 if prior is not None and p.samples_per_s < prior.samples_per_s * (1 + policy.plateau_gain) else 0
        if flat >= policy.plateau_patience:
            stop = "plateau"
            break
        if b >= policy.max_batch:
            stop = "max_batch"
            break
        b = policy.next_batch(b)

    best = _best(probes)
    if policy.refine and stop != "failed" and best is not None:
        larger = [q.batch_size for q in probes if q.batch_size > best.batch_size]
        if larger:
            mid = (best.batch_size + min(larger)) // 2
            if best.batch_size < mid < min(larger) and mid not in {q.batch_size for q in probes}:
                attempt(mid)
                best = _best(probes)
    return SearchResult(probes=probes, best=best, stop_reason=stop)


def _free_device_memory(engine: Any) -> None:
    """After an OOM: drain the device, drop garbage, and return cached CUDA blocks."""
    try:
        engine.synchronize()
    except Exception:  # a device that just failed an allocation may fail its sync too
        pass
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def measure_with_engine(
    engine: Any,
    clips: list,
    timing: Any,
    peak_memory: Callable[[], int | None] | None = None,
    reset_peak: Callable[[], None] | None = None,
    contention: Any = None,
) -> Callable[[int], Probe]:
    """A `measure` for `search`: one latency cell (no scoring) per batch size.

    `contention` (a measure.contention.ContentionGuard), when given, guards every probe's timed
    window: each probe records its verdict and the guard keeps every window's figures.
    `peak_memory()` is read after the timed calls (bytes, or None when unknown); `reset_peak()`,
    when given, is called before each probe so the peak is that probe's own.
    OOM -> Probe(status="oom") and device memory is freed; any other exception -> "failed".
    """
    from asrperf.scenarios.latency import run_latency  # latency pulls in energy/WER modules

    def measure(batch_size: int) -> Probe:
        if reset_peak is not None:
            reset_peak()
        status, error = "failed", None
        try:
            row, _ = run_latency(engine, clips, batch_size, timing, score=False, contention=contention)
        except Exception as exc:
            status = "oom" if is_oom(exc) else "failed"
            error = _error_text(exc)
            # the traceback's frames hold the failed batch's tensors: free only after leaving
            # the except block, where Python drops `exc`
        else:
            peak = peak_memory() if peak_memory is not None else None
            return Probe(batch_size, "ok", samples_per_s=row["throughput_samples_per_s"],
                         latency_s_p50=row["latency_s_p50"],
                         peak_memory_bytes=int(peak) if peak is not None else None,
                         contended=row.get("contended"))
        if status == "oom":
            _free_device_memory(engine)
        return Probe(batch_size, status, error=error)

    return measure


SEARCHED_BATCH = 0  # the batch_size of a max_throughput cell: the search chooses the batches


class MaxThroughputScenario(Scenario):
    """The best samples/s over a batch-size search (DESIGN.md "Max throughput"), one cell per length."""

    name = "max_throughput"
    meters = ("contention",)

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return (SEARCHED_BATCH,)

    def run(self, ctx: CellContext) -> dict[str, Any]:
        peak, reset = None, None
        torch = sys.modules.get("torch")
        if ctx.device.startswith("cuda") and torch is not None:  # device memory is what runs out there
            index = torch.device(ctx.device).index or 0
            peak = lambda: torch.cuda.max_memory_allocated(index)  # noqa: E731
            reset = lambda: torch.cuda.reset_peak_memory_stats(index)  # noqa: E731
        policy = SearchPolicy(max_batch=ctx.settings.max_batch, memory_budget_bytes=ctx.settings.memory_budget_bytes)
        guard = ctx.meters.contention
        result = search(measure_with_engine(ctx.engine, ctx.clips, ctx.timing, peak, reset, contention=guard), policy)
        merged = guard.merged() if guard is not None else None  # every probe's window, judged together
        return {**result.to_row(), **(merged.to_row() if merged is not None else {})}
