"""The max-throughput search, checked against literal throughput curves (no engine, no timing)."""

import sys
import time
import types

import numpy as np
import pytest

from asrperf.config import TimingConfig
from asrperf.data.clips import Clip
from asrperf.engines.base import Transcription
from asrperf.errors import ConfigError
from asrperf.scenarios.max_throughput import (
    Probe,
    SearchPolicy,
    SearchResult,
    is_oom,
    measure_with_engine,
    search,
)


def fake_measure(curve, peaks=None, raise_at=None):
    """A measure over a literal table: batch -> samples/s, "oom" or "failed"; records calls."""
    calls = []

    def measure(b):
        calls.append(b)
        if raise_at and b in raise_at:
            raise raise_at[b]
        v = curve[b]
        if v in ("oom", "failed"):
            return Probe(b, v, error=f"{v} at {b}")
        return Probe(b, "ok", samples_per_s=v, latency_s_p50=b / v,
                     peak_memory_bytes=(peaks or {}).get(b))

    measure.calls = calls
    return measure


# the literal curves below pin the single-probe rules: patience 1 (the default, 2, has its own test)
NO_REFINE = SearchPolicy(plateau_patience=1, refine=False)


# --- plateau ------------------------------------------------------------------------------------

def test_plateau_rule_stops_at_first_batch_under_five_percent_gain_and_best_is_max():
    # rule: stop at the ok probe with samples/s < best-before * (1 + 0.05)
    # 2.0 -> 3.8 (>= 2.1) -> 7.0 (>= 3.99) -> 7.2 (< 7.35): stop at 8, never probe 16
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 7.2, 16: 7.25})
    r = search(m, NO_REFINE)
    assert m.calls == [1, 2, 4, 8]
    assert r.stop_reason == "plateau"
    assert r.best.batch_size == 8 and r.best.samples_per_s == 7.2  # 7.2 > 7.0: the plateau probe counts
    assert [p.batch_size for p in r.probes] == [1, 2, 4, 8]


def test_plateau_threshold_is_exact():
    # exactly +5% is not a plateau (t < B * 1.05 is); +4.9% is
    m = fake_measure({1: 100.0, 2: 105.0, 4: 110.2, 8: 1.0})
    r = search(m, NO_REFINE)
    assert m.calls == [1, 2, 4] and r.stop_reason == "plateau" and r.best.batch_size == 4
    m = fake_measure({1: 100.0, 2: 104.9, 4: 999.0})
    r = search(m, NO_REFINE)
    assert m.calls == [1, 2] and r.stop_reason == "plateau" and r.best.batch_size == 2


def test_plateau_with_a_drop_keeps_the_earlier_best():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 6.0})
    r = search(m, NO_REFINE)
    assert r.stop_reason == "plateau" and r.best.batch_size == 4


@pytest.mark.parametrize("curve, calls, best", [
    # a noisy flat probe at 2 (+2.5%), then real gains: patience 2 carries on and finds batch 8
    ({1: 0.79, 2: 0.81, 4: 1.10, 8: 1.30, 16: 1.31, 32: 1.20}, [1, 2, 4, 8, 16, 32], 16),
    # two flat probes in a row end it: 4 and 8 both < 1.05 x 2.0
    ({1: 1.0, 2: 2.0, 4: 2.05, 8: 2.08, 16: 9.0}, [1, 2, 4, 8], 8),
    # a flat probe, a gain, a flat probe: the count starts again after the gain
    ({1: 1.0, 2: 1.02, 4: 2.0, 8: 2.02, 16: 3.0, 32: 3.05, 64: 3.06}, [1, 2, 4, 8, 16, 32, 64], 64),
])
def test_plateau_patience_needs_that_many_flat_probes_in_a_row(curve, calls, best):
    m = fake_measure(curve)
    r = search(m, SearchPolicy(plateau_patience=2, refine=False, max_batch=64))
    assert m.calls == calls and r.stop_reason == "plateau" and r.best.batch_size == best


def test_plateau_gain_zero_continues_while_strictly_not_worse():
    m = fake_measure({1: 2.0, 2: 2.0, 4: 1.9})
    r = search(m, SearchPolicy(plateau_patience=1, plateau_gain=0.0, refine=False))
    assert m.calls == [1, 2, 4] and r.stop_reason == "plateau"
    assert r.best.batch_size == 1  # ties go to the smaller batch


