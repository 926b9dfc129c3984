"""Streaming policies: how a model that reads whole windows is made to emit text while audio arrives.

Each engine declares which policy it runs for a model family (EngineDecl.streaming_policies); a
policy reaches the engine only through the base methods (`transcribe_words`, `frame_labels`,
`labels_text`). A policy object holds one stream's state: `update(audio, final)` gets all the
audio spoken so far and returns what the stream shows now.

- LocalAgreement-n (Macháček et al. 2023, ufal/whisper_streaming), for Whisper: the whole
  uncommitted buffer is decoded at every update with the committed text that scrolled out of it
  as the prompt; the longest prefix on which the last n hypotheses agree is committed; the
  buffer is trimmed at the end of the second-to-last committed sentence once it is longer than
  `trim_s` (and never grows past Whisper's 30 s window). With an endpointer
  (scenarios/stream_endpoint.py, whisper_streaming's VAC): where speech ended before a pause, the
  hypothesis up to there is committed without waiting for agreement and the buffer restarts
  there; a buffer with no speech in it is not decoded. With encoder_window "buffer" (engines
  that can read a shorter window: ct2), each update's encoder reads the buffer plus WINDOW_PAD_S of
  silence, in whole seconds, instead of Whisper's zero-padded 30 s, as whisper.cpp's audio_ctx does:
  the encoder's cost falls with the buffer, and so does the decoder's cross-attention. Whisper was
  trained on 30 s windows, so the row carries the streamed WER to judge it by.
- Chunked, for frame-synchronous models (CTC, transducers without a native streaming mode): audio
  up to `right_s` before the newest sample is finalised frame by frame; each update runs the model
  on [first unfinalised frame - left_s, newest sample], keeps the labels of the frames it
  finalises, and the labels of all finalised frames are decoded as one sequence, so a CTC run (or
  a word) cut by a seam is emitted once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from asrperf.engines.base import Engine, Word
from asrperf.engines.windows import WINDOW_S
from asrperf.scenarios.stream_endpoint import CONTEXT_S, Endpointer, SileroVad

SENTENCE_END = (".", "?", "!")
# an endpoint commits the words that end by the end of speech plus this: Whisper's word ends (DTW on
# 20 ms frames) run up to ~0.1 s past where the detector hears speech stop
END_SLACK_S = 0.2
TRAILING_QUOTES = "\"')]}"
WINDOW_PAD_S = 1.0  # encoder_window "buffer": silence after the buffer that the encoder reads too


@dataclass(frozen=True)
class Shown:
    """What a stream shows after an update."""

    committed: tuple[str, ...]  # never taken back
    tentative: tuple[str, ...] = ()
    final_until_s: float | None = None  # chunked: audio up to here is final


class Policy(ABC):
    """One stream's policy state."""

    name: str = ""

    def __init__(self, engine: Engine, sample_rate: int) -> None:
        self.engine = engine
        self.rate = sample_rate

    @abstractmethod
    def update(self, audio: np.ndarray, final: bool) -> Shown:
        """`audio`: every sample spoken so far; `final`: the stream has ended (commit everything)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The policy's settings, for the row."""

    @abstractmethod
    def warm_up(self, audio: np.ndarray) -> None:
        """One engine call of the kind `update` makes, outside any measurement."""


def _ends_sentence(word: Word) -> bool:
    return word.text.rstrip(TRAILING_QUOTES).endswith(SENTENCE_END)


def _held(word: Word, end_s: float) -> Word:
    """`word` with its times held to end by `end_s`."""
    return Word(word.text, min(word.start_s, end_s), min(word.end_s, end_s))


def _common_prefix(a: list[Word], b: list[Word]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n].text == b[n].text:
        n += 1
    return n


