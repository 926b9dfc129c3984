"""The serving report, recommendation and compare on literal server rows (no server runs here)."""

import pytest

from asrperf.load.cell import cell_row, fold_load_run, setup_label
from asrperf.report.compare import IMPROVEMENT, REGRESSION, compare_cells
from asrperf.report.recommend import Thresholds, recommend
from asrperf.report.serving_plots import latency_vs_load
from asrperf.report.serving_tables import serving_tables
from asrperf.report.tables import to_markdown

SETUP = setup_label(10, 64, "search", "poisson:1", "p99<=2s")


def _requests(latency_s: float, n: int, clip: str = "c0", text: str = "hello world") -> list[dict]:
    # latencies spread evenly over [0.8, 1.2] x latency_s, every request answered
    return [{"index": i, "clip_id": clip, "outcome": "ok", "warmup": False, "text": text,
             "latency_s": latency_s * (0.8 + 0.4 * i / max(1, n - 1))} for i in range(n)]


def _probe(role: str, rate: float, p99: float, met: bool, n: int = 200, batch_mean: float = 2.0,
           open_loop: bool = True, goodput: float = 1.0) -> dict:
    return {"probe_role": role, "offered_rate_rps": rate, "achieved_rate_rps": rate, "open_loop": open_loop,
            "arrival": f"poisson:{rate:g}" if open_loop else "concurrency:1", "latency_s_p50": p99 / 1.2,
            "latency_s_p99": p99, "slo_met": met, "slo_verdict": "pass" if met else "fail", "n_requests": n,
            "n_ok": n, "n_errors": 0, "n_rejected": 0, "n_timeouts": 0, "goodput_fraction": goodput,
            "goodput_ci_low": max(0.0, goodput - 0.02), "goodput_ci_high": min(1.0, goodput + 0.005),
            "batch_size_mean": batch_mean, "batch_size_max": 4, "batch_size_counts": {"1": n // 2, "4": n // 2},
            "lateness_s_p99": 0.001, "lateness_ok": True, "requests": _requests(p99 / 1.2, n)}


def _row(engine: str, max_rate: float | None, upper: float, probes: list[dict], wer: float = 0.05,
         batch: int = 8, **extra) -> dict:
    answer = next((i for i, p in enumerate(probes) if p["offered_rate_rps"] == max_rate and p["slo_met"]), 0)
    return {"status": "ok", "scenario": "server", "device": "cpu", "device_name": "AMD EPYC", "clip_length_s": 15.0,
            "model": "whisper-tiny.en", "model_name": "whisper-tiny.en", "engine": engine, "dtype": "int8",
            "variant": "int8", "weights": "real", "weights_requested": "real", "threads": 2, "batch_size": batch,
            "cell_key": f"{engine}|whisper-tiny.en|weights=real|int8|cpu|threads=2|15s|batch={batch}|server",
            "run_id": "r1", "mode": "search", "slo": "p99<=2s", "arrival": "poisson:1", "arrival_kind": "poisson",
            "max_wait_ms": 10.0, "max_queue": 64, "server_setup": SETUP,
            "search_status": "found" if max_rate else "unattainable", "max_sustainable_rate_rps": max_rate,
            "upper_rate_rps": upper, "resolved": True, "sync_rate_rps": 1.0, "saturation_rate_rps": 4.0,
            "server_probes": probes, "answer_probe_index": answer, **{k: probes[answer][k] for k in (
                "latency_s_p50", "latency_s_p99", "offered_rate_rps", "achieved_rate_rps", "goodput_fraction",
                "goodput_ci_low", "goodput_ci_high", "batch_size_mean", "batch_size_counts")},
            "wer": wer, "wer_ci_low": wer / 2, "wer_ci_high": wer * 2, "offline_wer": wer,
            "served_offline_match_share": 1.0, "ref_words": 100,
            "transcripts": [{"clip": "c0", "ref": "hello world", "hyp": "hello world"}], **extra}


A_PROBES = [_probe("synchronous", 1.0, 0.5, True, open_loop=False), _probe("saturation", 4.0, 5.0, False, open_loop=False),
            _probe("bisect", 1.0, 0.6, True), _probe("bisect", 2.5, 1.2, True), _probe("bisect", 3.2, 3.0, False)]
A = _row("ct2", 2.5, 3.2, A_PROBES)
B_PROBES = [_probe("synchronous", 1.0, 0.5, True, open_loop=False), _probe("saturation", 3.0, 6.0, False, open_loop=False),
            _probe("bisect", 1.0, 0.6, True), _probe("bisect", 1.5, 1.5, True),
            _probe("bisect", 2.4, 2.6, False, goodput=0.8)]
B = _row("ct2", 1.5, 2.4, B_PROBES)


def test_serving_table_has_the_max_rate_probes_batches_and_wer():
    fast = _row("transformers", 3.1, 3.4, A_PROBES, batch=1, wer=0.06)
    (t,) = serving_tables([A, fast])
    text = to_markdown([t])
    assert "Serving under load, cpu, 15 s clips" in t.title and len(t.columns) == 2
    cells = dict(t.rows)
    assert cells["max rate under SLO, req/s"][0].startswith("2.5 (resolved; missed at 3.2")
    assert "mean 2.0 (1:100, 4:100); largest in any probe 4" in cells["batch sizes formed (requests per size)"]
    assert "vs offline 5.0" in cells["WER under load % [95% CI] vs offline"][0]
    assert "bisect 3.2: p99 3,000 ms" in cells["probes"][0]
    assert "batch ≤ 1" in text and "batch ≤ 8" in text


def test_unattainable_and_unresolved_are_said():
    none = _row("ct2", None, 1.0, A_PROBES[:2])
    loose = {**A, "resolved": False, "note": "a bracketing probe's CI straddles the SLO target"}
    (t,) = serving_tables([none])
    assert dict(t.rows)["max rate under SLO, req/s"][0].startswith("none (unattainable")
    (t,) = serving_tables([loose])
    assert "unresolved" in dict(t.rows)["max rate under SLO, req/s"][0]
    assert any("straddles" in n for n in t.notes)


def test_serving_recommendation_is_the_highest_rate_within_the_wer_bound():
    fast_bad = _row("transformers", 3.1, 3.4, A_PROBES, wer=0.30)
    recs = {r.scenario: r for r in recommend([A, B, fast_bad], Thresholds(wer_bound=0.10))}
    rec = recs["serving"]
    assert "ct2" in rec.choice and "wait 10 ms" in rec.choice and rec.why.startswith("2.5 req/s (resolved")
    assert any("excluded by the WER bound" in c and "transformers" in c for c in rec.caveats)
    other_slo = {**B, "slo": "p90<=1s", "cell_key": B["cell_key"] + "x"}
    rec = {r.scenario: r for r in recommend([A, other_slo])}["serving"]
    assert any("another SLO" in c for c in rec.caveats)
    assert "serving" not in {r.scenario for r in recommend([{**A, "scenario": "latency"}])}


def test_latency_vs_load_plot_needs_two_offered_rates():
    (p,) = latency_vs_load([A, B])
    assert p.png is not None and p.png.startswith(b"\x89PNG")
    single = {**A, "mode": "single", "search_status": None, "server_probes": [_probe("single", 2.0, 1.0, True)]}
    (p,) = latency_vs_load([single])
    assert p.png is None and "2 or more open-loop offered rates" in p.missing


def test_compare_flags_a_lower_max_rate_and_a_higher_p99_at_a_matched_rate():
    cell = compare_cells(A, B, [], [], 0.05)
    m = {x.metric.split(" at ")[0]: x for x in cell.metrics}
    assert m["max sustainable rate"].verdict == REGRESSION  # B's bracket [1.5, 2.4] lies below A's [2.5, 3.2]
    assert m["max sustainable rate"].change == pytest.approx(1.5 / 2.5)
    p99 = next(x for x in cell.metrics if x.metric.startswith("p99 at"))
    assert "2.5/2.4 req/s" in p99.metric  # the highest offered rates within 10% of each other
    assert p99.verdict == REGRESSION and p99.b > p99.a
    good = next(x for x in cell.metrics if x.metric.startswith("goodput at"))
    assert good.change == pytest.approx(-0.2) and good.verdict == REGRESSION
    back = compare_cells(B, A, [], [], 0.05)
    assert next(x for x in back.metrics if x.metric == "max sustainable rate").verdict == IMPROVEMENT
    assert "[max_wait_ms=10" in cell.label


def test_overlapping_brackets_are_noise_and_no_matched_rate_is_said():
    near = _row("ct2", 2.4, 3.3, [_probe("bisect", 9.0, 0.6, True)])
    cell = compare_cells(A, near, [], [], 0.05)
    m = {x.metric: x for x in cell.metrics}
    assert m["max sustainable rate"].verdict == "within noise"
    assert m["p99 at matched rate"].verdict.startswith("missing: no open-loop offered rate within 10%")


def test_a_load_run_folds_into_one_cell_row():
    ctx = {"status": "ok", "run_id": "load-1", "scenario": "server", "mode": "search", "model": "m", "engine": "ct2",
           "dtype": "int8", "variant": "int8", "device": "cpu", "max_batch_size": 8, "max_wait_ms": 10.0,
           "max_queue": 64, "slo": "p99<=2s", "clip_length_s": 15.0, "server": "asrperf"}
    rows = [{**ctx, **p, "cell_key": f"server/search/{i:02d}-{p['probe_role']}-{p['arrival']}"}
            for i, p in enumerate(A_PROBES)]
    rows.append({**ctx, "probe_role": "result", "cell_key": "server/search/05-result-poisson:1", "arrival": "poisson:1",
                 "search_status": "found", "max_sustainable_rate_rps": 2.5, "upper_rate_rps": 3.2, "resolved": True})
    (row,) = fold_load_run(rows)
    assert row["server_setup"] == SETUP and row["batch_size"] == 8 and row["engine"] == "ct2"
    assert row["max_sustainable_rate_rps"] == 2.5 and len(row["server_probes"]) == 5
    assert row["server_probes"][row["answer_probe_index"]]["offered_rate_rps"] == 2.5
    assert fold_load_run([A]) == [A]  # cell rows of asrperf run pass through


def test_cell_row_takes_the_answer_probe_and_scores_every_probe():
    probes = [{**p, "mode": "search", "slo": "p99<=2s", "max_wait_ms": 10.0, "max_queue": 64, "server": "asrperf"}
              for p in A_PROBES]
    probes[-1]["requests"] = _requests(2.0, 10, text="hello word")  # one probe's answers differ from offline
    result = {"probe_role": "result", "arrival": "poisson:1", "search_status": "found",
              "max_sustainable_rate_rps": 2.5, "upper_rate_rps": 3.2, "resolved": True}
    row, samples = cell_row([*probes, result], {"c0": "hello world"}, {"c0": "hello world"}, SETUP)
    assert row["answer_probe_index"] == 3 and row["latency_s_p99"] == A_PROBES[3]["latency_s_p99"]
    assert len(samples) == 200 and row["arrival_kind"] == "poisson" and row["probe_role"] == "result"
    n = sum(len(p["requests"]) for p in probes)
    assert row["served_offline_match_share"] == pytest.approx((n - 10) / n)
    assert row["offline_wer"] == 0.0 and row["wer"] == pytest.approx(10 / (2 * n))
    assert "requests" in row["server_probes"][0] and "slo" not in row["server_probes"][0]


def test_offline_wer_is_scored_on_the_served_requests_so_equal_transcripts_give_equal_wer():
    # clip c1 is answered 3x as often as c0, and its transcript has an error: request-weighted
    reqs = _requests(1.0, 2, "c0", "hello world") + _requests(1.0, 6, "c1", "good by")
    probe = {**_probe("single", 1.0, 1.0, True), "requests": reqs}
    refs, offline = {"c0": "hello world", "c1": "good bye"}, {"c0": "hello world", "c1": "good by"}
    row, _ = cell_row([probe], refs, offline, SETUP)
    assert row["served_offline_match_share"] == 1.0
    assert row["wer"] == pytest.approx(row["offline_wer"]) == pytest.approx(6 / 16)
