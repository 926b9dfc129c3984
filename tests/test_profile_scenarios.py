"""The profile and decode scenarios through the runner, the roofline by hand, and their report tables."""

import gzip
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from asrperf.config import config_from_dict
from asrperf.errors import ConfigError
from asrperf.measure.roofline import OVERHEAD_FACTOR, count_pass, roofline_point
from asrperf.measure.stages import Invocation, step_intervals
from asrperf.results.store import Store
from asrperf.run.plan import expand
from asrperf.run.runner import run

# -- by hand ------------------------------------------------------------------------------------
# peaks 100 GFLOP/s and 10 GB/s: ridge 10 FLOP/byte
PEAK_F, PEAK_B = 1e11, 1e10


@pytest.mark.parametrize("flops, nbytes, time_s, compute_s, memory_s, bound", [
    (2e9, 1e8, 0.03, 0.02, 0.01, "compute"),  # 20 FLOP/byte, 1.5x the 20 ms compute floor
    (1e8, 1e9, 0.15, 0.001, 0.1, "memory"),  # 0.1 FLOP/byte, 1.5x the 100 ms memory floor
    (1e8, 1e9, 0.31, 0.001, 0.1, "launch/overhead"),  # 3.1x the floor: neither roof explains it
    (1e9, 1e8, 0.03, 0.01, 0.01, "compute"),  # exactly at the ridge: compute (>=)
    (None, 1e9, 0.2, None, 0.1, "unknown (FLOPs not counted)"),
    (None, 1e9, 0.5, None, 0.1, "launch/overhead"),
])
def test_roofline_point_by_hand(flops, nbytes, time_s, compute_s, memory_s, bound):
    p = roofline_point(flops, nbytes, time_s, PEAK_F, PEAK_B)
    assert p["bound"] == bound
    assert p["memory_s"] == pytest.approx(memory_s)
    assert p["compute_s"] == (None if compute_s is None else pytest.approx(compute_s))
    assert p["lower_bound_s"] == pytest.approx(max(compute_s or 0, memory_s))
    assert p["ridge_flops_per_byte"] == pytest.approx(10.0)
    assert p["achieved_bytes_per_s"] == pytest.approx(nbytes / time_s)
    if flops is not None:
        assert p["intensity_flops_per_byte"] == pytest.approx(flops / nbytes)
        assert p["achieved_flops_per_s"] == pytest.approx(flops / time_s)
        assert p["flops_share_of_peak"] == pytest.approx(flops / time_s / PEAK_F)
    assert OVERHEAD_FACTOR == 3.0


def test_roofline_point_rejects_nonsense():
    with pytest.raises(ValueError, match="must all be > 0"):
        roofline_point(1e9, 1e8, 0.0, PEAK_F, PEAK_B)


