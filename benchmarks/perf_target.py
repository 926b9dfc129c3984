"""Issue 14's CPU race: asrperf's fastest tiny.en configurations against every peer at its best,
contract by contract, on three kinds of 60 s audio, in alternating fresh processes.

    python benchmarks/perf_target.py [--rounds 2] [--calls 7] [--clips 3] [--threads 2]
                                     [--native-whispercpp DIR] [--audio exact,continuous,real] [--quick]

whisper tiny.en, real weights (the bundled OpenAI checkpoint), batch 1, `--threads` threads for
every configuration. Each configuration (CONFIGS) declares its output contract (timestamps or
plain text), whether it segments with a VAD, the batch it runs internally, its weight type and its
settings. A configuration is timed in its own fresh process, which loads it, makes one warm-up
call, then `--calls` calls cycling over the clips of each audio kind, and transcribes every clip
once for WER. Each round runs every configuration once, in an order rotated by one per round, so
a slow spell of a shared machine hits all of them; the p50 of each round is printed.

The audio, 60 s each, all offline:
  exact       the built-in corpus (Piper TTS, Harvard sentences), clip_mode "exact": whole
              sentences, digital silence padding the end;
  continuous  the same sentences, clip_mode "continuous": run together, no padded end;
  real        a real human recording: LibriVox's "Sense and Sensibility", chapter 1 (read by a
              volunteer), the five excerpts with transcripts that Debian's `pocketsphinx-testdata`
              ships (/usr/share/pocketsphinx/test/data/librivox, 24.7 s in all, 16 kHz). No real
              recording of 60 s or more with a transcript ships in a PyPI or Debian package that we
              found, so the excerpts are run together whole, in order, and repeated to fill 60 s
              (clip_mode "continuous" over the cycled excerpts): real speech, real pauses, an exact
              reference, but a minute of it repeats the same 25 s. `apt-get install
              pocketsphinx-testdata`; without it this audio is skipped with that message.

Beside each p50: the physical floor of that configuration on this CPU, from peaks measured in this
run (measure.peak: int8 and fp32 matmul, copy bandwidth) and analytic counts (measure.flops):
  encoder  windows x GFLOPs per 30 s window / the matmul peak of its weight type
           (windows = ceil(audio / 30 s), the fewest any configuration can run)
  decoder  text tokens of its output x bytes read per token / copy bandwidth
The floor is a lower bound on the model's arithmetic and memory traffic, not a prediction.

Ratios compare a configuration only with the fastest *peer* of the same output contract (plain text
against plain text, timestamps against timestamps). Target (issue 14): asrperf's fastest <= 0.7 x
the fastest same-contract peer on each audio, WER <= the fp32 reference + 0.5 points.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
SAMPLE_RATE = 16_000
TINY = {"d_model": 384, "layers": 4, "vocab": 51864}  # whisper tiny.en


@dataclass(frozen=True)
class Config:
    """One way to transcribe, with the output contract and the settings it is compared under."""

    name: str
    side: str  # "peer" or "asrperf"
    timestamps: bool  # the output contract for audio over 30 s: segment timestamps, or plain text
    vad: bool  # segments the audio with a VAD model before decoding
    batch: int  # windows or segments encoded and decoded together inside the library
    weights: str  # stored weight type: "int8", "fp32", "f16", "q8_0"
    kind: str  # how the child process builds it (see _build)
    setting: str  # the declared settings, as printed
    options: dict = field(default_factory=dict)

    @property
    def contract(self) -> str:
        return "timestamps" if self.timestamps else "text"


GREEDY = "beam 1, temperature 0, no fallback, no conditioning on previous text"
CONFIGS = [
    Config("faster-whisper transcribe int8, timestamps", "peer", True, False, 1, "int8", "fw",
           f"WhisperModel.transcribe, {GREEDY}", {"without_timestamps": False}),
    Config("faster-whisper transcribe int8, text", "peer", False, False, 1, "int8", "fw",
           f"WhisperModel.transcribe without_timestamps=True, {GREEDY}", {"without_timestamps": True}),
    Config("faster-whisper batched int8, VAD", "peer", False, True, 8, "int8", "fw-batched",
           "BatchedInferencePipeline batch 8, Silero VAD segments merged to <= 30 s, beam 1", {"vad": True}),
    Config("faster-whisper batched int8, no VAD", "peer", False, False, 8, "int8", "fw-batched",
           "BatchedInferencePipeline batch 8, fixed 30 s chunks (clip_timestamps), beam 1", {"vad": False}),
    Config("whisper.cpp wheel q8_0, timestamps", "peer", True, False, 1, "q8_0", "pywhispercpp",
           "pywhispercpp Model (PyPI wheel), greedy, temperature_inc 0, no_context", {"no_timestamps": False}),
    Config("whisper.cpp wheel q8_0, text", "peer", False, False, 1, "q8_0", "pywhispercpp",
           "pywhispercpp Model (PyPI wheel), greedy, temperature_inc 0, no_context, no_timestamps",
           {"no_timestamps": True}),
    Config("transformers pipeline fp32, timestamps", "peer", True, False, 1, "fp32", "hf-pipeline",
           "pipeline('automatic-speech-recognition'), sequential long-form, return_timestamps=True, greedy",
           {"return_timestamps": True}),
    Config("transformers pipeline fp32, chunked b2", "peer", False, False, 2, "fp32", "hf-pipeline",
           "the same pipeline, chunk_length_s=30 batch_size=2 (its batched long-form), greedy",
           {"chunk_length_s": 30, "batch_size": 2}),
    Config("openai-whisper fp32, timestamps (reference)", "peer", True, False, 1, "fp32", "asrperf",
           "OpenAI's whisper.transcribe, temperature 0, no fallback, condition_on_previous_text=False",
           {"engine": "openai-whisper", "dtype": "fp32"}),
    Config("asrperf ct2 int8_float32 + longform=batched", "asrperf", False, False, 8, "int8", "asrperf",
           "windows cut at pauses, encoded together, decoded one core each; no timestamps",
           {"engine": "ct2", "dtype": "int8_float32", "longform": "batched"}),
    Config("asrperf transformers fp32+int8_dynamic + longform=batched", "asrperf", False, False, 8, "int8", "asrperf",
           "windows cut at pauses, one generate() batch; no timestamps",
           {"engine": "transformers", "dtype": "fp32", "quant": "int8_dynamic", "longform": "batched"}),
    Config("asrperf whispercpp q8_0 + longform=batched", "asrperf", False, False, 2, "q8_0", "asrperf",
           "windows cut at pauses, one whisper.cpp context per thread in parallel; no timestamps",
           {"engine": "whispercpp", "dtype": "q8_0", "longform": "batched"}),
    Config("asrperf ct2 int8_float32 (sequential)", "asrperf", True, False, 1, "int8", "asrperf",
           "OpenAI's sequential long-form, timestamps", {"engine": "ct2", "dtype": "int8_float32"}),
    Config("asrperf whispercpp q8_0 (sequential)", "asrperf", True, False, 1, "q8_0", "asrperf",
           "whisper.cpp's sequential long-form, timestamps", {"engine": "whispercpp", "dtype": "q8_0"}),
    Config("asrperf whispercpp q5_1 (sequential)", "asrperf", True, False, 1, "q5_1", "asrperf",
           "whisper.cpp's sequential long-form, timestamps", {"engine": "whispercpp", "dtype": "q5_1"}),
]
# stored weight bytes per weight, and the matmul peak its GEMMs run at
WEIGHT_BYTES = {"int8": 1.0, "fp32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32}
PEAK_KIND = {"int8": "int8", "q8_0": "int8", "q5_1": "int8", "fp32": "fp32", "f16": "fp32"}
# bytes per cached cross-attention key/value: whisper.cpp keeps them in f16, the others in fp32
def cache_bytes(config: Config) -> float:
    return 2.0 if config.kind == "pywhispercpp" or config.options.get("engine") == "whispercpp" else 4.0


def native_configs(native_dir: str) -> list[Config]:
    """whisper.cpp from a native build (pywhispercpp built from its sdist, GGML_NATIVE=ON) in `native_dir`."""
    out = []
    for c in CONFIGS:
        if c.kind == "pywhispercpp":
            out.append(dataclasses.replace(c, name=c.name.replace("wheel", "native"),
                                           setting=c.setting.replace("PyPI wheel", f"native build in {native_dir}"),
                                           options={**c.options, "native_dir": native_dir}))
    return out


# -- the child process: one configuration, every audio kind ----------------------------------------
def _build(config: Config, cache_dir: str, threads: int):
    """A function audio -> text for `config`, built as its library's users build it."""
    o = config.options
    if config.kind in ("fw", "fw-batched"):
        import faster_whisper as fw

        from asrperf.engines.ct2_import import bundled_tiny_en_dir

        model = fw.WhisperModel(str(bundled_tiny_en_dir()), device="cpu", compute_type="int8", cpu_threads=threads)
        greedy = {"beam_size": 1, "temperature": 0.0, "condition_on_previous_text": False, "language": "en"}
        if config.kind == "fw":
            return lambda audio: " ".join(s.text for s in model.transcribe(audio, without_timestamps=o["without_timestamps"],
                                                                           **greedy)[0])
        pipe = fw.BatchedInferencePipeline(model)

        def batched(audio):
            chunks = None if o["vad"] else [{"start": s / SAMPLE_RATE, "end": min(s + 30 * SAMPLE_RATE, len(audio)) / SAMPLE_RATE}
                                            for s in range(0, len(audio), 30 * SAMPLE_RATE)]
            return " ".join(s.text for s in pipe.transcribe(audio, batch_size=config.batch, vad_filter=o["vad"],
                                                            clip_timestamps=chunks, beam_size=1, language="en")[0])
        return batched
    if config.kind == "pywhispercpp":
        if o.get("native_dir"):
            sys.path.insert(0, o["native_dir"])  # this process only: the native build shadows the wheel
        from pywhispercpp.model import Model

        from asrperf.engines.catalog import resolve
        from asrperf.engines.whispercpp import ggml_model_file

        # the ggml file asrperf converts (whisper.cpp's own converter needs the Hub and the openai repo)
        ggml, _, _ = ggml_model_file(resolve("whisper-tiny.en"), "real", config.weights, Path(cache_dir))
        model = Model(str(ggml), n_threads=threads, redirect_whispercpp_logs_to=None, print_progress=False,
                      temperature_inc=0.0, no_context=True, language="en", no_timestamps=o["no_timestamps"],
                      greedy={"best_of": 1})
        return lambda audio: " ".join(s.text for s in model.transcribe(audio))
    if config.kind == "hf-pipeline":
        import torch
        from transformers import pipeline

        from asrperf.engines.ct2_import import ensure_tiny_en_hf

        torch.set_num_threads(threads)
        pipe = pipeline("automatic-speech-recognition", model=str(ensure_tiny_en_hf(Path(cache_dir))), device="cpu",
                        dtype=torch.float32)
        return lambda audio: pipe({"raw": audio, "sampling_rate": SAMPLE_RATE}, **o)["text"]
    # asrperf's own engine (openai-whisper runs through it too: it is OpenAI's transcribe, nothing added)
    from asrperf.config import ModelConfig
    from asrperf.engines.catalog import resolve
    from asrperf.engines.registry import create
    from asrperf.run.worker import set_threads

    set_threads(threads)  # as an asrperf cell does: engines size their pools by OMP_NUM_THREADS
    model = ModelConfig(name="whisper-tiny.en", weights="real", **o)
    engine = create(model.engine, cache_dir)
    engine.load(dataclasses.replace(resolve(model.name), options=model.options), model.weights, model.dtype, "cpu")
    return lambda audio: engine.transcribe([audio], SAMPLE_RATE).texts[0]


