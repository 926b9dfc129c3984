"""The "live captions" recommendation, from streaming rows: the lowest p90 finalization latency
among configurations that keep up in real time, within the WER bound on streamed WER. Where it
exists it takes precedence over the batch-1 "real-time" row for live audio. Pure data in.
"""

from __future__ import annotations

from typing import Any

from asrperf.report.recommend import Recommendation, Thresholds, _ms, _rec, _select, _wer_text
from asrperf.report.streaming_tables import live_captions_candidates, streaming_rows

SCENARIO = "live captions"
Row = dict[str, Any]


def live_captions(device: str, rows: list[Row], th: Thresholds) -> Recommendation | None:
    """The live-captions choice on `device`; None when the device has no streaming rows."""
    stream = [r for r in streaming_rows(rows) if r.get("status") == "ok"]
    if not stream:
        return None
    criterion = (f"lowest p90 finalization latency (end of an utterance to its text final), streamed in chunks; "
                 f"keeps up in real time (chunks past deadline within streaming.max_miss_share); streamed "
                 f"WER ≤ {100 * th.wer_bound:.1f}%")
    cands, caveats = live_captions_candidates(stream, th.wer_bound)
    pick = _select(cands, lambda r: r.get("finalization_s_p90"), True, lambda v: f"p90 finalization {_ms(v)}", th,
                   "a p90 finalization latency that keeps up")
    pick.caveats = caveats + [c for c in pick.caveats if c not in caveats]
    if not cands and not pick.none_reason.startswith("no configuration"):
        pick.none_reason = "no streaming configuration keeps up in real time within the WER bound"

    def why(r: Row, v: float) -> str:
        delta = (f", {100 * r['stream_wer_delta']:+.1f} pts vs offline" if r.get("stream_wer_delta") is not None else "")
        cap = (f"; up to {r['capacity_streams']} concurrent real-time streams ({r.get('capacity_workers')})"
               if r.get("capacity_streams") is not None else "")
        return (f"p90 finalization {_ms(v)} (p50 {_ms(r['finalization_s_p50'])}, {r.get('finalization_method')}) "
                f"with {r.get('chunk_ms')} ms chunks, {r.get('stream_policy_label') or r.get('stream_policy')}, "
                f"{r.get('stream_clock')} clock; {100 * (r.get('deadline_miss_share') or 0):.1f}% of chunks past "
                f"deadline; streamed {_wer_text(r)}{delta}{cap}")

    return _rec(SCENARIO, device, criterion, pick, why)
