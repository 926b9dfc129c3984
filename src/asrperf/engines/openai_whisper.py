"""openai-whisper engine: OpenAI's own implementation, the semantic reference for Whisper decoding.

It is slow on purpose (plain PyTorch, one window at a time): it is what every other engine's
decoding is checked against. The checkpoint is the transformers one renamed into OpenAI's layout
(engines/openai_layout.py) and saved once as `cache_dir/openai-<hash>/model.pt` in the format
`whisper.load_model` reads ({"dims", "model_state_dict"}); the key holds the checkpoint's files and
CONVERTER_VERSION. Real weights only: random ones have nothing to be a reference for.

Decoding: `whisper.transcribe` with temperature 0 and no fallback (compression-ratio, log-prob and
no-speech thresholds off), greedy (beam_size and best_of unset), condition_on_previous_text=False
(no context carried across windows, as in the other engines). Clips of up to 30 s decode without
timestamps; longer ones with OpenAI's sequential long-form (timestamps on), which is the algorithm
the others follow. The tokenizer ships with the package (tiktoken files), so it runs offline.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

from asrperf.cache import build_once
from asrperf.engines.base import GREEDY_DECODING, Engine, LoadedWeights, ModelSpec, Transcription
from asrperf.engines.checkpoints import checkpoint_key, find_checkpoint
from asrperf.engines.openai_layout import openai_dims, read_hf_checkpoint, to_openai
from asrperf.engines.windows import WINDOW_SAMPLES
from asrperf.errors import ModelError, require

CONVERTER_VERSION = 1  # bump when the written checkpoint changes, so cached conversions are redone
DTYPES = ("fp32", "fp16")  # openai-whisper's own choice: fp16 decoding on CUDA only


def convert_to_openai(checkpoint: Path, cache_dir: Path) -> Path:
    """The OpenAI-format `model.pt` of a transformers Whisper checkpoint, written on first use only."""
    torch = require("torch", "engine openai-whisper", "openai-whisper")
    final = Path(cache_dir) / f"openai-{checkpoint_key(checkpoint, str(CONVERTER_VERSION))}"

    def build(staging: Path) -> None:
        config, state = read_hf_checkpoint(checkpoint)
        dims = openai_dims(config, str(checkpoint))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_openai(state, dims, str(checkpoint)).items()}
        torch.save({"dims": dims, "model_state_dict": tensors}, staging / "model.pt")

    return build_once(final, "model.pt", build) / "model.pt"


class OpenAIWhisperEngine(Engine):
    """OpenAI's whisper package on torch; greedy, temperature 0, no fallback, no conditioning."""

    name = "openai-whisper"
    extra = "openai-whisper"
    runs_torch = True

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        """Load the converted checkpoint with `whisper.load_model`; fp16 only on CUDA (OpenAI's rule)."""
        whisper = require("whisper", "engine openai-whisper", "openai-whisper", package="openai-whisper")
        torch = require("torch", "engine openai-whisper", "openai-whisper")
        if spec.family and spec.family != "whisper":
            raise ModelError(f"'{spec.name}' is a {spec.family} model; engine openai-whisper runs Whisper models only")
        if weights == "random":
            raise ModelError(f"engine openai-whisper is the semantic reference and runs real weights only; "
                             f"use weights='real' or 'auto', or engine transformers for random '{spec.name}'")
        if dtype not in DTYPES or (dtype == "fp16" and not device.startswith("cuda")):
            raise ModelError(f"dtype '{dtype}' on {device}: openai-whisper decodes in fp32, or fp16 on CUDA; "
                             f"use dtype fp32{' or a CUDA device' if dtype == 'fp16' else ''}")
        checkpoint = find_checkpoint(spec, self.cache_dir)
        if checkpoint is None:
            raise ModelError(f"no local checkpoint of '{spec.name}' for engine openai-whisper (it does not download); "
                             f"give a transformers Whisper directory")
        path = convert_to_openai(checkpoint, self.cache_dir)
        try:
            self.model = whisper.load_model(str(path), device=device)
        except (RuntimeError, OSError, KeyError) as exc:
            raise ModelError(f"{path}: whisper.load_model cannot read it ({type(exc).__name__}: {exc}); "
                             f"delete it so asrperf converts the checkpoint again") from exc
        self.model.requires_grad_(False)
        self.torch, self.whisper, self.device, self.fp16 = torch, whisper, torch.device(device), dtype == "fp16"
        self.path = path
        self._info.update(
            engine_version=whisper.__version__, torch_version=torch.__version__, weights="real",
            weights_source=str(checkpoint), openai_checkpoint=str(path), dtype=dtype, device=device,
            decoding=GREEDY_DECODING + "; condition_on_previous_text=False",
            tokens_policy="real (the model's own end-of-text)",
        )

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Each clip through `whisper.transcribe`, one after another (log-mel inside)."""
        if sample_rate != self.whisper.audio.SAMPLE_RATE:
            raise ModelError(f"engine openai-whisper takes {self.whisper.audio.SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        texts, tokens = [], []
        for audio in audios:
            long = len(audio) > WINDOW_SAMPLES
            result = self.model.transcribe(
                np.ascontiguousarray(audio, dtype=np.float32), verbose=None, temperature=0.0,
                compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None,
                condition_on_previous_text=False, without_timestamps=not long, fp16=self.fp16,
                language=None if self.model.is_multilingual else "en", beam_size=None, best_of=None,
            )
            texts.append(result["text"].strip())
            tokens.append(sum(len(s["tokens"]) for s in result["segments"]))
        long = any(len(a) > WINDOW_SAMPLES for a in audios)
        self._info["longform"] = ("sequential (OpenAI algorithm, timestamps, no temperature fallback); clips of a "
                                  "batch one after another" if long else "none needed (<= 30 s), no timestamps")
        self._info["timestamps"] = long
        return Transcription(texts, tokens)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def loaded_weights(self) -> LoadedWeights:
        return LoadedWeights(module=self.model)

    def flop_stages(self) -> dict[str, str]:
        # transcribe() calls the audio encoder once per window, then the text decoder once per step
        return {type(self.model.encoder).__name__: "encoder", type(self.model.decoder).__name__: "decoder"}
