"""whisper.cpp engine (through pywhispercpp's bindings of whisper.cpp's C API): Whisper only, CPU.

The model is a ggml file converted once from the transformers checkpoint (engines/ggml_format.py:
OpenAI's tensor names, whisper.cpp's per-tensor types) and cached under
`cache_dir/ggml-<hash>/ggml-model-<type>.bin`; the key holds the checkpoint's files, the ggml type
and CONVERTER_VERSION. Real weights come from the checkpoint (engines/checkpoints.py), random ones
are the transformers engine's own random model (seed 0), converted the same way.

Decoding follows the other engines: greedy (best_of 1), temperature 0 with no fallback
(temperature_inc 0), no context carried across windows (no_context), no VAD, non-speech tokens
suppressed (OpenAI's default suppress_tokens="-1"), no window dropped as silence. Clips of up to 30 s
decode without timestamps; longer ones use whisper.cpp's own sequential long-form (`whisper_full`
slides its 30 s window by the last predicted timestamp, as OpenAI's algorithm does). With
longform = "batched" the clip is cut at pauses (engines/windows.py) and the windows decode
without timestamps on one model context per thread, in parallel.
Threads: the cell's (OMP_NUM_THREADS), passed as n_threads. pywhispercpp is imported in `load`.
"""

from __future__ import annotations

import atexit
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.cache import build_once
from asrperf.engines.base import GREEDY_DECODING, Engine, LoadedWeights, ModelSpec, Transcription, cpu_threads
from asrperf.engines.checkpoints import checkpoint_key, find_checkpoint, text_key
from asrperf.engines.ggml_format import read_ggml, token_bytes, write_ggml
from asrperf.engines.openai_layout import openai_dims, random_hf_state, read_hf_checkpoint, to_openai
from asrperf.engines.windows import WINDOW_S, WINDOW_SAMPLES
from asrperf.errors import ModelError, require

CONVERTER_VERSION = 1  # bump when the written ggml file changes, so cached conversions are redone
# asrperf dtype -> ggml weight type of the file (whisper.cpp computes in f32 with f16/quantized weights).
# No fp32: an f32 file declares f32 conv kernels, and whisper.cpp's CPU convolution (ggml_conv_1d ->
# im2col into f16) asserts f16 kernels (GGML_ASSERT in ggml-cpu/ops.cpp, whisper.cpp 1.8.5): it aborts.
GGML_DTYPES = {"fp16": "f16", "q8_0": "q8_0", "q5_0": "q5_0", "q5_1": "q5_1"}
# Random weights rarely emit end-of-text, so each window is capped at the transformers engine's
# fixed count for random weights (3 tokens per audio second: 90 per 30 s window); the row records
# the count decoded.
RANDOM_TOKENS_PER_AUDIO_S = 3.0
# whisper.cpp's log levels (ggml_log_level): 4 is GGML_LOG_LEVEL_ERROR
_LOG_ERROR = 4
# whisper_print_timings: "<name> time = <ms> ms" and, for counted stages, "/ <runs> runs"
_TIMING_RE = re.compile(r"(\w+) time =\s*([\d.]+) ms(?: /\s*(\d+) runs)?")
_FALLBACKS_RE = re.compile(r"fallbacks =\s*(\d+) p /\s*(\d+) h")
STAGES_MS = ("mel", "encode", "decode", "batchd", "prompt", "sample")
STAGE_NOTE = ("whisper.cpp's own timers (whisper_print_timings), median per call over the cell's calls: "
              "mel = log-mel features, encode = encoder, decode = one-token decoder steps, batchd = 2-15 "
              "token decoder batches (the prompt of each window), prompt = >= 16 token batches, "
              "sample = token selection")


