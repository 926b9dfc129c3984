"""FLOPs and MFU on a real cell: counted on the real forward, divided by the measured peak."""

import pytest

from asrperf.measure.flops import analytic_whisper_encoder_flops
from asrperf.report.tables import study_tables


def test_flops_and_mfu_on_a_whisper_cell(run_rows):
    (row,) = run_rows([{"name": "whisper-tiny", "weights": "random"}], flops=True, energy=False,
                      timing={"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0})
    # a 5 s clip still fills one 30 s encoder window: the encoder costs its analytic count
    stages = row["flops_by_stage"]
    assert stages["WhisperEncoder"] == pytest.approx(analytic_whisper_encoder_flops(384, 4), rel=0.02)
    assert row["flops_attention_per_call"] > 0
    roots = {k: v for k, v in stages.items() if "." not in k}
    # the roots hold all but the few ops `generate` runs outside any module (< 1%)
    assert sum(roots.values()) == pytest.approx(row["flops_per_call"], rel=0.01)
    # the decoder steps (15 tokens for 5 s at 3 tokens/s) and the vocabulary head
    assert stages["WhisperForConditionalGeneration.proj_out"] > 0
    assert stages["WhisperForConditionalGeneration.model"] > 0
    assert row["peak_matmul_flops_per_s"] > 1e9 and row["peak_copy_bytes_per_s"] > 1e8
    assert 0 < row["mfu"] < 1, "achieved FLOP/s cannot beat the device's measured matmul peak"
    assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_call"] / row["latency_s_p50"])
    # per unit of work: one 30 s window; 15 tokens of which the first step is the prefill (prompt
    # and the cross-attention K/V of the window), so 14 token steps; audio = one 5 s clip
    assert row["flops_encoder_windows"] == 1
    assert row["flops_encoder_per_window"] == pytest.approx(analytic_whisper_encoder_flops(384, 4), rel=0.02)
    assert row["flops_decoder_tokens"] == 14
    assert 5e7 < row["flops_decoder_per_token"] < 1e8  # analytic: 65.6 MFLOPs at cache 4..17 (test_flops.py)
    assert row["flops_decoder_prefill_per_window"] > 4 * 2 * 2 * 1500 * 384**2  # cross-attention K, V once
    assert row["flops_per_audio_s"] == pytest.approx(row["flops_per_call"] / 5.0)
    # memory: the timed calls' peak RSS, the whole cell's high-water mark, the weights in memory
    assert 100 * 2**20 < row["rss_peak_timed_bytes"] <= row["peak_rss_bytes"]
    assert row["weights_bytes"] == row["weights_bytes_by_dtype"]["float32"] >= 4 * row["n_params"]
    assert row["cuda_peak_allocated_timed_bytes"] is None and "device cpu" in row["cuda_memory_missing_reason"]
    assert row["nvml_process_peak_bytes"] is None and "device cpu" in row["nvml_process_missing_reason"]
    table = {name: cells[0] for name, cells in study_tables([row])[0].rows}
    assert "achieved GFLOP/s (MFU %), b1, 5 s" in table
    assert table["encoder GFLOPs per 30 s window, b1, 5 s"] == f"{row['flops_encoder_per_window'] / 1e9:,.2f}"
    assert table["decoder MFLOPs per token, b1, 5 s"] == f"{row['flops_decoder_per_token'] / 1e6:,.2f}"
    assert table["GFLOPs per audio s, b1, 5 s"] == f"{row['flops_per_audio_s'] / 1e9:,.2f}"
    assert table["peak RSS MiB, timed calls, b1, 5 s"] == f"{row['rss_peak_timed_bytes'] / 2**20:,.0f}"
    assert table["CUDA peak allocated MiB, timed calls, b1, 5 s"].startswith("— (device cpu")
    assert table["NVML process MiB (peak, sampled), timed calls, b1, 5 s"].startswith("— (device cpu")
    assert table["weights MiB"] == f"{row['weights_bytes'] / 2**20:,.1f}"
    assert float(table["load s"]) > 0
