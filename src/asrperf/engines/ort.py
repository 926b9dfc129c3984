"""ONNX Runtime engine: CTC models (wav2vec2, HuBERT, Wav2Vec2-Conformer, Parakeet) and Whisper.

The model is built by the transformers engine (same real or seeded random weights, same feature
extractor and tokenizer), exported once with `torch.onnx.export` into `cache_dir/ort-<hash>/`,
and run by `onnxruntime.InferenceSession`s. dtype int8 quantizes the exported fp32 graphs' MatMul
weights (dynamic, QInt8), cached next to them.

CTC: the forward (features [+ attention_mask] -> logits) is one graph; greedy CTC decoding (argmax,
collapse, drop blanks) happens in numpy and the tokenizer, inside the timed call.
Whisper: an encoder graph and a decoder-step graph with past K/V (`ort_whisper`), driven by the
transformers engine's own decoding code, so prompt, suppressed tokens, timestamp rules and the
sequential long-form algorithm are the transformers engine's, unchanged.

torch, transformers, onnx and onnxruntime are imported inside methods: importing this module costs nothing.
"""

from __future__ import annotations

import gc
import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.cache import build_once
from asrperf.engines.base import (BatchPadding, Engine, LoadedWeights, ModelSpec, Transcription, cpu_threads,
                                  feature_extractor_padding)
from asrperf.errors import ConfigError, ModelError, require

DTYPES = ("fp32", "int8")
OPSET = 17
EXPORTER_VERSION = 1  # bump when the export below changes, so cached exports are redone
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_METHOD = "; int8: onnxruntime.quantization.quantize_dynamic (QInt8 weights, MatMul only)"
EXPORT_METHOD = f"torch.onnx.export (TorchScript exporter, dynamo=False), opset {OPSET}, dynamic batch and time axes"