class LocalAgreement(Policy):
    """LocalAgreement-n over a growing buffer, committed text as the prompt, trimmed at sentence ends."""

    name = "local_agreement"
    MAX_BUFFER_S = float(WINDOW_S)  # Whisper reads at most one 30 s window
    NGRAM_DEDUPE = 5  # up to this many words repeated at the buffer start are dropped (whisper_streaming)

    def __init__(self, engine: Engine, sample_rate: int, agreement: int = 2, trim_s: float = 15.0,
                 prompt_chars: int = 200, endpointer: Endpointer | None = None, encoder_window: str = "full") -> None:
        super().__init__(engine, sample_rate)
        if agreement < 2:
            raise ValueError("LocalAgreement needs at least 2 hypotheses to agree")
        self.agreement, self.trim_s, self.prompt_chars = agreement, trim_s, prompt_chars
        self.endpointer = endpointer  # None: pure LocalAgreement-n
        self.encoder_window = encoder_window  # "full": Whisper's 30 s; "buffer": the buffer + WINDOW_PAD_S
        self.offset_s = 0.0  # where the buffer starts in the stream's audio
        self.committed: list[Word] = []  # stream times
        self.tails: list[list[Word]] = []  # the last agreement-1 hypotheses, committed words removed
        self.forced_trims = 0  # times the buffer hit 30 s with nothing committed to cut at
        self.endpoints = 0  # updates that committed at an end of speech
        self.skipped = 0  # updates not decoded: no speech in the buffer

    def settings(self) -> dict[str, Any]:
        endpoint = self.endpointer.settings() if self.endpointer else {"endpoint": "none"}
        return {"agreement": self.agreement, "trim_s": self.trim_s, "trim_at": "second-to-last committed sentence end",
                "prompt_chars": self.prompt_chars, "max_buffer_s": self.MAX_BUFFER_S,
                "encoder_window": self.encoder_window,
                **({"encoder_window_pad_s": WINDOW_PAD_S} if self.encoder_window == "buffer" else {}),
                "forced_trims": self.forced_trims, **endpoint,
                **({"endpoint_slack_s": END_SLACK_S, "endpoints": self.endpoints, "skipped_updates": self.skipped}
                   if self.endpointer else {})}

    def warm_up(self, audio: np.ndarray) -> None:
        self.engine.transcribe_words(audio[: int(self.MAX_BUFFER_S * self.rate)], self.rate)
        if self.endpointer:  # silero's model loads on its first call: outside the timed updates
            self.endpointer.vad.speech_s(audio[: self.rate], self.rate, self.endpointer.silence_s)

    def prompt(self) -> str:
        """The last `prompt_chars` characters (whole words) of committed text that scrolled out of the buffer."""
        out: list[str] = []
        length = 0
        for w in reversed([w for w in self.committed if w.end_s <= self.offset_s + 1e-9]):
            if length >= self.prompt_chars:
                break
            out.append(w.text)
            length += len(w.text) + 1
        return " ".join(reversed(out))

    def insert(self, words: list[Word]) -> list[Word]:
        """The new hypothesis (stream times) past what is committed: words starting after the last
        committed end (0.1 s slack), less up to 5 words that repeat the committed tail at its start."""
        last_end = self.committed[-1].end_s if self.committed else self.offset_s
        new = [w for w in words if w.start_s > last_end - 0.1]
        if self.endpointer:  # a buffer restarted in silence: Whisper may continue the prompt with a word
            new = [w for w in new if w.end_s > self.offset_s + 1e-9]  # it gives no time in the buffer; not heard
        in_buffer = [w for w in self.committed if w.end_s > self.offset_s]
        if new and in_buffer and abs(new[0].start_s - last_end) < 1.0:
            for n in range(1, min(len(in_buffer), len(new), self.NGRAM_DEDUPE) + 1):
                if [w.text for w in in_buffer[-n:]] == [w.text for w in new[:n]]:
                    new = new[n:]
                    break
        return new

    def agree(self, new: list[Word]) -> list[Word]:
        """Commit the longest prefix `new` shares with each kept hypothesis; keep `new` for the next ones."""
        n = min((_common_prefix(new, t) for t in self.tails), default=0) if len(self.tails) == self.agreement - 1 else 0
        agreed = new[:n]
        self.committed += agreed
        self.tails = [t[n:] for t in self.tails][-(self.agreement - 2):] if self.agreement > 2 else []
        self.tails.append(new[n:])
        return agreed

    def update(self, audio: np.ndarray, final: bool) -> Shown:
        end_s = len(audio) / self.rate
        if end_s - self.offset_s > self.MAX_BUFFER_S:
            self._cut_for_window(end_s)
        heard = self.endpointer.look(audio, self.rate, self.offset_s) if self.endpointer else None
        if heard is not None and not heard.speech and heard.from_s <= self.offset_s + 1e-9:
            # nothing spoken since the buffer start: no decode; what a decode of silence showed is dropped,
            # and the buffer keeps only the audio the detector reads again next time
            self.skipped += 1
            self.tails = []
            self._cut(end_s - self.endpointer.silence_s - CONTEXT_S)
            return Shown(tuple(w.text for w in self.committed))
        buffer = audio[int(round(self.offset_s * self.rate)):]
        if self.encoder_window == "buffer":
            words = self.engine.transcribe_words(buffer, self.rate, self.prompt(),
                                                 window_s=len(buffer) / self.rate + WINDOW_PAD_S)
        else:
            words = self.engine.transcribe_words(buffer, self.rate, self.prompt())
        new = self.insert([Word(w.text, w.start_s + self.offset_s, w.end_s + self.offset_s) for w in words])
        agreed = self.agree(new)
        shown = self.tails[-1]
        if final:  # the stream ended: the last hypothesis is all there is
            self.committed += self.tails[-1]
            self.tails, shown = [[]], []
        elif heard is not None and heard.speech_end_s is not None and heard.speech_end_s > self.offset_s + 1e-9:
            shown = self._endpoint(heard.speech_end_s)
        elif agreed and end_s - self.offset_s > self.trim_s:
            self._trim_at_sentence()
        return Shown(tuple(w.text for w in self.committed), tuple(w.text for w in shown))

    def _endpoint(self, speech_end_s: float) -> list[Word]:
        """Speech ended at `speech_end_s`: commit the hypothesis up to there, restart the buffer there and
        the agreement afresh; returns the words after it (shown, not kept for agreement)."""
        rest = self.tails[-1]
        n = 0
        while n < len(rest) and rest[n].end_s <= speech_end_s + END_SLACK_S:
            n += 1
        # their ends held to where speech stopped: the next words (decoded from there) start after them,
        # and they are in the prompt. So are those this update's agreement committed up to there: a word
        # left ending past the cut would hide the first word decoded after it (a word must start after
        # the last committed end)
        self.committed = [_held(w, speech_end_s) if speech_end_s < w.end_s <= speech_end_s + END_SLACK_S else w
                          for w in self.committed]
        self.committed += [_held(w, speech_end_s) for w in rest[:n]]
        self.endpoints += 1
        self.tails = []
        self._cut(speech_end_s)
        return rest[n:]

    def _trim_at_sentence(self) -> None:
        ends = [i for i, w in enumerate(self.committed[:-1]) if _ends_sentence(w) and w.end_s > self.offset_s]
        if ends:
            self._cut(self.committed[ends[-1]].end_s)

    def _cut_for_window(self, end_s: float) -> None:
        """The buffer would pass 30 s: cut at the last committed word inside it, or drop the oldest audio."""
        inside = [w.end_s for w in self.committed if w.end_s > self.offset_s]
        if inside and end_s - inside[-1] <= self.MAX_BUFFER_S:
            self._cut(inside[-1])
        else:
            self.forced_trims += 1
            self._cut(end_s - self.MAX_BUFFER_S)

    def _cut(self, t: float) -> None:
        self.offset_s = max(self.offset_s, t)
        self.tails = [[w for w in tail if w.start_s >= self.offset_s - 0.1] for tail in self.tails]


