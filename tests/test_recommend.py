"""Recommendations from hand-made rows whose right answer is known, and their place in `asrperf report`."""

import subprocess
import sys

import pytest

from asrperf.errors import ConfigError
from asrperf.report.recommend import Thresholds, load_thresholds, recommend, recommendations_table
from asrperf.report.tables import to_markdown
from asrperf.results.store import Store

MIB = 2**20


def row(model, engine="transformers", dtype="fp32", *, length=15.0, batch=1, p90=1.0, rtfx=10.0, wer=0.08,
        ci=None, rss_mib=800, j_per_audio_s=1.0, measured=False, device="cpu", threads=2, weights="real", **extra):
    """A committed latency row with the keys the worker writes (values chosen per test)."""
    r = {
        "engine": engine, "model": model, "model_name": model, "dtype": dtype, "device": device, "threads": threads,
        "clip_length_s": length, "batch_size": batch, "scenario": "latency", "isolated": True, "weights": weights,
        "n_calls": 5, "latency_s_p50": 0.9 * p90, "latency_s_p90": p90, "rtfx": rtfx,
        "throughput_samples_per_s": rtfx / length, "audio_s_per_call": length * batch,
        "energy_j_per_audio_s": j_per_audio_s, "energy_j_per_sample": j_per_audio_s * length,
        "energy_j": j_per_audio_s * length * batch * 5, "energy_measured": measured, "energy_window_ok": True,
        "energy_method": "measured: RAPL package" if measured else "estimated: process cpu time x 3.38 W per CPU",
        "peak_rss_bytes": rss_mib * MIB, "status": "ok", "run_id": "r1", "device_name": device.upper(),
        "wer": wer, "wer_ci_low": None, "wer_ci_high": None, "ref_words": 200,
        "timed_region": ["feature_extraction", "model_forward_and_decoding"], "first_call_s": p90,
    }
    if wer is None:
        r.update(wer_missing_reason="random weights: outputs are not speech recognition")
    else:
        lo, hi = ci or (max(0.0, wer - 0.01), wer + 0.01)
        r.update(wer_ci_low=lo, wer_ci_high=hi)
    r["cell_key"] = f"{engine}|{model}|{dtype}|{device}|threads={threads}|{length:g}s|batch={batch}"
    r.update(extra)
    return r


def config(model, engine="transformers", dtype="fp32", *, p90_5s, rtfx_b1, rtfx_b4, wer, **kw):
    """One configuration measured at 5 s and 15 s, batch 1 and 4."""
    return [row(model, engine, dtype, length=5.0, p90=p90_5s, rtfx=5.0 / p90_5s, wer=wer, **kw),
            row(model, engine, dtype, length=15.0, p90=15 / rtfx_b1, rtfx=rtfx_b1, wer=wer, **kw),
            row(model, engine, dtype, length=15.0, batch=4, p90=60 / rtfx_b4, rtfx=rtfx_b4, wer=wer,
                **{**kw, "j_per_audio_s": kw.get("j_per_audio_s", 1.0) / 2})]


TINY = "whisper-tiny.en (transformers, fp32)"
INT8 = "whisper-tiny.en (ct2, int8)"
SMALL = "whisper-small (transformers, fp32)"
W2V = "wav2vec2-base (transformers, fp32)"


@pytest.fixture
def rows():
    return (config("whisper-tiny.en", p90_5s=0.9, rtfx_b1=10, rtfx_b4=20, wer=0.08, ci=(0.06, 0.10), rss_mib=800)
            + config("whisper-tiny.en", "ct2", "int8", p90_5s=0.4, rtfx_b1=25, rtfx_b4=40, wer=0.09,
                     ci=(0.07, 0.11), rss_mib=450, j_per_audio_s=0.3)
            + config("whisper-small", p90_5s=3.0, rtfx_b1=3, rtfx_b4=5, wer=0.04, ci=(0.03, 0.05), rss_mib=1500,
                     j_per_audio_s=5.0)
            # fast but bad: must lose every scenario that has a WER bound
            + config("wav2vec2-base", p90_5s=0.1, rtfx_b1=80, rtfx_b4=150, wer=0.30, ci=(0.25, 0.35), rss_mib=300,
                     j_per_audio_s=0.1))