def _state_key(model: Any, spec: ModelSpec, weights: str, weights_source: str, input_names: list[str]) -> str:
    """Short hash of what decides an export: the model's weights (sampled), torch, onnx, this code."""
    import onnx
    import torch

    params = list(model.state_dict().items())
    n_params = sum(t.numel() for _, t in params)
    h = hashlib.sha256()
    for part in (spec.name, weights, weights_source, str(n_params), torch.__version__, onnx.__version__,
                 str(EXPORTER_VERSION), str(OPSET), ",".join(input_names), type(model).__name__):
        h.update(part.encode() + b"\0")
    # a few tensors, first, middle and last, hashed in full: enough to tell checkpoints apart
    picks = {0, len(params) // 2, len(params) - 1} if params else set()
    for i in sorted(picks):
        name, t = params[i]
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


class _Forward:
    """Wraps a CTC model so that export sees positional inputs and one output: the logits."""

    def __new__(cls, model: Any, input_names: list[str]) -> Any:
        import torch

        class Forward(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model(**dict(zip(input_names, args))).logits

        return Forward().eval()


def _int8_name(fp32_file: str) -> str:
    return fp32_file.removesuffix(".onnx") + ".int8.onnx"


class OnnxRuntimeEngine(Engine):
    """CTC and Whisper models exported to ONNX, run by ONNX Runtime; greedy decoding."""

    name = "ort"
    extra = "ort"
    _whisper: Any = None  # the transformers engine whose model runs on ORT sessions (Whisper only)

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        ort = require("onnxruntime", "engine ort", "ort")
        require("onnx", "engine ort", "ort")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype '{dtype}' is not supported by engine ort; use one of {', '.join(DTYPES)}")
        providers = self._providers(ort, device)
        from asrperf.engines.hf import TransformersEngine

        inner = TransformersEngine(cache_dir=self.cache_dir)
        inner.load(spec, weights, "fp32", "cpu")
        inner_info = inner.info()
        self.fe, self.tok = inner.fe, inner.tok
        self.device = device
        self.family = inner.family  # a local checkpoint's family is read from its config by the inner engine
        self._info = {
            "engine_version": ort.__version__,
            "weights": inner_info.get("weights"),
            "weights_source": inner_info.get("weights_source"),
            "n_params": inner_info.get("n_params"),
            "dtype": dtype,
            "device": device,
            "cpu_threads": cpu_threads(),
        }
        if "weights_note" in inner_info:
            self._info["weights_note"] = inner_info["weights_note"]
        if self.family == "whisper":
            self._load_whisper(ort, inner, spec, dtype, providers)
        else:
            self._load_ctc(ort, inner, spec, dtype, providers)

    def _load_ctc(self, ort: Any, inner: Any, spec: ModelSpec, dtype: str, providers: list[Any]) -> None:
        self.input_names = list(self.fe.model_input_names)
        path = self._export(inner.model, spec, inner.info())
        if dtype == "int8":
            path = self._quantize(path.parent, (MODEL_FILE,)) / INT8_FILE
        self.session = self._session(ort, path, providers, spinning=True)
        self.session_inputs = {i.name for i in self.session.get_inputs()}
        self._info.update(
            providers=self.session.get_providers(),
            onnx_file=str(path),
            export_method=EXPORT_METHOD + (INT8_METHOD if dtype == "int8" else ""),
            decoding="greedy CTC (argmax)",
            longform="none needed (CTC over the whole clip)",
        )
        self._set_token_policy("n/a", "n/a (CTC)")

    def _load_whisper(self, ort: Any, inner: Any, spec: ModelSpec, dtype: str, providers: list[Any]) -> None:
        from asrperf.engines import ort_whisper

        files = (ort_whisper.ENCODER_FILE, ort_whisper.DECODER_FILE)
        folder = self._export_whisper(inner.model, spec, inner.info())
        if dtype == "int8":
            folder = self._quantize(folder, files)
            files = tuple(_int8_name(f) for f in files)
        # generate's own torch ops run between the decoder steps on the same cores: ORT threads that
        # spin-wait after each run would take those cores from them
        encoder, decoder = (self._session(ort, folder / f, providers, spinning=False) for f in files)
        # the transformers engine keeps its feature extraction, prompt, generate call and detokenising;
        # only its model is replaced, by one whose encoder and decoder are the two sessions
        inner.replace_model(ort_whisper.ort_whisper_model(inner.model, encoder, decoder, self.device))
        self._whisper = inner
        gc.collect()  # the torch layers sit in reference cycles (forward hooks): free them before memory is read
        self._info.update(
            providers=decoder.get_providers(),
            onnx_file=str(folder / files[1]),
            onnx_files=[str(folder / f) for f in files],
            export_method=ort_whisper.EXPORT_METHOD + (INT8_METHOD if dtype == "int8" else ""),
            ort_thread_spinning=False,
            decoding=inner.info()["decoding"] + " (transformers generate on ORT sessions)",
        )

    def _session(self, ort: Any, path: Path, providers: list[Any], spinning: bool) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._info["cpu_threads"]
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise ModelError(f"{path}: ONNX Runtime cannot load this model on {self.device} "
                             f"({type(exc).__name__}: {exc})") from exc

    @staticmethod
    def _providers(ort: Any, device: str) -> list[str]:
        kind, _, index = device.partition(":")
        if kind == "cpu" and not index:
            return ["CPUExecutionProvider"]
        if kind == "cuda" and (not index or index.isdigit()):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError(f"device {device}: this onnxruntime build has no CUDAExecutionProvider "
                                 f"(available: {', '.join(ort.get_available_providers())}); "
                                 f"use device cpu, or pip install onnxruntime-gpu")
            return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
        raise ModelError(f"device '{device}' is not usable by engine ort; use 'cpu', 'cuda' or 'cuda:N'")

    def _export(self, model: Any, spec: ModelSpec, inner_info: dict[str, Any]) -> Path:
        """The fp32 ONNX export of `model`'s CTC forward, built on first use only."""
        import torch

        key = _state_key(model, spec, str(inner_info.get("weights")), str(inner_info.get("weights_source")),
                         self.input_names)
        final = self.cache_dir / f"ort-{key}"
        names = self.input_names

        def build(staging: Path) -> None:
            # two short clips of different length, so the attention mask (if any) is not all ones
            dummy_audio = [np.zeros(16000, np.float32), np.zeros(12000, np.float32)]
            feats = self.fe(dummy_audio, sampling_rate=16000, return_tensors="pt", padding="longest")
            main, *rest = names
            args = [feats[main].to(torch.float32)] + [feats[n] for n in rest if n in feats]
            used = [main] + [n for n in rest if n in feats]
            # batch and time lead in every input: (B, T) waveforms and masks, (B, T, mels) features
            dynamic = {n: {0: "batch", 1: "time"} for n in used}
            dynamic["logits"] = {0: "batch", 1: "frames"}
            try:
                # the tracer warns about Python branches on shapes; the checks against transformers cover them
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(_Forward(model, used), tuple(args), str(staging / MODEL_FILE),
                                      input_names=used, output_names=["logits"], dynamic_axes=dynamic,
                                      opset_version=OPSET, do_constant_folding=True, dynamo=False)
            except Exception as exc:
                raise ModelError(f"'{spec.name}': ONNX export failed ({type(exc).__name__}: {exc}); "
                                 f"use engine transformers for this model") from exc

        return build_once(final, MODEL_FILE, build) / MODEL_FILE

    def _export_whisper(self, model: Any, spec: ModelSpec, inner_info: dict[str, Any]) -> Path:
        """The folder holding Whisper's fp32 encoder and decoder-step graphs, built on first use only."""
        from asrperf.engines import ort_whisper

        key = _state_key(model, spec, str(inner_info.get("weights")), str(inner_info.get("weights_source")),
                         ["input_features", f"whisper-{ort_whisper.EXPORTER_VERSION}"])

        def build(staging: Path) -> None:
            try:
                ort_whisper.export_whisper(model, self.fe.feature_size, staging)
            except Exception as exc:
                raise ModelError(f"'{spec.name}': ONNX export failed ({type(exc).__name__}: {exc}); "
                                 f"use engine transformers for this model") from exc

        return build_once(self.cache_dir / f"ort-{key}", ort_whisper.DECODER_FILE, build)

    @staticmethod
    def _quantize(fp32_dir: Path, files: tuple[str, ...]) -> Path:
        """Weight-only dynamic int8 quantization of the MatMuls of `files`, in a folder next to the fp32 export."""
        ort_version = require("onnxruntime", "engine ort", "ort").__version__
        final = fp32_dir.parent / f"{fp32_dir.name}-int8-ort{ort_version}"

        def build(staging: Path) -> None:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # an export over protobuf's 2 GB limit keeps its tensors in files beside the .onnx ones
            external = any(f.suffix != ".onnx" for f in fp32_dir.iterdir())
            for name in files:
                quantize_dynamic(str(fp32_dir / name), str(staging / _int8_name(name)), op_types_to_quantize=["MatMul"],
                                 weight_type=QuantType.QInt8, use_external_data_format=external)

        return build_once(final, _int8_name(files[-1]), build)

    # -- the timed call ----------------------------------------------------------------------
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        if self._whisper is not None:
            return self._whisper.transcribe(audios, sample_rate)
        ids = self.logits(audios, sample_rate).argmax(axis=-1)
        texts = self.tok.batch_decode(ids)
        pad = self.tok.pad_token_id
        # labels emitted after CTC collapse: a change of label that is not blank (as the transformers engine)
        changes = (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] != pad)
        tokens = changes.sum(axis=1) + (ids[:, 0] != pad)
        return Transcription(list(texts), [int(t) for t in tokens])

    def logits(self, audios: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """CTC: feature extraction and the session run, the raw logits for a batch."""
        feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="np", padding="longest")
        main, *rest = self.input_names
        inputs = {main: np.ascontiguousarray(feats[main], dtype=np.float32)}
        # the exporter drops an input the graph does not use (a mask the model ignores)
        inputs.update({n: np.ascontiguousarray(feats[n], dtype=np.int64)
                       for n in rest if n in feats and n in self.session_inputs})
        return self.session.run(["logits"], inputs)[0]

    def batch_padding(self) -> BatchPadding:
        if self._whisper is not None:
            return super().batch_padding()
        padding = feature_extractor_padding(self.fe)
        if padding.policy == "masked" and "attention_mask" not in self.session_inputs:
            return BatchPadding("unmasked", "zero-pad to the longest in the batch; the exported graph takes no "
                                            "attention mask: outputs depend on batch composition")
        return padding

    def model_family(self) -> str:
        return self.family

    def synchronize(self) -> None:
        """No-op: every call ends by reading its results on the host, so it has finished on return."""

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self._whisper is not None:  # set per call: long-form or not, real or fixed token counts
            info.update({k: v for k, v in self._whisper.info().items() if k in ("longform", "token_policy", "tokens_policy")})
        return info

    def loaded_weights(self) -> LoadedWeights:
        """The ONNX file and any external-data files beside it (each export has its own directory)."""
        onnx_file = Path(self._info["onnx_file"])
        files = tuple(sorted(f for f in onnx_file.parent.iterdir() if f.is_file()))
        return LoadedWeights(files=files, note="ONNX Runtime's in-memory copy, after its graph optimisations, is not visible")

    def stages(self) -> tuple[str, ...]:
        # Whisper: the transformers engine's stages; "encoder" and "decoder" (each step) nest in "model"
        return self._whisper.stages() if self._whisper is not None else ()
