"""transformers engine: Whisper (seq2seq), CTC models (wav2vec2, HuBERT, Wav2Vec2-Conformer,
Parakeet CTC) and transducers (Parakeet RNN-T, TDT).

What differs between those families lives in one adapter per family (engines/hf_families.py,
engines/hf_whisper.py), chosen once at load from `ADAPTERS`; this module holds what they share:
finding real weights, dtype and device, the optimisation options, compile counters.
torch and transformers are imported inside methods: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asrperf.engines.base import (GREEDY_DECODING, BatchPadding, DecoderAccess, Engine, ForcedDecode, FrameLabels,
                                  LoadedWeights, ModelSpec, StreamingUnsupported, Transcription, Word,
                                  feature_extractor_padding)
from asrperf.engines.catalog import FAMILY_BY_MODEL_TYPE
from asrperf.engines.hf_families import CtcAdapter, FamilyAdapter, TransducerAdapter, bundled_sources
from asrperf.engines.hf_whisper import WhisperAdapter
from asrperf.errors import ConfigError, ModelError, require
from asrperf.options import VariantOptions

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# family -> its adapter: the one place the engine looks at a family
ADAPTERS: dict[str, type[FamilyAdapter]] = {"whisper": WhisperAdapter, "ctc": CtcAdapter, "transducer": TransducerAdapter}
RANDOM_SOURCE = "random init (seed 0, std 0.02)"


class TransformersEngine(Engine):
    """Hugging Face transformers models on torch, greedy decoding, long-form never truncated."""

    name = "transformers"
    extra = "hf"
    runs_torch = True
    _compiled = False  # set by load: torch.compile is on, so each call counts the graphs it compiled
    _run: FamilyAdapter  # set by load: the family adapter holding the loaded model

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        if dtype not in DTYPES:  # the int8 compute types are CTranslate2's
            raise ConfigError(f"dtype '{dtype}' is not supported by engine transformers; "
                              f"use engine ct2 or {'/'.join(DTYPES)}")
        self.torch = require("torch", "engine transformers", "hf")
        self.tf = require("transformers", "engine transformers", "hf")
        self.device = self.torch.device(device)
        self.dtype = getattr(self.torch, DTYPES[dtype])
        path, note, family = None, "", spec.family
        if weights != "random":
            path, note = self._real_path(spec, must=weights == "real")
            if path is not None:
                family = family or self._family_of(path)
        if path is None and not spec.architecture:
            raise ModelError(f"'{spec.name}' has no catalog architecture, so it cannot run with random weights; "
                             "give real weights or a catalog name")
        if family not in ADAPTERS:
            raise ModelError(f"'{spec.name}': family '{family}' is not run by engine transformers; "
                             f"it runs {', '.join(ADAPTERS)}")
        adapter = ADAPTERS[family]
        if spec.options.longform != "sequential" and not adapter.windowed_longform:
            raise ModelError(f"'{spec.name}' is a {family} model: longform = '{spec.options.longform}' applies to "
                             f"Whisper only (this model reads the whole clip at once); remove longform")
        if path is None:
            model, fe, tok = adapter.random(self.tf, spec, self.cache_dir)
            self._info["weights_source"] = RANDOM_SOURCE
            if note:  # real weights were asked for ("auto") and are not here
                self._info["weights_note"] = note
            weights = "random"
        else:
            model, fe, tok = adapter.pretrained(self.tf, path)
            self._info["weights_source"] = str(path)
            weights = "real"
        # frozen: inference never needs gradients, and torch's FLOP counter (its module tracker)
        # cannot follow parameters that require grad into a module under inference_mode, which
        # wav2vec2's weight-norm parametrised positional conv does
        model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in model.parameters())  # before quantization packs the Linears
        model = self._apply_options(model, adapter, spec.options, dtype)
        self._run = adapter(model, fe, tok, spec, weights, self.device, self.dtype, self._info)
        if not spec.options.compile:
            self._run.mark_stages()
        self._info.update(
            engine_version=self.tf.__version__,
            torch_version=self.torch.__version__,
            weights=weights,
            n_params=n_params,
            dtype=dtype,
            device=str(self.device),
            decoding=GREEDY_DECODING,
        )

    def _apply_options(self, model: Any, adapter: type[FamilyAdapter], options: VariantOptions, dtype: str) -> Any:
        """Attention implementation, int8 quantization, torch.compile, in that order; records what
        ran and returns the model to run."""
        from asrperf.engines import hf_variants

        attn = hf_variants.set_attention(model, options.attn)
        quant_library = None
        if options.quant != "none":
            model, quant_library = hf_variants.quantize(model, options.quant, self.device.type, options.compile)
        mode = hf_variants.compile_mode(options) if options.compile else None
        if mode is not None:
            adapter.compile(model, self.tf, mode)
        self._compiled = options.compile
        self._info.update(
            variant=options.label(dtype), quant=options.quant, quant_library=quant_library,
            attn=options.attn, attn_implementation=attn, compile=options.compile, compile_mode=mode,
            cuda_graphs=options.cuda_graphs, kv_cache=adapter.kv_cache(options),
        )
        return model

    def _record_compiles(self, before: tuple[int, int, float]) -> None:
        """Graphs torch.compile built during the call just made, the graph breaks it met (each one
        a piece left to eager mode) and the seconds it spent compiling."""
        from asrperf.engines.hf_variants import compile_counters

        graphs, breaks, seconds = compile_counters()
        per_call = self._info.setdefault("compiled_graphs_per_call", [])
        per_call.append(graphs - before[0])
        self._info["compiled_graphs"] = sum(per_call)
        self._info["compile_graph_breaks"] = self._info.get("compile_graph_breaks", 0) + breaks - before[1]
        self._info["compile_s"] = self._info.get("compile_s", 0.0) + seconds - before[2]

    def _family_of(self, path: str | Path) -> str:
        cfg = self.tf.AutoConfig.from_pretrained(str(path))
        try:
            return FAMILY_BY_MODEL_TYPE[cfg.model_type]
        except KeyError:
            raise ModelError(f"{path}: model_type '{cfg.model_type}' is not supported by engine transformers") from None

    def _real_path(self, spec: ModelSpec, must: bool) -> tuple[str | None, str]:
        """Where real weights are: a local dir, the HF cache, a bundled package, or (if `must`) the Hub."""
        if not spec.source:
            return None, f"no known checkpoint for '{spec.name}'"
        if Path(spec.source).is_dir():
            return spec.source, ""
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(spec.source, local_files_only=True), ""
        except Exception:
            pass
        bundled = bundled_sources(self.cache_dir).get(spec.source)
        if bundled is not None:
            return str(bundled()), ""
        if not must:
            return None, f"no local copy of {spec.source}; ran random weights (weights='real' downloads it)"
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(spec.source), ""
        except Exception as exc:
            raise ModelError(f"cannot fetch real weights for {spec.source} ({type(exc).__name__}); "
                             "check the network or use weights='random'") from exc

    # -- the timed call ----------------------------------------------------------------------
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        before = None
        if self._compiled:
            from asrperf.engines.hf_variants import compile_counters

            before = compile_counters()
        with self.torch.inference_mode():
            out = self._run.transcribe(audios, sample_rate)
        if before is not None:
            self._record_compiles(before)
        return out

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    # -- what the measurers ask ------------------------------------------------------------------
    def stages(self) -> tuple[str, ...]:
        return self._run.stages

    def loaded_weights(self) -> LoadedWeights:
        return LoadedWeights(module=self._run.model)

    def flop_stages(self) -> dict[str, str]:
        return self._run.flop_stages()

    def device_type(self) -> str:
        return self.device.type

    def decoder(self) -> DecoderAccess:
        return self._run.decoder()

    def forced_decode(self, audios: list[np.ndarray], sample_rate: int) -> ForcedDecode:
        return self._run.forced_decode(audios, sample_rate)

    def batch_padding(self) -> BatchPadding:
        if self._run.family == "whisper":
            return super().batch_padding()
        return feature_extractor_padding(self.fe)  # CTC, transducers: what the feature extractor returns

    # -- streaming: the family adapter's own decode call -------------------------------------------
    def model_family(self) -> str:
        return self._run.family

    def transcribe_words(self, audio: np.ndarray, sample_rate: int, prompt: str = "",
                         window_s: float | None = None) -> list[Word]:
        if window_s is not None:
            raise StreamingUnsupported(f"engine {self.name}: transformers' Whisper reads only its full 30 s encoder "
                                       "window; use streaming.encoder_window = \"full\" (or engine ct2)")
        with self.torch.inference_mode():
            return self._run.transcribe_words(audio, sample_rate, prompt)

    def frame_labels(self, audio: np.ndarray, sample_rate: int) -> FrameLabels:
        with self.torch.inference_mode():
            return self._run.frame_labels(audio, sample_rate)

    def labels_text(self, ids: list[int]) -> str:
        return self._run.labels_text(ids)

    def align_reference(self, audio: np.ndarray, sample_rate: int, words: list[str]) -> list[Word | None]:
        with self.torch.inference_mode():
            return self._run.align_reference(audio, sample_rate, words)

    # -- the loaded parts, for engines built on this one (ort) and for tests -------------------------
    @property
    def family(self) -> str:
        return self._run.family

    @property
    def model(self) -> Any:
        """The loaded torch model (after options: quantized, compiled)."""
        return self._run.model

    @property
    def fe(self) -> Any:
        return self._run.fe

    @property
    def tok(self) -> Any:
        return self._run.tok

    def replace_model(self, model: Any) -> None:
        """Run `model` in place of the loaded one: the same config, generation config, feature
        extractor, tokenizer and decoding (how engine ort runs Whisper's generate on ONNX Runtime)."""
        self._run.model = model
