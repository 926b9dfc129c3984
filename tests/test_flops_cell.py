"""FLOPs and MFU on a real cell: counted on the real forward, divided by the measured peak."""

import pytest

from asrperf.config import config_from_dict
from asrperf.measure.flops import analytic_whisper_encoder_flops
from asrperf.report.tables import study_tables
from asrperf.results.store import Store
from asrperf.run.runner import run


def test_flops_and_mfu_on_a_whisper_cell(tmp_path, cache_dir, tiny_source):
    cfg = config_from_dict({
        "source": tiny_source,
        "models": [{"name": "whisper-tiny", "weights": "random"}],
        "timing": {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0},
        "run": {"clip_lengths_s": [5], "n_clips": 1, "store": str(tmp_path / "r.sqlite"),
                "cache_dir": str(cache_dir), "flops": True, "energy": False},
    })
    assert run(cfg).failed == 0
    with Store(cfg.store) as s:
        (row,) = s.rows()
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
    names = [name for name, _ in study_tables([row])[0].rows]
    assert "achieved GFLOP/s (MFU %), b1, 5 s" in names
