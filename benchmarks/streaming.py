"""Streaming ASR: the issue's performance targets and the chunk-size trade-off.

    python benchmarks/streaming.py [--engines ct2:int8,transformers:fp32] [--length 15] [--n-clips 4]
                                   [--chunks 160,320,500,1000,2000] [--device cpu] [--store S] [--out summary.md]
                                   [--endpoint vad|none] [--endpoint-silence-ms 100] [--no-capacity]
                                   [--encoder-window full|buffer] [--trim-s 15] [--folder DIR]
                                   [--max-finalization-p90-s 3]
                                   [--targets-only] [--smoke]

1. Targets, whisper tiny.en with real weights on the built-in corpus, 1000 ms chunks, every engine
   in --engines (simulated clock, then the real-time capacity search with threads sharing the
   engine): the fastest engine (lowest p90 finalization among those that keep up) must reach
   p90 finalization <= 1.5 s, streamed WER within 2 points of offline, and >= 3 concurrent
   real-time streams with < 1% of chunks past their deadline.
2. Chunk-size trade-off (capacity off): tiny.en on that fastest engine, and wav2vec2-base and
   Parakeet CTC 0.6B with random weights (chunked CTC: latency and compute only, no WER), at every
   --chunks size.
Every figure is printed next to ufal/whisper_streaming's published one (3.3 s average latency on
unsegmented long-form speech, large-v2 on an NVIDIA A40; Macháček et al. 2023). The rows go to
--store, so `asrperf report --store S --html r.html` draws the streaming plots from them.

LocalAgreement runs with the [streaming] default endpoint (none: pure LocalAgreement-2) unless
--endpoint vad asks for the silero VAD endpoint (commit at the end of speech); the rows record which. --no-capacity skips
the capacity search (the streams target is then unchecked), --targets-only the trade-off.
--encoder-window buffer has Whisper's encoder read the buffer plus 1 s instead of 30 s (engine ct2);
--folder DIR streams a folder of audio files with same-name .txt transcripts instead of the
built-in corpus (audio the settings were not tuned on).

--smoke runs a tiny version (5 s clips, 1 clip, two chunk sizes, max 2 streams, ct2 and random
wav2vec2-base only) to check that the script works; its numbers mean nothing. Do not record
numbers from a machine that other work is loading.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from asrperf.config import ENCODER_WINDOWS, STREAM_ENDPOINTS, StreamingConfig, config_from_dict
from asrperf.results.store import Store
from asrperf.run.runner import run as run_cells

MODEL = "whisper-tiny.en"
RANDOM_CTC = ("wav2vec2-base", "parakeet-ctc-0.6b")
P90_FINALIZATION_TARGET_S = 1.5
WER_DELTA_TARGET = 0.02
STREAMS_TARGET = 3
WHISPER_STREAMING = "whisper_streaming: 3.3 s average latency (large-v2, NVIDIA A40, unsegmented long-form speech)"


def _run(models: list[dict[str, Any]], chunks: list[int], streaming: dict[str, Any], args: argparse.Namespace,
         what: str) -> list[dict[str, Any]]:
    cfg = config_from_dict({
        "run": {"clip_lengths_s": [args.length], "n_clips": args.n_clips, "scenarios": ["streaming"],
                "chunk_ms": chunks, "store": args.store, "cache_dir": args.cache_dir, "energy": False,
                "devices": [args.device], **({"min_speech_share": args.min_speech_share} if args.folder else {})},
        "source": {"kind": "folder", "path": str(args.folder)} if args.folder else {"kind": "builtin"},
        "streaming": streaming, "models": models,
    }, f"benchmarks/streaming.py ({what})")
    summary = run_cells(cfg, on_cell=lambda cell, state, i, n: print(
        f"{what} {i + 1}/{n} {cell.model.name} {cell.model.engine} {cell.chunk_ms} ms: {state}", file=sys.stderr))
    with Store(args.store) as store:
        return store.rows(summary.run_id)


def _ms(s: float | None) -> str:
    return "—" if s is None else f"{1000 * s:,.0f}"


def _pts(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.2f}"


def _line(r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"| {r['model']} | {r['engine']} {r['dtype']} | {r.get('chunk_ms')} | failed: {r.get('error')} |" + " |" * 8
    streams = "—" if r.get("capacity_streams") is None else str(r["capacity_streams"])
    wer = "—" if r.get("wer") is None else f"{100 * r['wer']:.1f}"
    return (f"| {r['model']} ({r.get('weights')}) | {r['engine']} {r['dtype']} | {r['chunk_ms']} | "
            f"{_ms(r.get('first_partial_s_p50'))} | {_ms(r.get('finalization_s_p50'))} | "
            f"{_ms(r.get('finalization_s_p90'))} | {_ms(r.get('emission_delay_s_p50'))} | "
            f"{r.get('chunk_rtf_p50') or 0:.2f} | {100 * (r.get('deadline_miss_share') or 0):.1f} | {wer} | "
            f"{_pts(r.get('stream_wer_delta'))} | {streams} |")


HEADER = ("| model | engine | chunk ms | first partial ms p50 | finalization ms p50 | p90 | emission delay ms p50 | "
          "chunk RTF p50 | chunks late % | streamed WER % | ΔWER pts | max streams |\n|" + "---|" * 12)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok" and r.get("finalization_s_p90") is not None]
    up = [r for r in ok if r.get("keeps_up")] or ok
    if not up:
        return ["no engine produced a finalization latency: see the failed rows above"]
    best = min(up, key=lambda r: r["finalization_s_p90"])
    delta, streams = best.get("stream_wer_delta"), best.get("capacity_streams")
    checks = [
        (f"p90 finalization {_ms(best['finalization_s_p90'])} ms <= {_ms(P90_FINALIZATION_TARGET_S)} ms",
         best["finalization_s_p90"] <= P90_FINALIZATION_TARGET_S),
        (f"streamed WER within {100 * WER_DELTA_TARGET:g} points of offline: {_pts(delta)} "
         f"[{_pts(best.get('stream_wer_delta_ci_low'))}, {_pts(best.get('stream_wer_delta_ci_high'))}]",
         delta is not None and abs(delta) <= WER_DELTA_TARGET),
        (f">= {STREAMS_TARGET} concurrent real-time streams with < 1% of chunks late: {streams} "
         f"({best.get('capacity_stop_reason') or best.get('capacity_missing_reason')})",
         streams is not None and streams >= STREAMS_TARGET),
    ]
    out = [f"fastest engine: {best['engine']} {best['dtype']} ({best.get('stream_policy_label')})"]
    out += [f"- [{'x' if ok_ else ' '}] {text}" for text, ok_ in checks]
    out.append(f"- beside {WHISPER_STREAMING}: word emission delay here p50 {_ms(best.get('emission_delay_s_p50'))} ms, "
               f"finalization mean {_ms(best.get('finalization_s_mean'))} ms (tiny.en on CPU, short Harvard sentences)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="ct2:int8,transformers:fp32", help="engine:dtype list for tiny.en")
    p.add_argument("--length", type=float, default=15.0, help="clip length, s")
    p.add_argument("--n-clips", type=int, default=4)
    p.add_argument("--chunks", default="160,320,500,1000,2000", help="chunk sizes for the trade-off, ms")
    p.add_argument("--max-streams", type=int, default=16)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--store", default="asrperf-results/streaming.sqlite")
    p.add_argument("--cache-dir", default=".asrperf-cache")
    p.add_argument("--out", type=Path, default=None, help="also write the summary (markdown) here")
    p.add_argument("--endpoint", choices=STREAM_ENDPOINTS, default=StreamingConfig.endpoint,
                   help="LocalAgreement's endpoint: vad (silero, commit at the end of speech) or none")
    p.add_argument("--endpoint-silence-ms", type=int, default=StreamingConfig.endpoint_silence_ms,
                   help="the pause that ends speech, ms")
    p.add_argument("--encoder-window", choices=ENCODER_WINDOWS, default=StreamingConfig.encoder_window,
                   help="LocalAgreement's encoder window: full (Whisper's 30 s) or buffer (the buffer + 1 s; ct2)")
    p.add_argument("--trim-s", type=float, default=StreamingConfig.trim_s,
                   help="LocalAgreement trims its buffer at a committed sentence end once longer than this, s")
    p.add_argument("--max-finalization-p90-s", type=float, default=StreamingConfig.max_finalization_p90_s,
                   help="the capacity search's bound on p90 finalization, s (beside < 1%% of chunks late)")
    p.add_argument("--folder", type=Path, default=None, help="stream this folder (audio + same-name .txt)")
    p.add_argument("--min-speech-share", type=float, default=0.8,
                   help="with --folder: the least share of speech in a clip ([run] min_speech_share)")
    p.add_argument("--no-capacity", action="store_true", help="skip the real-time capacity search")
    p.add_argument("--targets-only", action="store_true", help="skip the chunk-size trade-off")
    p.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works (numbers mean nothing)")
    args = p.parse_args(argv)
    endpoint = {"endpoint": args.endpoint, "endpoint_silence_ms": args.endpoint_silence_ms,
                "encoder_window": args.encoder_window, "trim_s": args.trim_s}
    engines = [tuple(e.split(":")) for e in args.engines.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    if args.smoke:
        args.length, args.n_clips, args.max_streams = 5.0, 1, 2
        engines, chunks = [("ct2", "int8")], [500, 1000]
    tiny = [{"name": MODEL, "engine": e, "dtype": d, "weights": "real"} for e, d in engines]
    target_rows = _run(tiny, [1000], {"max_streams": args.max_streams, "capacity": not args.no_capacity,
                                      "max_finalization_p90_s": args.max_finalization_p90_s, **endpoint},
                       args, "targets")
    lines = ["## Streaming targets (tiny.en, real weights, 1000 ms chunks)", "", HEADER,
             *[_line(r) for r in target_rows], "", *targets(target_rows), ""]
    ok = [r for r in target_rows if r.get("status") == "ok" and r.get("finalization_s_p90") is not None]
    fastest = min(ok, key=lambda r: r["finalization_s_p90"]) if ok else None
    trade_rows: list[dict[str, Any]] = []
    if not args.targets_only:
        trade = [{"name": m, "weights": "random"} for m in (RANDOM_CTC[:1] if args.smoke else RANDOM_CTC)]
        if fastest is not None:
            trade.insert(0, {"name": MODEL, "engine": fastest["engine"], "dtype": fastest["dtype"], "weights": "real"})
        trade_rows = _run(trade, chunks, {"capacity": False, **endpoint}, args, "trade-off")
        lines += ["## Chunk-size trade-off", "", HEADER, *[_line(r) for r in trade_rows], "",
                  f"reference: {WHISPER_STREAMING}", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(r.get("status") == "ok" for r in target_rows + trade_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
