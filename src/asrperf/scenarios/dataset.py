"""The dataset scenario: every whole utterance of a source transcribed once, scored as one corpus.

Definitions (the Open ASR Leaderboard's, DESIGN.md "WER/CER"):

- **Batches.** Utterances are sorted by length, longest first (ties by source order), and cut into
  consecutive batches of `batch_size`, so each batch holds utterances of similar length and
  padding stays small. The plan depends only on the utterance lengths and the batch size: a local
  run and any number of Ray shards transcribe exactly the same batches.
- **Batch size "auto".** The max-throughput search (scenarios/max_throughput.py: doubling, then
  one refine) on the longest utterances: probe b transcribes the b longest once; it stops at OOM,
  the memory budget, a throughput plateau or max_batch, and the best samples/s batch is used.
- **RTFx** = sum of audio seconds / sum of per-batch transcription seconds (each batch timed from
  a synchronised device to a synchronised device; audio is decoded before). Model loading and
  data loading are outside it; `wall_rtfx` divides by the wall time of the whole evaluation.
- **WER/CER** are corpus-level with a bootstrap 95% CI over utterances (measure/wer.py), after
  Whisper's English normaliser; references are already cleaned of dataset tags by the sources.
- **Padding.** The engine declares its policy (Engine.batch_padding); the padding check measures
  it: the shortest utterance transcribed alone and in a batch with the longest. Where the model
  has no attention mask, outputs depend on the batch, and the row says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asrperf.data.audio import Utterance
from asrperf.engines.base import Engine
from asrperf.measure.stats import rtfx
from asrperf.measure.wer import count_table, error_rates
from asrperf.scenarios.base import CellContext, Scenario
from asrperf.scenarios.max_throughput import (Probe, SearchPolicy, SearchResult, _error_text, _free_device_memory,
                                              is_oom, search)

UTTERANCE_ORDER = "length-descending"
RTFX_METHOD = "sum of audio s / sum of per-batch transcription s (Open ASR Leaderboard); loading excluded"
DEFAULT_WORST = 10  # worst utterances kept on the row and printed


@dataclass(frozen=True)
class BatchOutput:
    """One planned batch as transcribed: which utterances, their texts, its time and who ran it."""

    batch: int  # index in the plan
    members: tuple[int, ...]  # utterance indices (source order)
    texts: tuple[str, ...]
    transcribe_s: float
    audio_s: float
    worker: str = "local"  # "local", or the Ray actor as node:pid


def length_order(durations_s: Sequence[float]) -> list[int]:
    """Utterance indices, longest first; equal lengths keep source order."""
    return sorted(range(len(durations_s)), key=lambda i: (-durations_s[i], i))


def plan_batches(durations_s: Sequence[float], batch_size: int) -> list[tuple[int, ...]]:
    """Consecutive batches of `batch_size` over the length order (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    order = length_order(durations_s)
    return [tuple(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def transcribe_timed(engine: Engine, audios: list[np.ndarray], sample_rate: int) -> tuple[list[str], float]:
    """One timed call: texts and seconds, the device synchronised before and after."""
    engine.synchronize()
    t0 = time.perf_counter()
    texts = engine.transcribe(audios, sample_rate).texts
    engine.synchronize()
    return list(texts), time.perf_counter() - t0


def run_batches(engine: Engine, utts: Sequence[Utterance], plan: Sequence[tuple[int, ...]],
                on_batch: Callable[[int, int], None] | None = None) -> list[BatchOutput]:
    """Transcribe every planned batch in this process, in plan order."""
    rate = utts[0].sample_rate
    out = []
    for k, members in enumerate(plan):
        texts, seconds = transcribe_timed(engine, [utts[i].audio for i in members], rate)
        out.append(BatchOutput(k, tuple(members), tuple(texts), seconds, sum(utts[i].duration_s for i in members)))
        if on_batch is not None:
            on_batch(k + 1, len(plan))
    return out


def search_batch_size(engine: Engine, utts: Sequence[Utterance], max_batch: int,
                      memory_budget_bytes: int | None = None,
                      peak_memory: Callable[[], int | None] | None = None,
                      reset_peak: Callable[[], None] | None = None) -> SearchResult:
    """The max-throughput search on the longest utterances (the batch that fits them fits all):
    probe b transcribes the b longest once, after one untimed warm-up call on the longest."""
    order = length_order([u.duration_s for u in utts])
    rate = utts[0].sample_rate
    engine.transcribe([utts[order[0]].audio], rate)  # warm-up: the first call pays one-time costs

    def measure(b: int) -> Probe:
        if reset_peak is not None:
            reset_peak()
        try:
            _, seconds = transcribe_timed(engine, [utts[i].audio for i in order[:b]], rate)
        except Exception as exc:
            status, error = ("oom" if is_oom(exc) else "failed"), _error_text(exc)
        else:
            peak = peak_memory() if peak_memory is not None else None
            return Probe(b, "ok", samples_per_s=b / seconds, latency_s_p50=seconds,
                         peak_memory_bytes=int(peak) if peak is not None else None)
        if status == "oom":  # outside the except block, so the failed batch's tensors are gone
            _free_device_memory(engine)
        return Probe(b, status, error=error)

    policy = SearchPolicy(max_batch=max(1, min(max_batch, len(utts))), memory_budget_bytes=memory_budget_bytes)
    return search(measure, policy)


def padding_check(engine: Engine, utts: Sequence[Utterance]) -> dict[str, Any]:
    """Measure whether padding changes outputs: the shortest utterance alone, then second in a
    batch with the longest (padded to the longest's length)."""
    order = length_order([u.duration_s for u in utts])
    longest, shortest = utts[order[0]], utts[order[-1]]
    if len(utts) < 2 or len(longest.audio) == len(shortest.audio):
        return {"padding_changes_output": None,
                "padding_check": "not run: the utterances all have the same length (no padding)"}
    rate = shortest.sample_rate
    alone = engine.transcribe([shortest.audio], rate).texts[0]
    padded = engine.transcribe([longest.audio, shortest.audio], rate).texts[1]
    pad_s = longest.duration_s - shortest.duration_s
    verdict = "differs" if alone != padded else "is the same"
    return {"padding_changes_output": alone != padded,
            "padding_check": f"{shortest.id} ({shortest.duration_s:.2f} s) alone vs padded by {pad_s:.2f} s in a "
                             f"batch with {longest.id}: the transcript {verdict}"}


def engine_facts(engine: Engine, utts: Sequence[Utterance]) -> dict[str, Any]:
    """The padding policy the engine declares and the padding check's measurement."""
    p = engine.batch_padding()
    return {"padding_policy": p.policy, "padding": p.words, **padding_check(engine, utts)}


def corpus_fields(utts: Sequence[Utterance], outputs: Sequence[BatchOutput], score: bool,
                  n_worst: int = DEFAULT_WORST) -> dict[str, Any]:
    """Row fields of the merged batches: sizes, RTFx, transcripts and (when scored) WER/CER and the
    worst utterances. `outputs` may come in any order (Ray shards); each utterance exactly once."""
    hyps: dict[int, str] = {}
    for b in outputs:
        for i, text in zip(b.members, b.texts):
            if i in hyps:
                raise ValueError(f"utterance {utts[i].id} was transcribed twice (batches overlap)")
            hyps[i] = text
    missing = [utts[i].id for i in range(len(utts)) if i not in hyps]
    if missing:
        raise ValueError(f"{len(missing)} utterance(s) were not transcribed, e.g. {missing[0]}")
    texts = [hyps[i] for i in range(len(utts))]
    durations = [u.duration_s for u in utts]
    audio_s, transcribe_s = sum(durations), sum(b.transcribe_s for b in outputs)
    transcripts = [{"clip": u.id, "ref": u.text, "hyp": h, "audio_s": u.duration_s} for u, h in zip(utts, texts)]
    row: dict[str, Any] = {
        "n_utterances": len(utts), "utterance_order": UTTERANCE_ORDER,
        "audio_s_total": audio_s, "utterance_s_min": min(durations), "utterance_s_max": max(durations),
        "utterance_s_mean": audio_s / len(utts), "dataset_n_batches": len(outputs),
        "transcribe_s_total": transcribe_s, "dataset_rtfx": rtfx(audio_s, transcribe_s),
        "dataset_rtfx_method": RTFX_METHOD, "transcripts": transcripts,
    }
    if score:
        refs = [u.text for u in utts]
        er = error_rates(refs, texts)
        row.update(wer=er.wer, wer_ci_low=er.wer_ci[0], wer_ci_high=er.wer_ci[1], cer=er.cer,
                   cer_ci_low=er.cer_ci[0], cer_ci_high=er.cer_ci[1], ref_words=er.ref_words,
                   n_scored=er.n_utterances, worst_utterances=worst(utts, texts, n_worst))
    return row


def worst(utts: Sequence[Utterance], hyps: Sequence[str], n: int = DEFAULT_WORST) -> list[dict[str, Any]]:
    """The `n` utterances with the most word edits (after normalisation), ties by higher WER."""
    counts = count_table([u.text for u in utts], list(hyps))
    ranked = sorted(range(len(utts)), key=lambda i: (-counts[i, 0], -counts[i, 0] / max(counts[i, 1], 1), i))
    return [{"clip": utts[i].id, "ref": utts[i].text, "hyp": hyps[i], "word_edits": int(counts[i, 0]),
             "ref_words": int(counts[i, 1]), "wer": float(counts[i, 0] / max(counts[i, 1], 1))}
            for i in ranked[:n] if counts[i, 0] > 0]


def evaluate_local(engine: Engine, utts: Sequence[Utterance], batch_size: int, score: bool,
                   n_worst: int = DEFAULT_WORST,
                   on_batch: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], list[BatchOutput]]:
    """Transcribe and score `utts` in this process at `batch_size` (already chosen); returns the
    row fields (padding policy and check included) and the batches."""
    plan = plan_batches([u.duration_s for u in utts], batch_size)
    t0 = time.perf_counter()
    outputs = run_batches(engine, utts, plan, on_batch)
    wall_s = time.perf_counter() - t0
    row = corpus_fields(utts, outputs, score, n_worst)
    row.update(engine_facts(engine, utts), dataset_executor="local", dataset_wall_s=wall_s,
               wall_rtfx=rtfx(row["audio_s_total"], wall_s))
    return row, outputs


def search_fields(result: SearchResult) -> dict[str, Any]:
    """The batch search's row fields (the probes as max_throughput records them)."""
    return {"dataset_batch_mode": "searched", "dataset_batch_stop_reason": result.stop_reason,
            "dataset_batch_probes": result.to_row()["max_throughput_probes"]}


class DatasetScenario(Scenario):
    """`asrperf run -s dataset`: the cell's clips evaluated as a corpus in length-sorted batches of
    the cell's batch size (`asrperf eval` runs the same on a source's whole utterances)."""

    name = "dataset"
    scores_accuracy = True

    def run(self, ctx: CellContext) -> dict[str, Any]:
        utts = [Utterance(c.id, c.audio, c.sample_rate, c.text or "") for c in ctx.clips]
        row, outputs = evaluate_local(ctx.engine, utts, ctx.batch_size, ctx.score)
        ctx.samples_s = [b.transcribe_s for b in outputs]
        row["dataset_batch_mode"] = "given"
        return row
