"""The load generator's pure parts: arrival patterns, the SLO syntax and verdicts, probe rows, the search."""

import math

import numpy as np
import pytest
from scipy import stats

from asrperf.errors import ConfigError
from asrperf.load.arrivals import Arrivals, inter_arrival_s, nominal_rate_rps, parse_arrivals, schedule
from asrperf.load.client import OK, REJECTED, TIMEOUT, RequestRecord
from asrperf.load.generator import Bounds, LoadRun
from asrperf.load.metrics import completion_rate_rps, knee_rate_rps, probe_row
from asrperf.load.search import find_max_rate, saturation_rate, sweep
from asrperf.load.slo import FAIL, PASS, UNRESOLVED, evaluate, parse_slo, requests_to_resolve, verdict
from asrperf.load.workload import WorkClip
from asrperf.measure.stats import wilson_ci


@pytest.mark.parametrize("text, expected", [
    ("poisson:2", Arrivals("poisson", rate_rps=2.0)),
    ("constant:0.5", Arrivals("constant", rate_rps=0.5)),
    ("gamma:4:0.25", Arrivals("gamma", rate_rps=4.0, burstiness=0.25)),
    ("concurrency:8", Arrivals("concurrency", clients=8)),
    ("streams:3", Arrivals("streams", clients=3)),
])
def test_arrival_patterns_parse(text, expected):
    assert parse_arrivals(text) == expected
    assert parse_arrivals(expected.label) == expected


@pytest.mark.parametrize("text, fragment", [
    ("uniform:2", "unknown pattern 'uniform'"), ("poisson", "takes 1 number"), ("poisson:-1", "must be > 0"),
    ("gamma:2", "takes 2 number"), ("gamma:2:0", "burstiness must be > 0"), ("concurrency:2.5", "whole number"),
    ("poisson:fast", "not a number"),
])
def test_bad_arrival_patterns_are_one_line_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as exc:
        parse_arrivals(text)
    assert "\n" not in str(exc.value)


def test_rate_processes_have_the_asked_mean_and_shape():
    rng = np.random.default_rng(0)
    n = 20_000
    poisson = inter_arrival_s(Arrivals("poisson", rate_rps=4.0), n, rng)
    assert stats.kstest(poisson, "expon", args=(0, 0.25)).pvalue > 0.01
    bursty = inter_arrival_s(Arrivals("gamma", rate_rps=4.0, burstiness=0.25), n, rng)
    # gamma with shape k: mean 1/rate, coefficient of variation 1/sqrt(k) = 2
    assert bursty.mean() == pytest.approx(0.25, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.05)
    assert np.all(inter_arrival_s(Arrivals("constant", rate_rps=4.0), 3, rng) == 0.25)


def test_schedule_is_bounded_by_count_and_time_and_seeded():
    plan = schedule(Arrivals("constant", rate_rps=10.0), [1.0, 2.0], max_requests=100, duration_s=1.0, seed=0)
    assert [round(t, 6) for t, _ in plan] == [round(0.1 * i, 6) for i in range(10)]
    assert [c for _, c in plan] == [0, 1] * 5
    assert len(schedule(Arrivals("constant", rate_rps=10.0), [1.0], 4, 60.0, 0)) == 4
    a = schedule(Arrivals("poisson", rate_rps=5.0), [1.0], 50, 60.0, seed=3)
    assert a == schedule(Arrivals("poisson", rate_rps=5.0), [1.0], 50, 60.0, seed=3)
    assert a != schedule(Arrivals("poisson", rate_rps=5.0), [1.0], 50, 60.0, seed=4)


def test_streams_send_each_clip_after_the_previous_one_has_played():
    # two streams over clips of 2 s and 4 s, staggered by half the first clip (1 s)
    plan = schedule(Arrivals("streams", clients=2), [2.0, 4.0], max_requests=100, duration_s=7.0, seed=0)
    assert plan == [(0.0, 0), (1.0, 1), (2.0, 1), (5.0, 0), (6.0, 0)]
    assert nominal_rate_rps(Arrivals("streams", clients=2), [2.0, 4.0]) == pytest.approx(2 / 3)
    assert nominal_rate_rps(Arrivals("concurrency", clients=2), [2.0]) is None


@pytest.mark.parametrize("text, terms", [
    ("p99<=2s", [("latency_s", 0.99, 2.0)]),
    ("p90 <= 500ms", [("latency_s", 0.90, 0.5)]),
    ("p90_per_audio_s<=0.2", [("latency_per_audio_s", 0.90, 0.2)]),
    ("goodput>=0.99", [("goodput", 0.99, math.inf)]),
    ("goodput>=95%", [("goodput", 0.95, math.inf)]),
    ("p99.9<=3s,goodput>=0.9", [("latency_s", 0.999, 3.0), ("goodput", 0.9, math.inf)]),
])
def test_slo_syntax(text, terms):
    slo = parse_slo(text)
    assert [(t.metric, pytest.approx(t.required), pytest.approx(t.bound)) for t in slo.terms] == terms