def test_bytes_and_flops_per_root_forward_by_hand():
    """A tied embedding + LM head returning a cache: every byte counted by hand.

    ids (1, 5) int64 = 40 B in; table 100 x 8 fp32 = 3,200 B, read whole by the tied head (the
    lookup's 5 rows are inside it); logits 1 x 5 x 100 fp32 = 2,000 B out; the returned cache holds
    keys + values 2 x (1 x 5 x 8) fp32 = 320 B. FLOPs: the head's 5 x 8 x 100 multiply-adds = 8,000.
    An untied embedding alone reads only its looked-up rows: 5 x 8 x 4 = 160 B.
    """
    import torch

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(100, 8)
            self.head = torch.nn.Linear(8, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            h = self.emb(ids)
            layer = SimpleNamespace(keys=h.clone(), values=h.clone())
            return {"logits": self.head(h), "cache": SimpleNamespace(layers=[layer])}

    ids = torch.arange(5).unsqueeze(0)
    with torch.no_grad():
        (inv,) = count_pass(lambda: Tied()(ids), lambda: None)
        (alone,) = count_pass(lambda: torch.nn.Embedding(100, 8)(ids), lambda: None)
    assert inv.name == "Tied"
    assert inv.facts == {"flops": 8000, "weight_bytes": 3200, "inputs_bytes": 40, "state_bytes": 320,
                         "outputs_bytes": 2000}
    assert alone.facts["weight_bytes"] == 160 and alone.facts["flops"] == 0


def test_step_intervals_by_hand():
    enc, dec = object(), object()
    invs = [Invocation(enc, "E", 0.0, 1.0), Invocation(dec, "D", 1.1, 1.5), Invocation(dec, "D", 1.6, 2.0),
            Invocation(enc, "E", 2.0, 3.0), Invocation(dec, "D", 3.2, 3.3)]
    # each step from the end of the root forward before it to its own end
    assert step_intervals(invs, dec) == [pytest.approx([0.5, 0.5]), pytest.approx([0.3])]


# -- config and plan ----------------------------------------------------------------------------
def _cfg(tmp: Path, cache_dir: Path, source: dict, models: list, scenarios: list, **run_kw):
    return config_from_dict({
        "source": source, "models": models,
        "timing": {"warmup_calls": 1, "min_calls": 2, "min_time_s": 0.0},
        "run": {"clip_lengths_s": [5], "n_clips": 1, "store": str(tmp / "r.sqlite"), "cache_dir": str(cache_dir),
                "scenarios": scenarios, "isolate": False, **run_kw},
    })


def test_plan_runs_analysis_scenarios_at_the_smallest_batch(tmp_path, tiny_source):
    cfg = _cfg(tmp_path, tmp_path, tiny_source, ["whisper-tiny"], ["latency", "profile", "decode"],
               batch_sizes=[4, 2], clip_lengths_s=[5, 15])
    cells = [(c.scenario, c.batch_size, c.clip_length_s) for c in expand(cfg)]
    assert [c for c in cells if c[0] == "latency"] == [("latency", b, x) for b in (4, 2) for x in (5, 15)]
    assert [c for c in cells if c[0] != "latency"] == [("profile", 2, 5), ("profile", 2, 15),
                                                        ("decode", 2, 5), ("decode", 2, 15)]
    with pytest.raises(ConfigError, match="decode_tokens"):
        _cfg(tmp_path, tmp_path, tiny_source, ["whisper-tiny"], ["decode"], decode_tokens=-1)
    # decode_tokens changes the run's identity only where the decode scenario reads it
    lat = [_cfg(tmp_path, tmp_path, tiny_source, ["whisper-tiny"], ["latency"], decode_tokens=n) for n in (5, 9)]
    dec = [_cfg(tmp_path, tmp_path, tiny_source, ["whisper-tiny"], ["decode"], decode_tokens=n) for n in (5, 9)]
    assert lat[0].identity() == lat[1].identity() and dec[0].identity() != dec[1].identity()


# -- through the runner: real tiny.en and random wav2vec2-base, 5 s clip ---------------------------
CURVE_TOKENS = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir, tiny_source):
    tmp = tmp_path_factory.mktemp("profile-run")
    cfg = _cfg(tmp, cache_dir, tiny_source,
               [{"name": "whisper-tiny.en", "weights": "real"}, {"name": "wav2vec2-base", "weights": "random"}],
               ["latency", "profile", "decode"], decode_tokens=CURVE_TOKENS, accuracy=False, energy=False)
    summary = run(cfg)
    with Store(cfg.store) as s:
        rows = s.rows()
    assert summary.failed == 0, [r.get("error") for r in rows if r["status"] != "ok"]
    return cfg, {(r["model"], r["scenario"]): r for r in rows}


def test_profile_row(store):
    cfg, rows = store
    for model in ("whisper-tiny.en", "wav2vec2-base"):
        prof, lat = rows[(model, "profile")], rows[(model, "latency")]
        assert sum(c["share"] for c in prof["op_categories"]) == pytest.approx(1.0, abs=1e-3)
        assert {"category", "self_ms", "share"} <= set(prof["op_categories"][0])
        top = [s for s in prof["stages"] if not s["nested"]]
        greedy = ["ctc_greedy_decode"] if model == "wav2vec2-base" else []
        assert [s["stage"] for s in top] == ["feature_extraction", "host_to_device", "model", *greedy, "detokenize"]
        # the top-level stage marks cover the profiled call to within 20% (the gaps are a few statements)
        assert sum(s["ms"] for s in top) / 1000 == pytest.approx(prof["profiled_latency_s"], rel=0.2)
        # profiled vs the plain timer (latency scenario, same clip): within 35%, fastest call of each --
        # the profiler's own cost on thousands of small ops, and a shared CPU
        assert min(prof["profiled_latencies_s"]) == pytest.approx(lat["latency_s_min"], rel=0.35)
        trace = Path(prof["trace_path"])
        assert trace.parent == Path(cfg.store).parent / "traces" / prof["run_id"] and trace.name.endswith(".json.gz")
        with gzip.open(trace, "rt") as f:
            assert json.load(f)["traceEvents"]
    whisper = rows[("whisper-tiny.en", "profile")]
    nested = {s["stage"]: s for s in whisper["stages"] if s["nested"]}
    assert set(nested) == {"encoder", "decoder_first_step", "decoder"}
    # one first step per encoder pass, then a cheaper step per token (prompt and cross K/V done)
    assert 0 < nested["decoder_first_step"]["ms"] < nested["encoder"]["ms"]


