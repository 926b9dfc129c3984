"""CUDA paths; skipped cleanly where no CUDA device is present.

benchmarks/gpu/run.sh runs these with `-m "gpu or device" --asrperf-device cuda` on the lent GPU
machine, so each test here checks one claim the CUDA path makes: the timer waits for queued
device work, the measured peak is the device's, NVML sees work above idle, the max-throughput
search stops on a real out-of-memory error and leaves the engine usable, half precision
transcribes like fp32.
"""

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MIB = 2**20


def test_cuda_cell_measures_with_synchronisation(cache_dir):
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine

    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp16", "cuda")
    audio = np.zeros(16000 * 5, dtype=np.float32)
    out = engine.transcribe([audio, audio], 16000)
    engine.synchronize()
    assert len(out.texts) == 2 and engine.info()["device"].startswith("cuda")


def _gpu_spin_s(cycles: int) -> float:
    """How long `torch.cuda._sleep(cycles)` keeps the GPU busy, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def test_timer_includes_work_queued_on_the_gpu(cache_dir):
    """The kernel launch returns at once; only the engine's synchronize() puts the work inside the interval."""
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine
    from asrperf.measure.timer import time_once

    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny"), "random", "fp16", "cuda")
    cycles = 100_000_000  # ~50 ms at the H200's ~2 GHz boost clock
    _gpu_spin_s(1000)  # warm: the first launch loads the kernel
    gpu_s = _gpu_spin_s(cycles)
    timed_s, _ = time_once(lambda: torch.cuda._sleep(cycles), engine.synchronize)
    unsynced_s, _ = time_once(lambda: torch.cuda._sleep(cycles), lambda: None)
    torch.cuda.synchronize()
    assert gpu_s > 0.005, f"the spin kernel ran only {gpu_s * 1e3:.2f} ms: too short to test anything"
    assert timed_s >= 0.9 * gpu_s, (timed_s, gpu_s)
    assert unsynced_s < 0.5 * gpu_s, (unsynced_s, gpu_s)  # what the timer would read without the sync


def _reference_matmul_flops_per_s(dtype: torch.dtype, n: int = 8192, calls: int = 10) -> float:
    """Dense matmul rate the way the device's own benchmarks time it: a size that fills the chip,
    back-to-back launches between two CUDA events, median of several such runs."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    rates = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            torch.mm(a, b)
        end.record()
        end.synchronize()
        rates.append(calls * 2 * n**3 / (start.elapsed_time(end) / 1e3))
    return float(np.median(rates))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_measured_matmul_peak_is_near_the_device_peak(dtype):
    """MFU divides by measure_peak(): a peak measured too low inflates every MFU by the same factor."""
    from asrperf.measure.peak import measure_peak

    peak = measure_peak("cuda", dtype)
    reference = _reference_matmul_flops_per_s({"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
    print(f"\n{dtype}: measure_peak {peak.matmul_flops_per_s / 1e12:.0f} TFLOP/s ({peak.method}); "
          f"8192^3 between CUDA events {reference / 1e12:.0f} TFLOP/s; copy {peak.copy_bytes_per_s / 1e12:.2f} TB/s")
    assert peak.matmul_flops_per_s >= 0.8 * reference, (
        f"measure_peak reads {peak.matmul_flops_per_s / 1e12:.0f} TFLOP/s, {reference / 1e12:.0f} by the reference")
    assert peak.matmul_flops_per_s <= 1.1 * reference


def test_nvml_energy_sees_gpu_work_above_idle():
    from asrperf.measure.energy import NvmlReader, measure_energy

    reader = NvmlReader(0)
    ok = reader.available()
    if not ok:
        pytest.skip(f"NVML energy not readable here: {ok.reason}")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, a)
    torch.cuda.synchronize()
    busy_s = max(2.0, reader.min_window_s + 0.5)
    with measure_energy([reader], idle_s=reader.min_window_s) as meter:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < busy_s:
            for _ in range(20):
                torch.mm(a, a)
            torch.cuda.synchronize()
    r = meter.result
    print(f"\nNVML ({r.method}): idle {r.idle_w:.0f} W, busy {r.mean_power_w:.0f} W over {r.window_s:.2f} s")
    assert r.window_ok and r.method.startswith("measured: nvml")
    assert 1 < r.idle_w < r.mean_power_w < 2000
    assert r.mean_power_w > 1.5 * r.idle_w, "a chip busy with bf16 matmuls should draw well above idle"


def test_max_throughput_search_stops_on_a_real_cuda_oom(cache_dir):
    """A per-process memory cap makes the caching allocator raise torch.cuda.OutOfMemoryError at a
    small batch: the search must record it as its stop, keep the best batch before it, and leave
    the engine able to run again (the failed batch's memory freed)."""
    from asrperf.config import TimingConfig
    from asrperf.data.clips import Clip
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine
    from asrperf.scenarios.max_throughput import SearchPolicy, measure_with_engine, search

    engine = TransformersEngine(cache_dir)
    engine.load(resolve("wav2vec2-base"), "random", "fp16", "cuda")
    audio = np.random.default_rng(0).normal(0, 0.1, 10 * 16000).astype(np.float32)
    clips = [Clip("10s-000", 10.0, audio, 16000, None, (), 10.0)]
    timing = TimingConfig(warmup_calls=0, min_calls=1, min_time_s=0.0, max_calls=1)
    engine.transcribe([audio], 16000)  # the context and the weights exist before the cap
    torch.cuda.synchronize()
    total = torch.cuda.get_device_properties(0).total_memory
    # the first conv layer alone holds 512 x 32,000 fp16 activations (31 MiB) per 10 s clip
    cap = torch.cuda.memory_allocated() + 512 * MIB
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        measure = measure_with_engine(engine, clips, timing, torch.cuda.max_memory_allocated,
                                      torch.cuda.reset_peak_memory_stats)
        result = search(measure, SearchPolicy(max_batch=1024, plateau_gain=0.0))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print("\nprobes:", [(p.batch_size, p.status, p.peak_memory_bytes) for p in result.probes])
    assert result.stop_reason == "oom", result.probes
    oom = next(p for p in result.probes if p.status == "oom")
    assert "out of memory" in oom.error.lower()
    assert result.best is not None and 1 <= result.best.batch_size < oom.batch_size
    assert result.best.peak_memory_bytes is not None and result.best.peak_memory_bytes <= cap
    assert len(engine.transcribe([audio] * 2, 16000).texts) == 2


@pytest.fixture(scope="module")
def clip(builtin_clips):
    return builtin_clips(5.0)[0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_transcribes_a_real_clip_like_fp32(cache_dir, clip, dtype):
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine
    from asrperf.measure.wer import error_rates

    texts = {}
    for d in ("fp32", dtype):
        engine = TransformersEngine(cache_dir)
        engine.load(resolve("whisper-tiny.en"), "real", d, "cuda")
        texts[d] = engine.transcribe([clip.audio], clip.sample_rate).texts[0]
        assert next(engine.model.parameters()).dtype == engine.dtype
    assert error_rates([texts["fp32"]], [texts[dtype]]).wer <= 0.1, texts
    assert error_rates([clip.text], [texts[dtype]]).wer < 0.25, (clip.text, texts[dtype])
