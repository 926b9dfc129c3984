"""`asrperf optimize`: candidates per device, the accuracy gate against the fp32 reference, the written config."""

import dataclasses

import pytest
from typer.testing import CliRunner

from asrperf.cli import app
from asrperf.config import config_from_dict, load_config
from asrperf.errors import ConfigError
from asrperf.run.optimize import candidates, optimize, write_winner
from asrperf.report.gate import gate, reference_row


def _row(key, engine="transformers", dtype="fp32", hyps=("a b c d", "e f g h"), **kw):
    refs = ("a b c d", "e f g h")
    wrong = sum(h != r for h, r in zip(hyps, refs))
    return {"cell_key": key, "run_id": "r", "status": "ok", "model_name": "whisper-tiny.en", "weights": "real",
            "clip_length_s": 5.0, "device": "cpu", "batch_size": 1, "threads": 2, "scenario": "latency",
            "engine": engine, "dtype": dtype, "wer": wrong / 8, "accuracy_reference": engine == "transformers",
            "transcripts": [{"clip": f"c{i}", "ref": r, "hyp": h} for i, (r, h) in enumerate(zip(refs, hyps))], **kw}


def test_reference_is_fp32_transformers_on_the_same_clips():
    ref = _row("ref")
    other_len = _row("ref60", clip_length_s=60.0)
    ct2 = _row("ct2", engine="ct2", dtype="int8", hyps=("a b c x", "e f g h"))
    rows = [other_len, ct2, ref]
    assert reference_row(ct2, rows) is ref
    g = gate(ct2, rows)
    assert g.paired and g.delta == pytest.approx(1 / 8) and g.n_worse == 1
    assert g.ci_low <= g.delta <= g.ci_high
    assert gate(ref, rows) is None  # the reference is not judged against itself


def test_gate_says_why_when_no_reference():
    ct2 = _row("ct2", engine="ct2", dtype="int8")
    g = gate(ct2, [ct2])
    assert g.delta is None and "no fp32 reference" in g.reason


def test_variant_without_transformers_reference_falls_back_to_its_engine_fp32():
    base = _row("ct2-fp32", engine="ct2")
    int8 = _row("ct2-int8", engine="ct2", dtype="int8", hyps=("a b c d", "e f x h"))
    assert reference_row(int8, [base, int8]) is base


def test_candidates_on_cpu_start_with_the_reference_and_skip_gpu_options():
    models = candidates("whisper-tiny.en", "cpu", weights="real", compile=False)
    ref = models[0]
    assert (ref.engine, ref.dtype, ref.quant, ref.compile) == ("transformers", "fp32", "none", False)
    # fp16 compute is a GPU option; whisper.cpp's fp16 is its CPU weight storage (f16 ggml files)
    assert not any(m.cuda_graphs or (m.dtype == "fp16" and m.engine != "whispercpp") for m in models)
    assert any(m.quant == "int8_dynamic" for m in models)
    assert any(m.engine == "ct2" and m.dtype == "int8" for m in models)
    assert not any(m.compile for m in models)
    assert all(m.engine == "transformers" for m in candidates("wav2vec2-base", "cpu", engines=("transformers",)))


def test_candidates_include_whisper_cpps_weight_types_on_cpu_only():
    pytest.importorskip("_pywhispercpp", reason="engine whispercpp needs pip install 'asrperf[whispercpp]'")
    cpu = candidates("whisper-tiny.en", "cpu", weights="real", compile=False)
    assert [m.dtype for m in cpu if m.engine == "whispercpp"] == ["fp16", "q8_0", "q5_1", "q5_0"]
    assert all(m.longform == "sequential" for m in cpu if m.engine == "whispercpp")
    assert not any(m.engine == "whispercpp" for m in candidates("whisper-tiny.en", "cuda", compile=False))
    assert not any(m.engine == "whispercpp" for m in candidates("wav2vec2-base", "cpu", compile=False))