def child_main(config: Config, cache_dir: str, clip_keys: dict[str, str], n_clips: int, calls: int, warmup: int,
               threads: int) -> None:
    """In a fresh process: load once, then per audio kind warm up, time `calls` calls; print JSON."""
    from asrperf.data.clips import ClipCache

    t0 = time.perf_counter()
    fn = _build(config, cache_dir, threads)
    out = {"load_s": time.perf_counter() - t0, "audio": {}}
    for kind, key in clip_keys.items():
        clips = ClipCache(cache_dir).load(key, n_clips)
        for i in range(warmup):
            fn(clips[i % len(clips)].audio)
        times, texts = [], {}
        for i in range(calls):
            clip = clips[(i + warmup) % len(clips)]
            t = time.perf_counter()
            text = fn(clip.audio)
            times.append(time.perf_counter() - t)
            texts[clip.id] = text
        for clip in clips:  # every clip scored, even if `calls` < clips
            texts.setdefault(clip.id, fn(clip.audio))
        out["audio"][kind] = {"times": times, "hyps": [texts[c.id] for c in clips], "refs": [c.text for c in clips],
                              "audio_s": clips[0].audio_s}
    print(json.dumps(out))


# -- the audio --------------------------------------------------------------------------------------
def prepare_audio(kinds: list[str], length_s: float, n_clips: int, cache_dir: str, n_sentences: int) -> dict[str, str]:
    """Clip-cache keys of each available audio kind (built once; the real recording needs its package)."""
    from asrperf.config import config_from_dict
    from asrperf.data.clips import ClipCache, build_continuous
    from asrperf.run.runner import prepare

    keys = {}
    for kind in kinds:
        if kind in ("exact", "continuous"):
            cfg = config_from_dict({"run": {"clip_lengths_s": [length_s], "n_clips": n_clips, "clip_mode": kind,
                                            "cache_dir": cache_dir}, "models": ["whisper-tiny.en"],
                                    "source": {"kind": "builtin", "n_sentences": n_sentences}}, "perf_target")
            keys[kind] = prepare(cfg)[float(length_s)]
            continue
        utterances = librivox_utterances()
        if utterances is None:
            print(f"audio 'real' skipped: {LIBRIVOX_DIR} not found; apt-get install pocketsphinx-testdata",
                  file=sys.stderr)
            continue
        cache = ClipCache(cache_dir)
        key = cache.key("pocketsphinx-testdata:librivox", length_s, "continuous-cycled", SAMPLE_RATE)
        if cache.load(key, n_clips) is None:
            # clip i starts at excerpt i: distinct clips of the same repeated passage
            clips = [build_continuous(itertools.islice(itertools.cycle(utterances), i, None), length_s, 1, SAMPLE_RATE)[0]
                     for i in range(n_clips)]
            clips = [dataclasses.replace(c, id=f"{length_s:g}s-{i:03d}") for i, c in enumerate(clips)]
            cache.save(key, clips, {"kind": "pocketsphinx-testdata librivox", "dir": str(LIBRIVOX_DIR)})
        keys[kind] = key
    return keys


