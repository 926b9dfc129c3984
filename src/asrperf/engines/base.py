"""The small interface every engine implements, and what it reports about itself.

Measurement code never checks an engine's name: it calls `synchronize()` and reads `info()`.
Scenarios reach an engine only through what `Engine` declares here (tests/test_engine_surface.py
checks it): the decode scenario through `decoder()` and `forced_decode()`, the profiler through
`device_type()`, `stages()` and `flop_stages()`, the streaming scenario through `model_family()`,
`transcribe_words()` (Whisper), `frame_labels()` / `labels_text()` (CTC, transducers) and
`align_reference()` (CTC forced alignment).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.errors import ModelError
from asrperf.measure.memory import LoadedWeights
from asrperf.options import VariantOptions

__all__ = ["BatchPadding", "Engine", "FrameLabels", "LoadedWeights", "ModelSpec", "PADDING_POLICIES", "StreamingUnsupported",
           "Transcription", "Word", "feature_extractor_padding",
           "TIMED_REGION",
           "GREEDY_DECODING", "cpu_threads"]
# Inside the timer, for every engine (DESIGN.md "Timed region"): clips are already decoded and
# resampled; the call covers everything from waveform to text.
TIMED_REGION = ("feature_extraction", "host_to_device", "model_forward_and_decoding", "detokenize")
# The decoding every engine runs by default, in one wording, so the report can flag a mismatch.
GREEDY_DECODING = "greedy (num_beams=1), temperature 0, no fallback"


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: what to load, and what kind of model it is."""

    name: str  # what the user wrote: catalog name, Hub id or local directory
    family: str  # "whisper" (seq2seq), "ctc" or "transducer" (RNN-T / TDT)
    source: str  # Hub id or local directory holding real weights ("" if none is known)
    architecture: dict[str, Any] = field(default_factory=dict)  # config kwargs for random weights
    english_only: bool = False
    # how to run it beyond weights and dtype (validated by config.check_variant against the
    # engine's declaration: an engine is only given the options it declares)
    options: VariantOptions = VariantOptions()


@dataclass(frozen=True)
class Transcription:
    """One batch's output: a text per input, and how many tokens the decoder emitted per input."""

    texts: list[str]
    tokens: list[int]  # generated tokens (seq2seq) or CTC frames decoded to non-blank labels


@dataclass(frozen=True)
class DecoderAccess:
    """What the decode scenario can reach of an engine's autoregressive decoder (`Engine.decoder()`)."""

    # the torch module whose forward is one decoder step: a root forward (measure.stages) called
    # once per generated token, told apart from the encoder's by identity; None when unreachable
    step_module: Any = None
    autoregressive: bool | None = None  # the model has such a decoder (None: the engine cannot tell)
    missing_reason: str | None = None  # why step_module is None
    forced_missing_reason: str | None = None  # why forced_decode() cannot run; None when it can


# run(n_tokens, use_cache, num_beams): one generate() forced to n_tokens new tokens (Engine.forced_decode)
ForcedDecode = Callable[[int, bool, int], Any]


@dataclass(frozen=True)
class Word:
    """One recognised (or aligned) word and where it lies in the audio it came from, in seconds."""

    text: str  # as the model wrote it, punctuation attached ("planks,"), no surrounding spaces
    start_s: float
    end_s: float


@dataclass(frozen=True)
class FrameLabels:
    """What a frame-synchronous model (CTC, transducer) emitted at each encoder frame of one waveform.

    Frame f covers [f * frame_s, (f + 1) * frame_s) of the waveform. `frames[f]` holds the label ids
    emitted there: for CTC exactly one id per frame, blank included (`ctc` is True: the text is the
    CTC collapse of the concatenated ids, so runs continue across any seam); for a transducer the
    non-blank tokens emitted at that frame, possibly none (the text is their concatenation).
    """

    frame_s: float  # seconds of audio per encoder frame (the model's total stride)
    frames: tuple[tuple[int, ...], ...]
    ctc: bool
    blank_id: int
    log_probs: np.ndarray | None = None  # CTC: (frames, vocab) log-softmax, for forced alignment