def by_scenario(recs, device="cpu"):
    return {r.scenario: r for r in recs if r.device == device}


def test_each_scenario_picks_the_expected_configuration(rows):
    recs = by_scenario(recommend(rows))
    assert recs["real-time"].choice == f"{INT8}, 5 s, batch 1, cpu, 2 threads"
    assert recs["balanced"].choice == f"{INT8}, 15 s, batch 1, cpu, 2 threads"
    assert recs["best quality"].choice == f"{SMALL}, 15 s, batch 1, cpu, 2 threads"  # CIs do not overlap
    assert recs["throughput"].choice == f"{INT8}, 15 s, batch 4, cpu, 2 threads"
    assert recs["energy"].choice == f"{INT8}, 15 s, batch 4, cpu, 2 threads"
    assert recs["low memory (edge)"].choice == f"{INT8}, 15 s, batch 1, cpu, 2 threads"  # small is over 1024 MiB
    assert "p90 400 ms" in recs["real-time"].why and "WER 9.0%" in recs["real-time"].why
    assert "RTFx 40.0" in recs["throughput"].why and "90 device-s per audio-hour" in recs["throughput"].why
    assert "450 MiB (peak RSS" in recs["low memory (edge)"].why
    assert recs["best quality"].ties == ()


def test_wer_bound_excludes_the_fast_but_bad_model_and_says_so(rows):
    recs = by_scenario(recommend(rows))
    for scenario in ("real-time", "balanced", "throughput", "energy", "low memory (edge)"):
        assert W2V not in recs[scenario].choice
        assert any(c.startswith(f"excluded by the WER bound: {W2V}") for c in recs[scenario].caveats), scenario
    assert f"excluded by the WER bound: {W2V}, batch 1, 2 threads (p90 100 ms, WER 30.0%)" in recs["real-time"].caveats
    loose = by_scenario(recommend(rows, Thresholds(wer_bound=0.40)))
    assert loose["real-time"].choice.startswith(W2V) and loose["throughput"].choice.startswith(W2V)
    strict = by_scenario(recommend(rows, Thresholds(wer_bound=0.02)))
    assert strict["balanced"].choice is None and "lowest measured 4.0%" in strict["balanced"].why


def test_realtime_needs_p90_within_clip_length_and_budget(rows):
    budget = by_scenario(recommend(rows, Thresholds(p90_budget_ms=600)))["real-time"]
    assert budget.choice.startswith(INT8)
    too_tight = by_scenario(recommend(rows, Thresholds(p90_budget_ms=200)))["real-time"]
    assert too_tight.choice is None  # only wav2vec2 fits 200 ms, and it fails the WER bound
    slow = [r for r in rows if r["model"] == "whisper-small"]
    slow[0]["latency_s_p90"] = 6.0  # p90 above the 5 s clip: cannot keep pace with live audio
    rec = by_scenario(recommend(slow))["real-time"]
    assert rec.choice is None and "exceeds 5,000 ms (clip length)" in rec.why


def test_realtime_uses_the_closest_measured_length(rows):
    rec = by_scenario(recommend(rows, Thresholds(realtime_clip_s=12)))["real-time"]
    assert rec.choice == f"{INT8}, 15 s, batch 1, cpu, 2 threads"
    assert "15 s clips (closest measured to 12 s)" in rec.criterion


def test_ties_within_tolerance_are_reported(rows):
    rows.append(row("whisper-tiny.en", "ct2", "int8", length=5.0, p90=0.41, wer=0.09, threads=1))  # +2.5%
    rows.append(row("whisper-tiny.en", "ct2", "int8", length=5.0, p90=0.50, wer=0.09, threads=4))  # +25%
    rec = by_scenario(recommend(rows))["real-time"]
    assert rec.ties == (f"{INT8}, batch 1, 1 threads: p90 410 ms",)
    assert by_scenario(recommend(rows, Thresholds(tie_tolerance=0.0)))["real-time"].ties == ()


