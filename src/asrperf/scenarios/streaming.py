"""The streaming scenario: each clip fed in chunks of `chunk_ms` to the streaming policy the engine
declares for the model, on the simulated or the real-time clock; then the same clips offline for
the WER cost of streaming, and (in the shortest clip length's cells) the stream capacity.

Metric definitions: measure/streaming.py. Policies: scenarios/stream_policies.py. Clocks:
scenarios/stream_clock.py. Capacity: scenarios/stream_capacity.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from asrperf.data.clips import Clip
from asrperf.engines.base import Engine, StreamingUnsupported, cpu_threads
from asrperf.engines.capabilities import streaming_policy
from asrperf.errors import AsrperfError
from asrperf.measure.paired import transcripts_delta
from asrperf.measure.streaming import StreamMetrics, StreamTrace, percentiles, stream_metrics
from asrperf.measure.wer import error_rates
from asrperf.measure.word_align import align_words
from asrperf.scenarios.base import CellContext, Scenario
from asrperf.scenarios.stream_capacity import StreamJob, judge, search, threaded_probe
from asrperf.scenarios.stream_clock import run_stream
from asrperf.scenarios.stream_policies import Chunked, LocalAgreement, Policy, make_policy

WINDOW_S = 30.0  # offline word timestamps: whole utterances packed into windows of at most this
UPDATE_FIELDS = ("audio_end_s", "n_chunks", "ready_s", "done_s", "compute_s", "n_committed", "n_tentative",
                 "final_until_s")


def reference_timing(engine: Engine, clip: Clip) -> tuple[list[float | None], str]:
    """The end time of each reference word of `clip` (its utterances' words in order) and how it
    was obtained: the engine's forced alignment of the reference where it has one (CTC), else its
    offline word timestamps (whole utterances decoded in windows of <= 30 s) matched to the
    reference words. Raises StreamingUnsupported when the engine has neither."""
    words = [w for text in clip.utterance_texts for w in text.split()]
    try:
        aligned = engine.align_reference(clip.audio, clip.sample_rate, words)
        return [w.end_s if w is not None else None for w in aligned], \
            "forced alignment of the reference (CTC Viterbi on the model's log-probs)"
    except StreamingUnsupported:
        pass
    ends: list[float | None] = []
    for first, last in _windows(clip):
        a, b = clip.utterance_bounds[first][0], clip.utterance_bounds[last][1]
        ref = [w for text in clip.utterance_texts[first:last + 1] for w in text.split()]
        hyp = engine.transcribe_words(clip.audio[a:b], clip.sample_rate)
        match = align_words(ref, [w.text for w in hyp])
        ends += [hyp[h].end_s + a / clip.sample_rate if h is not None else None for h in match]
    return ends, (f"offline word timestamps of engine {engine.name} (whole utterances in <= {WINDOW_S:g} s windows), "
                  "matched to the reference words")


def _windows(clip: Clip) -> list[tuple[int, int]]:
    """Consecutive utterances grouped into spans of at most WINDOW_S seconds (an utterance alone may be longer)."""
    out: list[tuple[int, int]] = []
    bounds = clip.utterance_bounds_s
    first = 0
    for k in range(1, len(bounds) + 1):
        if k == len(bounds) or bounds[k][1] - bounds[first][0] > WINDOW_S:
            out.append((first, k - 1))
            first = k
    return out


def _trace_fields(clip: Clip, reference_end_s: list[float | None]) -> dict[str, Any]:
    return {"utterances_s": clip.utterance_bounds_s,
            "utterance_words": tuple(tuple(t.split()) for t in clip.utterance_texts),
            "reference_end_s": tuple(reference_end_s)}


def policy_label(policy: Policy, engine: Engine) -> str:
    s = policy.settings()
    if isinstance(policy, Chunked):
        frames = "CTC" if policy.ctc else "transducer"
        native = "" if policy.ctc else f", not cache-aware: engine {engine.name} has no native streaming mode"
        return (f"chunked ({frames} frames merged at seams, left {1000 * s['left_context_s']:g} ms, "
                f"right {1000 * s['right_context_s']:g} ms{native})")
    endpoint = (f", {s['endpoint_vad']} VAD endpoint after {s['endpoint_silence_ms']} ms of silence"
                if s["endpoint"] == "vad" else ", no endpoint")
    window = (f", encoder window: the buffer + {s['encoder_window_pad_s']:g} s (not 30 s)"
              if s.get("encoder_window") == "buffer" else "")
    return (f"LocalAgreement-{s['agreement']} on engine {engine.name}'s word timestamps, committed text as prompt"
            f"{endpoint}{window}")


def _endpoint_fields(policies: list[Policy]) -> dict[str, Any]:
    """The endpoint the streams ran ("vad", "none"; absent where it does not apply) and, with one,
    how often it fired and how many updates it spared a decode, over all streams."""
    if not isinstance(policies[-1], LocalAgreement):
        return {}
    out: dict[str, Any] = {"stream_endpoint": "vad" if policies[-1].endpointer else "none"}
    if policies[-1].endpointer:
        out.update(stream_n_endpoints=sum(p.endpoints for p in policies),
                   stream_n_skipped_updates=sum(p.skipped for p in policies))
    return out


def _summary(m: StreamMetrics) -> dict[str, Any]:
    fin = percentiles(m.finalization_s)
    emit = percentiles(m.emission_delay_s)
    rtf = percentiles(m.chunk_rtf, (50, 99))
    return {
        "first_partial_s_p50": percentiles(m.first_partial_s, (50,))[50],
        "first_partial_s_max": max(m.first_partial_s) if m.first_partial_s else None,
        "finalization_s_mean": sum(m.finalization_s) / len(m.finalization_s) if m.finalization_s else None,
        "finalization_s_p50": fin[50], "finalization_s_p90": fin[90], "finalization_s_p99": fin[99],
        "finalization_s_max": max(m.finalization_s) if m.finalization_s else None,
        "finalization_n": len(m.finalization_s), "finalization_missing": m.finalization_missing,
        "emission_delay_s_p50": emit[50], "emission_delay_s_p90": emit[90], "emission_delay_s_p99": emit[99],
        "emission_delay_n": len(m.emission_delay_s),
        "chunk_rtf_p50": rtf[50], "chunk_rtf_p99": rtf[99], "deadline_miss_share": m.deadline_miss_share,
        "revised_word_share": m.revised_share, "shown_words": m.shown_words,
    }


def _stream_sample(trace: StreamTrace, m: StreamMetrics) -> dict[str, Any]:
    return {"clip": trace.clip_id, "first_partial_s": m.first_partial_s[0] if m.first_partial_s else None,
            "finalization_s": m.finalization_s, "emission_delay_s": m.emission_delay_s,
            "update_fields": list(UPDATE_FIELDS),
            "updates": [[u.audio_end_s, u.n_chunks, u.ready_s, u.done_s, u.compute_s, len(u.committed),
                         len(u.tentative), u.final_until_s] for u in trace.updates]}


class StreamingScenario(Scenario):
    """Clips streamed chunk by chunk through the engine's streaming policy; offline pass; capacity."""

    name = "streaming"
    scores_accuracy = True

    def batch_sizes(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return (1,)  # a stream is one caller

    def chunk_sizes_ms(self, configured: tuple[int, ...]) -> tuple[int, ...]:
        return configured

    def run(self, ctx: CellContext) -> dict[str, Any]:
        settings = ctx.settings.streaming
        if settings is None or not ctx.chunk_ms:
            raise AsrperfError("streaming cell without streaming settings or a chunk size; run it through asrperf run")
        engine, clips = ctx.engine, ctx.clips
        kind = streaming_policy(engine.name, engine.model_family())
        rate, chunk_s = clips[0].sample_rate, ctx.chunk_ms / 1000

        def new_policy() -> Policy:
            return make_policy(kind, engine, rate, settings)

        new_policy().warm_up(clips[0].audio)
        row: dict[str, Any] = {"stream_clock": settings.clock, "stream_policy": kind}
        timings: dict[str, list[float | None]] = {}
        if not ctx.score:
            row["emission_delay_missing_reason"] = f"no reference timing: {ctx.score_missing_reason}"
        elif not all(c.utterance_texts for c in clips):
            row["emission_delay_missing_reason"] = "the clips have no utterances (loop mode)"
        else:
            try:
                for c in clips:
                    timings[c.id], row["emission_delay_reference"] = reference_timing(engine, c)
            except StreamingUnsupported as exc:
                row["emission_delay_missing_reason"] = f"no reference timing: {exc}"
                timings = {}
        traces: list[StreamTrace] = []
        total, samples, methods = StreamMetrics(), [], set()
        policies: list[Policy] = []
        for c in clips:
            policy = new_policy()
            policies.append(policy)
            trace = run_stream(policy, c.audio, rate, chunk_s, settings.clock, c.id,
                               **_trace_fields(c, timings.get(c.id, [])))
            m, method = stream_metrics(trace)
            traces.append(trace)
            total.add(m)
            methods.add(method)
            samples.append(_stream_sample(trace, m))
        row.update(_summary(total), stream_policy_label=policy_label(policy, engine),
                   stream_policy_settings=policy.settings(), **_endpoint_fields(policies), stream_n_streams=len(traces),
                   stream_n_updates=sum(len(t.updates) for t in traces), stream_n_chunks=sum(t.n_chunks for t in traces),
                   stream_samples=samples, keeps_up=(total.deadline_miss_share or 0.0) <= settings.max_miss_share)
        method = methods.pop() if len(methods) == 1 else "none"
        row["finalization_method"] = method
        if method == "none" or not total.finalization_s:
            row["finalization_missing_reason"] = ("the clips have no utterance boundaries (loop mode)" if method == "none"
                                                  else "no final word aligned to any utterance")
        if ctx.score:
            row.update(self._accuracy(engine, clips, traces))
        row.update(self._capacity(ctx, kind, chunk_s, timings))
        return row

    @staticmethod
    def _accuracy(engine: Engine, clips: list[Clip], traces: list[StreamTrace]) -> dict[str, Any]:
        """Streamed WER (the row's `wer`), the same clips transcribed whole, and the paired delta."""
        refs = [c.text or "" for c in clips]
        streamed = [" ".join(t.final_words) for t in traces]
        offline = [engine.transcribe([c.audio], c.sample_rate).texts[0] for c in clips]
        er, off = error_rates(refs, streamed), error_rates(refs, offline)
        mine = [{"clip": c.id, "ref": r, "hyp": h} for c, r, h in zip(clips, refs, streamed)]
        theirs = [{"clip": c.id, "ref": r, "hyp": h} for c, r, h in zip(clips, refs, offline)]
        d = transcripts_delta(theirs, mine)
        return {"wer": er.wer, "wer_ci_low": er.wer_ci[0], "wer_ci_high": er.wer_ci[1], "cer": er.cer,
                "cer_ci_low": er.cer_ci[0], "cer_ci_high": er.cer_ci[1], "ref_words": er.ref_words,
                "n_scored": er.n_utterances, "transcripts": mine, "offline_wer": off.wer, "offline_transcripts": theirs,
                "stream_wer_delta": d.delta, "stream_wer_delta_ci_low": d.ci_low, "stream_wer_delta_ci_high": d.ci_high,
                "stream_wer_delta_paired": d.paired, "stream_wer_n_worse": d.n_worse}

    @staticmethod
    def _capacity(ctx: CellContext, kind: str, chunk_s: float, timings: dict[str, list[float | None]]) -> dict[str, Any]:
        settings = ctx.settings.streaming
        if not settings.capacity:
            return {"capacity_missing_reason": "streaming.capacity = false"}
        if not math.isclose(ctx.clip_length_s, ctx.settings.capacity_length_s):
            return {"capacity_missing_reason": f"searched in the {ctx.settings.capacity_length_s:g} s cells of this "
                                               "model and chunk size"}
        engine, rate = ctx.engine, ctx.clips[0].sample_rate
        jobs = [StreamJob(c.id, c.audio, _trace_fields(c, timings.get(c.id, []))) for c in ctx.clips]
        workers = settings.capacity_workers
        if workers == "threads":
            threads = cpu_threads()

            def traces(n: int) -> list[StreamTrace]:
                return threaded_probe(lambda: make_policy(kind, engine, rate, settings), jobs, rate, chunk_s, n)
        else:
            from asrperf.scenarios.stream_process import process_probe

            if ctx.model is None:
                raise AsrperfError("capacity_workers = 'processes' needs the cell's model; run it through asrperf run")
            from asrperf.engines.capabilities import plugin_modules as engine_plugins
            from asrperf.scenarios import plugin_modules

            threads = settings.capacity_threads
            job = {"model": dataclasses.asdict(ctx.model), "weights": engine.info().get("weights", ctx.model.weights),
                   "device": ctx.device, "cache_dir": ctx.cache_dir, "policy": kind,
                   "streaming": dataclasses.asdict(settings), "plugins": sorted(set(plugin_modules() + engine_plugins()))}
            timeout = 600.0 + 2 * max(c.audio_s for c in ctx.clips)

            def traces(n: int) -> list[StreamTrace]:
                return process_probe(job, jobs, rate, chunk_s, n, threads, timeout)

        cap = search(lambda n: judge(n, traces(n), settings.max_miss_share, settings.max_finalization_p90_s),
                     settings.max_streams)
        at = cap.at
        return {"capacity_streams": cap.streams, "capacity_workers": workers, "capacity_threads": threads,
                "capacity_stop_reason": cap.stop_reason, "capacity_probes": [p.to_row() for p in cap.probes],
                "capacity_max_miss_share": settings.max_miss_share,
                "capacity_max_finalization_p90_s": settings.max_finalization_p90_s,
                "capacity_finalization_s_p90": at.finalization_s_p90 if at else None,
                "capacity_deadline_miss_share": at.deadline_miss_share if at else None,
                "capacity_chunk_rtf_p50": at.chunk_rtf_p50 if at else None}
