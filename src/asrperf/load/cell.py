"""A server cell's row from the rows of one load plan (load/session.py `execute`), shared by the
server scenario (asrperf run) and by `compare` (which folds an `asrperf load` run the same way).

The row's latency, rate, goodput and batch figures are those of its *answer* probe (search: the
probe at the maximum sustainable rate, or the synchronous probe when none met the SLO; sweep: the
probe at the knee; single: the probe); every probe, with its requests, is in `server_probes`;
`wer` is over every answered request of every probe; `lateness_s_p99` is the worst probe's.
"""

from __future__ import annotations

from typing import Any

from asrperf.errors import AsrperfError

# keys every probe of a cell shares with the cell's row (or its identity): left out of server_probes
_SHARED = frozenset({"scenario", "target_url", "model", "mode", "server", "server_model", "engine", "dtype",
                     "variant", "device", "max_batch_size", "max_wait_ms", "max_queue", "engine_info", "slo"})
# result fields of a search or sweep (load/search.py): copied onto the cell's row
_RESULT = ("search_status", "max_sustainable_rate_rps", "upper_rate_rps", "resolved", "precision_reached", "precision",
           "sync_rate_rps", "saturation_rate_rps", "n_probes", "note", "knee_rate_rps")
# fields of the answer probe that describe the probe, not the measurement: the cell row keeps its own
_PROBE_ONLY = frozenset({"requests", "probe_role", "probe_index", "arrival", "arrival_kind", "clients", "open_loop",
                         "started_at", "wer", "wer_ci_low", "wer_ci_high", "n_scored", "wer_note",
                         "transcripts_consistent", "lateness_s_p50", "lateness_s_p99", "lateness_s_max", "lateness_ok"})


def setup_label(max_wait_ms: float, max_queue: int, mode: str, arrival: str, slo: str) -> str:
    """What a server cell measured beyond its identity: batcher settings, plan, SLO (compare matches on it)."""
    return f"max_wait_ms={max_wait_ms:g} max_queue={max_queue} mode={mode} arrival={arrival} slo={slo or '-'}"


def answer_index(probes: list[dict[str, Any]], result: dict[str, Any] | None) -> int:
    """The probe whose figures stand for the cell (see the module docstring)."""
    if result is None:
        return 0
    if result.get("search_status") is None:  # a sweep
        curve = [i for i, p in enumerate(probes) if p.get("probe_role") == "sweep"]
        at_knee = [i for i in curve if probes[i].get("offered_rate_rps") == result.get("knee_rate_rps")]
        return at_knee[-1] if at_knee else (curve[-1] if curve else 0)
    best = result.get("max_sustainable_rate_rps")
    hits = [i for i, p in enumerate(probes) if p.get("probe_role") == "bisect" and p.get("slo_met")
            and p.get("offered_rate_rps") == best]
    return hits[-1] if hits else 0  # none met the SLO: the synchronous probe shows why


def served_accuracy(probes: list[dict[str, Any]], refs: dict[str, str | None],
                    offline: dict[str, str] | None) -> dict[str, Any]:
    """WER over every answered request of every probe, the served transcript of each clip, and how
    often a served transcript equals the same engine's offline transcript of the clip."""
    from asrperf.measure.wer import error_rates

    answered = [r for p in probes for r in p.get("requests", ()) if r.get("outcome") == "ok" and not r.get("warmup")]
    out: dict[str, Any] = {}
    if offline is not None and answered:
        same = sum((r.get("text") or "") == offline.get(r["clip_id"]) for r in answered)
        out["served_offline_match_share"] = same / len(answered)
    scored = [(refs[r["clip_id"]], r.get("text") or "") for r in answered if refs.get(r["clip_id"])]
    if not scored:
        return {**out, "wer": None, "wer_missing_reason": "no answered request with a reference"}
    er = error_rates([a for a, _ in scored], [b for _, b in scored])
    first: dict[str, str] = {}
    for r in answered:
        first.setdefault(r["clip_id"], r.get("text") or "")
    return {**out, "wer": er.wer, "wer_ci_low": er.wer_ci[0], "wer_ci_high": er.wer_ci[1], "cer": er.cer,
            "cer_ci_low": er.cer_ci[0], "cer_ci_high": er.cer_ci[1], "ref_words": er.ref_words,
            "n_scored": er.n_utterances,
            "transcripts": [{"clip": c, "ref": refs[c] or "", "hyp": h} for c, h in first.items() if refs.get(c)]}