# --- OOM ----------------------------------------------------------------------------------------

def test_oom_probe_ends_growth_and_best_ok_is_returned():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 13.0, 16: "oom"})
    r = search(m, NO_REFINE)
    assert m.calls == [1, 2, 4, 8, 16]
    assert r.stop_reason == "oom"
    assert r.best.batch_size == 8
    assert r.probes[-1].batch_size == 16 and r.probes[-1].status == "oom"


def test_measure_that_raises_oom_is_recorded_as_oom():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 13.0},
                     raise_at={16: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")})
    r = search(m, NO_REFINE)
    assert r.stop_reason == "oom" and r.best.batch_size == 8
    assert r.probes[-1].status == "oom" and "Tried to allocate" in r.probes[-1].error


def test_oom_at_start_batch_gives_no_best():
    r = search(fake_measure({1: "oom"}), SearchPolicy(plateau_patience=1))
    assert r.stop_reason == "oom" and r.best is None and len(r.probes) == 1
    row = r.to_row()
    assert row["max_throughput_samples_per_s"] is None and row["max_throughput_stop_reason"] == "oom"


# --- failed -------------------------------------------------------------------------------------

def test_failure_with_nothing_ok_ends_search_failed():
    m = fake_measure({}, raise_at={1: ValueError("bad input shape")})
    r = search(m, SearchPolicy(plateau_patience=1))
    assert m.calls == [1]
    assert r.stop_reason == "failed" and r.best is None
    assert r.probes[0].status == "failed" and r.probes[0].error == "ValueError: bad input shape"


def test_failure_after_success_stops_growth_without_refine():
    m = fake_measure({1: 2.0, 2: 3.8, 4: "failed", 3: 5.0})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2, 4]  # no refine at 3 after a failure
    assert r.stop_reason == "failed" and r.best.batch_size == 2
    assert [p.status for p in r.probes] == ["ok", "ok", "failed"]


# --- max batch ----------------------------------------------------------------------------------

def test_max_batch_caps_growth_and_is_probed_exactly():
    m = fake_measure({1: 1.0, 2: 2.0, 4: 4.0, 6: 6.0})
    r = search(m, SearchPolicy(plateau_patience=1, max_batch=6))
    assert m.calls == [1, 2, 4, 6]
    assert r.stop_reason == "max_batch" and r.best.batch_size == 6


def test_growth_factor_below_two_still_grows():
    m = fake_measure({b: float(b) for b in range(1, 20)})
    search(m, SearchPolicy(plateau_patience=1, growth=1.5, max_batch=10, refine=False))
    assert m.calls == [1, 2, 3, 4, 6, 9, 10]  # next(b) = max(b + 1, round(1.5 b)), capped


# --- memory budget ------------------------------------------------------------------------------

def test_measured_peak_over_budget_stops_growth_and_is_not_best():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0}, peaks={1: 100, 2: 150, 4: 1000})
    # only one point is known before batch 2 -> measured; 1 and 2 give slope 50 -> 4 predicted 250
    r = search(m, SearchPolicy(plateau_patience=1, memory_budget_bytes=500, refine=False))
    assert m.calls == [1, 2, 4]
    assert r.stop_reason == "memory_budget"
    assert r.probes[-1].status == "over_budget" and r.probes[-1].peak_memory_bytes == 1000
    assert r.best.batch_size == 2


def test_predicted_peak_over_budget_is_recorded_but_not_run():
    # peak = 1000 + 100 * b: 1100, 1200, 1400; batch 8 is predicted at 1800 > 1500
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 13.0}, peaks={1: 1100, 2: 1200, 4: 1400})
    r = search(m, SearchPolicy(plateau_patience=1, memory_budget_bytes=1500, refine=False))
    assert m.calls == [1, 2, 4]
    assert r.stop_reason == "memory_budget" and r.best.batch_size == 4
    last = r.probes[-1]
    assert (last.batch_size, last.status, last.samples_per_s) == (8, "over_budget", None)
    assert "predicted peak 1800 B" in last.error