def librivox_utterances():
    """The five LibriVox excerpts and their transcripts, in file order; None when not installed."""
    import re

    import soundfile as sf

    from asrperf.data.audio import Utterance

    listing = LIBRIVOX_DIR / "transcription"
    if not listing.is_file():
        return None
    out = []
    for line in listing.read_text().splitlines():
        m = re.fullmatch(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line.strip())
        if not m:
            continue
        audio, rate = sf.read(str(LIBRIVOX_DIR / f"{m.group(2)}.wav"), dtype="float32")
        if rate != SAMPLE_RATE:
            raise SystemExit(f"{m.group(2)}.wav is {rate} Hz; expected {SAMPLE_RATE}")
        out.append(Utterance(m.group(2), audio, rate, m.group(1)))
    return out


# -- floors -------------------------------------------------------------------------------------------
def measure_peaks(threads: int) -> dict[str, float]:
    from asrperf.measure.peak import measure_peak
    from asrperf.run.worker import set_threads

    set_threads(threads)
    fp32, int8 = measure_peak("cpu", "fp32"), measure_peak("cpu", "int8")
    return {"fp32": fp32.matmul_flops_per_s, "int8": int8.matmul_flops_per_s,
            "bandwidth": max(fp32.copy_bytes_per_s, int8.copy_bytes_per_s)}