def test_roofline_on_profile_rows(store):
    _, rows = store
    whisper, w2v = rows[("whisper-tiny.en", "profile")], rows[("wav2vec2-base", "profile")]
    assert [p["stage"] for p in whisper["roofline"]] == ["encoder", "decoder step 1", "decoder steps 2+"]
    assert [p["stage"] for p in w2v["roofline"]] == ["Wav2Vec2ForCTC"]
    for row in (whisper, w2v):
        per_call_s = 0.0
        for p in row["roofline"]:
            assert p["flops"] > 0 and p["bytes"] > p["bytes_weight"] > 0
            # a lower bound: not above what the stage measured (peaks measured in the same cell, but at
            # another moment: 15% allows for a shared CPU slowing the peak probe, not the stage)
            assert p["lower_bound_s"] <= 1.15 * p["time_s"], p
            assert p["bound"] in ("compute", "memory", "launch/overhead")
            per_call_s += p["time_s"] * p["invocations_per_call"]
        # the root forwards run inside the same timed calls, so never more than all of them; the rest
        # is feature extraction and generate's host work between steps (its logits processors sort the
        # 51,864-token vocabulary every step in torch.isin), which a loaded CPU stretches: 25% floor
        call_s = sum(row["roofline_calls_s"]) / len(row["roofline_calls_s"])
        assert 0.25 * call_s < per_call_s <= call_s
    enc = whisper["roofline"][0]
    assert enc["invocations_per_call"] == 1
    assert enc["flops"] == pytest.approx(36.94e9, rel=0.01)  # tiny's encoder per 30 s window (test_flops)
    # tiny.en's weights in fp32: encoder ~8.2 M parameters (positions not called as a module: left out)
    assert 30e6 < enc["bytes_weight"] < 36e6
    steps = whisper["roofline"][2]
    # a later decoder step reads the decoder and the tied 51864 x 384 LM head (79.7 MB) and the KV cache:
    # cross-attention 4 layers x 2 x 1500 x 384 fp32 = 18.4 MB
    assert 100e6 < steps["bytes_weight"] < 120e6 and 18.4e6 < steps["bytes_state"] < 19.5e6


def test_decode_rows(store):
    _, rows = store
    dec = rows[("whisper-tiny.en", "decode")]
    assert dec["autoregressive_decoder"] is True
    assert 0 < dec["decode_share"] < 1 and dec["tokens_per_s"] > 0
    assert 0 < dec["first_token_ms"] < 1000 * dec["call_s_per_call"]
    assert dec["decoder_steps_per_call"] >= 2 and dec["encoder_forwards_per_call"] == 1
    curve = dec["decode_curve"]
    assert len(curve) == 4 * CURVE_TOKENS
    settings = {(p["decoding"], p["kv_cache"]) for p in curve}
    assert settings == {(d, k) for d in ("greedy", "beam4") for k in (True, False)}

    def late_ms(decoding, kv):  # positions 6..12: the cache-less steps re-run every earlier token
        # the fastest late step: a shared CPU only ever adds time, so the minimum is the steadiest
        return min(p["ms"] for p in curve if p["decoding"] == decoding and p["kv_cache"] == kv
                   and p["position"] >= 6)

    for decoding in ("greedy", "beam4"):
        assert late_ms(decoding, False) > 1.2 * late_ms(decoding, True), decoding
    assert late_ms("beam4", True) > late_ms("greedy", True)  # 4 beams: 4 rows per step and cache reordering
    ctc = rows[("wav2vec2-base", "decode")]
    assert ctc["status"] == "ok" and ctc["autoregressive_decoder"] is False
    assert "no autoregressive decoder" in ctc["decode_missing_reason"]


def test_report_shows_the_tables(store):
    from asrperf.report.profile_tables import profile_tables

    cfg, rows = store
    tables = {t.title: t for t in profile_tables(rows.values())}
    cat = next(t for title, t in tables.items() if title.startswith("op categories"))
    assert cat.columns == ["whisper-tiny.en", "wav2vec2-base"]
    shares = [float(v.split("%")[0]) for name, cells in cat.rows if name != "profiled call ms" for v in [cells[0]]]
    assert sum(shares) == pytest.approx(100, abs=0.1 * len(shares))
    roof = next(t for title, t in tables.items() if title.startswith("roofline"))
    assert [name for name, _ in roof.rows][:3] == ["whisper-tiny.en · encoder", "whisper-tiny.en · decoder step 1",
                                                   "whisper-tiny.en · decoder steps 2+"]
    decode = dict(next(t for title, t in tables.items() if title.startswith("decoder")).rows)
    assert decode["ms/token @ position 10, greedy, KV cache off"][0][0].isdigit()
    assert decode["ms/token @ position 50, greedy, KV cache on"][0].startswith("— (curve has 12 tokens)")
    assert decode["tokens/s (engine's greedy decoding, KV cache), 5 s"][1] == "— (no autoregressive decoder)"
    out = subprocess.run([sys.executable, "-m", "asrperf", "report", "--store", cfg.store, "-f", "markdown"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for title in ("op categories, share of op self time", "stages, ms per call", "roofline per stage: cpu, 5 s",
                  "decoder: cpu, batch 1", "ms/token @ position 1, beam4, KV cache off"):
        assert title in out.stdout, title