@pytest.mark.parametrize("text, fragment", [
    ("p99<2s", "cannot read 'p99<2s'"), ("p99<=2", "give the latency a unit"), ("p100<=2s", "percentile"),
    ("p90_per_audio_s<=0.2s", "is a ratio"), ("goodput>=1.5", "share in (0, 1]"), ("", "no terms"),
    ("goodput>=0.9,goodput>=0.8", "goodput once"), ("latency<=2s", "cannot read"),
])
def test_bad_slos_are_one_line_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as exc:
        parse_slo(text)
    assert "\n" not in str(exc.value)


def test_wilson_interval_literal():
    # 95 of 100: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    low, high = wilson_ci(95, 100)
    assert low == pytest.approx(0.888250, abs=1e-6) and high == pytest.approx(0.978456, abs=1e-6)
    assert wilson_ci(10, 10)[1] == 1.0 and wilson_ci(0, 10)[0] == 0.0
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


@pytest.mark.parametrize("k, n, required, expected", [
    (400, 400, 0.99, PASS),  # low end 400 / (400 + z^2) = 0.9905
    (200, 200, 0.99, UNRESOLVED),  # every request met it, but 200 cannot show 99%
    (90, 100, 0.99, FAIL),
    (99, 100, 0.99, UNRESOLVED),
])
def test_verdict_follows_the_wilson_interval(k, n, required, expected):
    assert verdict(k, n, required)[0] == expected


def test_requests_to_resolve_matches_the_wilson_bound():
    n = requests_to_resolve(0.99)
    assert n == 381
    assert wilson_ci(n, n)[0] >= 0.99 > wilson_ci(n - 1, n - 1)[0]
    assert requests_to_resolve(0.9) == 35


def _rec(i, latency_s, outcome=OK, audio_s=10.0, queue_s=0.1, compute_s=0.5, batch=2, text="hello world",
         warmup=False, lateness_s=0.001):
    r = RequestRecord(i, i % 2, f"c{i % 2}", audio_s, scheduled_s=float(i), warmup=warmup)
    r.sent_s = r.scheduled_s + lateness_s
    r.done_s = r.scheduled_s + latency_s
    r.outcome = outcome
    r.status = 200 if outcome == OK else 429
    if outcome == OK:
        r.queue_s, r.compute_s, r.batch_size, r.text = queue_s, compute_s, batch, text
    return r


CLIPS = [WorkClip("c0", 10.0, b"", "hello world"), WorkClip("c1", 10.0, b"", "hello there")]


def test_probe_row_literal():
    # 5 measured requests 1 s apart (one warm-up before them): 3 ok (0.8, 1.0, 3.0 s), one 429, one timeout
    records = [_rec(0, 0.5, warmup=True), _rec(1, 0.8), _rec(2, 1.0), _rec(3, 3.0),
               _rec(4, 0.2, REJECTED), _rec(5, 2.0, TIMEOUT)]
    run = LoadRun(Arrivals("constant", rate_rps=1.0), Bounds(10, 10.0, 2.0, warmup_s=0.5), 0, records)
    row = probe_row(run, CLIPS, parse_slo("p50<=1s"), {"engine": "stub"})
    assert (row["n_requests"], row["n_warmup_requests"], row["n_ok"], row["n_errors"]) == (5, 1, 3, 2)
    assert (row["n_rejected"], row["n_timeouts"]) == (1, 1)
    # window: first measured scheduled send (1 s) to the last answer (5 + 2 = 7 s) = 6 s
    assert row["window_s"] == pytest.approx(6.0)
    assert row["offered_rate_rps"] == 1.0
    assert row["achieved_rate_rps"] == pytest.approx(3 / 6)
    assert row["audio_s_per_s"] == pytest.approx(30 / 6)
    assert row["latency_s_p50"] == pytest.approx(1.0) and row["latency_s_max"] == pytest.approx(3.0)
    assert row["latency_per_audio_s_p50"] == pytest.approx(0.1)
    # from the wire send: 1 ms less
    assert row["latency_from_sent_s_p50"] == pytest.approx(0.999)
    # overhead = from-sent latency - queue - compute: 0.999 - 0.6 = 0.399 at the median
    assert row["overhead_s_p50"] == pytest.approx(0.399)
    assert row["lateness_s_p99"] == pytest.approx(0.001) and row["lateness_ok"] is True
    # goodput: ok and <= 1 s: requests 1 and 2, of 5 (the 429 and the timeout count as misses)
    assert row["goodput_fraction"] == pytest.approx(2 / 5)
    assert (row["goodput_ci_low"], row["goodput_ci_high"]) == pytest.approx(wilson_ci(2, 5))
    assert row["slo_met"] is False and row["slo_verdict"] == UNRESOLVED
    assert row["batch_size_counts"] == {"2": 3} and row["batch_size_mean"] == 2.0
    # c1 ("hello there", requests 1 and 3) was answered "hello world": 1 edit in 2 words each time;
    # c0 (request 2) right: 2 edits / 6 reference words
    assert row["wer"] == pytest.approx(2 / 6) and row["n_scored"] == 3
    assert row["transcripts_consistent"] is True
    assert row["engine"] == "stub" and row["scenario"] == "server"
    assert len(row["requests"]) == 6 and row["requests"][0]["warmup"] is True