def test_quality_ties_by_ci_overlap_then_picks_the_faster(rows):
    for r in rows:  # tiny's CI now overlaps small's: the faster of the two wins, the other is a tie
        if r["model"] == "whisper-tiny.en" and r["engine"] == "transformers":
            r.update(wer=0.06, wer_ci_low=0.045, wer_ci_high=0.08)
    rec = by_scenario(recommend(rows))["best quality"]
    assert rec.choice.startswith(TINY)
    assert len(rec.ties) == 1 and rec.ties[0].startswith(SMALL)
    assert any("lowest point WER" in c and SMALL in c for c in rec.caveats)
    assert "tied within the 95% CIs with the lowest point WER" in rec.why and SMALL in rec.why  # on the first screen


def test_random_weights_only_cannot_judge_quality():
    rows = (config("whisper-tiny", p90_5s=0.5, rtfx_b1=10, rtfx_b4=20, wer=None, weights="random")
            + config("wav2vec2-base", p90_5s=0.3, rtfx_b1=30, rtfx_b4=60, wer=None, weights="random"))
    recs = by_scenario(recommend(rows))
    quality = recs["best quality"]
    assert quality.choice is None and quality.why.startswith("not measured:") and "random weights" in quality.why
    realtime = recs["real-time"]
    assert realtime.choice.startswith(W2V)
    assert any("not checked" in c and "random weights" in c for c in realtime.caveats)
    assert "WER not measured" in realtime.why


def test_measured_energy_preferred_over_estimated_and_labelled():
    rows = [row("whisper-tiny.en", j_per_audio_s=0.5, measured=True),
            row("whisper-tiny.en", "ct2", "int8", j_per_audio_s=0.1, measured=False)]  # cheaper, but an estimate
    rec = by_scenario(recommend(rows))["energy"]
    assert rec.choice.startswith(TINY) and "1,800 J per audio-hour" in rec.why and "measured: RAPL" in rec.why
    assert "(measured energy)" in rec.criterion
    assert any("estimated energy not compared" in c for c in rec.caveats)
    est = by_scenario(recommend(rows[1:]))["energy"]
    assert est.choice.startswith(INT8) and "estimated:" in est.why and "(estimated energy)" in est.criterion


def test_devices_are_never_compared():
    rows = [row("whisper-tiny.en", p90=2.0, rtfx=7.5, device="cpu"),
            row("whisper-tiny.en", p90=0.05, rtfx=300, device="cuda:0", torch_version="2.13.0", runs_torch=True,
                cuda_peak_allocated_bytes=200 * MIB),
            row("whisper-tiny.en", "ct2", "int8", p90=1.0, rtfx=15, device="cpu")]
    recs = recommend(rows)
    assert {r.device for r in recs} == {"cpu", "cuda:0"} and len(recs) == 12
    for r in recs:
        if r.choice:
            assert f", {r.device}," in r.choice
    assert by_scenario(recs, "cpu")["balanced"].choice.startswith(INT8)
    assert by_scenario(recs, "cuda:0")["balanced"].choice.startswith(TINY)
    assert "peak CUDA memory" in by_scenario(recs, "cuda:0")["low memory (edge)"].why
    table = recommendations_table(recs)
    assert [name for name, _ in table.rows][:2] == ["real-time [cpu]", "balanced [cpu]"]


def test_polluted_or_shared_memory_is_not_compared(rows):
    for r in rows:
        if r["engine"] == "ct2":
            r["isolated"] = False
        elif r["model"] == "whisper-tiny.en":
            r["peak_method"], r["flops_probe_ran"] = "best of 5: 2048x2048 matmul", True
    rec = by_scenario(recommend(rows))["low memory (edge)"]
    # usable: small (1500 MiB, over budget) and wav2vec2 (300 MiB, fails the WER bound)
    assert rec.choice is None and rec.why.startswith("among configurations within 1,024 MiB: no configuration within")
    assert any("not isolated" in c and "device-peak probe" in c for c in rec.caveats)
    rec = by_scenario(recommend([r for r in rows if r["model"] != "wav2vec2-base"]))["low memory (edge)"]
    assert rec.choice is None and rec.why.startswith("nothing within 1,024 MiB: lowest 1,500 MiB (whisper-small")


