"""Arrival patterns and their schedules.

Open loop (the schedule never waits for a response, so a slow server cannot slow the offered load):
    constant:R        one request every 1/R s
    poisson:R         exponential inter-arrival times with mean 1/R s (MLPerf's Server scenario)
    gamma:R:B         gamma inter-arrival times with mean 1/R s and shape B (vLLM's burstiness):
                      B = 1 is Poisson, B < 1 burstier, B > 1 more regular
    streams:N         N live callers: each sends its next clip when its previous clip's audio
                      duration has passed (starts staggered evenly over one clip's duration);
                      offered rate = N / mean clip duration
Closed loop:
    concurrency:N     N clients, each sends its next request when its previous one is answered
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asrperf.errors import ConfigError

OPEN_LOOP = ("constant", "poisson", "gamma")
KINDS = (*OPEN_LOOP, "streams", "concurrency")
_SYNTAX = "constant:R, poisson:R, gamma:R:BURSTINESS, streams:N or concurrency:N"


@dataclass(frozen=True)
class Arrivals:
    """One arrival pattern: a kind and its rate (requests/s) or its number of clients."""

    kind: str
    rate_rps: float = 0.0  # constant, poisson, gamma
    burstiness: float = 1.0  # gamma's shape; 1 for the other kinds
    clients: int = 0  # streams, concurrency

    @property
    def open_loop(self) -> bool:
        """True when sends follow a schedule fixed in advance (every kind but concurrency)."""
        return self.kind != "concurrency"

    @property
    def label(self) -> str:
        if self.kind == "gamma":
            return f"gamma:{self.rate_rps:g}:{self.burstiness:g}"
        if self.kind in OPEN_LOOP:
            return f"{self.kind}:{self.rate_rps:g}"
        return f"{self.kind}:{self.clients}"

    def with_rate(self, rate_rps: float) -> "Arrivals":
        """The same open-loop process at another rate (what the search varies)."""
        if self.kind not in OPEN_LOOP:
            raise ConfigError(f"--rate {self.label}: the search varies a rate; use {', '.join(OPEN_LOOP)}")
        return dataclasses.replace(self, rate_rps=rate_rps)


def parse_arrivals(text: str) -> Arrivals:
    """Parse `poisson:2`, `gamma:2:0.5`, `concurrency:4` ...; one-line errors that show the syntax."""
    kind, *args = [p.strip() for p in text.strip().split(":")]
    if kind not in KINDS:
        raise ConfigError(f"--rate '{text}': unknown pattern '{kind}'; use {_SYNTAX}")
    want = {"gamma": 2}.get(kind, 1)
    if len(args) != want:
        raise ConfigError(f"--rate '{text}': {kind} takes {want} number(s); use {_SYNTAX}")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ConfigError(f"--rate '{text}': '{':'.join(args)}' is not a number; use {_SYNTAX}") from None
    if kind in OPEN_LOOP:
        if not values[0] > 0:
            raise ConfigError(f"--rate '{text}': the rate must be > 0 requests/s")
        if kind == "gamma" and not values[1] > 0:
            raise ConfigError(f"--rate '{text}': burstiness must be > 0 (1 = Poisson, < 1 burstier)")
        return Arrivals(kind, rate_rps=values[0], burstiness=values[1] if kind == "gamma" else 1.0)
    if not values[0].is_integer() or values[0] < 1:
        raise ConfigError(f"--rate '{text}': {kind} takes a whole number of clients >= 1")
    return Arrivals(kind, clients=int(values[0]))


def inter_arrival_s(arrivals: Arrivals, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` inter-arrival times of an open-loop rate process, mean 1 / rate."""
    mean = 1.0 / arrivals.rate_rps
    if arrivals.kind == "constant":
        return np.full(n, mean)
    if arrivals.kind == "poisson":
        return rng.exponential(mean, n)
    if arrivals.kind == "gamma":  # shape k, scale mean/k: the mean stays 1/rate, the CV is 1/sqrt(k)
        return rng.gamma(arrivals.burstiness, mean / arrivals.burstiness, n)
    raise ConfigError(f"{arrivals.label} has no inter-arrival process; it is not {', '.join(OPEN_LOOP)}")


def nominal_rate_rps(arrivals: Arrivals, clip_audio_s: Sequence[float]) -> float | None:
    """The offered rate the pattern is built to make; None for closed loop (it is measured instead)."""
    if arrivals.kind in OPEN_LOOP:
        return arrivals.rate_rps
    if arrivals.kind == "streams":
        return arrivals.clients / float(np.mean(clip_audio_s))
    return None


def schedule(arrivals: Arrivals, clip_audio_s: Sequence[float], max_requests: int, duration_s: float,
             seed: int) -> list[tuple[float, int]]:
    """(send offset in s from the start, clip index) of an open-loop run, in time order.

    The run stops at `max_requests` sends or at the first send at or past `duration_s`, whichever
    comes first. Rate processes cycle through the clips in order; stream i sends clip i first, then
    the clips after it.
    """
    n_clips = len(clip_audio_s)
    if arrivals.kind in OPEN_LOOP:
        if arrivals.kind == "constant":  # i / rate, exact: summed gaps would drift by rounding
            offsets = np.arange(max_requests) / arrivals.rate_rps
        else:
            gaps = inter_arrival_s(arrivals, max_requests, np.random.default_rng(seed))
            offsets = np.concatenate([[0.0], np.cumsum(gaps[:-1])])  # the first request goes at once
        return [(float(t), i % n_clips) for i, t in enumerate(offsets) if t < duration_s]
    if arrivals.kind != "streams":
        raise ConfigError(f"{arrivals.label} is closed loop: it has no schedule fixed in advance")
    sends: list[tuple[float, int]] = []
    stagger = float(clip_audio_s[0]) / arrivals.clients
    for stream in range(arrivals.clients):
        t, k = stream * stagger, 0
        while t < duration_s and k < max_requests:
            clip = (stream + k) % n_clips
            sends.append((t, clip))
            t += float(clip_audio_s[clip])
            k += 1
    sends.sort()
    return sends[:max_requests]
