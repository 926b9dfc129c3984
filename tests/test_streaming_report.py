"""The streaming report from literal rows: the table, the live-captions recommendation and its
precedence over the batch-1 real-time row, both plots, and the HTML page."""

import pytest

from asrperf.report.html import render_html
from asrperf.report.plots import make_plots
from asrperf.report.recommend import Thresholds, recommend
from asrperf.report.streaming_tables import streaming_tables

BASE = {"status": "ok", "device": "cpu", "device_name": "AMD EPYC", "scenario": "streaming", "clip_length_s": 15.0,
        "batch_size": 1, "threads": 2, "engine": "ct2", "dtype": "int8", "variant": "int8", "weights": "real",
        "model": "whisper-tiny.en", "stream_policy": "local_agreement", "isolated": True,
        "stream_policy_label": "LocalAgreement-2 on engine ct2's word timestamps, committed text as prompt",
        "stream_clock": "simulated", "stream_n_streams": 2, "stream_n_updates": 30, "stream_n_chunks": 30,
        "first_partial_s_p50": 1.3, "first_partial_s_max": 1.4, "finalization_n": 12, "finalization_missing": 0,
        "finalization_method": "aligned", "emission_delay_n": 90, "chunk_rtf_p50": 0.3, "chunk_rtf_p99": 0.5,
        "revised_word_share": 0.05, "shown_words": 120, "n_scored": 2, "stream_wer_delta_paired": True,
        "stream_wer_n_worse": 1, "emission_delay_reference": "offline word timestamps of engine ct2 (...)",
        "capacity_workers": "threads", "capacity_threads": 2, "capacity_max_miss_share": 0.01,
        "capacity_max_finalization_p90_s": 3.0}


def _row(chunk_ms: int, p50: float, p90: float, wer: float, delta: float, miss: float, **kw) -> dict:
    return {**BASE, "chunk_ms": chunk_ms, "finalization_s_p50": p50, "finalization_s_p90": p90,
            "finalization_s_p99": p90 + 0.1, "emission_delay_s_p50": p50 - 0.2, "emission_delay_s_p90": p90 - 0.2,
            "emission_delay_s_p99": p90, "wer": wer, "wer_ci_low": wer - 0.01, "wer_ci_high": wer + 0.01,
            "offline_wer": wer - delta, "stream_wer_delta": delta, "stream_wer_delta_ci_low": delta - 0.01,
            "stream_wer_delta_ci_high": delta + 0.01, "deadline_miss_share": miss, "keeps_up": miss <= 0.01,
            "cell_key": f"k{chunk_ms}", **kw}


ROWS = [
    _row(500, 1.1, 1.4, 0.09, 0.03, 0.20),  # fastest, but falls behind real time
    _row(1000, 1.6, 2.0, 0.07, 0.01, 0.0, capacity_streams=3, capacity_finalization_s_p90=2.6,
         capacity_deadline_miss_share=0.0, capacity_stop_reason="4 stream(s): 5.0% of chunks missed their deadline",
         capacity_probes=[{"streams": n, "deadline_miss_share": m, "finalization_s_p90": f, "chunk_rtf_p50": 0.3,
                           "kept_up": ok, "why": "x"} for n, m, f, ok in
                          [(1, 0.0, 2.0, True), (2, 0.0, 2.2, True), (4, 0.05, 4.0, False), (3, 0.0, 2.6, True)]]),
    _row(2000, 2.4, 3.1, 0.06, 0.0, 0.0),
]
LATENCY = {**BASE, "scenario": "latency", "clip_length_s": 5.0, "latency_s_p50": 0.2, "latency_s_p90": 0.25,
           "latency_s_min": 0.19, "latency_s_max": 0.3, "n_calls": 5, "wer": 0.06, "rtfx": 20.0,
           "throughput_samples_per_s": 5.0, "cell_key": "lat"}


def test_streaming_table_has_a_column_per_configuration_and_chunk_size():
    (t,) = streaming_tables(ROWS + [LATENCY])
    assert t.title == "Streaming, cpu, 15 s clips"
    assert t.columns == ["whisper-tiny.en (ct2, int8), 500 ms", "whisper-tiny.en (ct2, int8), 1000 ms",
                         "whisper-tiny.en (ct2, int8), 2000 ms"]
    cells = dict(t.rows)
    assert cells["finalization s p50 / p90 / p99"][1] == "1.60 / 2.00 / 2.10 (n 12; aligned)"
    assert cells["chunks past deadline %"] == ["20.0", "0.0", "0.0"]
    assert cells["keeps up in real time"] == ["no", "yes", "yes"]
    assert cells["ΔWER streamed − offline pts [95% CI], worse clips"][1] == "+1.00 [+0.00, +2.00], 1/2 worse"
    assert cells["max real-time streams"][1].startswith("3 (threads, 2 thread(s); at N: p90 finalization 2.60 s")
    assert cells["max real-time streams"][0] == "— (not searched)"
    assert any(n.startswith("word end times: offline word timestamps") for n in t.notes)