def test_budget_refine_midpoint_also_predicted():
    # best 4, neighbour 8 predicted 1800; midpoint 6 predicted 1600 > 1500: recorded, not run
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0}, peaks={1: 1100, 2: 1200, 4: 1400})
    r = search(m, SearchPolicy(plateau_patience=1, memory_budget_bytes=1500, refine=True))
    assert m.calls == [1, 2, 4]
    assert [(p.batch_size, p.status) for p in r.probes][-2:] == [(8, "over_budget"), (6, "over_budget")]
    # with a budget of 1650, midpoint 6 (1600) fits and is measured
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 6: 9.0}, peaks={1: 1100, 2: 1200, 4: 1400, 6: 1600})
    r = search(m, SearchPolicy(plateau_patience=1, memory_budget_bytes=1650, refine=True))
    assert m.calls == [1, 2, 4, 6] and r.best.batch_size == 6 and r.stop_reason == "memory_budget"


# --- refine -------------------------------------------------------------------------------------

def test_refine_tries_midpoint_exactly_once_after_oom():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 13.0, 16: "oom", 12: 15.0, 10: 99.0, 14: 99.0})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2, 4, 8, 16, 12]
    assert r.stop_reason == "oom"
    assert r.best.batch_size == 12 and r.best.samples_per_s == 15.0


def test_refine_midpoint_that_ooms_is_recorded_and_best_unchanged():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 13.0, 16: "oom", 12: "oom"})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2, 4, 8, 16, 12]
    assert r.best.batch_size == 8 and r.probes[-1].status == "oom" and r.stop_reason == "oom"


def test_refine_after_plateau_drop_probes_between_best_and_larger():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 6.0, 6: 7.5})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2, 4, 8, 6]
    assert r.best.batch_size == 6 and r.stop_reason == "plateau"


def test_no_refine_when_best_is_the_largest_probe():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 7.2})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2, 4, 8] and r.best.batch_size == 8


def test_no_refine_when_neighbours_are_adjacent():
    m = fake_measure({1: 2.0, 2: "oom"})
    r = search(m, SearchPolicy(plateau_patience=1, refine=True))
    assert m.calls == [1, 2] and r.best.batch_size == 1 and r.stop_reason == "oom"


# --- row ----------------------------------------------------------------------------------------

def test_to_row_fields_and_units():
    m = fake_measure({1: 2.0, 2: 3.8, 4: 7.0, 8: 7.2}, peaks={1: 10, 2: 20, 4: 40, 8: 80})
    row = search(m, NO_REFINE).to_row()
    assert row["max_throughput_samples_per_s"] == 7.2
    assert row["max_throughput_batch_size"] == 8
    assert row["max_throughput_latency_s_p50"] == pytest.approx(8 / 7.2)
    assert row["max_throughput_peak_memory_bytes"] == 80
    assert row["max_throughput_stop_reason"] == "plateau"
    assert [p["batch_size"] for p in row["max_throughput_probes"]] == [1, 2, 4, 8]
    assert set(row["max_throughput_probes"][0]) == {
        "batch_size", "status", "samples_per_s", "latency_s_p50", "peak_memory_bytes", "error", "contended"}
    empty = SearchResult().to_row()  # a search that measured nothing: no best, said so, never a number
    assert empty["max_throughput_probes"] == [] and empty["max_throughput_samples_per_s"] is None
    assert empty["max_throughput_batch_size"] is None


@pytest.mark.parametrize("kw", [{"start_batch": 0}, {"growth": 1.0}, {"max_batch": 0},
                                {"plateau_gain": -0.1}, {"plateau_patience": 0}, {"memory_budget_bytes": 0}])
def test_policy_rejects_impossible_values(kw):
    with pytest.raises(ConfigError):
        SearchPolicy(**kw)


# --- is_oom -------------------------------------------------------------------------------------

