"""Issue 5's CPU target: asrperf's fastest configuration vs the peers people deploy, side by side.

    python benchmarks/perf_target.py [--clips 3] [--calls 6] [--threads 2] [--store PATH] [--no-compile]

whisper tiny.en, real weights, 60 s clips of the built-in corpus (real TTS speech), batch 1, on this CPU.
Peers, each timed in its own fresh process on the same clips, one warm-up call then `calls` calls
cycling over the clips, with the same thread count:
  - faster-whisper `WhisperModel.transcribe`, int8, beam_size=1 (greedy), other settings default;
  - faster-whisper `BatchedInferencePipeline.transcribe`, int8, beam_size=1, batch_size 8 (its default VAD on);
  - transformers `pipeline("automatic-speech-recognition")`, fp32, sequential long-form (return_timestamps=True);
  - the same pipeline chunked (chunk_length_s=30, batch_size=2), the pipeline's batched long-form.
Then `asrperf optimize whisper-tiny.en` on the same clips (WER budget +1 point, the target's bound).
Target: asrperf's fastest p50 <= 0.7 x the best peer's p50, WER <= fp32 reference + 1 point.
Last, the winner and the best peer are timed again in alternating fresh processes (`--rounds`),
through one identical loop (the engine call alone for asrperf), and the ratio is given per round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time

from asrperf.config import config_from_dict
from asrperf.measure.wer import error_rates
from asrperf.run.runner import prepare

PEERS = ("faster-whisper transcribe int8", "faster-whisper batched int8", "transformers pipeline fp32",
         "transformers pipeline fp32 chunked b2")


def _peer_fn(name: str, cache_dir: str, threads: int):
    from pathlib import Path

    if name.startswith("{"):  # asrperf's winner, as a [[models]] entry: its engine call, nothing around it
        from asrperf.config import ModelConfig
        from asrperf.engines.catalog import resolve
        from asrperf.engines.registry import create
        from asrperf.run.worker import set_threads

        set_threads(threads)  # as an asrperf cell does: engines size their pools by OMP_NUM_THREADS
        model = ModelConfig(**json.loads(name))
        engine = create(model.engine, cache_dir)
        engine.load(dataclasses.replace(resolve(model.name), options=model.options), model.weights, model.dtype, "cpu")
        return lambda audio: engine.transcribe([audio], 16000).texts[0]
    if name.startswith("faster-whisper"):
        import faster_whisper as fw

        from asrperf.engines.ct2_import import bundled_tiny_en_dir

        model = fw.WhisperModel(str(bundled_tiny_en_dir()), device="cpu", compute_type="int8", cpu_threads=threads)
        if "batched" in name:
            pipe = fw.BatchedInferencePipeline(model)
            return lambda audio: " ".join(s.text for s in pipe.transcribe(audio, beam_size=1, batch_size=8)[0])
        return lambda audio: " ".join(s.text for s in model.transcribe(audio, beam_size=1)[0])
    import torch
    from transformers import pipeline

    from asrperf.engines.ct2_import import ensure_tiny_en_hf

    torch.set_num_threads(threads)
    pipe = pipeline("automatic-speech-recognition", model=str(ensure_tiny_en_hf(Path(cache_dir))), device="cpu",
                    dtype=torch.float32)
    kwargs = {"chunk_length_s": 30, "batch_size": 2} if "chunked" in name else {"return_timestamps": True}
    return lambda audio: pipe({"raw": audio, "sampling_rate": 16000}, **kwargs)["text"]


def peer_main(name: str, cache_dir: str, clip_key: str, n_clips: int, calls: int, threads: int) -> None:
    """In a fresh process: load, warm up once, time `calls` calls; print JSON."""
    from asrperf.data.clips import ClipCache

    clips = ClipCache(cache_dir).load(clip_key, n_clips)
    fn = _peer_fn(name, cache_dir, threads)
    fn(clips[0].audio)
    times, texts = [], {}
    for i in range(calls):
        clip = clips[(i + 1) % len(clips)]
        t = time.perf_counter()
        text = fn(clip.audio)
        times.append(time.perf_counter() - t)
        texts[clip.id] = text
    for clip in clips:  # every clip scored, even if `calls` < clips
        texts.setdefault(clip.id, fn(clip.audio))
    print(json.dumps({"times": times, "hyps": [texts[c.id] for c in clips], "refs": [c.text for c in clips]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", default="asrperf-results/perf_target.sqlite")
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds of the winner against the best peer")
    ap.add_argument("--paired-only", help=argparse.SUPPRESS)  # a [[models]] JSON: skip the search, pair it
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--clip-key", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer:
        return peer_main(a.peer, a.cache_dir, a.clip_key, a.clips, a.calls, a.threads)
    cfg = config_from_dict({
        "run": {"clip_lengths_s": [60], "n_clips": a.clips, "threads": [a.threads], "store": a.store,
                "cache_dir": a.cache_dir},
        "timing": {"min_calls": a.calls, "min_time_s": 1.0, "max_calls": a.calls},
        "models": [{"name": "whisper-tiny.en", "weights": "real"}],
    }, "perf_target")
    key = prepare(cfg)[60.0]
    if a.paired_only:
        from asrperf.config import ModelConfig

        return _paired(a, key, "faster-whisper batched int8", ModelConfig(**json.loads(a.paired_only)))
    rows = []
    for name in PEERS:
        try:
            r = _run_peer(a, key, name)
        except subprocess.CalledProcessError as exc:
            print(f"{name}: failed: {exc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        wer = error_rates(r["refs"], r["hyps"]).wer
        rows.append((name, statistics.median(r["times"]), max(r["times"]), wer))
        print(f"{name}: p50 {1000 * rows[-1][1]:,.0f} ms, WER {100 * wer:.2f}%", file=sys.stderr, flush=True)
    from asrperf.run.optimize import optimize, trial_label

    res = optimize("whisper-tiny.en", cfg, clip_length_s=60, wer_budget=0.01, compile=not a.no_compile,
                   on_cell=lambda c, s, i, n: print(f"asrperf cell {i + 1}/{n}: {s}", file=sys.stderr, flush=True))
    best_peer = min(rows, key=lambda r: r[1])
    print("\n| configuration | p50 ms | max ms | RTFx | WER % | p50 / best peer |\n|---|---|---|---|---|---|")
    for name, p50, worst, wer in rows:
        print(f"| peer: {name} | {1000 * p50:,.0f} | {1000 * worst:,.0f} | {60 / p50:.1f} | {100 * wer:.2f} "
              f"| {p50 / best_peer[1]:.2f} |")
    for t in res.trials:
        if t.verdict == "failed":
            print(f"| asrperf: {trial_label(t.model)} | failed: {t.row.get('error')} | | | | |")
            continue
        r = t.row
        mark = " **chosen**" if t is res.winner else ""
        print(f"| asrperf: {trial_label(t.model)}{mark} ({t.verdict}) | {1000 * r['latency_s_p50']:,.0f} | "
              f"{1000 * r['latency_s_max']:,.0f} | {r['rtfx']:.1f} | {100 * r['wer']:.2f} | "
              f"{r['latency_s_p50'] / best_peer[1]:.2f} |")
    if res.winner:
        ratio = res.winner.row["latency_s_p50"] / best_peer[1]
        print(f"\ntarget <= 0.70 x best peer ({best_peer[0]}): measured {ratio:.2f} -> "
              f"{'met' if ratio <= 0.7 else 'NOT met'}; run {res.run_id} in {res.store}")
        _paired(a, key, best_peer[0], res.winner.model)


def _run_peer(a: argparse.Namespace, key: str, name: str) -> dict:
    """`peer_main` in a fresh process: its per-call times, hypotheses and references."""
    out = subprocess.run([sys.executable, __file__, "--peer", name, "--cache-dir", a.cache_dir, "--clip-key", key,
                          "--clips", str(a.clips), "--calls", str(a.calls), "--threads", str(a.threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _paired(a: argparse.Namespace, key: str, peer: str, winner) -> None:
    """The two finalists again, alternating in fresh processes under one identical loop, so slow
    spells of a shared machine hit both: the ratio per round is the figure that holds."""
    spec = json.dumps(dataclasses.asdict(dataclasses.replace(winner, label="")))
    print(f"\npaired rounds, fresh process each, {a.calls} calls: winner {winner.engine} {winner.variant} vs {peer}")
    print("| round | asrperf winner p50 ms | peer p50 ms | ratio |\n|---|---|---|---|")
    ratios = []
    for i in range(a.rounds):
        mine = statistics.median(_run_peer(a, key, spec)["times"])
        theirs = statistics.median(_run_peer(a, key, peer)["times"])
        ratios.append(mine / theirs)
        print(f"| {i + 1} | {1000 * mine:,.0f} | {1000 * theirs:,.0f} | {ratios[-1]:.2f} |", flush=True)
    print(f"median ratio over {a.rounds} rounds: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
