"""Batched long-form: cut long audio into <= 30 s windows at pauses, so windows decode together.

OpenAI's sequential algorithm decodes one 30 s window after another and slides by the last
predicted timestamp, so a minute of audio costs two or more full decoder passes back to back.
Cutting the audio where the speaker pauses gives windows that are independent: they can be
encoded as one batch and decoded as one batch (GPU) or in parallel (CPU cores). The price is
the cut itself: a cut inside a word would lose or garble it, so cuts go where the audio is
quietest. Silent stretches at either end carry no speech and are dropped.

Pure numpy: no engine is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def split_windows(audio: np.ndarray, sample_rate: int, max_s: float = 30.0, search_s: float = SEARCH_S) -> list[Window]:
    """The fewest windows of at most `max_s` seconds that cover the speech in `audio`, cut at pauses.

    Greedy from the start: while more than `max_s` seconds remain, cut in the middle of the last
    pause (a run of quiet frames) in the last `search_s` seconds before the limit, or at the
    quietest point there if none is quiet. Leading and trailing quiet audio is dropped; an all-quiet clip gives no window.
    Every window starts and ends on a 10 ms frame boundary inside the clip.
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
    n = len(audio)
    return [Window(min(a * frame, n), min(b * frame, n)) for a, b in zip(cuts, cuts[1:]) if min(a * frame, n) < min(b * frame, n)]


def describe(windows_per_clip: list[list[Window]], sample_rate: int) -> str:
    """One line for the result row: how many windows, and their lengths."""
    lengths = [w.n / sample_rate for ws in windows_per_clip for w in ws]
    if not lengths:
        return "no speech found"
    return f"{len(lengths)} window(s) over {len(windows_per_clip)} clip(s), {min(lengths):.1f}-{max(lengths):.1f} s"
