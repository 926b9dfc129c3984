"""The dataset evaluation table: one line per evaluation (asrperf eval, or `run -s dataset` cells),
and each evaluation's worst utterances. Pure data in (rows), no torch.

Every figure is a field of the dataset section (results/sections.py `Dataset`) or the accuracy
section; definitions in scenarios/dataset.py and the README's "Whole-dataset evaluation".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from asrperf.report.tables import MISSING, Table, pct

Row = dict[str, Any]

COLUMNS = ["engine", "dtype", "device", "weights", "source", "utterances (audio h)", "batch", "executor",
           "threads", "WER % [95% CI]", "CER %", "RTFx", "wall RTFx", "padding"]
PADDING_CHANGES = "OUTPUTS CHANGE WITH BATCHING"  # the padding check's verdict, shown on the row


def dataset_rows(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("scenario") == "dataset"]


def is_whole_utterance(r: Row) -> bool:
    """An `asrperf eval` row: whole utterances of a source, so no clip length (the clip tables skip it)."""
    return r.get("scenario") == "dataset" and r.get("clip_length_s") is None


def evaluation_label(r: Row) -> str:
    return f"{r['model']} ({r['engine']}, {r.get('variant') or r['dtype']})"


def _weights(r: Row) -> str:
    return str(r.get("weights") or r.get("weights_requested") or MISSING)


def _random(r: Row) -> bool:
    return (r.get("weights") or r.get("weights_requested")) == "random"


def source_text(r: Row) -> str:
    """The source by name (path or corpus) and split; a run's clips when the row came from `asrperf run`."""
    src = r.get("dataset_source") or {}
    if not src:
        length = r.get("clip_length_s")
        return f"the run's {length:g} s clips" if length is not None else str(r.get("dataset_source_key") or MISSING)
    name = src.get("corpus") or src.get("path") or src.get("kind")
    split = f"/{src['split']}" if src.get("split") else ""
    config = f" ({src['config']})" if src.get("config") else ""
    return f"{src.get('kind')}: {name}{config}{split}"


def _missing_accuracy(r: Row) -> str | None:
    """The missing-WER text, or None when the row's WER can be shown (never for random weights)."""
    if _random(r):
        return f"{MISSING} ({r.get('wer_missing_reason') or 'random weights: no WER'})"
    if r.get("wer") is None:
        return f"{MISSING} ({r.get('wer_missing_reason') or 'not scored'})"
    return None


def wer_text(r: Row) -> str:
    if (text := _missing_accuracy(r)) is not None:
        return text
    ci = (f" [{pct(r['wer_ci_low'], 2)}–{pct(r['wer_ci_high'], 2)}]" if r.get("wer_ci_low") is not None
          else " (no CI recorded)")
    return pct(r["wer"], 2) + ci


def cer_text(r: Row) -> str:
    if (text := _missing_accuracy(r)) is not None:
        return text
    return pct(r.get("cer"), 2) if r.get("cer") is not None else f"{MISSING} (not recorded)"


def _x(r: Row, key: str, why: str) -> str:
    return f"{r[key]:.1f}" if r.get(key) is not None else f"{MISSING} ({why})"


def batch_text(r: Row) -> str:
    b = r.get("batch_size")
    if r.get("dataset_batch_mode") == "searched":
        return f"{b} (auto; stop: {r.get('dataset_batch_stop_reason') or MISSING})"
    return str(b) if b is not None else MISSING


def executor_text(r: Row) -> str:
    if r.get("dataset_executor") == "ray":
        return f"ray, {r.get('ray_actors')} actor(s)"
    return str(r.get("dataset_executor") or MISSING)


def padding_text(r: Row) -> str:
    """The declared policy; the padding check's verdict (a flag when batching changed a transcript)."""
    policy = str(r.get("padding_policy") or MISSING)
    changes = r.get("padding_changes_output")
    if changes is True:
        return f"{policy} [{PADDING_CHANGES}]"
    return f"{policy} (check: {'same output' if changes is False else 'not run'})"


def _utterances(r: Row) -> str:
    n, audio = r.get("n_utterances"), r.get("audio_s_total")
    return f"{n if n is not None else MISSING} ({MISSING if audio is None else f'{audio / 3600:.3f}'} h)"


def _line(r: Row) -> list[str]:
    head = [r["engine"], str(r["dtype"]), r["device"], _weights(r), source_text(r)]
    if r.get("status") != "ok":
        return head + ["failed"] * (len(COLUMNS) - len(head))
    return head + [_utterances(r), batch_text(r), executor_text(r), str(r.get("threads")), wer_text(r), cer_text(r),
                   _x(r, "dataset_rtfx", "not recorded"), _x(r, "wall_rtfx", "not recorded"), padding_text(r)]


def dataset_tables(rows: Iterable[Row]) -> list[Table]:
    """One table of every dataset evaluation, one line each (none when there are no dataset rows)."""
    evals = sorted(dataset_rows(rows), key=lambda r: (evaluation_label(r), r["device"], source_text(r)))
    if not evals:
        return []
    t = Table("Dataset evaluation", COLUMNS, corner="model (engine, variant)")
    for r in evals:
        t.rows.append((evaluation_label(r), _line(r)))
    for r in evals:
        if r.get("status") != "ok":
            t.notes.append(f"failed: {evaluation_label(r)} on {source_text(r)}: {r.get('error')}")
        elif r.get("padding_changes_output") is True:
            t.notes.append(f"{evaluation_label(r)}: padding: {r.get('padding')}; {r.get('padding_check')}: WER may "
                           f"change with the batch size; compare at batch 1")
    t.notes.append("WER/CER: corpus-level after Whisper's English normaliser, 95% bootstrap CI over utterances; "
                   "random-weight models have no WER")
    t.notes.append("RTFx: sum of audio s / sum of per-batch transcription s (Open ASR Leaderboard; loading "
                   "excluded); wall RTFx: audio s / wall s (locally the transcription loop, on Ray the whole job)")
    return [t]


def worst_utterances(r: Row) -> list[dict[str, Any]]:
    """The row's worst utterances (most word edits); none for random weights (they were not scored)."""
    return [] if _random(r) else list(r.get("worst_utterances") or [])
