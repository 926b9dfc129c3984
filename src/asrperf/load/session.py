"""One `asrperf load` invocation: a single probe, a search or a sweep against one target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asrperf.errors import ConfigError
from asrperf.load.arrivals import Arrivals
from asrperf.load.generator import Bounds, Target, run_load
from asrperf.load.launch import health, wait_idle
from asrperf.load.metrics import probe_row
from asrperf.load.search import find_max_rate, sweep
from asrperf.load.slo import Slo
from asrperf.load.workload import WorkClip

MODES = ("single", "search", "sweep")
DEFAULT_SATURATION_CLIENTS = 8  # closed-loop clients of the saturation probe when the server's batch is unknown
_SERVER_FIELDS = ("engine", "dtype", "variant", "device", "max_batch_size", "max_wait_ms", "max_queue")


@dataclass(frozen=True)
class LoadPlan:
    """What to measure: the mode, the arrival pattern, the bounds of each probe, the SLO."""

    mode: str = "single"  # MODES
    arrivals: Arrivals = Arrivals("poisson", rate_rps=1.0)  # single: as is; search/sweep: its kind and burstiness
    bounds: Bounds = Bounds()
    slo: Slo | None = None
    seed: int = 0  # the same schedule seed for every probe: rates differ, the pattern's shape does not
    precision: float = 0.05  # search: stop when the bracket is within this share of its upper end
    max_probes: int = 8  # search: bisection probes after the synchronous and saturation ones
    saturation_clients: int = 0  # 0: 2 x the server's max_batch_size (asrperf servers), else 8
    sweep_rates_rps: tuple[float, ...] = ()  # sweep: these rates; empty: fractions of saturation

    def validate(self) -> "LoadPlan":
        if self.mode not in MODES:
            raise ConfigError(f"--mode: '{self.mode}' is not one of {', '.join(MODES)}")
        if self.mode == "search" and self.slo is None:
            raise ConfigError("--mode search needs an SLO to search for, e.g. --slo 'p99<=2s'")
        if self.saturation_clients < 0:
            raise ConfigError(f"--saturation-clients: {self.saturation_clients} must be >= 0")
        if any(r <= 0 for r in self.sweep_rates_rps):
            raise ConfigError("--sweep-rates: every rate must be > 0 requests/s")
        self.bounds.validate()
        return self


def server_context(url: str) -> dict[str, Any]:
    """What the row says about the server: asrperf's own from /health, or only that it is external."""
    h = health(url)
    if h is None:
        return {"server": "external"}
    return {"server": "asrperf", "server_model": h.get("model"), "server_nice": h.get("nice"),
            **{k: h.get(k) for k in _SERVER_FIELDS},
            "engine_info": h.get("engine_info", {})}


def execute(plan: LoadPlan, target: Target, clips: Sequence[WorkClip], context: dict[str, Any],
            on_probe: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the plan; returns the probe rows, then (search, sweep) the result row."""
    plan.validate()
    ctx = {"target_url": target.url, "model": target.model, "mode": plan.mode, **server_context(target.url),
           **context}
    own = ctx["server"] == "asrperf"
    index = 0

    def probe(arrivals: Arrivals, role: str) -> dict[str, Any]:
        nonlocal index
        run = run_load(target, clips, arrivals, plan.bounds, plan.seed)
        row = probe_row(run, clips, plan.slo, {**ctx, "probe_role": role, "probe_index": index})
        index += 1
        if own:  # the next probe starts on an idle server, not on this one's backlog
            wait_idle(target.url, plan.bounds.timeout_s)
        if on_probe:
            on_probe(row)
        return row

    if plan.mode == "single":
        return [probe(plan.arrivals, "single")]
    clients = plan.saturation_clients or (2 * ctx["max_batch_size"] if own and ctx.get("max_batch_size")
                                          else DEFAULT_SATURATION_CLIENTS)
    base = {"scenario": "server", **ctx, "arrival": plan.arrivals.label, "slo": plan.slo.text if plan.slo else ""}
    if plan.mode == "search":
        result = find_max_rate(probe, plan.arrivals, clients, plan.precision, plan.max_probes)
        return [*result.probes, {**base, **result.row()}]
    swept = sweep(probe, plan.arrivals, clients, plan.sweep_rates_rps)
    return [*swept.probes, {**base, **swept.row()}]