def test_candidates_for_long_audio_add_batched_windows_to_whisper_only():
    short = candidates("whisper-tiny.en", "cpu", weights="real", compile=False)
    assert all(m.longform == "sequential" for m in short)
    long = candidates("whisper-tiny.en", "cpu", weights="real", compile=False, long_audio=True)
    batched = [m for m in long if m.longform == "batched"]
    assert ("transformers", "fp32") in {(m.engine, m.dtype) for m in batched}
    assert all(m.engine in ("transformers", "ct2", "whispercpp") for m in batched)
    assert set(long) - set(batched) == set(short)
    if any(m.engine == "ct2" for m in short):
        assert any(m.engine == "ct2" and m.dtype == "int8" for m in batched)
    assert not any(m.longform == "batched" for m in candidates("wav2vec2-base", "cpu", long_audio=True))


def test_candidates_on_cuda_try_half_precision_and_cuda_graphs():
    models = candidates("whisper-tiny.en", "cuda", compile=True, engines=("transformers",))
    assert {"fp16", "bf16"} <= {m.dtype for m in models}
    assert any(m.cuda_graphs and m.compile for m in models)


@pytest.mark.slow
def test_optimize_picks_a_gated_variant_and_writes_a_runnable_config(tmp_path, cache_dir, tiny_source):
    base = config_from_dict({
        "run": {"n_clips": 2, "store": str(tmp_path / "r.sqlite"), "cache_dir": str(cache_dir), "isolate": False,
                "threads": [2]},
        "source": tiny_source, "timing": {"min_calls": 2, "min_time_s": 0.0},
        "models": [{"name": "whisper-tiny.en", "weights": "real"}],
    })
    res = optimize("whisper-tiny.en", base, clip_length_s=5.0, engines=("ct2",), compile=False)
    verdicts = {(t.model.engine, t.model.dtype): t.verdict for t in res.trials}
    assert verdicts[("transformers", "fp32")] == "reference"
    assert verdicts[("ct2", "int8")] in ("within budget", "over budget")
    assert res.winner is not None and res.winner.verdict in ("reference", "within budget")
    fastest_ok = min((t for t in res.trials if t.verdict in ("reference", "within budget")),
                     key=lambda t: t.row["latency_s_p50"])
    assert res.winner is fastest_ok
    for t in res.trials:
        if t.verdict != "reference":
            assert t.wer_delta == pytest.approx(t.row["wer"] - res.trials[0].row["wer"])
    path = write_winner(res, base, tmp_path / "best.toml")
    cfg = load_config(path)
    assert [dataclasses.replace(m, label="") for m in cfg.models] == [res.winner.model]
    out = CliRunner().invoke(app, ["run", str(path), "--lengths", "5", "--n-clips", "1",
                                   "--store", str(tmp_path / "again.sqlite")])
    assert out.exit_code == 0, out.output


def test_optimize_cli_rejects_negative_budget():
    out = CliRunner().invoke(app, ["optimize", "whisper-tiny.en", "--wer-budget", "-1"])
    assert isinstance(out.exception, ConfigError) and "--wer-budget" in str(out.exception)


def test_report_shows_each_variants_wer_change_next_to_the_reference():
    from asrperf.report.tables import study_tables

    extra = {"latency_s_p50": 1.0, "latency_s_p90": 1.1, "n_calls": 3, "rtfx": 5.0, "wer_ci_low": 0.0,
             "wer_ci_high": 0.2, "throughput_samples_per_s": 1.0, "model": "whisper-tiny.en"}
    ref = _row("ref", **extra)
    int8 = _row("int8", dtype="fp32", variant="fp32+quant=int8_dynamic", hyps=("a b c x", "e f g h"), **extra)
    table = study_tables([ref, int8])[0]
    delta = dict(table.rows)["ΔWER pts vs fp32 ref [95% CI], worse clips, 5 s"]
    assert delta[0] == "reference"
    assert delta[1].startswith("+12.50 [") and delta[1].endswith("1/2 worse")
    # a baseline-only run has no such row: nothing to compare
    assert not any(name.startswith("ΔWER") for name, _ in study_tables([ref])[0].rows)