def test_timed_window_memory_is_preferred_and_one_field_is_compared_per_device(rows):
    for r in rows:  # every whole-cell peak is polluted by the probes; the timed-window figures are not
        r["peak_method"], r["flops_probe_ran"] = "best of 5: 2048x2048 matmul", True
        r["rss_peak_timed_bytes"] = r["peak_rss_bytes"] - 100 * MIB
        r["rss_peak_timed_method"] = "VmHWM reset at the window start"
    recs = by_scenario(recommend(rows))
    rec = recs["low memory (edge)"]
    assert rec.choice.startswith(INT8) and "350 MiB (peak RSS over the timed calls; VmHWM reset" in rec.why
    assert "peak RSS over the timed calls" in rec.criterion
    gpu = [row("whisper-tiny.en", device="cuda:0", torch_version="2.13", runs_torch=True, nvml_process_peak_bytes=900 * MIB,
               cuda_peak_allocated_timed_bytes=150 * MIB),
           row("whisper-tiny.en", "ct2", "int8", device="cuda:0", nvml_process_peak_bytes=700 * MIB,
               cuda_peak_allocated_timed_bytes=None, cuda_memory_missing_reason="engine ct2 does not use torch"),
           row("whisper-small", device="cuda:0", torch_version="2.13", runs_torch=True, nvml_process_peak_bytes=None,
               nvml_process_missing_reason="pid not visible to NVML", cuda_peak_allocated_timed_bytes=100 * MIB)]
    rec = by_scenario(recommend(gpu), "cuda:0")["low memory (edge)"]
    # NVML sees every runtime; torch's allocator figure (small: 100 MiB) is not mixed in
    assert rec.choice.startswith(INT8) and "700 MiB (GPU memory of the process (NVML)" in rec.why
    assert any("whisper-small" in c and "pid not visible to NVML" in c for c in rec.caveats)


def test_failed_rows_do_not_count(rows):
    rows.append(row("whisper-base", p90=0.01, length=5.0, status="failed", error="boom"))
    assert "whisper-base" not in by_scenario(recommend(rows))["real-time"].choice


def test_batch_size_search_rows_compete_for_throughput(rows):
    rows.append({**row("whisper-tiny.en", "ct2", "int8"), "scenario": "max_throughput",
                 "max_throughput_samples_per_s": 5.0, "max_throughput_batch_size": 16, "wer": None,
                 "max_throughput_stop_reason": "plateau"})
    rec = by_scenario(recommend(rows))["throughput"]
    assert rec.choice == f"{INT8}, 15 s, batch 16, cpu, 2 threads"
    assert "RTFx 75.0" in rec.why and "batch-size search" in rec.why and "WER 9.0%" in rec.why


