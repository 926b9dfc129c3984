"""Whisper in the transformers engine: seq2seq decoding with transformers' own generate.

Three decodings, chosen once per load: real weights decode until their own end-of-text, with
OpenAI's sequential long-form algorithm past 30 s or, with longform = "batched", as windows cut
at pauses (engines/windows.py); random weights, which never emit end-of-text, decode a fixed,
realistic token count per 30 s window. The fixed-count decoding and the decode scenario's
per-token curve share one prompt and one forced-length generate (`WhisperAdapter.forced_generate`).

torch and transformers are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asrperf.options import VariantOptions
from asrperf.engines.base import DecoderAccess, ForcedDecode, StreamingUnsupported, Transcription, Word
from asrperf.engines.hf_families import FamilyAdapter, bundled_sources, mark_module, stage
from asrperf.engines.windows import WINDOW_S, WINDOW_SAMPLES, plan_windows

# A random-weight decoder never emits end-of-text, so its token count is fixed instead. English
# speech runs at ~150 words/min = 2.5 words/s, and Whisper's GPT-2 BPE spends ~1.3 tokens per
# word: ~3.3 tokens/s. We use 3.0 tokens per second of audio, i.e. 90 per full 30 s window; the
# real-weight rows record the real count so the figure can be checked (benchmarks/README.md).
RANDOM_TOKENS_PER_AUDIO_S = 3.0
# Marks that belong to the word before them (Whisper writes "planks," and "It's" as separate pieces)
ATTACHED_PUNCTUATION = set("\"'.,!?:;)]}%…")


def words_from_tokens(pieces: list[str], ends_s: list[float]) -> list[Word]:
    """Whisper's text pieces with each piece's end time as words.

    transformers' token timestamps (DTW over the alignment heads) give, for each generated token,
    the time the alignment moves on to the next one: piece k spans [ends_s[k - 1], ends_s[k]]
    (from 0 for the first), as its ASR pipeline reads them. A piece that begins with a space begins
    a word; any other piece continues the word before it. A word ends where its last piece that is
    not punctuation ends (punctuation takes no time of its own).
    """
    words: list[tuple[str, float, float]] = []
    for k, (piece, end) in enumerate(zip(pieces, ends_s)):
        start = ends_s[k - 1] if k else 0.0
        spoken = any(ch not in ATTACHED_PUNCTUATION and not ch.isspace() for ch in piece)
        if piece.startswith(" ") or not words:
            if piece.strip():
                words.append((piece.strip(), start, end))
            continue
        text, w_start, w_end = words[-1]
        words[-1] = (text + piece.strip(), w_start, end if spoken else w_end)
    return [Word(text, float(start), float(max(start, end))) for text, start, end in words]


class WhisperAdapter(FamilyAdapter):
    """Whisper (seq2seq): encoder per 30 s window, then greedy decoding with the KV cache."""

    family = "whisper"
    windowed_longform = True

    @classmethod
    def _new_model(cls, tf: Any, config: Any) -> Any:
        return tf.WhisperForConditionalGeneration(config)

    @classmethod
    def _random_front_end(cls, tf: Any, model: Any, cache_dir: Path) -> tuple[Any, Any]:
        fe = tf.WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
        # tiny.en's tokenizer (bundled offline) detokenises; ids it lacks decode to nothing
        tok_dir = bundled_sources(cache_dir)["openai/whisper-tiny.en"]()
        return fe, tf.WhisperTokenizerFast.from_pretrained(str(tok_dir))

    @classmethod
    def _from_pretrained(cls, tf: Any, path: str) -> tuple[Any, Any]:
        return tf.WhisperForConditionalGeneration.from_pretrained(path), tf.WhisperProcessor.from_pretrained(path)

    @classmethod
    def compile(cls, model: Any, tf: Any, mode: str) -> None:
        from asrperf.engines.hf_variants import compile_whisper

        compile_whisper(model, tf, mode)

    @classmethod
    def kv_cache(cls, options: VariantOptions) -> str:
        return "static" if options.compile else "dynamic"

    def _loaded(self) -> None:
        # the prompt forced decoding starts from: <|startoftranscript|> <|notimestamps|> for
        # English-only models, plus <|en|> <|transcribe|> for multilingual ones (it costs by its length)
        names = ["<|startoftranscript|>", "<|notimestamps|>"]
        if not self.spec.english_only:
            names[1:1] = ["<|en|>", "<|transcribe|>"]
        self.prompt = [t % self.model.config.vocab_size for t in self.tok.convert_tokens_to_ids(names)]
        if self.weights == "random":
            self._decode = self._fixed_tokens
        elif self.spec.options.longform == "batched":
            self._decode = self._windows
        else:
            self._decode = self._generate

    def mark_stages(self) -> None:
        # the first decoder step after each encoder pass runs the whole prompt and computes the
        # cross-attention keys/values of 1500 frames: its own stage, apart from per-token steps
        after_encoder = [False]

        def encoder_mark() -> str:
            after_encoder[0] = True
            return "encoder"

        def decoder_mark() -> str:
            first, after_encoder[0] = after_encoder[0], False
            return "decoder_first_step" if first else "decoder"

        mark_module(self.model.get_encoder(), encoder_mark)
        mark_module(self.model.get_decoder(), decoder_mark)

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        return self._decode(audios, sample_rate)

    def flop_stages(self) -> dict[str, str]:
        # generate() calls the encoder module, then the whole model once per decoding step
        return {type(self.model.get_encoder()).__name__: "encoder", type(self.model).__name__: "decoder"}

    def decoder(self) -> DecoderAccess:
        # generate() calls the whole model (decoder + LM head) once per step, the encoder apart
        return DecoderAccess(step_module=self.model, autoregressive=True)

    # -- streaming: one window decoded with word timestamps ----------------------------------------
    def transcribe_words(self, audio: np.ndarray, sample_rate: int, prompt: str = "") -> list[Word]:
        """Greedy generate on one <= 30 s window, `prompt` as previous text (prompt_ids), with
        transformers' token timestamps (DTW over the cross-attention alignment heads), grouped into words."""
        if self.weights == "random":
            raise StreamingUnsupported(f"'{self.spec.name}' has random weights: a random Whisper decoder never "
                                       "ends its own text, so it has no words to time; stream real weights")
        if len(audio) > WINDOW_SAMPLES:
            raise StreamingUnsupported(f"a streaming buffer of {len(audio) / sample_rate:.1f} s is over Whisper's 30 s window")
        gen = self.model.generation_config
        if not getattr(gen, "alignment_heads", None):
            raise StreamingUnsupported(f"'{self.spec.name}': its generation config has no alignment_heads, so "
                                       "transformers cannot time its tokens")
        feats = self.fe([audio], sampling_rate=sample_rate, return_tensors="pt", return_attention_mask=True)
        kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False, "return_token_timestamps": True,
                                  "attention_mask": feats.attention_mask.to(self.device)}
        if prompt.strip():
            kwargs["prompt_ids"] = self.tok.get_prompt_ids(prompt.strip(), return_tensors="pt").to(self.device)
        out = self.model.generate(feats.input_features.to(self.device, self.dtype), generation_config=gen, **kwargs)
        ids, ends = out["sequences"][0].tolist(), out["token_timestamps"][0].tolist()
        # every id from <|endoftext|> up is a control token (prompt, language, timestamps)
        text = [(self.tok.decode([t]), e) for t, e in zip(ids, ends) if t < self.tok.eos_token_id]
        self.info["token_policy"], self.info["tokens_policy"] = "real", "real (the model's own end-of-text)"
        return words_from_tokens([p for p, _ in text], [e for _, e in text])

    # -- forced length: random weights, and the decode scenario's curve --------------------------
    def prefix(self, rows: int) -> Any:
        """The decoder prompt for `rows` rows, on the device."""
        import torch

        return torch.tensor([self.prompt] * rows, device=self.device)

    def forced_generate(self, features: Any, prefix: Any, n_new: int, use_cache: bool = True,
                        num_beams: int = 1) -> Any:
        """transformers' plain generate (GenerationMixin's, not Whisper's: no prompt rewriting, no
        end-of-text, no suppression processors) after `prefix`, forced to exactly `n_new` new
        tokens per row; returns prefix + new tokens. A step costs by its position, not by which
        token it chose, so this costs what natural decoding of that length does."""
        from transformers import GenerationMixin

        return GenerationMixin.generate(
            self.model, input_features=features, decoder_input_ids=prefix,
            min_new_tokens=n_new, max_new_tokens=n_new, do_sample=False, num_beams=num_beams, use_cache=use_cache,
            eos_token_id=None, pad_token_id=0, forced_decoder_ids=None, suppress_tokens=None,
            begin_suppress_tokens=None, length_penalty=1.0, early_stopping=False,
        )

    def forced_decode(self, audios: list[np.ndarray], sample_rate: int) -> ForcedDecode:
        import torch

        window = [a[: WINDOW_S * sample_rate] for a in audios]
        feats = self.fe(window, sampling_rate=sample_rate, return_tensors="pt")
        features = feats.input_features.to(self.device, self.dtype)
        prefix = self.prefix(len(audios))

        def run(n_tokens: int, use_cache: bool, num_beams: int) -> Any:
            with torch.inference_mode():
                return self.forced_generate(features, prefix, n_tokens, use_cache, num_beams)

        return run

    # -- the three decodings ---------------------------------------------------------------------
    def _generate(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        import torch

        longest = max(len(a) for a in audios)
        gen = self.model.generation_config
        kwargs: dict[str, Any] = {"num_beams": 1, "do_sample": False}
        longform = longest > WINDOW_SAMPLES
        with stage("feature_extraction"):
            if not longform:
                feats = self.fe(audios, sampling_rate=sample_rate, return_tensors="pt")
            else:
                # OpenAI's sequential long-form algorithm: slide the 30 s window by the last predicted
                # timestamp. Without truncation=False the feature extractor would cut at 30 s.
                feats = self.fe(
                    audios, sampling_rate=sample_rate, return_tensors="pt",
                    truncation=False, padding="longest", return_attention_mask=True,
                )
        with stage("host_to_device"):
            features = feats.input_features.to(self.device, self.dtype)
            if longform:
                kwargs.update(attention_mask=feats.attention_mask.to(self.device), return_timestamps=True,
                              condition_on_prev_tokens=False, temperature=0.0)
        self.info["longform"] = ("sequential (OpenAI algorithm, timestamps, no temperature fallback)" if longform
                                 else "none needed (<= 30 s)")
        with stage("model"):
            out = self.model.generate(features, generation_config=gen, **kwargs)
        with stage("detokenize"):
            sequences = out if isinstance(out, torch.Tensor) else out["sequences"]
            texts = [t.strip() for t in self.tok.batch_decode(sequences, skip_special_tokens=True)]
            # decoder steps that produced text or timestamp tokens (prompt and end-of-text excluded)
            special = set(self.tok.all_special_ids)
            tokens = [sum(1 for t in row.tolist() if t not in special) for row in sequences]
        self.info["token_policy"], self.info["tokens_policy"] = "real", "real (the model's own end-of-text)"
        return Transcription(texts, tokens)

    def _windows(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Batched long-form: every clip cut at pauses into <= 30 s windows (engines/windows.py),
        decoded WINDOW_BATCH windows at a time as short clips (one generate() batch, no timestamps)."""
        plan = plan_windows(audios, sample_rate)
        texts: list[str] = []
        tokens: list[int] = []
        for part in plan.chunks():
            out = self._generate(plan.pieces[part], sample_rate)
            texts += out.texts
            tokens += out.tokens
        self.info["longform"] = "batched windows (cut at pauses, <= 30 s, no timestamps; decoded as one batch)"
        self.info["windows"] = plan.describe()
        self.info["token_policy"], self.info["tokens_policy"] = "real", "real (the model's own end-of-text)"
        return plan.gather(texts, tokens)

    def _fixed_tokens(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Random weights: decode a fixed, realistic number of tokens per 30 s window.

        Each clip is cut into 30 s windows (the last one padded by the feature extractor), and
        each window's decoder emits RANDOM_TOKENS_PER_AUDIO_S tokens per second of audio in it,
        with the KV cache, as greedy decoding of real speech would. Windows needing the same
        token count are encoded and decoded as one batch.
        """
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for i, a in enumerate(audios):
            for start in range(0, len(a), WINDOW_SAMPLES):
                w = a[start : start + WINDOW_SAMPLES]
                n_new = max(1, round(RANDOM_TOKENS_PER_AUDIO_S * len(w) / sample_rate))
                groups.setdefault(n_new, []).append((i, w))
        texts, tokens = [""] * len(audios), [0] * len(audios)
        for n_new, items in groups.items():
            with stage("feature_extraction"):
                feats = self.fe([w for _, w in items], sampling_rate=sample_rate, return_tensors="pt")
            with stage("host_to_device"):
                features = feats.input_features.to(self.device, self.dtype)
                prefix = self.prefix(len(items))
            with stage("model"):
                out = self.forced_generate(features, prefix, n_new)
            with stage("detokenize"):
                new = out[:, prefix.shape[1]:]
                for (i, _), text in zip(items, self.tok.batch_decode(new, skip_special_tokens=True)):
                    texts[i] = (texts[i] + " " + text).strip()
                    tokens[i] += int(new.shape[1])
        self.info["longform"] = "30 s windows, fixed token count (random weights)"
        self.info["token_policy"] = "fixed"
        self.info["tokens_policy"] = (f"fixed {RANDOM_TOKENS_PER_AUDIO_S:g}/audio-s "
                                      f"({int(RANDOM_TOKENS_PER_AUDIO_S * WINDOW_S)} per 30 s window)")
        return Transcription(texts, tokens)
