"""Batched long-form: cut long audio into <= 30 s windows at pauses, so windows decode together.

OpenAI's sequential algorithm decodes one 30 s window after another and slides by the last
predicted timestamp, so a minute of audio costs two or more full decoder passes back to back.
Cutting the audio where the speaker pauses gives windows that are independent: they can be
encoded as one batch and decoded as one batch (GPU) or in parallel (CPU cores). The price is
the cut itself: a cut inside a word would lose or garble it, so cuts go where the audio is
quietest. Silent stretches at either end carry no speech and are dropped.

Pure numpy: no engine library is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.base import Transcription

WINDOW_S = 30  # Whisper's fixed input window, seconds
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE  # 480,000
FRAME_S = 0.01  # energy resolution: 10 ms frames
# A pause is judged over 200 ms around the cut (a shorter span finds dips inside words: the
# closure before a plosive is ~50-100 ms of near-silence)
PAUSE_S = 0.2
SEARCH_S = 10.0  # look for the cut in the last 10 s before the 30 s limit: windows are >= 20 s
# Quiet means 30 dB below the loud end of the clip's frames (their 95th percentile). Measured on
# the built-in corpus: pauses between sentences reach -37 to -58 dB over 200 ms, dips inside
# words no lower than -24 dB. Noisier audio, whose pauses sit above that, falls back to the
# quietest point of the search span.
QUIET_DB = 30.0
EDGE_S = 0.1  # audio kept on either side of the speech when quiet ends are dropped
# Windows encoded (and, on one device, decoded) together at most: 8 is faster-whisper's default
# batch; it bounds the encoder's attention memory (8 x heads x 1500^2 floats: 0.4 GB for tiny)
WINDOW_BATCH = 8


@dataclass(frozen=True)
class Window:
    """A stretch of one waveform, [start, end) in samples."""

    start: int
    end: int

    @property
    def n(self) -> int:
        return self.end - self.start


def _frame_energy(audio: np.ndarray, frame: int) -> np.ndarray:
    """Mean square of each `frame`-sample frame (the last partial frame padded with zeros)."""
    n = -(-len(audio) // frame)
    padded = np.zeros(n * frame, dtype=np.float64)
    padded[: len(audio)] = audio
    return (padded.reshape(n, frame) ** 2).mean(axis=1)


def _smooth(energy: np.ndarray, width: int) -> np.ndarray:
    """Mean energy over `width` frames centred on each frame."""
    if width <= 1:
        return energy
    kernel = np.ones(width) / width
    return np.convolve(energy, kernel, mode="same")


def split_windows(audio: np.ndarray, sample_rate: int, max_s: float = WINDOW_S,
                  search_s: float = SEARCH_S) -> list[Window]:
    """The fewest windows of at most `max_s` seconds that cover the speech in `audio`, cut at pauses.

    Greedy from the start: while more than `max_s` seconds remain, cut in the middle of the last
    pause (a run of quiet frames) in the last `search_s` seconds before the limit, or at the
    quietest point there if none is quiet. Leading and trailing quiet audio is dropped; an
    all-quiet clip gives no window. Every window starts and ends on a 10 ms frame boundary inside the clip.
    """
    if audio.ndim != 1:
        raise ValueError(f"split_windows takes one mono waveform; got shape {audio.shape}")
    frame = max(1, int(round(FRAME_S * sample_rate)))
    max_frames = int(max_s * sample_rate) // frame  # a window never exceeds max_s, even by a partial frame
    energy = _smooth(_frame_energy(audio, frame), max(1, int(round(PAUSE_S / FRAME_S))))
    loud = float(np.percentile(energy, 95)) if len(energy) else 0.0
    if loud <= 0.0:
        return []
    quiet = loud * 10 ** (-QUIET_DB / 10)
    voiced = np.flatnonzero(energy > quiet)
    if len(voiced) == 0:
        return []
    # keep EDGE_S of quiet on either side of the speech, so no soft onset or release is clipped
    edge = int(round(EDGE_S / FRAME_S))
    first, last = max(0, int(voiced[0]) - edge), min(len(energy), int(voiced[-1]) + 1 + edge)
    cuts = [first]
    search = max(1, int(round(search_s / FRAME_S)))
    while last - cuts[-1] > max_frames:
        lo, hi = cuts[-1] + max(1, max_frames - search), cuts[-1] + max_frames
        span = energy[lo : hi + 1]
        pauses = np.flatnonzero(span <= quiet)
        if len(pauses):  # the middle of the last pause: away from both the release and the onset
            gaps = np.flatnonzero(np.diff(pauses) > 1)
            run_start = int(pauses[gaps[-1] + 1]) if len(gaps) else int(pauses[0])
            at = (run_start + int(pauses[-1])) // 2
        else:
            at = int(np.argmin(span))
        cuts.append(lo + at)
    cuts.append(last)
    bounds = [min(c * frame, len(audio)) for c in cuts]
    return [Window(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one batch of clips, in order, and the clip each one belongs to."""

    pieces: list[np.ndarray]  # each window's audio
    owners: list[int]  # index of the clip each piece comes from
    n_clips: int
    sample_rate: int

    def chunks(self) -> list[slice]:
        """Slices of at most WINDOW_BATCH pieces: what is encoded (and decoded) together."""
        return [slice(lo, lo + WINDOW_BATCH) for lo in range(0, len(self.pieces), WINDOW_BATCH)]

    def describe(self) -> str:
        """One line for the result row: how many windows, and their lengths."""
        if not self.pieces:
            return "no speech found"
        lengths = [len(p) / self.sample_rate for p in self.pieces]
        return f"{len(lengths)} window(s) over {self.n_clips} clip(s), {min(lengths):.1f}-{max(lengths):.1f} s"

    def gather(self, texts: list[str], tokens: list[int]) -> Transcription:
        """Per-window outputs (in piece order) joined back into one text and token count per clip."""
        parts: list[list[str]] = [[] for _ in range(self.n_clips)]
        counts = [0] * self.n_clips
        for owner, text, n in zip(self.owners, texts, tokens, strict=True):
            parts[owner].append(text.strip())
            counts[owner] += n
        return Transcription([" ".join(p for p in ps if p) for ps in parts], counts)


def plan_windows(audios: list[np.ndarray], sample_rate: int) -> WindowPlan:
    """Every clip of a batch cut at pauses (split_windows), flattened into one list of windows."""
    pieces, owners = [], []
    for i, audio in enumerate(audios):
        for w in split_windows(audio, sample_rate):
            pieces.append(audio[w.start:w.end])
            owners.append(i)
    return WindowPlan(pieces, owners, len(audios), sample_rate)
