"""Service-level objectives: the `--slo` syntax, and each probe's verdict with a Wilson 95% CI.

Syntax: comma-separated terms, all of which must hold.
    pQ<=T       at least Q% of requests finish within T end to end (T with a unit: 2s, 500ms)
    pQ_per_audio_s<=X
                at least Q% of requests finish within X seconds per second of their audio
    goodput>=G  at least a share G (0.99, or 99%) of requests succeed and meet every latency term
Failed requests (429, errors, timeouts) never meet a term: they count as infinitely late. So
"p99<=2s" holds exactly when 99% of *all* requests sent got their answer within 2 s, and a
server cannot pass by rejecting its slow requests.

Verdict of a term on n requests, k of them meeting it: the Wilson 95% interval of k/n decides
"pass" (its low end reaches the required share), "fail" (its high end is below it) or
"unresolved" (it straddles the required share: more requests are needed to tell).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from asrperf.errors import ConfigError
from asrperf.load.client import OK, RequestRecord
from asrperf.measure.stats import wilson_ci

PASS, FAIL, UNRESOLVED = "pass", "fail", "unresolved"
Z_95 = 1.959963984540054  # two-sided 95% normal quantile, the Wilson interval's z
_EXAMPLES = "p99<=2s, p90<=500ms, p90_per_audio_s<=0.2, goodput>=0.99 (comma-separated)"
_PERCENTILE = re.compile(r"^p(\d+(?:\.\d+)?)(_per_audio_s)?<=(\d+(?:\.\d*)?|\.\d+)(ms|s)?$")
_GOODPUT = re.compile(r"^goodput>=(\d+(?:\.\d*)?|\.\d+)(%)?$")
_UNIT_S = {"s": 1.0, "ms": 1e-3}


@dataclass(frozen=True)
class SloTerm:
    """One condition: a share `required` of requests must have `metric` <= `bound`."""

    text: str
    metric: str  # "latency_s", "latency_per_audio_s" or "goodput" (no bound of its own)
    required: float  # share of requests in (0, 1]
    bound: float = math.inf  # seconds, or seconds per audio second

    def meets(self, record: RequestRecord) -> bool:
        if record.outcome != OK or record.latency_s is None:
            return False
        if self.metric == "latency_s":
            return record.latency_s <= self.bound
        if self.metric == "latency_per_audio_s":
            return record.latency_s / record.audio_s <= self.bound
        return True


@dataclass(frozen=True)
class Slo:
    text: str
    terms: tuple[SloTerm, ...]

    @property
    def latency_terms(self) -> tuple[SloTerm, ...]:
        return tuple(t for t in self.terms if t.metric != "goodput")

    def good(self, record: RequestRecord) -> bool:
        """A request counts toward goodput: it succeeded and met every latency term."""
        return record.outcome == OK and all(t.meets(record) for t in self.latency_terms)


def parse_slo(text: str) -> Slo:
    """Parse `--slo`; a term that does not parse is a one-line error with examples."""
    terms = []
    for raw in text.split(","):
        term = "".join(raw.split())
        if not term:
            continue
        if m := _PERCENTILE.match(term):
            q, per_audio, value, unit = float(m[1]), bool(m[2]), float(m[3]), m[4]
            if not 0 < q < 100:
                raise ConfigError(f"--slo '{text}': {term}: the percentile must be in (0, 100)")
            if per_audio and unit:
                raise ConfigError(f"--slo '{text}': {term}: a per-audio-second bound is a ratio (s per s); "
                                  f"drop '{unit}'")
            if not per_audio and not unit:
                raise ConfigError(f"--slo '{text}': {term}: give the latency a unit, e.g. {term}s or {term}ms")
            bound = value if per_audio else value * _UNIT_S[unit]
            terms.append(SloTerm(term, "latency_per_audio_s" if per_audio else "latency_s", q / 100, bound))
        elif m := _GOODPUT.match(term):
            share = float(m[1]) / (100 if m[2] else 1)
            if not 0 < share <= 1:
                raise ConfigError(f"--slo '{text}': {term}: goodput is a share in (0, 1], e.g. goodput>=0.99")
            terms.append(SloTerm(term, "goodput", share))
        else:
            raise ConfigError(f"--slo '{text}': cannot read '{term}'; write e.g. {_EXAMPLES}")
    if not terms:
        raise ConfigError(f"--slo '{text}': no terms; write e.g. {_EXAMPLES}")
    if sum(t.metric == "goodput" for t in terms) > 1:
        raise ConfigError(f"--slo '{text}': give goodput once")
    return Slo(text, tuple(terms))


def verdict(k: int, n: int, required: float) -> tuple[str, float, float]:
    """(pass | fail | unresolved, CI low, CI high) of k successes in n against `required`."""
    low, high = wilson_ci(k, n)
    if n == 0:
        return UNRESOLVED, low, high
    return (PASS if low >= required else FAIL if high < required else UNRESOLVED), low, high


def requests_to_resolve(required: float) -> int:
    """Fewest requests, all meeting a term, whose Wilson 95% low end reaches `required`.

    With k = n the Wilson low end is n / (n + z^2), so n >= required * z^2 / (1 - required):
    381 requests for 0.99, 39 for 0.9. A shorter probe can only be "unresolved" at that share.
    """
    if required >= 1:
        return math.inf  # type: ignore[return-value]  (a 100% share is never proven by a sample)
    return math.ceil(required * Z_95**2 / (1 - required))


@dataclass(frozen=True)
class TermResult:
    term: str
    met: int  # requests meeting the term
    n: int  # requests judged (failures included)
    share: float
    ci_low: float
    ci_high: float
    required: float
    verdict: str


@dataclass(frozen=True)
class SloResult:
    """A probe judged against an SLO: per term, and overall."""

    terms: tuple[TermResult, ...]
    verdict: str  # fail if any term fails, pass if all pass, else unresolved
    met: bool  # every term's point estimate meets its share (what the search follows)


def evaluate(slo: Slo, records: Sequence[RequestRecord]) -> SloResult:
    """Judge measured (non-warm-up) `records` against every term of `slo`."""
    n = len(records)
    results = []
    for term in slo.terms:
        k = sum(slo.good(r) if term.metric == "goodput" else term.meets(r) for r in records)
        v, low, high = verdict(k, n, term.required)
        results.append(TermResult(term.text, k, n, k / n if n else math.nan, low, high, term.required, v))
    verdicts = {r.verdict for r in results}
    overall = FAIL if FAIL in verdicts else PASS if verdicts == {PASS} else UNRESOLVED
    met = n > 0 and all(r.share >= r.required for r in results)
    return SloResult(tuple(results), overall, met)