def test_thresholds_toml(tmp_path):
    good = tmp_path / "t.toml"
    good.write_text("[recommend]\nwer_bound = 0.15\np90_budget_ms = 300\n")
    assert load_thresholds(good) == Thresholds(wer_bound=0.15, p90_budget_ms=300.0)
    bad = tmp_path / "bad.toml"
    bad.write_text("[recommend]\nwer_bond = 0.15\n")
    with pytest.raises(ConfigError, match="unknown key 'wer_bond'.*valid keys:.*wer_bound"):
        load_thresholds(bad)
    for text, match in (("[recomend]\n", "unknown key 'recomend'"), ("[recommend]\nwer_bound = 15\n", "wer_bound"),
                        ("[recommend]\nwer_bound = 'x'\n", "not a number")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_thresholds(bad)


def test_table_shape(rows):
    table = recommendations_table(recommend(rows))
    assert table.columns == ["Choice", "Why", "Ties"] and table.corner == "Scenario"
    assert [name for name, _ in table.rows] == ["real-time", "balanced", "best quality", "throughput", "energy",
                                                 "low memory (edge)"]
    assert "| Scenario | Choice | Why | Ties |" in to_markdown([table])


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "asrperf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_report_prints_recommendations(tmp_path, rows):
    path = tmp_path / "r.sqlite"
    with Store(path) as store:
        store.begin_run("r1", {}, {"cpu_model": "test CPU", "packages": {}})
        for r in rows:
            store.commit_cell("r1", r["cell_key"], r, started_at=0.0)
    res = _cli("report", "--store", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Recommendations" in res.stdout and "real-time" in res.stdout and "low memory (edge)" in res.stdout
    res = _cli("report", "--store", str(path), "-f", "markdown", cwd=tmp_path)
    assert res.returncode == 0 and "| Scenario | Choice | Why | Ties |" in res.stdout
    assert f"| real-time | {INT8}, 5 s, batch 1, cpu, 2 threads |" in res.stdout
    line = next(t for t in res.stdout.splitlines() if t.startswith("| real-time |"))
    assert line.endswith(" |") and line.count(" | ") == 3  # long rows are not wrapped: the table stays a table
    (tmp_path / "t.toml").write_text("[recommend]\nwer_bound = 0.40\n")
    res = _cli("report", "--store", str(path), "-f", "markdown", "--thresholds", str(tmp_path / "t.toml"), cwd=tmp_path)
    assert res.returncode == 0 and f"| real-time | {W2V}, 5 s, batch 1, cpu, 2 threads |" in res.stdout
    (tmp_path / "t.toml").write_text("[recommend]\nbudget = 1\n")
    res = _cli("report", "--store", str(path), "--thresholds", str(tmp_path / "t.toml"), cwd=tmp_path)
    assert res.returncode == 2 and "unknown key 'budget'" in res.stderr


def test_study_table_shows_idle_power_and_net_energy_only_where_counters_measured_them():
    from asrperf.report.tables import study_tables

    measured = row("whisper-tiny.en", measured=True, j_per_audio_s=2.0, idle_power_w=12.5,
                   energy_net_j_per_sample=18.0, energy_net_j_per_audio_s=1.2)
    estimated = row("whisper-small", j_per_audio_s=5.0)
    names = dict(study_tables([measured, estimated])[0].rows)
    assert names["idle power W (before the window), b1, 15 s"][0] == "12.5"
    assert names["energy net of idle J/sample, b1, 15 s"][0] == "18 (measured)"
    assert names["energy net of idle J/audio-s, b1, 15 s"] == ["1.2 (measured)", "—"]
    assert not any("idle" in n for n in dict(study_tables([estimated])[0].rows))


def test_study_table_gives_max_throughput_with_the_latency_of_its_batch():
    from asrperf.report.tables import study_tables

    searched = row("whisper-base", scenario="max_throughput", batch=0, max_throughput_samples_per_s=0.91,
                   max_throughput_batch_size=6, max_throughput_latency_s_p50=6.59, max_throughput_stop_reason="plateau")
    (value,) = dict(study_tables([row("whisper-base"), searched])[0].rows)["max throughput samples/s, 15 s"]
    assert value == "0.91 at b6, p50 6,590 ms per batch (stop: plateau)"


def test_full_table_words_each_pick_as_the_first_screen_does():
    from rich.console import Console

    from asrperf.report.summary import render_answer_rich

    busy = {**row("busy-model", rtfx=99.0), "contended": True}
    rows = [row("whisper-tiny.en"), row("fast-random", rtfx=50.0, wer=None, weights="random"), busy]
    recs = recommend(rows)
    console = Console(width=1000, record=True)
    console.print(render_answer_rich(rows, [], recs))
    first = console.export_text()
    table = recommendations_table(recs)
    balanced = dict(table.rows)["balanced"]
    rec = by_scenario(recs)["balanced"]
    # the same why and the same own caveats; the contended caveat every pick shares is a note, once
    assert balanced[1] == f"{rec.why}; caveats: {rec.caveats[0]}" and f"caveats: {rec.caveats[0]}" in first
    assert rec.why in first and not any("contended" in cells[1] for _, cells in table.rows)
    assert sum("1 contended row(s) left out" in n for n in table.notes) == 1


def test_best_quality_says_why_longer_clips_are_not_used():
    rows = [row("whisper-tiny.en", length=5.0), {**row("whisper-tiny.en", length=60.0, wer=0.05), "contended": True}]
    rec = by_scenario(recommend(rows))["best quality"]
    assert "5 s clips (longest with WER among uncontended rows; 60 s rows contended)" in rec.criterion
    assert "(longest with WER);" in by_scenario(recommend(rows[:1]))["best quality"].criterion
