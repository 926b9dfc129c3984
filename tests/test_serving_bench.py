"""benchmarks/serving.py's compute bound: the most a server can serve under a latency SLO, from the
offline batch latencies (a request waits at least for its batch's compute)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serving.py"


def _serving():
    spec = importlib.util.spec_from_file_location("serving_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probes(*batch_latency):
    return {"max_throughput_probes": [{"batch_size": b, "status": "ok", "latency_s_p50": s, "samples_per_s": b / s}
                                      for b, s in batch_latency] + [{"batch_size": 32, "status": "oom"}]}


def test_the_bound_takes_the_best_batch_that_fits_the_slo_and_compares_it_with_batch_1():
    serving = _serving()
    mt = _probes((1, 0.5), (2, 0.8), (4, 1.6), (8, 3.0), (16, 5.8))
    [line] = serving.slo_bound(mt, "p99<=2s", rate_b1=1.4)
    # batch 4 fits 2 s (2.5 req/s); batch 8 would give 2.67 req/s but takes 3 s
    assert "at most **2.5 req/s** (batch 4, 1.60 s)" in line
    assert "= 1.79x the measured max rate with max_batch_size 1" in line


def test_no_bound_without_a_latency_term_or_offline_probes():
    serving = _serving()
    assert serving.slo_bound(_probes((1, 0.5)), "goodput>=0.99", 1.0) == []
    assert serving.slo_bound({}, "p99<=2s", 1.0) == []
    [line] = serving.slo_bound(_probes((1, 2.5), (2, 4.0)), "p99<=2s", 1.0)
    assert line.startswith("- compute bound: no batch size runs within 2 s offline")


def test_the_queue_model_is_an_md1_queue_at_batch_1():
    # Pollaczek-Khinchine: mean wait in M/D/1 = rho * D / (2 (1 - rho))
    serving = _serving()
    service = 0.5
    for rho in (0.5, 0.8):
        lat = serving.simulated_latencies(rho / service, lambda b: service, 1, 0.0, n=200_000, seed=1)
        wait = sum(lat) / len(lat) - service
        assert abs(wait - rho * service / (2 * (1 - rho))) < 0.05 * rho * service / (2 * (1 - rho)), (rho, wait)


def test_the_queue_model_batches_only_what_waits_and_interpolates_batch_latency():
    serving = _serving()
    latency = serving.batch_latency([{"batch_size": 1, "latency_s_p50": 0.5}, {"batch_size": 4, "latency_s_p50": 1.1}])
    assert [latency(b) for b in (1, 2, 4, 8)] == pytest.approx([0.5, 0.7, 1.1, 2.2])
    step = {1: 0.5, 2: 0.6, 3: 0.7}.__getitem__
    # two requests 10 ms apart fill a batch of 2 and go at once; the third waits out its 20 ms alone
    assert serving.queue_latencies([0.0, 0.01, 1.0], step, 2, 0.02) == pytest.approx([0.61, 0.60, 0.52])
    # while the worker computes the first, three arrive: it takes them together when it is free (0.5 s)
    assert serving.queue_latencies([0.0, 0.1, 0.2, 0.3], step, 8, 0.0) == pytest.approx([0.5, 1.1, 1.0, 0.9])


def test_the_batching_gain_the_offline_latencies_allow():
    serving = _serving()
    # no per-clip gain from batching (L(b) = b L(1)): batching cannot raise the rate
    flat_gain = _probes((1, 0.5), (2, 1.0), (4, 2.0), (8, 4.0))
    [line] = serving.batching_model(flat_gain, "p99<=2s", 8, 0.02)
    ratio = float(line.split("**")[1].rstrip("x"))
    assert ratio < 1.1, line
    # a batch of 8 as cheap as one: the gain is several times
    [line] = serving.batching_model(_probes((1, 0.5), (8, 0.5)), "p99<=2s", 8, 0.02)
    assert float(line.split("**")[1].rstrip("x")) > 3, line
    assert serving.batching_model(flat_gain, "goodput>=0.99", 8, 0.02) == []
    [line] = serving.batching_model(_probes((1, 2.1), (2, 2.8)), "p99<=2s", 8, 0.02)
    assert line.endswith("no rate meets p99<=2s (a batch of 1 takes 2.10 s), with or without batching")
