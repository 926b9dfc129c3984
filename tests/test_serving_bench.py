"""benchmarks/serving.py's compute bound: the most a server can serve under a latency SLO, from the
offline batch latencies (a request waits at least for its batch's compute)."""

import importlib.util
from pathlib import Path

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