def offline_accuracy(probes: list[dict[str, Any]], refs: dict[str, str | None],
                     offline: dict[str, str]) -> dict[str, Any]:
    """The offline transcripts scored on the same requests as `wer` (each answered request's clip,
    as often as it was answered), so equal transcripts give an equal WER; per clip when none was."""
    from asrperf.measure.wer import error_rates

    ids = [c for c in offline if refs.get(c)]
    if not ids:
        return {}
    answered = [r["clip_id"] for p in probes for r in p.get("requests", ())
                if r.get("outcome") == "ok" and not r.get("warmup") and refs.get(r["clip_id"])]
    weighted = [c for c in answered if c in offline] or ids
    off = error_rates([refs[c] for c in weighted], [offline[c] for c in weighted])
    return {"offline_wer": off.wer, "offline_transcripts": [{"clip": c, "ref": refs[c], "hyp": offline[c]} for c in ids]}


def cell_row(rows: list[dict[str, Any]], refs: dict[str, str | None], offline: dict[str, str] | None,
             setup: str) -> tuple[dict[str, Any], list[float]]:
    """The cell's row from `execute`'s rows (probes, then a result row for search and sweep), and
    the per-request latencies of its answer probe (the samples table)."""
    result = rows[-1] if rows and rows[-1].get("probe_role") == "result" else None
    probes = rows[:-1] if result is not None else rows
    if not probes:
        raise AsrperfError("the load plan ran no probe")
    k = answer_index(probes, result)
    answer = probes[k]
    row = {key: v for key, v in answer.items() if key not in _SHARED and key not in _PROBE_ONLY}
    first = probes[0]
    row.update({key: first.get(key) for key in ("server", "max_wait_ms", "max_queue", "slo")})
    row.update({key: result.get(key) for key in _RESULT if key in result} if result else {})
    late = [p["lateness_s_p99"] for p in probes if p.get("lateness_s_p99") is not None]
    row.update(mode=first.get("mode"), probe_role="result" if result else first.get("probe_role"),
               arrival=(result or first).get("arrival"),
               arrival_kind=str((result or first).get("arrival") or "").split(":")[0] or None,
               answer_probe_index=k, n_probes=len(probes), server_setup=setup,
               lateness_s_p99=max(late) if late else None,
               lateness_ok=all(p.get("lateness_ok") for p in probes),
               transcripts_consistent=all(p.get("transcripts_consistent") is not False for p in probes),
               server_probes=[{key: v for key, v in p.items() if key not in _SHARED} for p in probes])
    row.update(served_accuracy(probes, refs, offline))
    if offline is not None:
        row.update(offline_accuracy(probes, refs, offline))
    samples = [r["latency_s"] for r in answer.get("requests", ()) if r.get("outcome") == "ok" and not r.get("warmup")]
    return row, samples


def fold_load_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An `asrperf load` run's rows (one per probe, one per result) as one row per plan, shaped as a
    server cell's; rows of other runs pass through unchanged."""
    probes = [r for r in rows if str(r.get("cell_key", "")).startswith("server/") and r.get("probe_role")]
    if not probes or len(probes) != len(rows):
        return rows
    plan = sorted(probes, key=lambda r: r["cell_key"])
    first = plan[0]
    result = plan[-1] if plan[-1].get("probe_role") == "result" else None
    setup = setup_label(first.get("max_wait_ms") or 0.0, first.get("max_queue") or 0, first.get("mode") or "",
                        (result or first).get("arrival") or "", first.get("slo") or "")
    row, _ = cell_row(plan, {}, None, setup)
    identity = {"run_id": first.get("run_id"), "cell_key": f"server/{first.get('mode')}", "status": "ok",
                "scenario": "server", "model": first.get("model"), "model_name": first.get("model"),
                "engine": first.get("engine") or first.get("server"), "dtype": first.get("dtype"),
                "variant": first.get("variant"), "device": first.get("device"), "threads": None,
                "weights_requested": None, "batch_size": first.get("max_batch_size"),
                "clip_length_s": first.get("clip_length_s"), "target_url": first.get("target_url")}
    return [{**row, **identity, "transcripts": None}]
