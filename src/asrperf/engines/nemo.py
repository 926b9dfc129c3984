"""NVIDIA NeMo engine: `.nemo` ASR checkpoints (FastConformer / Parakeet CTC, RNNT, TDT, hybrids), fp32.

The checkpoint is restored with `ASRModel.restore_from` and run through the model's own
`transcribe` (NeMo's preprocessor, encoder, decoding and detokenising, all inside the timed call),
with the decoding strategy the checkpoint's config names; the row records it. A `.nemo` file holds
real weights, so weights="random" is refused (random-weight architectures run on engine
transformers).

nemo and torch are imported inside methods: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asrperf.engines.base import Engine, LoadedWeights, ModelSpec, Transcription
from asrperf.errors import ConfigError, DataError, ModelError, require

DTYPES = ("fp32",)
CHECKPOINT_SUFFIX = ".nemo"


def checkpoint_path(spec: ModelSpec) -> Path:
    """The `.nemo` file `spec` names, or a one-line error saying what to give instead."""
    path = Path(spec.source or spec.name)
    if path.suffix != CHECKPOINT_SUFFIX:
        raise ModelError(f"engine nemo loads {CHECKPOINT_SUFFIX} checkpoint files; '{spec.name}' is not one: "
                         f"give the path to a {CHECKPOINT_SUFFIX} file, or use engine transformers")
    if not path.is_file():
        raise ModelError(f"{path}: no such {CHECKPOINT_SUFFIX} file")
    return path


class NemoEngine(Engine):
    """NeMo ASR models restored from `.nemo` files, transcribed by NeMo itself."""

    name = "nemo"
    extra = "nemo"
    runs_torch = True

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        path = checkpoint_path(spec)
        if weights == "random":
            raise ConfigError(f"engine nemo runs the weights stored in {path.name}; use weights 'real' or 'auto' "
                              "(random-weight architectures run on engine transformers)")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype '{dtype}' is not supported by engine nemo; use {', '.join(DTYPES)}")
        asr = require("nemo.collections.asr", "engine nemo", "nemo", package="nemo-toolkit")
        import nemo
        import torch

        self.torch = torch
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
            raise ModelError(f"device '{device}' is not usable by engine nemo; use 'cpu', 'cuda' or 'cuda:N'")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {device}: torch {torch.__version__} sees no CUDA device; use device cpu")
        self.device = torch.device(device)
        try:
            model = asr.models.ASRModel.restore_from(str(path), map_location=self.device)
        except Exception as exc:
            raise ModelError(f"{path}: NeMo cannot restore this checkpoint ({type(exc).__name__}: {exc})") from exc
        self.model = model.to(self.device).eval()
        self.model.freeze()
        self.sample_rate = int(self.model.cfg.get("sample_rate", 16000))
        self._ctc_blank = self._ctc_blank_id()
        strategy = self._decoding_cfg().get("strategy", "the model's default")
        self._info = {
            "engine_version": nemo.__version__,
            "torch_version": torch.__version__,
            "weights": "real",
            "weights_source": str(path),
            "model_class": type(self.model).__name__,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "dtype": dtype,
            "device": str(self.device),
            "decoding": f"NeMo '{strategy}' decoding, as the checkpoint's config sets it",
            "longform": "none (the whole clip in one encoder pass)",
        }
        self._set_token_policy("real", "real (labels the decoder emitted)")

    def _decoding_cfg(self) -> Any:
        cfg = self.model.cfg
        if getattr(self.model, "cur_decoder", "") == "ctc":  # a hybrid RNNT/CTC model switched to its CTC head
            return cfg.get("aux_ctc", {}).get("decoding", {}) or {}
        return cfg.get("decoding", {}) or {}

    def _ctc_blank_id(self) -> int | None:
        """The blank id when the active decoder is CTC (its hypotheses hold one label per frame), else None."""
        from nemo.collections.asr.parts.submodules.ctc_decoding import AbstractCTCDecoding

        ctc = getattr(self.model, "ctc_decoding", None) if getattr(self.model, "cur_decoder", "") == "ctc" else None
        decoding = ctc or getattr(self.model, "decoding", None)
        return int(decoding.blank_id) if isinstance(decoding, AbstractCTCDecoding) else None

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        if sample_rate != self.sample_rate:
            raise DataError(f"audio at {sample_rate} Hz; this NeMo model takes {self.sample_rate} Hz: "
                            "resample the clips")
        with self.torch.inference_mode():
            hyps = self.model.transcribe(list(audios), batch_size=len(audios), return_hypotheses=True, verbose=False)
        if isinstance(hyps, tuple):  # some models return (best, all) hypotheses
            hyps = hyps[0]
        return Transcription([h.text.strip() for h in hyps], [self._emitted(h) for h in hyps])

    def _emitted(self, hyp: Any) -> int:
        """Labels the decoder emitted: CTC frames collapsed with blanks dropped; RNNT / AED tokens as they are."""
        seq = np.asarray(hyp.y_sequence.tolist() if hasattr(hyp.y_sequence, "tolist") else hyp.y_sequence)
        if self._ctc_blank is None:
            return int(seq.size)
        if seq.ndim == 2:  # a CTC hypothesis may carry its per-frame log-probabilities: greedy takes the argmax
            seq = seq.argmax(axis=-1)
        length = int(getattr(hyp, "length", 0) or 0)
        seq = seq.astype(np.int64)[:length] if length > 0 else seq.astype(np.int64)
        changed = np.concatenate([[True], seq[1:] != seq[:-1]]) if seq.size else np.zeros(0, bool)
        return int((changed & (seq != self._ctc_blank)).sum())

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def loaded_weights(self) -> LoadedWeights:
        return LoadedWeights(module=self.model)
