"""The maximum rate that meets an SLO (a bisection on the offered rate), and the sweep.

Search, as guidellm's and MLPerf LoadGen's do it:
1. a synchronous probe (concurrency:1): the rate of one request at a time; if even that misses
   the SLO, no rate meets it ("unattainable");
2. a saturation probe (concurrency:N, N = the server's max batch x 2 by default): the most the
   server completes per second in steady state (metrics.completion_rate_rps); an open-loop
   rate above it cannot be sustained;
3. bisection on the open-loop rate (Poisson unless told) inside (0, saturation): the first probe
   at the synchronous rate (at most half the saturation rate), then midpoints; a probe whose SLO
   point estimates hold raises the lower end, any other lowers the upper end. It stops when the
   bracket is within `precision` of its upper end, or after `max_probes`.
The answer is the highest rate that met the SLO, with the bracket around it. It is "resolved"
only when the probe at that rate passed with its Wilson CI clear of the target and the probe
above it failed the same way; otherwise "unresolved" (more requests per probe would tell).

Sweep: probes at given rates, or at fractions of the saturation rate, for the latency-vs-load
curve; its knee is metrics.knee_rate_rps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asrperf.errors import ConfigError
from asrperf.load.arrivals import OPEN_LOOP, Arrivals
from asrperf.load.metrics import knee_rate_rps
from asrperf.load.slo import FAIL, PASS

# A probe: run one load at `arrivals` and return its row (metrics.probe_row); `role` names it.
Probe = Callable[[Arrivals, str], dict[str, Any]]
SYNCHRONOUS, SATURATION, BISECT, SWEEP = "synchronous", "saturation", "bisect", "sweep"
# the sweep's rates as fractions of the saturation rate: dense near the knee, one point past it
SWEEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1)
FIRST_PROBE_MAX_SHARE = 0.5  # the bisection's first rate: the synchronous rate, at most this x saturation


@dataclass
class SearchResult:
    """The maximum sustainable rate, its bracket, and every probe that found it."""

    status: str  # found | unattainable | below_lowest_probe | up_to_saturation
    max_rate_rps: float | None  # highest probed rate that met the SLO
    upper_rate_rps: float | None  # lowest probed rate that did not (or the saturation rate)
    resolved: bool
    precision_reached: bool
    sync_rate_rps: float | None
    saturation_rate_rps: float | None
    precision: float
    note: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The search's own row (the probes have theirs)."""
        return {"probe_role": "result", "search_status": self.status, "max_sustainable_rate_rps": self.max_rate_rps,
                "upper_rate_rps": self.upper_rate_rps, "resolved": self.resolved,
                "precision_reached": self.precision_reached, "precision": self.precision,
                "sync_rate_rps": self.sync_rate_rps, "saturation_rate_rps": self.saturation_rate_rps,
                "n_probes": len(self.probes), "note": self.note}


def _check(pattern: Arrivals, precision: float, max_probes: int) -> None:
    if pattern.kind not in OPEN_LOOP:
        raise ConfigError(f"--rate {pattern.label}: the search and sweep vary an open-loop rate; "
                          f"use {', '.join(OPEN_LOOP)} (e.g. poisson:1; its rate is only the pattern)")
    if not 0 < precision < 1:
        raise ConfigError(f"--precision: {precision} must be a share in (0, 1), e.g. 0.05")
    if max_probes < 1:
        raise ConfigError(f"--max-probes: {max_probes} must be >= 1")


def _round(rate_rps: float) -> float:
    # probe rates to 4 significant digits: readable labels, far finer than any probe can resolve
    return float(f"{rate_rps:.4g}")


def _anchors(probe: Probe, saturation_clients: int) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    sync = probe(Arrivals("concurrency", clients=1), SYNCHRONOUS)
    sat = probe(Arrivals("concurrency", clients=saturation_clients), SATURATION)
    r_sync = sync.get("achieved_rate_rps") or 0.0
    return sync, sat, r_sync, max(saturation_rate(sat), r_sync)