def test_probe_row_without_references_has_no_wer():
    run = LoadRun(Arrivals("constant", rate_rps=1.0), Bounds(), 0, [_rec(0, 0.5)])
    row = probe_row(run, [WorkClip("c0", 10.0, b"", None)] * 2, None, {})
    assert row["wer"] is None and "loop mode" in row["wer_note"]
    assert row["slo_verdict"] is None and row["goodput_fraction"] == 1.0


def test_failures_count_as_missing_a_percentile_slo():
    recs = [_rec(i, 0.5) for i in range(98)] + [_rec(98, 0.1, REJECTED), _rec(99, 0.1, REJECTED)]
    result = evaluate(parse_slo("p99<=1s"), recs)
    assert result.terms[0].met == 98 and result.met is False


def _fake_server(capacity_rps: float, sync_rps: float, verdict_margin: float = 0.1):
    """A probe function for a server that meets the SLO below `capacity_rps` x 0.8."""
    calls = []

    def probe(arrivals, role):
        calls.append((role, arrivals.label))
        if arrivals.kind == "concurrency":
            rate = sync_rps if arrivals.clients == 1 else capacity_rps
            return {"achieved_rate_rps": rate, "slo_met": True, "slo_verdict": PASS, "offered_rate_rps": rate}
        limit = 0.8 * capacity_rps
        met = arrivals.rate_rps <= limit
        clear = abs(arrivals.rate_rps - limit) >= verdict_margin * limit
        v = (PASS if met else FAIL) if clear else UNRESOLVED
        return {"achieved_rate_rps": min(arrivals.rate_rps, capacity_rps), "slo_met": met, "slo_verdict": v,
                "offered_rate_rps": arrivals.rate_rps}

    return probe, calls


def test_search_brackets_the_rate_within_the_precision():
    probe, calls = _fake_server(capacity_rps=10.0, sync_rps=2.0, verdict_margin=0.0)
    r = find_max_rate(probe, Arrivals("poisson", rate_rps=1.0), saturation_clients=8, precision=0.05, max_probes=10)
    assert calls[:3] == [("synchronous", "concurrency:1"), ("saturation", "concurrency:8"), ("bisect", "poisson:2")]
    assert r.status == "found" and r.resolved and r.precision_reached
    assert r.max_rate_rps <= 8.0 < r.upper_rate_rps
    assert r.upper_rate_rps - r.max_rate_rps <= 0.05 * r.upper_rate_rps
    assert r.row()["max_sustainable_rate_rps"] == r.max_rate_rps and r.row()["n_probes"] == len(calls)


def test_search_is_unresolved_when_a_bracketing_probe_straddles():
    probe, _ = _fake_server(capacity_rps=10.0, sync_rps=2.0, verdict_margin=0.2)
    r = find_max_rate(probe, Arrivals("poisson", rate_rps=1.0), 8, precision=0.05, max_probes=10)
    assert r.status == "found" and not r.resolved and "straddles" in r.note


def test_search_stops_when_one_request_at_a_time_misses_the_slo():
    def probe(arrivals, role):
        return {"achieved_rate_rps": 1.0, "slo_met": False, "slo_verdict": FAIL}

    r = find_max_rate(probe, Arrivals("poisson", rate_rps=1.0), 4)
    assert r.status == "unattainable" and r.max_rate_rps is None and len(r.probes) == 2


def test_search_refuses_a_closed_loop_pattern():
    with pytest.raises(ConfigError, match="open-loop"):
        find_max_rate(lambda a, r: {}, Arrivals("concurrency", clients=2), 4)