def test_rows_with_and_without_the_endpoint_get_their_own_columns():
    rows = [_row(1000, 1.6, 2.0, 0.07, 0.01, 0.0, stream_endpoint="none", cell_key="a"),
            _row(1000, 1.1, 1.4, 0.08, 0.02, 0.0, stream_endpoint="vad", cell_key="b")]
    (t,) = streaming_tables(rows)
    assert t.columns == ["whisper-tiny.en (ct2, int8), 1000 ms, no endpoint",
                         "whisper-tiny.en (ct2, int8), 1000 ms, VAD endpoint"]
    assert dict(t.rows)["finalization s p50 / p90 / p99"] == ["1.60 / 2.00 / 2.10 (n 12; aligned)",
                                                              "1.10 / 1.40 / 1.50 (n 12; aligned)"]


def test_live_captions_picks_the_lowest_p90_that_keeps_up_within_the_wer_bound_and_takes_precedence():
    recs = {r.scenario: r for r in recommend(ROWS + [LATENCY])}
    live = recs["live captions"]
    assert live.choice == "whisper-tiny.en (ct2, int8), 15 s, 1000 ms chunks, batch 1, cpu, 2 threads"
    assert "p90 finalization 2,000 ms" in live.why and "up to 3 concurrent real-time streams" in live.why
    assert any("do not keep up in real time: whisper-tiny.en (ct2, int8), 500 ms" in c for c in live.caveats)
    realtime = recs["real-time"]
    assert realtime.criterion.startswith("batch-1 latency of whole clips (not streamed)")
    assert any("'live captions' row takes precedence" in c for c in realtime.caveats)
    order = [r.scenario for r in recommend(ROWS + [LATENCY])]
    assert order[:2] == ["live captions", "real-time"]
    # a tighter WER bound leaves only the 2000 ms configuration
    tight = {r.scenario: r for r in recommend(ROWS, Thresholds(wer_bound=0.065))}["live captions"]
    assert tight.choice.startswith("whisper-tiny.en (ct2, int8), 15 s, 2000 ms chunks")
    # no streaming rows: no live-captions row, and the real-time row has no such caveat
    plain = recommend([LATENCY])
    assert "live captions" not in [r.scenario for r in plain]


def test_both_streaming_plots_are_drawn_and_the_page_shows_them():
    plots = {p.name: p for p in make_plots(ROWS)}
    for name in ("streaming-latency-vs-chunk-cpu", "streaming-streams-vs-latency-cpu"):
        assert plots[name].png is not None and plots[name].png.startswith(b"\x89PNG"), plots[name].missing
    page = render_html(ROWS, [], list(plots.values()))
    assert "<h2>Streaming</h2>" in page and 'id="plot-streaming-latency-vs-chunk-cpu"' in page
    assert 'id="plot-streaming-streams-vs-latency-cpu"' in page and "live captions" in page


def test_streaming_plots_say_why_they_are_missing():
    rows = [{**r, "capacity_probes": None, "capacity_missing_reason": "streaming.capacity = false"} for r in ROWS]
    plots = {p.name: p for p in make_plots(rows)}
    assert plots["streaming-streams-vs-latency"].missing == "not measured in this run: streaming.capacity = false"
    assert "streaming-latency-vs-chunk" not in plots  # that one is drawn
    assert not any(p.name.startswith("streaming") for p in make_plots([LATENCY]))  # no streaming rows: no such plots


@pytest.mark.parametrize("flags, expected", [
    (["--scenario", "streaming", "--chunk-ms", "500,1000"], (("streaming",), (500, 1000))),
    (["-s", "latency,streaming"], (("latency", "streaming"), (1000,))),
])
def test_cli_flags_set_scenarios_and_chunk_sizes(flags, expected):
    from asrperf.cli import _build_config

    scenario = [flags[1]]
    chunk = flags[3] if len(flags) > 2 else None
    cfg = _build_config(None, ["whisper-tiny.en"], None, None, [], None, None, None, None, None, None, None, None,
                        None, None, None, None, "int8", scenario=scenario, chunk_ms=chunk, engines=["ct2"])
    assert (cfg.scenarios, cfg.chunk_ms) == expected
    assert {m.engine for m in cfg.models} == {"ct2"}
