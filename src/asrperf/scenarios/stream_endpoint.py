"""The endpointer of a streaming policy: where a stretch of speech ended, from a voice activity
detector run on the stream's recent audio (ufal/whisper_streaming's "VAC", voice activity
controller, with silero VAD).

An *endpoint* is the end of speech followed by at least `silence_s` of non-speech. The policy
(LocalAgreement) finalises what it heard up to there without waiting for a second hypothesis to
agree, and restarts its buffer there. The detector sees only the audio since the policy's buffer
start, and of that only what the previous update could not have judged (its last `silence_s`
plus CONTEXT_S of speech for the detector to recognise, then the new chunks), so one look costs
a few milliseconds whatever the buffer length; it runs inside the policy's update, on the
update's clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from asrperf.errors import require

CONTEXT_S = 0.5  # speech before the new audio that the detector reads again, so a word ending there is still speech


class VoiceActivity(ABC):
    """A voice activity detector."""

    name: str = ""

    @abstractmethod
    def speech_s(self, audio: np.ndarray, sample_rate: int, min_silence_s: float) -> list[tuple[float, float]]:
        """The speech in `audio` as [start, end) seconds from its first sample, in order; speech is
        split only at a pause of at least `min_silence_s`; speech still going at the end ends there."""


class SileroVad(VoiceActivity):
    """Silero VAD v6 as faster-whisper ships it (onnx model on onnxruntime, one thread), 32 ms frames,
    speech probability >= 0.5 to start speech, < 0.35 to end it, no padding around segments."""

    name = "silero"

    def __init__(self) -> None:
        self.vad = require("faster_whisper.vad", "streaming.endpoint = 'vad' (silero VAD)", "ct2", "faster-whisper")

    def speech_s(self, audio: np.ndarray, sample_rate: int, min_silence_s: float) -> list[tuple[float, float]]:
        # padding would move the end into the silence that follows it; 0 keeps it where speech stops
        options = self.vad.VadOptions(min_silence_duration_ms=int(round(1000 * min_silence_s)), speech_pad_ms=0)
        spans = self.vad.get_speech_timestamps(audio, options, sampling_rate=sample_rate)
        return [(s["start"] / sample_rate, s["end"] / sample_rate) for s in spans]


@dataclass(frozen=True)
class Activity:
    """What the detector saw in the recent audio (stream times, seconds)."""

    speech_end_s: float | None  # the end of the latest speech followed by >= silence_s of non-speech
    speech: bool  # any speech in the audio it read
    from_s: float  # where the audio it read starts


class Endpointer:
    """Finds endpoints in a stream's recent audio with `vad`."""

    def __init__(self, vad: VoiceActivity, silence_s: float) -> None:
        self.vad, self.silence_s = vad, silence_s
        self.seen_s = 0.0  # the audio end of the previous look

    def look(self, audio: np.ndarray, sample_rate: int, buffer_s: float) -> Activity:
        """The detector on `audio` (every sample so far) from `buffer_s` (the policy's buffer start),
        or from the audio the previous look could not judge (less CONTEXT_S), whichever is later."""
        end_s = len(audio) / sample_rate
        # an end the previous look could judge lies before seen_s - silence_s: it was reported then
        from_s = max(buffer_s, self.seen_s - self.silence_s - CONTEXT_S)
        self.seen_s = end_s
        window = audio[int(round(from_s * sample_rate)):]
        spans = self.vad.speech_s(window, sample_rate, self.silence_s)
        ends = [from_s + e for _, e in spans if from_s + e + self.silence_s <= end_s + 1e-9]
        return Activity(ends[-1] if ends else None, bool(spans), from_s)

    def settings(self) -> dict[str, object]:
        return {"endpoint": "vad", "endpoint_vad": self.vad.name, "endpoint_silence_ms": round(1000 * self.silence_s),
                "endpoint_context_s": CONTEXT_S}