class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by class name, torch not imported)."""


@pytest.mark.parametrize("exc", [
    MemoryError(),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.1 GiB total)"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"),
    OutOfMemoryError("whatever"),
], ids=["MemoryError", "cuda-oom", "cuda-error", "cpu-allocator", "class-name"])
def test_is_oom_true(exc):
    assert is_oom(exc)


@pytest.mark.parametrize("exc", [ValueError("out of memory"), RuntimeError("shape mismatch"), KeyError("x")])
def test_is_oom_false(exc):
    assert not is_oom(exc)


def test_is_oom_follows_the_cause_chain():
    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise ValueError("engine wrapped it") from inner
    except ValueError as outer:
        assert is_oom(outer)


def test_is_oom_uses_torch_class_only_when_already_imported(monkeypatch):
    class TorchOOM(Exception):  # a name that the class-name rule would not catch
        pass

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(OutOfMemoryError=TorchOOM))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert is_oom(TorchOOM())
    monkeypatch.delitem(sys.modules, "torch")
    assert not is_oom(TorchOOM())


def test_module_does_not_import_torch():
    import subprocess

    code = "import sys, asrperf.scenarios.max_throughput as m; m.is_oom(ValueError()); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- measure_with_engine ------------------------------------------------------------------------

class TinyEngine:
    """Transcribes in `call_s` seconds whatever the batch; runs out of memory at batch >= oom_from."""

    def __init__(self, oom_from=4, fail_at=None, call_s=0.0):
        self.oom_from, self.fail_at, self.call_s = oom_from, fail_at, call_s
        self.syncs = 0
        self.batches = []

    def transcribe(self, audios, sample_rate):
        self.batches.append(len(audios))
        if len(audios) == self.fail_at:
            raise ValueError("broken batch")
        if len(audios) >= self.oom_from:
            raise MemoryError("fake allocation failure")
        if self.call_s:
            time.sleep(self.call_s)
        return Transcription(texts=["" for _ in audios], tokens=[1 for _ in audios])

    def synchronize(self):
        self.syncs += 1

    def info(self):
        return {}


def _clips(n=3):
    return [Clip(id=f"0.1s-{i:03d}", length_s=0.1, audio=np.zeros(1600, dtype=np.float32),
                 sample_rate=16000, text=None, utterance_ids=(), speech_s=0.0) for i in range(n)]


TIMING = TimingConfig(warmup_calls=0, warmup_min_s=0.0, min_calls=1, min_time_s=0.0)


def test_measure_with_engine_records_ok_then_oom():
    # each call sleeps a fixed 10 ms whatever the batch, so samples/s ~doubles with the batch
    # and the plateau rule cannot stop the search before the OOM
    engine = TinyEngine(oom_from=4, call_s=0.01)
    peaks = iter([111, 222])
    measure = measure_with_engine(engine, _clips(), TIMING, peak_memory=lambda: next(peaks))
    r = search(measure, SearchPolicy(plateau_patience=1, refine=False))
    assert [(p.batch_size, p.status) for p in r.probes] == [(1, "ok"), (2, "ok"), (4, "oom")]
    assert r.best.batch_size == 2
    ok = [p for p in r.probes if p.ok]
    assert all(p.samples_per_s > 0 and p.latency_s_p50 > 0 for p in ok)
    assert [p.peak_memory_bytes for p in ok] == [111, 222]
    assert r.stop_reason == "oom"
    assert r.probes[2].error == "MemoryError: fake allocation failure"


def test_measure_with_engine_probes_each_size_independently():
    engine = TinyEngine(oom_from=4)
    measure = measure_with_engine(engine, _clips(), TIMING, peak_memory=lambda: None)
    # a probe after an OOM works again: 3 < 4 runs fine after 4 ran out of memory
    probes = [measure(b) for b in (1, 2, 4, 3)]
    assert [p.status for p in probes] == ["ok", "ok", "oom", "ok"]
    assert probes[0].peak_memory_bytes is None


def test_measure_with_engine_syncs_after_oom_and_reports_other_failures():
    engine = TinyEngine(oom_from=100, fail_at=2)
    measure = measure_with_engine(engine, _clips(), TIMING, peak_memory=lambda: 0)
    p = measure(2)
    assert p.status == "failed" and p.error == "ValueError: broken batch"
    engine = TinyEngine(oom_from=4)
    measure = measure_with_engine(engine, _clips(), TIMING, peak_memory=lambda: 0)
    before = engine.syncs
    p = measure(4)
    assert p.status == "oom"
    # timer syncs once before the call (then the call raises); then the OOM clean-up syncs once
    assert engine.syncs - before == 2


def test_measure_with_engine_resets_peak_before_each_probe():
    engine = TinyEngine(oom_from=100)
    events = []
    measure = measure_with_engine(engine, _clips(), TIMING, peak_memory=lambda: events.append("read") or 5,
                                  reset_peak=lambda: events.append("reset"))
    measure(1)
    measure(2)
    assert events == ["reset", "read", "reset", "read"]
