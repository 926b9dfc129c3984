"""The clips a load run sends: asrperf's sources and clip cache (the clips `asrperf run` uses).

Each clip is encoded once as a 32-bit float WAV, so the server decodes exactly the samples an
offline run transcribes: WER under load is comparable to WER offline, clip for clip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import Clip, ClipCache, prepare_clips
from asrperf.errors import DataError


@dataclass(frozen=True)
class WorkClip:
    """One clip as a request body: its id, duration, file bytes and exact reference (None in loop mode)."""

    id: str
    audio_s: float
    wav: bytes
    reference: str | None


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A 32-bit float WAV of the samples, bit-exact on decode."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype="FLOAT", format="WAV")
    return buffer.getvalue()


def work_clips(clips: list[Clip]) -> list[WorkClip]:
    return [WorkClip(c.id, c.audio_s, encode_wav(c.audio, c.sample_rate), c.text) for c in clips]


def load_workload(source: dict[str, Any], cache_dir: str | Path, length_s: float, n_clips: int,
                  clip_mode: str = "exact") -> tuple[list[WorkClip], dict[str, Any]]:
    """Clips of `length_s` from `source` (a [source] table), built once and cached; and their provenance."""
    from asrperf.data.sources import source_from_spec

    if n_clips < 1:
        raise DataError(f"n_clips: {n_clips} must be >= 1")
    src = source_from_spec(source, Path(cache_dir))
    cache = ClipCache(cache_dir)
    clips, _ = prepare_clips(lambda: src.utterances(SAMPLE_RATE), src.key, src.describe(), length_s, n_clips,
                             cache, clip_mode)
    key = cache.key(src.key, length_s, clip_mode, SAMPLE_RATE)
    return work_clips(clips), {"source": src.describe(), "clip_key": key, "clip_length_s": length_s,
                               "n_clips": len(clips), "clip_mode": clip_mode}