# How a batch of waveforms of unequal length reaches the model (Engine.batch_padding):
# fixed_window: each waveform is padded alone to a fixed window (Whisper's 30 s log-mel), so a
#   waveform's output does not depend on what else is in the batch;
# masked: padded to the longest of the batch with an attention mask the model reads;
# unmasked: padded to the longest with no mask: outputs depend on the batch's composition;
# unknown: the engine does not say.
PADDING_POLICIES = ("fixed_window", "masked", "unmasked", "unknown")


@dataclass(frozen=True)
class BatchPadding:
    """An engine's padding policy for batches of unequal waveforms, and the policy in words."""

    policy: str  # one of PADDING_POLICIES
    words: str


def feature_extractor_padding(fe: Any, sample_rate: int = 16_000) -> BatchPadding:
    """The padding policy of a transformers feature extractor, read from what it returns for two
    waveforms of unequal length padded to the longest: an attention mask, or none."""
    feats = fe([np.zeros(sample_rate // 10, np.float32), np.zeros(sample_rate // 5, np.float32)],
               sampling_rate=sample_rate, return_tensors="np", padding="longest")
    if "attention_mask" in feats:
        return BatchPadding("masked", "zero-pad to the longest in the batch, with an attention mask")
    return BatchPadding("unmasked", "zero-pad to the longest in the batch, no attention mask: "
                                    "outputs depend on batch composition")


class StreamingUnsupported(ModelError):
    """An engine method the streaming policies need does not apply to the loaded model (the reason)."""


class Engine(ABC):
    """Load a model once, then transcribe batches of waveforms."""

    name: str = ""
    extra: str = ""  # pip extra that provides the engine
    runs_torch: bool = False  # its model runs as torch ops in this process: FLOPs can be counted

    def __init__(self, cache_dir: str | Path = ".asrperf-cache") -> None:
        self.cache_dir = Path(cache_dir)  # converted weights and exports are cached here
        self._info: dict[str, Any] = {}  # provenance filled in by load() and the calls

    @abstractmethod
    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        """Load weights (`weights` is "real" or "random") in `dtype` on `device`."""

    @abstractmethod
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """The timed call: waveforms in, texts out (feature extraction and detokenising included)."""

    def synchronize(self) -> None:
        """Block until queued device work is done; no-op for synchronous devices."""

    def info(self) -> dict[str, Any]:
        """Provenance for the result row: engine version, weights, dtype, long-form algorithm, token policy."""
        return dict(self._info)

    def release(self) -> None:
        """Drop the loaded model (weights, sessions, caches) so its memory can go to another process,
        e.g. the server the server scenario starts for the same configuration. Afterwards info() answers
        what it did before, loaded_weights() None (the row read it at load), and nothing transcribes."""
        import gc
        import sys

        info = self.info()
        for name in [n for n in vars(self) if n not in ("cache_dir", "_info")]:
            delattr(self, name)
        self._info = info
        self.info = lambda: dict(info)  # type: ignore[method-assign]  # the snapshot, not the dropped model's
        self.loaded_weights = lambda: None  # type: ignore[method-assign]  # it would hold the module
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # back to the driver, so the server's copy fits

    def _set_token_policy(self, kind: str, words: str) -> None:
        """Record how the decoder's token count arises: `kind` is "real" (the model's own end),
        "fixed" (a set count: random weights) or "n/a" (no decoder tokens: CTC); `words` says it
        with its numbers."""
        self._info["token_policy"], self._info["tokens_policy"] = kind, words

    def stages(self) -> tuple[str, ...]:
        """Names of the stages the engine marks inside a call (for the profiler)."""
        return ()

    def loaded_weights(self) -> LoadedWeights | None:
        """What holds the loaded weights (call after load); None when the engine cannot say."""
        return None

    def flop_stages(self) -> dict[str, str]:
        """Top-level torch module class -> its role in a call, for FLOPs per unit of work.

        Roles: "encoder" (each output row is one fixed 30 s window) and "decoder" (each call after
        the first one following an encoder call emits one token per row). Empty when the model
        has neither (CTC: one forward per clip) or does not run as torch modules.
        """
        return {}

    def batch_padding(self) -> BatchPadding:
        """How a batch of unequal waveforms is padded (call after load). By default: Whisper-family
        models pad each waveform alone to one 30 s window (up to 30 s of audio), other models are
        unknown unless the engine says."""
        if self.model_family() == "whisper":
            return BatchPadding("fixed_window", "each waveform padded alone to one 30 s log-mel window "
                                                "(audio up to 30 s): outputs do not depend on the batch")
        return BatchPadding("unknown", f"engine {self.name} does not say how it pads a batch")

    def device_type(self) -> str:
        """"cpu" or "cuda": where the loaded model's work runs, so the profiler knows whether to
        record CUDA kernels (call after load). By default read from info()["device"]."""
        return str(self._info.get("device", "cpu")).partition(":")[0]

    def decoder(self) -> DecoderAccess:
        """The autoregressive decoder as the decode scenario measures it: the torch module of one
        decoder step, whether the model has a decoder, and why a step or a forced decode is out of
        reach. By default out of reach: outside torch no forward can be hooked, and an engine on
        torch has to say which of its modules is the step."""
        if self.runs_torch:
            reason = f"engine {self.name} does not say which torch module runs one decoder step"
        else:
            reason = f"engine {self.name} runs its model outside torch: its decoder steps cannot be hooked"
        return DecoderAccess(missing_reason=reason, forced_missing_reason=reason)

    def forced_decode(self, audios: list[np.ndarray], sample_rate: int) -> ForcedDecode:
        """Prepare the first 30 s window of each waveform in `audios` once (features on the device,
        the decoder prompt) and return run(n_tokens, use_cache, num_beams), which runs the engine's
        generate on them forced to exactly n_tokens new tokens each (end-of-text disabled), with or
        without the KV cache, greedy or with num_beams beams. Raises ModelError where
        decoder().forced_missing_reason says it cannot."""
        reason = self.decoder().forced_missing_reason or "it has no forced-length decode"
        raise ModelError(f"engine {self.name} cannot decode a forced token count: {reason}")

    # -- streaming (scenarios/streaming.py): the engine's own decode call, with timings -------------
    def model_family(self) -> str:
        """The loaded model's family ("whisper", "ctc", "transducer", "nemo"; "" when unknown): it
        selects the streaming policy the engine declares for it (EngineDecl.streaming_policies)."""
        return ""

    def transcribe_words(self, audio: np.ndarray, sample_rate: int, prompt: str = "",
                         window_s: float | None = None) -> list[Word]:
        """One waveform (<= 30 s) decoded with the engine's own decoding, `prompt` as the text
        that came before it, returning each word with its start and end in seconds (Whisper word
        timestamps). `window_s`: an encoder window shorter than Whisper's 30 s, where the engine
        can read one (None: the full window). Raises StreamingUnsupported with the reason where
        the model cannot."""
        raise StreamingUnsupported(f"engine {self.name} gives no word timestamps")

    def frame_labels(self, audio: np.ndarray, sample_rate: int) -> FrameLabels:
        """The labels a frame-synchronous model emits at each encoder frame of `audio` (one forward,
        greedy). Raises StreamingUnsupported with the reason where the model is not frame-synchronous."""
        raise StreamingUnsupported(f"engine {self.name} gives no frame-level labels")

    def labels_text(self, ids: list[int]) -> str:
        """Text of emitted label ids (already collapsed: no blanks, no CTC repeats)."""
        raise StreamingUnsupported(f"engine {self.name} gives no frame-level labels")

    def align_reference(self, audio: np.ndarray, sample_rate: int, words: list[str]) -> list[Word | None]:
        """Forced alignment of the reference `words` on `audio`: each word's start and end, None for a
        word with nothing the model's vocabulary can spell. Raises StreamingUnsupported where the
        engine has no forced alignment (the streaming scenario then uses offline word timestamps)."""
        raise StreamingUnsupported(f"engine {self.name} has no forced alignment")


def cpu_threads() -> int:
    """Threads for an engine's own pool: the worker sizes pools through OMP_NUM_THREADS; else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


# Known, harmless import-time warnings of engine libraries: torchao's optional CUDA kernels that
# a CPU machine cannot load, and torch's notice about torchao's enums. Shown on every import
# otherwise, they bury asrperf's own output.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_library_logs() -> None:
    import logging

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
