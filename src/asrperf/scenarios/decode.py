"""The decode scenario: the autoregressive decoder's cost per token, and its share of a call.

Two measurements, both with root-forward hooks (`measure.stages`) that synchronise the device at
each encoder / decoder-step forward, told apart by the engine's step module (`Engine.decoder()`):

1. The engine's real calls (`engine.transcribe`, the latency scenario's timed region): per call,
   the decode time (the sum of inter-token intervals: from the end of the encoder, or of the
   previous step, to the end of each decoder step -- generate's own per-step work included), its
   share of the call's wall time, tokens per second (decoder steps x batch / decode time) and the
   time to first token (call start to the end of the first decoder step: feature extraction,
   encoder and the prompt step).
2. The per-token curve: the engine's forced-length decode (`Engine.forced_decode`: transformers'
   `generate`) on the cell's first batch (first 30 s window), forced to `curve_tokens` new tokens
   (end-of-text disabled, so every setting decodes the same length), for KV cache on / off x
   greedy / beam search with 4 beams. Position p's time is the interval
   that produced the p-th new token (position 1 runs the prompt and, with the cache, fills the
   cross-attention keys / values), the median over `repeats` runs. Without the cache each step
   re-runs the decoder over every token so far and recomputes the cross-attention keys and
   values of all encoder frames. A forced length costs what a natural one does at the same
   position: a step's work depends on the position, not on which token was chosen.

A model with no autoregressive decoder (CTC) gets a row that says so; so does an engine whose
model does not run in torch (its steps cannot be hooked). A transducer gets the first measurement
and a curve that says why it is missing: its loop length is set by the audio, not a token count.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from asrperf.config import TimingConfig
from asrperf.data.clips import Clip
from asrperf.engines.base import Engine
from asrperf.measure.stages import RootCalls, step_intervals
from asrperf.measure.timer import time_calls
from asrperf.scenarios.base import CellContext, Scenario
from asrperf.scenarios.latency import batch_for_call

BEAMS = 4
CURVE_SETTINGS = ((True, "greedy"), (False, "greedy"), (True, f"beam{BEAMS}"), (False, f"beam{BEAMS}"))
CURVE_METHOD = (f"transformers generate forced to a fixed token count (end-of-text disabled) on the cell's first "
                f"30 s window; ms = inter-token interval (end of the previous root forward to the end of this "
                f"decoder step, device synchronised), median over repeats; beam{BEAMS} = num_beams {BEAMS}")
SHARE_METHOD = ("decode time = sum of inter-token intervals (encoder end to each decoder step's end) inside "
                "engine.transcribe; share = decode time / call wall time, over the timed calls")


def _natural(engine: Engine, model: Any, clips: list[Clip], batch_size: int, timing: TimingConfig) -> dict[str, Any]:
    """Decode time, share, tokens/s and first-token time over the engine's own timed calls."""
    rate = clips[0].sample_rate
    per_call: list[dict[str, Any]] = []

    def call(i: int) -> None:
        audios = [c.audio for c in batch_for_call(clips, batch_size, i)]
        with RootCalls(engine.synchronize) as rec:
            t0 = time.perf_counter()
            engine.transcribe(audios, rate)
        steps = [inv for inv in rec.invocations if inv.module is model]
        intervals = [s for run in step_intervals(rec.invocations, model) for s in run]
        per_call.append({"start": t0, "decode_s": sum(intervals), "steps": len(steps),
                         "first_token_s": steps[0].end_s - t0 if steps else None,
                         "windows": sum(1 for inv in rec.invocations if inv.module is not model)})

    timed = time_calls(call, engine.synchronize, timing)
    calls = per_call[len(timed.warmup_s):]
    decode_s = sum(c["decode_s"] for c in calls)
    call_s = timed.total_s
    firsts = [c["first_token_s"] for c in calls if c["first_token_s"] is not None]
    return {
        "decode_share": decode_s / call_s,
        "decode_s_per_call": decode_s / len(calls),
        "call_s_per_call": call_s / len(calls),
        "tokens_per_s": batch_size * sum(c["steps"] for c in calls) / decode_s if decode_s else None,
        "first_token_ms": 1000 * statistics.median(firsts) if firsts else None,
        "decoder_steps_per_call": sum(c["steps"] for c in calls) / len(calls),
        "encoder_forwards_per_call": sum(c["windows"] for c in calls) / len(calls),
        "decode_calls": len(calls),
        "decode_share_method": SHARE_METHOD,
    }


def _curve(engine: Engine, model: Any, clips: list[Clip], batch_size: int, n_tokens: int,
           repeats: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    generate = engine.forced_decode([c.audio for c in batch_for_call(clips, batch_size, 0)], clips[0].sample_rate)
    points, summary = [], []
    for use_cache, decoding in CURVE_SETTINGS:
        beams = 1 if decoding == "greedy" else BEAMS
        generate(min(n_tokens, 2), use_cache, beams)  # warm-up: allocator, kernel choice, cache classes
        runs_ms: list[list[float]] = []
        for _ in range(repeats):
            with RootCalls(engine.synchronize) as rec:
                generate(n_tokens, use_cache, beams)
            steps = step_intervals(rec.invocations, model)
            runs_ms.append([1000 * s for s in steps[0]] if steps else [])
        n = min(len(r) for r in runs_ms)
        ms = [statistics.median(r[p] for r in runs_ms) for p in range(n)]
        points += [{"position": p + 1, "ms": v, "kv_cache": use_cache, "decoding": decoding} for p, v in enumerate(ms)]
        total_s = sum(ms) / 1000
        summary.append({"kv_cache": use_cache, "decoding": decoding, "tokens": n,
                        "tokens_per_s": batch_size * n / total_s if total_s else None,
                        "ms_per_token_mean": sum(ms) / n if n else None})
    return points, summary


def run_decode(engine: Engine, clips: list[Clip], batch_size: int, timing: TimingConfig,
               curve_tokens: int, curve_note: str = "") -> dict[str, Any]:
    """The decode scenario's row fields; `curve_tokens` 0 skips the curve (`curve_note` says why)."""
    access = engine.decoder()
    model = access.step_module
    if model is None:
        return {"autoregressive_decoder": access.autoregressive, "decode_missing_reason": access.missing_reason}
    row: dict[str, Any] = {"autoregressive_decoder": True}
    row.update(_natural(engine, model, clips, batch_size, timing))
    if curve_tokens > 0 and access.forced_missing_reason is not None:
        row.update(decode_curve=None, decode_curve_missing_reason=access.forced_missing_reason)
    elif curve_tokens > 0:
        points, summary = _curve(engine, model, clips, batch_size, curve_tokens, max(1, timing.min_calls))
        row.update(decode_curve=points, decode_curve_summary=summary, decode_curve_tokens=curve_tokens,
                   decode_curve_repeats=max(1, timing.min_calls), decode_curve_method=CURVE_METHOD)
    else:
        row.update(decode_curve=None, decode_curve_missing_reason=curve_note or "curve off (decode_tokens = 0)")
    return row


class DecodeScenario(Scenario):
    """The decoder's cost per token and its share of a call, at one batch size."""

    name = "decode"

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return (min(configured),)

    def run(self, ctx: CellContext) -> dict[str, Any]:
        at = ctx.settings.decode_curve_length_s
        curve = ctx.settings.decode_tokens if ctx.clip_length_s == at else 0
        return run_decode(ctx.engine, ctx.clips, ctx.batch_size, ctx.timing, curve,
                          f"measured once per model, in the {at:g} s cell: the curve decodes the first 30 s "
                          "window, the same work at every clip length")