class _Log:
    """whisper.cpp's log, captured instead of printed: errors become the message of a ModelError,
    the timing report is parsed into the row."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, text: str) -> None:
        self.lines.append((level, text))
        del self.lines[:-200]  # bounded: whisper.cpp logs a few lines per call at most

    def take(self) -> list[tuple[int, str]]:
        out, self.lines = self.lines, []
        return out

    @staticmethod
    def errors(lines: list[tuple[int, str]]) -> str:
        return " ".join(t.strip() for level, t in lines if level == _LOG_ERROR and t.strip())


class WhisperCppEngine(Engine):
    """Whisper on whisper.cpp; the same decoding settings as the transformers and ct2 engines."""

    name = "whispercpp"
    extra = "whispercpp"

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        """Convert (once) and load a ggml model; `dtype` picks the ggml weight type."""
        pw = require("_pywhispercpp", "engine whispercpp", "whispercpp", package="pywhispercpp")
        if spec.family and spec.family != "whisper":
            raise ModelError(f"'{spec.name}' is a {spec.family} model; engine whispercpp runs Whisper models only")
        if device != "cpu":
            raise ModelError(f"device '{device}': engine whispercpp runs on cpu here (the PyPI wheel is a CPU "
                             f"build); use device cpu, or engine ct2/transformers on CUDA")
        if dtype == "fp32":
            raise ModelError("dtype 'fp32': whisper.cpp's CPU backend aborts on f32 models (its convolution needs "
                             "f16 kernels); use dtype fp16 (f16 weights, f32 compute) or q8_0/q5_1/q5_0")
        if dtype not in GGML_DTYPES:
            raise ModelError(f"dtype '{dtype}' is not a ggml type engine whispercpp offers; use one of "
                             f"{', '.join(GGML_DTYPES)}")
        wtype = GGML_DTYPES[dtype]
        path, weights, source = ggml_model_file(spec, weights, wtype, self.cache_dir)
        ggml = read_ggml(path)
        self.log = _Log()
        pw.whisper_log_set(self.log)
        # pywhispercpp keeps the callback in a C++ static; releasing it after the interpreter has
        # finalized aborts the process ("GIL is released"), so the default logger is restored first
        atexit.register(pw.whisper_log_set, None)
        cparams = pw.whisper_context_default_params()
        cparams.use_gpu = False
        self.ctx = pw.whisper_init_from_file_with_params(str(path), cparams)
        failure = _Log.errors(self.log.take())
        if failure:  # whisper_init returned NULL: the context must not be touched
            raise ModelError(f"{path}: whisper.cpp cannot load it ({failure}); delete it so asrperf converts again")
        self.pw, self.path, self.ggml, self.weights = pw, path, ggml, weights
        self.eot, self.timestamp_begin = pw.whisper_token_eot(self.ctx), pw.whisper_token_beg(self.ctx)
        self.threads = cpu_threads()
        self.multilingual = bool(pw.whisper_is_multilingual(self.ctx))
        self.params = self._params(pw)
        self.longform = spec.options.longform
        # batched windows decode in parallel: one context (model copy) per thread, the first the main one
        self.pool = [(self.ctx, self.params)]
        if self.longform == "batched":
            for _ in range(1, self.threads):
                ctx = pw.whisper_init_from_file_with_params(str(path), cparams)
                failure = _Log.errors(self.log.take())
                if failure:
                    raise ModelError(f"{path}: whisper.cpp cannot load a second copy ({failure})")
                self.pool.append((ctx, self._params(pw)))
        self._timings: list[dict[str, float]] = []
        self._runs: list[dict[str, int]] = []
        self._fallbacks = 0
        self._info.update(
            engine_version=_version("pywhispercpp"),
            whisper_cpp_system_info=pw.whisper_print_system_info().strip(),
            weights=weights, weights_source=source, dtype=dtype, ggml_type=ggml.wtype, ggml_file=str(path),
            ggml_file_bytes=path.stat().st_size, device=device, cpu_threads=self.threads,
            flash_attn=bool(cparams.flash_attn),
            decoding=GREEDY_DECODING + "; no context carry-over, non-speech tokens suppressed",
            tokens_policy=("real (the model's own end-of-text)" if weights == "real" else
                           f"random weights: at most {RANDOM_TOKENS_PER_AUDIO_S:g} tokens per audio-second of a "
                           f"window ({int(RANDOM_TOKENS_PER_AUDIO_S * WINDOW_S)} per 30 s), whisper.cpp max_tokens"),
        )

    def _params(self, pw: Any) -> Any:
        p = pw.whisper_full_default_params(pw.WHISPER_SAMPLING_GREEDY)
        p.n_threads = self.threads
        p.greedy = {"best_of": 1}
        p.temperature, p.temperature_inc = 0.0, 0.0  # no fallback to higher temperatures
        p.no_speech_thold = 1.0  # a probability is never > 1: no window is dropped as silence
        p.no_context = True  # no text carried from one window into the next
        p.suppress_nst = True  # OpenAI's suppress_tokens="-1" (non-speech symbols), as the other engines
        # English-only models have no language token; multilingual ones detect it per clip, as the
        # other engines do ("auto": detect, then transcribe; detect_language alone would stop there)
        p.language = "auto" if self.multilingual else "en"
        p.detect_language = False
        p.print_progress = p.print_realtime = p.print_timestamps = p.print_special = False
        return p

    # -- the timed call --------------------------------------------------------------------------
    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Each clip through `whisper_full` (log-mel, encoder, decoder, text), one after another;
        with longform = "batched", every clip's windows cut at pauses, decoded in parallel."""
        if sample_rate != self.pw.WHISPER_SAMPLE_RATE:
            raise ModelError(f"engine whispercpp takes {self.pw.WHISPER_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        audios = [np.ascontiguousarray(a, dtype=np.float32) for a in audios]
        if self.longform == "batched":
            return self._windows(audios, sample_rate)
        texts, tokens = [], []
        self.log.take()
        for audio in audios:
            self._set_window(self.params, audio, sample_rate, timestamps=len(audio) > WINDOW_SAMPLES)
            self.pw.whisper_reset_timings(self.ctx)
            text, n = self._run(self.ctx, self.params, audio)
            texts.append(text)
            tokens.append(n)
            self._record_timings([self.ctx])
        long = any(len(a) > WINDOW_SAMPLES for a in audios)
        self._info["longform"] = ("sequential (whisper.cpp whisper_full: 30 s windows slid by the last timestamp, "
                                  "timestamps on, no fallback); clips of a batch one after another" if long else
                                  "none needed (<= 30 s), no timestamps; clips of a batch one after another")
        return Transcription(texts, tokens)

    def _set_window(self, p: Any, audio: np.ndarray, sample_rate: int, timestamps: bool) -> None:
        p.no_timestamps = not timestamps
        if self.weights == "random":
            p.no_timestamps, p.single_segment = True, True
            # whisper.cpp ends a window after the token at index max_tokens: n tokens need n - 1
            n = round(RANDOM_TOKENS_PER_AUDIO_S * min(len(audio) / sample_rate, WINDOW_S))
            p.max_tokens = max(1, n - 1)

    def _run(self, ctx: Any, p: Any, audio: np.ndarray) -> tuple[str, int]:
        """One whisper_full call on `ctx`: its text and token count."""
        pw = self.pw
        status = pw.whisper_full(ctx, p, audio, len(audio))
        if status != 0:
            raise ModelError(f"whisper.cpp whisper_full failed (status {status}: {_Log.errors(self.log.take()) or 'no log'})")
        parts, n_tokens = [], 0
        for i in range(pw.whisper_full_n_segments(ctx)):
            parts.append(pw.whisper_full_get_segment_text(ctx, i).decode("utf-8", errors="replace"))
            # text and timestamp tokens, as the other engines count; not the prompt's special ones
            n_tokens += sum(1 for j in range(pw.whisper_full_n_tokens(ctx, i))
                            if not self.eot <= pw.whisper_full_get_token_id(ctx, i, j) < self.timestamp_begin)
        return "".join(parts).strip(), n_tokens

    def _windows(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        """Batched long-form (engines/windows.py): every clip cut at pauses into <= 30 s windows, each
        decoded without timestamps by whisper_full. With k windows and t threads, min(k, t) model
        contexts run at once, t // min(k, t) threads each (whisper_full releases the GIL), so a
        decoder step too small for two threads keeps both cores busy, as ct2's pool does."""
        from concurrent.futures import ThreadPoolExecutor

        from asrperf.engines.windows import plan_windows

        plan = plan_windows(audios, sample_rate)
        k = max(1, min(len(self.pool), len(plan.pieces)))
        free = list(self.pool[:k])
        for ctx, p in free:
            p.n_threads = self.threads // k
            self.pw.whisper_reset_timings(ctx)
        self.log.take()

        def one(piece: np.ndarray) -> tuple[str, int]:
            ctx, p = free.pop()  # list.pop is atomic under the GIL: each worker owns one context
            try:
                self._set_window(p, piece, sample_rate, timestamps=False)
                return self._run(ctx, p, piece)
            finally:
                free.append((ctx, p))

        with ThreadPoolExecutor(max_workers=k) as workers:
            results = list(workers.map(one, plan.pieces))
        self._record_timings([ctx for ctx, _ in self.pool[:k]])
        self._info["longform"] = (f"batched windows (cut at pauses, <= 30 s, no timestamps); {k} whisper.cpp "
                                  f"context(s) in parallel, {self.threads // k} thread(s) each")
        self._info["windows"] = plan.describe()
        return plan.gather([t for t, _ in results], [n for _, n in results])

    def _record_timings(self, contexts: list[Any]) -> None:
        """whisper.cpp's own stage timers for the call just made, summed over `contexts` (its log, parsed)."""
        ms: dict[str, float] = {}
        runs: dict[str, int] = {}
        for ctx in contexts:
            self.log.take()
            self.pw.whisper_print_timings(ctx)
            for _, text in self.log.take():
                if m := _TIMING_RE.search(text):
                    stage, value, n = m.group(1), float(m.group(2)), m.group(3)
                    if stage in STAGES_MS:
                        ms[stage] = ms.get(stage, 0.0) + value
                        if n is not None:  # whisper.cpp prints max(1, runs): 1 run of 0 ms never ran
                            runs[stage] = runs.get(stage, 0) + (int(n) if value > 0 else 0)
                elif m := _FALLBACKS_RE.search(text):
                    self._fallbacks += int(m.group(1)) + int(m.group(2))
        if ms:
            self._timings.append(ms)
            self._runs.append(runs)

    def synchronize(self) -> None:
        """No-op: whisper_full returns when the call is done."""

    def __del__(self) -> None:
        if getattr(self, "ctx", None) is not None and not sys.is_finalizing():
            for ctx, _ in getattr(self, "pool", [(self.ctx, None)]):  # the models' memory (tests load
                self.pw.whisper_free(ctx)                              # several engines in one process)
            self.ctx, self.pool = None, []

    def loaded_weights(self) -> LoadedWeights:
        copies = f", {len(self.pool)} copies (one context per parallel window)" if len(self.pool) > 1 else ""
        return LoadedWeights(files=(self.path,) * len(self.pool),
                             note=f"whisper.cpp holds the ggml {self.ggml.wtype} weights as stored{copies}")

    def info(self) -> dict[str, Any]:
        """Provenance, plus whisper.cpp's own per-stage times (median per call) and its fallback count."""
        out = super().info()
        if self._timings:
            out["whispercpp_stage_ms"] = {s: statistics.median(t.get(s, 0.0) for t in self._timings) for s in STAGES_MS}
            out["whispercpp_stage_runs"] = {s: statistics.median(r[s] for r in self._runs) for s in self._runs[-1]}
            out["whispercpp_stage_calls"] = len(self._timings)
            out["whispercpp_stage_note"] = STAGE_NOTE
            out["whispercpp_fallbacks"] = self._fallbacks
        return out



def ggml_model_file(spec: ModelSpec, weights: str, wtype: str, cache_dir: Path) -> tuple[Path, str, str]:
    """(ggml file, "real"/"random", where the weights came from) for `spec`, converted on first use.

    `weights` "auto" takes the real checkpoint when one is found offline, else random weights.
    """
    cache_dir = Path(cache_dir)
    checkpoint = None if weights == "random" else find_checkpoint(spec, cache_dir)
    if checkpoint is None and weights == "real":
        raise ModelError(f"no local checkpoint of '{spec.name}' for engine whispercpp (it does not download); "
                         f"give a transformers Whisper directory, or use weights='random'")
    gguf_version = _version("gguf") if wtype not in ("f32", "f16") else ""
    if checkpoint is not None:
        key = checkpoint_key(checkpoint, wtype, str(CONVERTER_VERSION), gguf_version)
        build = lambda staging: _convert(*read_hf_checkpoint(checkpoint), _vocab(checkpoint), wtype,  # noqa: E731
                                         staging, str(checkpoint))
        source, weights = str(checkpoint), "real"
    else:
        if not spec.architecture:
            raise ModelError(f"'{spec.name}' has no catalog architecture, so it cannot run with random weights; "
                             f"give real weights or a catalog name")
        key = text_key(repr(sorted(spec.architecture.items())), "seed 0", wtype, str(CONVERTER_VERSION), gguf_version)
        build = lambda staging: _convert(*random_hf_state(spec.architecture, spec.name), _random_vocab(cache_dir),  # noqa: E731
                                         wtype, staging, spec.name)
        source, weights = "random init (seed 0, std 0.02), the transformers engine's", "random"
    name = f"ggml-model-{wtype}.bin"
    return build_once(cache_dir / f"ggml-{key}", name, build) / name, weights, source


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _vocab(checkpoint: Path) -> list[bytes]:
    """The byte-level BPE tokens of a checkpoint's tokenizer (tokenizer.json, else vocab.json)."""
    import json

    fast, slow = checkpoint / "tokenizer.json", checkpoint / "vocab.json"
    if fast.is_file():
        vocab = json.loads(fast.read_text(encoding="utf-8")).get("model", {}).get("vocab")
    elif slow.is_file():
        vocab = json.loads(slow.read_text(encoding="utf-8"))
    else:
        raise ModelError(f"{checkpoint}: no tokenizer.json or vocab.json; save the checkpoint with its tokenizer")
    if not isinstance(vocab, dict) or not vocab:
        raise ModelError(f"{checkpoint}: the tokenizer holds no BPE vocabulary; not a Whisper tokenizer")
    return token_bytes(vocab)


def _random_vocab(cache_dir: Path) -> list[bytes]:
    """Random weights detokenize with tiny.en's tokenizer, as in the transformers engine."""
    from asrperf.engines.ct2_import import ensure_tiny_en_hf

    return _vocab(ensure_tiny_en_hf(cache_dir))


def _convert(config: dict[str, Any], state: dict[str, np.ndarray], vocab: list[bytes], wtype: str,
             staging: Path, where: str) -> None:
    dims = openai_dims(config, where)
    write_ggml(staging / f"ggml-model-{wtype}.bin", dims, to_openai(state, dims, where), vocab, wtype)