def test_sweep_probes_fractions_of_saturation_and_finds_the_knee():
    def probe(arrivals, role):
        if arrivals.kind == "concurrency":
            return {"achieved_rate_rps": 10.0, "offered_rate_rps": 10.0, "latency_s_p90": 5.0}
        rho = arrivals.rate_rps / 10.0
        return {"offered_rate_rps": arrivals.rate_rps, "latency_s_p90": 1.0 / max(1e-9, 1 - rho) if rho < 1 else 99.0}

    result = sweep(probe, Arrivals("poisson", rate_rps=1.0), 8)
    assert [round(p["offered_rate_rps"], 6) for p in result.probes[1:]] == [1, 3, 5, 7, 8, 9, 10, 11]
    # p90 = 1 / (1 - rho): 1.11 at the lowest rate; 2x that (2.22) is passed at rho = 0.7 (3.33)
    assert result.knee_rate_rps == pytest.approx(5.0)


def test_knee_literal():
    rows = [{"offered_rate_rps": r, "latency_s_p90": p} for r, p in ((1, 1.0), (2, 1.5), (3, 2.0), (4, 2.1), (5, 9.0))]
    assert knee_rate_rps(rows) == 3
    assert knee_rate_rps([]) is None


def _answered(i, scheduled_s, done_s, warmup=False):
    r = RequestRecord(i, 0, "c0", 10.0, scheduled_s=scheduled_s, warmup=warmup)
    r.sent_s, r.done_s, r.outcome, r.status, r.text = scheduled_s, done_s, OK, 200, "hello world"
    return r


def test_completion_rate_counts_the_saturated_window_only():
    # a closed loop at saturation against a server running batches of 4 every 2 s: the warm-up batch
    # (sent at 0) is answered at 2 s, later batches at 4, 6, 8; sending stops after 6 s, so the batch
    # sent at 6 drains alone after the loaded window. The steady state is 4 answers per 2 s.
    # a batch's answers come back a few ms apart, and each client sends again on its answer
    records = [_answered(j, 0.003 * j, 2.0 + 0.003 * j, warmup=True) for j in range(4)]
    for k, t in enumerate((2.0, 4.0, 6.0)):
        records += [_answered(4 + 4 * k + j, t + 0.003 * j, t + 2.0 + 0.003 * j) for j in range(4)]
    run = LoadRun(Arrivals("concurrency", clients=8), Bounds(100, 6.0, 10.0, warmup_s=1.0), 0, records)
    # answers of the batches ending at 4 and 6 s (8), over the last answer at 2 s to the last at 6 s
    assert completion_rate_rps(run) == pytest.approx(8 / (6.009 - 2.009))  # = 2.0
    row = probe_row(run, CLIPS, None, {})
    # achieved counts measured answers (12) over first measured send (2 s) to the last answer (8 s)
    assert row["achieved_rate_rps"] == pytest.approx(12 / (8.009 - 2.0))
    assert row["completion_rate_rps"] == pytest.approx(2.0)
    # a lone answer in the window gives no rate, and the saturation falls back to the achieved one
    lone = LoadRun(Arrivals("concurrency", clients=1), Bounds(10, 3.0, 10.0), 0, [_answered(0, 0.0, 2.0)])
    assert completion_rate_rps(lone) is None
    assert saturation_rate({"completion_rate_rps": None, "achieved_rate_rps": 0.5}) == 0.5
    assert saturation_rate({"completion_rate_rps": 1.5, "achieved_rate_rps": 0.5}) == 1.5


def test_the_scheduler_lets_a_started_request_go_on_while_it_waits_for_the_next_send():
    """The wait for the next send time yields to the event loop, and the scheduler prepares nothing
    until the request it started is on the wire: a request due 2 ms before the next one once waited
    for that one's send, since the wait spun without yielding."""
    import asyncio
    import time

    from asrperf.load.generator import _on_wire, _until

    async def scenario():
        record = RequestRecord(0, 0, "c", 1.0, 0.0)
        steps = []

        async def sending():  # a send path that yields to the loop 5 times before its first byte
            for _ in range(5):
                steps.append(time.monotonic())
                await asyncio.sleep(0)
            record.sent_s = 1.0

        task = asyncio.create_task(sending())
        await _on_wire(record, task, None, time.monotonic() + 10.0)
        assert record.sent_s == 1.0 and len(steps) == 5  # it waited for the wire, not for the limit
        others = []

        async def other():
            others.append(time.monotonic())

        deadline = time.monotonic() + 0.002  # inside the spin: no sleep, only the clock wait
        asyncio.create_task(other())
        await _until(deadline)
        assert others and others[0] < deadline  # the other task ran while the scheduler waited
        await task

    asyncio.run(scenario())


def test_a_run_pauses_garbage_collection_and_gives_it_back():
    """No collection pause lands on a send while a run lasts; the caller's collector is as it was after."""
    import gc

    from asrperf.load.generator import _no_collection_pauses

    assert gc.isenabled()
    with _no_collection_pauses():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with _no_collection_pauses():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