def saturation_rate(row: dict[str, Any]) -> float:
    """A saturation probe's rate: its steady-state completion rate, else its achieved rate."""
    return row.get("completion_rate_rps") or row.get("achieved_rate_rps") or 0.0


def find_max_rate(probe: Probe, pattern: Arrivals, saturation_clients: int, precision: float = 0.05,
                  max_probes: int = 8) -> SearchResult:
    """Bisect the open-loop rate of `pattern` for the highest one whose probe meets the SLO."""
    _check(pattern, precision, max_probes)
    sync, sat, r_sync, r_sat = _anchors(probe, saturation_clients)
    probes = [sync, sat]
    if not sync.get("slo_met"):
        return SearchResult("unattainable", None, r_sync or None, sync.get("slo_verdict") == FAIL, False,
                            r_sync or None, r_sat or None, precision,
                            "one request at a time already misses the SLO", probes)
    if r_sat <= 0:
        return SearchResult("unattainable", None, None, False, False, r_sync or None, None, precision,
                            "the saturation probe completed no request", probes)
    lo, hi = 0.0, r_sat
    lo_row: dict[str, Any] | None = None
    hi_row: dict[str, Any] | None = None
    rate = _round(min(r_sync, FIRST_PROBE_MAX_SHARE * r_sat))
    for _ in range(max_probes):
        row = probe(pattern.with_rate(rate), BISECT)
        probes.append(row)
        if row.get("slo_met"):
            lo, lo_row = rate, row
        else:
            hi, hi_row = rate, row
        if hi - lo <= precision * hi:
            break
        rate = _round((lo + hi) / 2)
    reached = hi - lo <= precision * hi
    resolved = (lo_row is not None and lo_row.get("slo_verdict") == PASS and reached
                and (hi_row is None or hi_row.get("slo_verdict") == FAIL))
    if lo_row is None:
        status, note = "below_lowest_probe", f"every probed rate missed the SLO; the maximum is below {hi:.3g} req/s"
    elif hi_row is None:
        status, note = "up_to_saturation", "every probed rate met the SLO up to the saturation rate"
    else:
        status, note = "found", ""
    if not resolved and lo_row is not None:
        why = ("a bracketing probe's CI straddles the SLO target: give probes more requests" if reached
               else "the probe budget ran out before the precision")
        note = f"{note}; {why}" if note else why
    return SearchResult(status, lo if lo_row is not None else None, hi, resolved, reached, r_sync, r_sat, precision,
                        note, probes)


@dataclass
class SweepResult:
    probes: list[dict[str, Any]]
    saturation_rate_rps: float | None
    knee_rate_rps: float | None

    def row(self) -> dict[str, Any]:
        return {"probe_role": "result", "saturation_rate_rps": self.saturation_rate_rps,
                "knee_rate_rps": self.knee_rate_rps, "n_probes": len(self.probes)}


def sweep(probe: Probe, pattern: Arrivals, saturation_clients: int, rates_rps: Sequence[float] = (),
          fractions: Sequence[float] = SWEEP_FRACTIONS) -> SweepResult:
    """Probe each rate (or each fraction of the measured saturation rate), lowest first."""
    _check(pattern, 0.5, 1)
    probes: list[dict[str, Any]] = []
    r_sat = None
    if not rates_rps:
        sat = probe(Arrivals("concurrency", clients=saturation_clients), SATURATION)
        probes.append(sat)
        r_sat = saturation_rate(sat) or None
        if not r_sat:
            return SweepResult(probes, None, None)
        rates_rps = [_round(f * r_sat) for f in fractions]
    curve = [probe(pattern.with_rate(rate), SWEEP) for rate in sorted(rates_rps)]
    return SweepResult(probes + curve, r_sat, knee_rate_rps(curve))
