"""Audio as asrperf handles it: mono float32 at a fixed rate, decoded and resampled once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrperf.errors import DataError

SAMPLE_RATE = 16_000  # Hz; what Whisper, wav2vec2 and Parakeet feature extractors expect


@dataclass(frozen=True)
class Utterance:
    """One transcribed stretch of speech from a source, ready for clip building."""

    id: str  # stable within its source, e.g. a file stem or a dataset row id
    audio: np.ndarray  # float32, mono, shape (n_samples,), at `sample_rate`
    sample_rate: int
    text: str  # the reference transcript, with dataset markup already removed

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def to_mono_float32(audio: np.ndarray, item: str) -> np.ndarray:
    """Average channels (samples x channels layout) and check the samples are usable."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise DataError(f"{item}: audio has shape {audio.shape}; expected mono or (samples, channels)")
    audio = audio.astype(np.float32, copy=False)
    if audio.size == 0:
        raise DataError(f"{item}: audio is empty; remove it from the source or fix the file")
    if not np.isfinite(audio).all():
        raise DataError(f"{item}: audio contains NaN or infinite samples; re-encode or remove the file")
    return audio


def resample(audio: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling with soxr; a no-op when the rates match."""
    if from_rate == to_rate:
        return audio
    import soxr

    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def decode_audio_bytes(data: bytes, item: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an in-memory file (any format libsndfile reads) to mono float32 at `sample_rate`."""
    import io

    import soundfile as sf

    if not data:
        raise DataError(f"{item}: the file is empty; send a wav, flac, ogg or mp3 file")
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if reason.startswith("Error opening"):  # "Error opening <_io.BytesIO object at 0x..>: Format not recognised."
            reason = reason.rpartition(": ")[2].rstrip(".")
        raise DataError(f"{item}: cannot decode audio ({reason}); send a wav, flac, ogg or mp3 file") from exc
    return resample(to_mono_float32(audio, item), int(rate), sample_rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any format libsndfile reads (wav, flac, ogg, mp3 ...) to mono float32 at `sample_rate`."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file not found: {path}; check the path in the source")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError with no path in it
        raise DataError(f"{path}: cannot decode audio ({exc}); convert it to wav or flac") from exc
    return resample(to_mono_float32(audio, str(path)), int(rate), sample_rate)