class Chunked(Policy):
    """Chunks finalised frame by frame with left and right context; labels merged across seams."""

    name = "chunked"

    def __init__(self, engine: Engine, sample_rate: int, left_s: float = 1.0, right_s: float = 0.2) -> None:
        super().__init__(engine, sample_rate)
        self.left_s, self.right_s = left_s, right_s
        self.frames: list[tuple[int, ...]] = []  # labels of every finalised frame, in order
        self.hop: int | None = None  # samples per frame, known after the first call
        self.ctc = True
        self.next_frame = 0  # the first frame not finalised yet
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"left_context_s": self.left_s, "right_context_s": self.right_s,
                "frame_s": self.hop / self.rate if self.hop else None,
                "merge": "CTC collapse over the frames of every chunk" if self.ctc else "tokens of every chunk in order",
                "endpoint": "does not apply: audio is final frame by frame after the right context, with no "
                            "agreement to wait for"}

    def warm_up(self, audio: np.ndarray) -> None:
        self.engine.frame_labels(audio[: int((self.left_s + 1.0 + self.right_s) * self.rate)], self.rate)

    def update(self, audio: np.ndarray, final: bool) -> Shown:
        until = len(audio) if final else len(audio) - int(round(self.right_s * self.rate))
        done = self.next_frame * (self.hop or 0)
        if until > done or (final and self.calls == 0):
            start = max(0, done - int(round(self.left_s * self.rate)))
            if self.hop:
                start -= start % self.hop  # on the frame grid, so every window's frames are the same frames
            labels = self.engine.frame_labels(audio[start:], self.rate)
            self.calls += 1
            self.hop = self.hop or int(round(labels.frame_s * self.rate))
            self.ctc = labels.ctc
            first = start // self.hop
            for f, frame in enumerate(labels.frames):
                g = first + f
                if g >= self.next_frame and (final or (g + 0.5) * self.hop < until):
                    self.frames.append(frame)
                    self.next_frame = g + 1
        text = self.engine.labels_text([i for frame in self.frames for i in frame])
        final_until = len(audio) if final else min(until, self.next_frame * (self.hop or 0))
        return Shown(tuple(text.split()), (), final_until / self.rate)


def make_policy(kind: str, engine: Engine, sample_rate: int, settings: Any) -> Policy:
    """A fresh policy of `kind` for one stream, from the run's streaming settings (config.StreamingConfig)."""
    if kind == "local_agreement":
        endpointer = Endpointer(SileroVad(), settings.endpoint_silence_ms / 1000) if settings.endpoint == "vad" else None
        return LocalAgreement(engine, sample_rate, settings.agreement, settings.trim_s, settings.prompt_chars,
                              endpointer, settings.encoder_window)
    if kind == "chunked":
        return Chunked(engine, sample_rate, settings.left_context_ms / 1000, settings.right_context_ms / 1000)
    raise ValueError(f"unknown streaming policy '{kind}'")


def chunk_count(audio_s: float, chunk_s: float) -> int:
    return max(1, math.ceil(audio_s / chunk_s - 1e-9))
