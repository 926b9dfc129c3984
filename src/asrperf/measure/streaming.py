"""Streaming metrics, defined once, from the trace of one stream: what was shown, committed and when.

A stream is a clip fed to a streaming policy in chunks of `chunk_s` seconds; chunk k (0-based)
*arrives* when its audio has been spoken, at min((k + 1) * chunk_s, clip length) seconds after the
stream starts. Each *update* takes every chunk that has arrived and not been taken (more than one
when the stream fell behind), runs the policy, and leaves a hypothesis: `committed` words (a
prefix the policy will not take back) and `tentative` words shown after them. All times are
seconds on the stream's clock (0 = the first sample was spoken).

Definitions (README "Streaming metrics"):
- first-partial latency: first update that shows any word, minus the start of the first utterance.
- finalization latency: per utterance, the moment its text can no longer change minus the end of
  the utterance's audio. "frontier" (chunked policies, which finalise audio frame by frame): the
  first update whose finalised audio reaches the utterance's end. "aligned" (policies that commit
  words, LocalAgreement): the commit time of the last final word aligned to the utterance's
  reference words (measure/word_align.py).
- commit time of a final word: the first update after which the committed words hold it at its
  position in its final form for good.
- word emission delay: commit time minus the word's end in the reference timing (forced
  alignment, or the offline pass's word timestamps), for every reference word with a time and an
  aligned final word.
- per-chunk compute RTF: the compute seconds of the update that took the chunk / the audio seconds
  that update took. A chunk *misses its deadline* when its update's output comes out after the
  next chunk arrives (arrival + chunk_s); with one chunk per update that is RTF > 1.
- partial stability: of the distinct (position, word) pairs ever shown, the share later revised:
  the final transcript has another word (or none) at that position. A last shown word that is a
  prefix of its final form (still being spoken) is not a revision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from asrperf.measure.word_align import align_words


@dataclass(frozen=True)
class Update:
    """One policy update of one stream (times on the stream's clock, seconds)."""

    audio_end_s: float  # audio fed so far: the end of the newest chunk this update took
    n_chunks: int  # chunks this update took
    ready_s: float  # when it could start: its newest chunk had arrived and the previous update was done
    done_s: float  # when its output came out (waits for a shared engine included)
    compute_s: float  # seconds the engine computed for it
    committed: tuple[str, ...]  # every word committed so far
    tentative: tuple[str, ...] = ()  # uncommitted words shown after them
    final_until_s: float | None = None  # chunked policies: audio up to here can no longer change


@dataclass(frozen=True)
class StreamTrace:
    """Everything measured on one stream."""

    clip_id: str
    chunk_s: float
    audio_s: float
    updates: tuple[Update, ...]
    utterances_s: tuple[tuple[float, float], ...] = ()  # each utterance's [start, end) in the clip
    utterance_words: tuple[tuple[str, ...], ...] = ()  # each utterance's reference words
    # the end (seconds) of each reference word, utterances flattened in order; None: not timed
    reference_end_s: tuple[float | None, ...] = ()

    @property
    def final_words(self) -> tuple[str, ...]:
        last = self.updates[-1] if self.updates else None
        return (last.committed + last.tentative) if last else ()

    @property
    def n_chunks(self) -> int:
        return sum(u.n_chunks for u in self.updates)


@dataclass
class StreamMetrics:
    """Raw samples of one or more streams (lists of seconds) and the method behind each."""

    first_partial_s: list[float] = field(default_factory=list)
    finalization_s: list[float] = field(default_factory=list)
    finalization_missing: int = 0  # utterances with no final word aligned to them (all deleted)
    emission_delay_s: list[float] = field(default_factory=list)
    chunk_rtf: list[float] = field(default_factory=list)
    chunk_missed: list[bool] = field(default_factory=list)
    shown_words: int = 0
    revised_words: int = 0

    def add(self, other: "StreamMetrics") -> None:
        for name in ("first_partial_s", "finalization_s", "emission_delay_s", "chunk_rtf", "chunk_missed"):
            getattr(self, name).extend(getattr(other, name))
        self.finalization_missing += other.finalization_missing
        self.shown_words += other.shown_words
        self.revised_words += other.revised_words

    @property
    def deadline_miss_share(self) -> float | None:
        return sum(self.chunk_missed) / len(self.chunk_missed) if self.chunk_missed else None

    @property
    def revised_share(self) -> float | None:
        return self.revised_words / self.shown_words if self.shown_words else None


def chunk_arrivals_s(audio_s: float, chunk_s: float) -> list[float]:
    """When each chunk of a clip has been spoken: min((k + 1) * chunk_s, audio_s)."""
    n = max(1, math.ceil(audio_s / chunk_s - 1e-9))
    return [min((k + 1) * chunk_s, audio_s) for k in range(n)]


def commit_times_s(updates: Sequence[Update], final: Sequence[str]) -> list[float | None]:
    """The commit time of each final word (see the module docstring); None if never committed."""
    out: list[float | None] = [None] * len(final)
    # walk backwards: a word's commit time is the earliest update of the last unbroken run that holds it
    for i, word in enumerate(final):
        t = None
        for u in reversed(updates):
            if i < len(u.committed) and u.committed[i] == word:
                t = u.done_s
            else:
                break
        out[i] = t
    return out


def finalization_s(trace: StreamTrace) -> tuple[list[float], int, str]:
    """Finalization latency of each utterance (seconds), the count with no final word, and the method."""
    if not trace.utterances_s or not trace.updates:
        return [], 0, "none"
    if all(u.final_until_s is not None for u in trace.updates):
        out = []
        for _, end in trace.utterances_s:
            done = next((u.done_s for u in trace.updates if u.final_until_s >= end - 1e-9), trace.updates[-1].done_s)
            out.append(done - end)
        return out, 0, "frontier"
    final = trace.final_words
    times = commit_times_s(trace.updates, final)
    reference = [w for words in trace.utterance_words for w in words]
    owner = [k for k, words in enumerate(trace.utterance_words) for _ in words]
    aligned = align_words(reference, final)
    last: dict[int, float] = {}
    for k, hyp in zip(owner, aligned):
        if hyp is not None and times[hyp] is not None:
            last[k] = max(last.get(k, -math.inf), times[hyp])
    out = [last[k] - end for k, (_, end) in enumerate(trace.utterances_s) if k in last]
    return out, len(trace.utterances_s) - len(out), "aligned"


def emission_delays_s(trace: StreamTrace) -> list[float]:
    """Commit time minus reference end time of every timed reference word with an aligned final word."""
    if not trace.reference_end_s or not trace.updates:
        return []
    final = trace.final_words
    times = commit_times_s(trace.updates, final)
    reference = [w for words in trace.utterance_words for w in words]
    aligned = align_words(reference, final)
    return [times[h] - end for h, end in zip(aligned, trace.reference_end_s)
            if h is not None and end is not None and times[h] is not None]


def stability(updates: Sequence[Update], final: Sequence[str]) -> tuple[int, int]:
    """(distinct shown (position, word) pairs, how many of them were later revised)."""
    shown: set[tuple[int, str]] = set()
    revised: set[tuple[int, str]] = set()
    for u in updates:
        words = u.committed + u.tentative
        for i, w in enumerate(words):
            if (i, w) in shown:
                continue
            shown.add((i, w))
            kept = i < len(final) and final[i] == w
            growing = i == len(words) - 1 and i < len(final) and final[i].startswith(w)
            if not kept and not growing:
                revised.add((i, w))
    return len(shown), len(revised)


def chunk_samples(trace: StreamTrace) -> tuple[list[float], list[bool]]:
    """Per chunk: the compute RTF of the update that took it, and whether it missed its deadline."""
    arrivals = chunk_arrivals_s(trace.audio_s, trace.chunk_s)
    rtf: list[float] = []
    missed: list[bool] = []
    k, fed_s = 0, 0.0
    for u in trace.updates:
        audio = max(u.audio_end_s - fed_s, 1e-9)
        fed_s = u.audio_end_s
        for _ in range(u.n_chunks):
            rtf.append(u.compute_s / audio)
            missed.append(u.done_s > arrivals[min(k, len(arrivals) - 1)] + trace.chunk_s + 1e-9)
            k += 1
    return rtf, missed


def stream_metrics(trace: StreamTrace) -> tuple[StreamMetrics, str]:
    """Every metric's raw samples for one stream, and the finalization method ("frontier", "aligned", "none")."""
    m = StreamMetrics()
    speech_start = trace.utterances_s[0][0] if trace.utterances_s else 0.0
    shown = next((u.done_s for u in trace.updates if u.committed or u.tentative), None)
    if shown is not None:
        m.first_partial_s.append(shown - speech_start)
    m.finalization_s, m.finalization_missing, method = finalization_s(trace)
    m.emission_delay_s = emission_delays_s(trace)
    m.chunk_rtf, m.chunk_missed = chunk_samples(trace)
    m.shown_words, m.revised_words = stability(trace.updates, trace.final_words)
    return m, method


def percentiles(samples: Sequence[float], qs: Sequence[int] = (50, 90, 99)) -> dict[int, float | None]:
    """numpy's default (linear) percentiles, as measure/stats.py uses; None for every q when empty."""
    if not samples:
        return {q: None for q in qs}
    values = np.percentile(np.asarray(samples, dtype=float), list(qs))
    return {q: float(v) for q, v in zip(qs, values)}