def floor_s(config: Config, audio_s: float, tokens: float, peaks: dict[str, float]) -> tuple[float, int]:
    """(floor seconds for one clip, windows) of `config`: see the module docstring."""
    from asrperf.measure.flops import analytic_whisper_decoder_token_bytes, analytic_whisper_encoder_flops

    windows = math.ceil(audio_s / 30)
    encoder = windows * analytic_whisper_encoder_flops(TINY["d_model"], TINY["layers"]) / peaks[PEAK_KIND[config.weights]]
    per_token = analytic_whisper_decoder_token_bytes(TINY["d_model"], TINY["layers"], WEIGHT_BYTES[config.weights],
                                                     cache_bytes(config), vocab=TINY["vocab"])
    return encoder + tokens * per_token / peaks["bandwidth"], windows


# -- the run --------------------------------------------------------------------------------------------
def run_child(a: argparse.Namespace, config: Config, keys: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(config)), "--clip-keys", json.dumps(keys),
           "--cache-dir", a.cache_dir, "--clips", str(a.clips), "--calls", str(a.calls), "--warmup", str(a.warmup),
           "--threads", str(a.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(configs: list[Config], results: dict[str, list[dict]], kinds: list[str], peaks: dict[str, float],
           rounds: int) -> None:
    from transformers import WhisperTokenizerFast

    from asrperf.engines.ct2_import import bundled_tiny_en_dir
    from asrperf.measure.wer import error_rates

    tok = WhisperTokenizerFast.from_pretrained(str(bundled_tiny_en_dir()))
    print(f"\npeaks measured in this run ({peaks_line(peaks)})")
    for kind in kinds:
        rows = []
        for c in configs:
            runs = [r["audio"][kind] for r in results[c.name] if "audio" in r and kind in r["audio"]]
            if not runs:
                err = next((r["error"] for r in results[c.name] if "error" in r), "not measured")
                rows.append((c, None, None, None, None, err))
                continue
            p50s = [statistics.median(r["times"]) for r in runs]
            wer = error_rates(runs[0]["refs"], runs[0]["hyps"]).wer
            tokens = statistics.mean(len(tok(h, add_special_tokens=False).input_ids) for h in runs[0]["hyps"])
            fl, windows = floor_s(c, runs[0]["audio_s"], tokens, peaks)
            rows.append((c, p50s, wer, fl, windows, ""))
        print(f"\n### audio: {kind} ({results_audio_s(results, kind):g} s clips), {rounds} round(s)\n")
        print("| configuration | side | output | VAD | batch | p50 ms per round | WER % | floor ms (windows) "
              "| p50 / floor | p50 / fastest same-contract peer |\n|---|---|---|---|---|---|---|---|---|---|")
        best = {}
        for c, p50s, *_ in rows:
            if p50s and c.side == "peer":
                best[c.contract] = min(best.get(c.contract, math.inf), statistics.median(p50s))
        for c, p50s, wer, fl, windows, err in rows:
            if p50s is None:
                print(f"| {c.name} | {c.side} | {c.contract} | {'yes' if c.vad else 'no'} | {c.batch} | failed: {err} | | | | |")
                continue
            p50 = statistics.median(p50s)
            ratio = f"{p50 / best[c.contract]:.2f}" if c.contract in best else "—"
            print(f"| {c.name} | {c.side} | {c.contract} | {'yes' if c.vad else 'no'} | {c.batch} | "
                  f"{' / '.join(f'{1000 * p:,.0f}' for p in p50s)} | {100 * wer:.2f} | {1000 * fl:,.0f} ({windows}) | "
                  f"{p50 / fl:.1f} | {ratio} |")
    print("\nsettings per configuration:")
    for c in configs:
        print(f"- {c.name}: {c.setting}; weights {c.weights}")


def peaks_line(peaks: dict[str, float]) -> str:
    return (f"fp32 matmul {peaks['fp32'] / 1e9:,.0f} GFLOP/s, int8 matmul {peaks['int8'] / 1e9:,.0f} GOP/s, "
            f"copy {peaks['bandwidth'] / 1e9:,.1f} GB/s")


def results_audio_s(results: dict[str, list[dict]], kind: str) -> float:
    for runs in results.values():
        for r in runs:
            if kind in r.get("audio", {}):
                return r["audio"][kind]["audio_s"]
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--length", type=float, default=60.0, help="clip length, seconds")
    ap.add_argument("--audio", default="exact,continuous,real")
    ap.add_argument("--sentences", type=int, default=120, help="built-in corpus size (120: ~4 min of speech)")
    ap.add_argument("--only", action="append", default=[],
                    help="run only the configurations whose name contains this (repeatable)")
    ap.add_argument("--native-whispercpp", default="", help="a directory holding a native pywhispercpp build "
                    "(pip install --target DIR the wheel built from its sdist with GGML_NATIVE=ON)")
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--quick", action="store_true", help="a 5 s clip of a 30-sentence corpus, 1 call, no warm-up, 1 round: "
                    "proves every configuration runs; its numbers mean nothing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--clip-keys", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child_main(Config(**json.loads(a.child)), a.cache_dir, json.loads(a.clip_keys), a.clips, a.calls,
                          a.warmup, a.threads)
    if a.quick:
        a.length, a.clips, a.calls, a.warmup, a.rounds, a.sentences = 5.0, 1, 1, 0, 1, 30
    configs = CONFIGS + (native_configs(a.native_whispercpp) if a.native_whispercpp else [])
    if a.only:
        configs = [c for c in configs if any(s in c.name for s in a.only)]
    kinds = [k for k in a.audio.split(",") if k]
    keys = prepare_audio(kinds, a.length, a.clips, a.cache_dir, a.sentences)
    peaks = measure_peaks(a.threads)
    print(f"{len(configs)} configurations x {len(keys)} audio kinds, {a.rounds} round(s), {a.warmup} warm-up + "
          f"{a.calls} calls, {a.threads} threads; {peaks_line(peaks)}", file=sys.stderr, flush=True)
    results: dict[str, list[dict]] = {c.name: [] for c in configs}
    for r in range(a.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for c in order:
            res = run_child(a, c, keys)
            results[c.name].append(res)
            line = res.get("error") or ", ".join(f"{k} p50 {1000 * statistics.median(v['times']):,.0f} ms"
                                                 for k, v in res["audio"].items())
            print(f"round {r + 1}: {c.name}: {line}", file=sys.stderr, flush=True)
    report(configs, results, list(keys), peaks, a.rounds)


if __name__ == "__main__":
    main()
