"""The latency scenario: timed calls on batches of clips, then one accuracy pass over all clips.

Call i transcribes clips [i*B, (i+1)*B) modulo the clip count, so the spread reflects both timer
noise and the content of different clips of the same length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from asrperf.config import TimingConfig
from asrperf.data.clips import Clip
from asrperf.engines.base import Engine
from asrperf.measure.contention import ContentionGuard
from asrperf.measure.energy import EnergyReader, EnergyResult, measure_energy
from asrperf.measure.memory import MemoryMeter
from asrperf.measure.stats import rtfx, summarize, throughput_samples_per_s
from asrperf.measure.timer import TimedCalls, time_calls
from asrperf.measure.wer import error_rates
from asrperf.scenarios.base import CellContext, Scenario, device_peaks


def batch_for_call(clips: list[Clip], batch_size: int, call: int) -> list[Clip]:
    return [clips[(call * batch_size + j) % len(clips)] for j in range(batch_size)]


def run_latency(
    engine: Engine,
    clips: list[Clip],
    batch_size: int,
    timing: TimingConfig,
    score: bool,
    energy_readers: Sequence[EnergyReader] = (),
    energy_idle_s: float = 0.0,
    on_call: Callable[[int], None] | None = None,
    memory: MemoryMeter | None = None,
    contention: ContentionGuard | None = None,
) -> tuple[dict[str, Any], TimedCalls]:
    """Measure one cell; returns the metric fields of its row and the raw timings.

    The timed calls (warm-up excluded) run inside the measurers' window: energy (made at least
    as long as the slowest reader's update period by raising the minimum timed time), memory,
    and the busy-machine guard (innermost: its window is the timed calls' own).
    """
    rate = clips[0].sample_rate

    def call(i: int):
        return engine.transcribe([c.audio for c in batch_for_call(clips, batch_size, i)], rate)

    energy: EnergyResult | None = None
    if energy_readers:
        min_window_s = max(r.min_window_s for r in energy_readers)
        timing = dataclasses.replace(timing, min_time_s=max(timing.min_time_s, min_window_s))
    warm = dataclasses.replace(timing, min_calls=0, min_time_s=0.0, max_calls=0)
    warmup = time_calls(call, engine.synchronize, warm)  # warm-up outside the measured window
    with ExitStack() as window:
        # energy first: its idle-power sleep happens on entry, outside the memory window
        meter = window.enter_context(measure_energy(energy_readers, idle_s=energy_idle_s)) if energy_readers else None
        if memory is not None:
            window.enter_context(memory)
        if contention is not None:
            window.enter_context(contention)
        timed = time_calls(lambda i: call(i + len(warmup.warmup_s)), engine.synchronize,
                           dataclasses.replace(timing, warmup_calls=0, warmup_min_s=0.0), on_call)
    timed.warmup_s = warmup.warmup_s
    if meter is not None:
        energy = meter.result
    # the first warm-up call is the cold first call; with no warm-up, the first timed call is
    first_call_s = (timed.warmup_s or timed.samples_s)[0]
    stats = summarize(timed.samples_s)
    audio_s = batch_size * clips[0].audio_s  # every clip of a cell has the same exact length
    n = len(timed.samples_s)
    tokens = [sum(t.tokens) for t in timed.results]
    row: dict[str, Any] = {f"latency_s_{k}" if k != "n" else "n_calls": v for k, v in stats.items()}
    row.update(
        first_call_s=first_call_s,
        warmup_calls=len(timed.warmup_s),
        audio_s_per_call=audio_s,
        throughput_samples_per_s=throughput_samples_per_s(batch_size, n, timed.total_s),
        rtfx=rtfx(audio_s * n, timed.total_s),
        tokens_per_call_mean=sum(tokens) / len(tokens),
        tokens_per_audio_s=sum(tokens) / (audio_s * n),
    )
    if energy is not None:
        row.update(energy_fields(energy, batch_size * n, audio_s * n))
    if memory is not None and memory.result is not None:
        row.update(memory.result.to_row())
    if contention is not None and contention.result is not None:
        row.update(contention.result.to_row())
    if score:
        # decoding is deterministic (greedy), so the timed calls' outputs are the transcripts;
        # only clips the timed calls did not reach are transcribed again
        seen: dict[int, str] = {}
        first_timed = len(timed.warmup_s)
        for k, result in enumerate(timed.results):
            for j, text in enumerate(result.texts):
                seen.setdefault(((first_timed + k) * batch_size + j) % len(clips), text)
        row.update(accuracy(engine, clips, batch_size, seen))
    return row, timed


def energy_fields(e: EnergyResult, samples: int, audio_s: float) -> dict[str, Any]:
    """Row fields of one energy window: gross and (with idle power) idle-subtracted, with units."""
    out: dict[str, Any] = {
        "energy_j": e.energy_j, "energy_window_s": e.window_s, "energy_method": e.method,
        "energy_measured": e.measured, "energy_note": e.note, "energy_window_ok": e.window_ok,
        "energy_domains_j": e.domains, "energy_j_per_sample": e.j_per_sample(samples),
        "energy_j_per_audio_s": e.j_per_audio_s(audio_s), "idle_power_w": e.idle_w,
    }
    if e.idle_w is not None:
        out.update(energy_net_j_per_sample=e.j_per_sample(samples, net=True),
                   energy_net_j_per_audio_s=e.j_per_audio_s(audio_s, net=True))
    return out


def flops_fields(engine: Engine, clips: list[Clip], batch_size: int, latency_s: float,
                 peak_flops_per_s: float | None) -> dict[str, Any]:
    """FLOPs of one call on the cell's batch, counted on the real forward, and what they imply.

    achieved FLOP/s = FLOPs per call / median latency; MFU = achieved / the measured peak.
    Per unit of work (encoder per 30 s window, decoder per token, per audio second): `per_unit`.
    """
    if not engine.runs_torch:
        return {"flops_per_call": None,
                "flops_missing_reason": f"engine {engine.name} runs outside torch: its ops cannot be counted"}
    from asrperf.measure.flops import count_flops, per_unit

    batch = [c.audio for c in batch_for_call(clips, batch_size, 0)]
    try:
        fc = count_flops(lambda: engine.transcribe(batch, clips[0].sample_rate))
    except Exception as exc:  # a counter failure loses the FLOPs, never the cell's measurements
        return {"flops_per_call": None, "flops_missing_reason": f"FLOP counter failed: {type(exc).__name__}: {exc}"}
    achieved = fc.total_flops / latency_s
    return {
        "flops_per_call": fc.total_flops,
        "flops_attention_per_call": fc.attention_flops,
        "flops_by_stage": fc.by_stage(),
        **per_unit(fc, engine.flop_stages(), batch_size * clips[0].audio_s),
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak_flops_per_s,
        "mfu": achieved / peak_flops_per_s if peak_flops_per_s else None,
    }


def accuracy(engine: Engine, clips: list[Clip], batch_size: int, known: dict[int, str] | None = None) -> dict[str, Any]:
    """Score corpus WER/CER over every clip, transcribing (in batches) those not in `known`."""
    hyps = dict(known or {})
    missing = [i for i in range(len(clips)) if i not in hyps]
    for start in range(0, len(missing), batch_size):
        idx = missing[start : start + batch_size]
        texts = engine.transcribe([clips[i].audio for i in idx], clips[0].sample_rate).texts
        hyps.update(zip(idx, texts))
    hyps = [hyps[i] for i in range(len(clips))]
    refs = [c.text or "" for c in clips]
    er = error_rates(refs, hyps)
    return {
        "wer": er.wer,
        "wer_ci_low": er.wer_ci[0],
        "wer_ci_high": er.wer_ci[1],
        "cer": er.cer,
        "cer_ci_low": er.cer_ci[0],
        "cer_ci_high": er.cer_ci[1],
        "ref_words": er.ref_words,
        "n_scored": er.n_utterances,
        "transcripts": [{"clip": c.id, "ref": c.text, "hyp": h} for c, h in zip(clips, hyps)],
    }


class LatencyScenario(Scenario):
    """Timed calls at each configured batch size, energy and memory over them, then WER over every clip."""

    name = "latency"
    meters = ("energy", "memory", "contention")
    scores_accuracy = True

    def run(self, ctx: CellContext) -> dict[str, Any]:
        m = ctx.meters
        metrics, timed = run_latency(ctx.engine, ctx.clips, ctx.batch_size, ctx.timing, ctx.score,
                                     m.energy_readers, m.energy_idle_s, memory=m.memory, contention=m.contention)
        ctx.warmup_s, ctx.samples_s = timed.warmup_s, timed.samples_s
        row: dict[str, Any] = dict(metrics)
        if m.energy_missing_reason:
            row.update(energy_j=None, energy_missing_reason=m.energy_missing_reason)
        if ctx.settings.flops:
            peak = device_peaks(ctx)
            row.update(peak, flops_probe_ran=True)
            row.update(flops_fields(ctx.engine, ctx.clips, ctx.batch_size, metrics["latency_s_p50"],
                                    peak.get("peak_matmul_flops_per_s")))
        per_call = ctx.engine.info().get("compiled_graphs_per_call")
        if per_call is not None:  # torch.compile: did a timed call compile?
            first = metrics["warmup_calls"]
            row["recompilations_timed"] = sum(per_call[first:first + metrics["n_calls"]])
        return row
