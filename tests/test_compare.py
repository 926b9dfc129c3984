"""`asrperf compare` on hand-built stores: planted changes are found, noise is not."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from asrperf.cli import main
from asrperf.errors import ConfigError
from asrperf.measure.stats import rtfx, summarize, throughput_samples_per_s
from asrperf.report.compare import compare, to_markdown, verdict
from asrperf.results.store import Store

ENV = {"hostname": "box", "cpu_model": "Test CPU", "usable_cores": 4, "memory_bytes": 8 * 2**30, "gpus": [],
       "packages": {"torch": "2.13.0", "transformers": "5.24.0"}, "asrperf_version": "0.1.0"}
REFS = {f"5s-{i:03d}": f"quick brown fox number {i} jumps over the lazy dog" for i in range(10)}  # 10 words each


def _row(model: str, batch: int, samples: np.ndarray, transcripts: dict[str, str] | None, **extra) -> dict:
    """A latency cell row as the worker writes it, with metrics derived from `samples`."""
    stats = summarize(samples)
    n, total = len(samples), float(np.sum(samples))
    row = {
        "engine": "transformers", "model": model, "model_name": model, "weights_requested": "real", "weights": "real",
        "dtype": "fp32", "device": "cpu", "threads": 2, "clip_length_s": 5.0, "batch_size": batch,
        "scenario": "latency", "status": "ok", "n_calls": n, "latency_s_p50": stats["p50"],
        "throughput_samples_per_s": throughput_samples_per_s(batch, n, total), "rtfx": rtfx(5.0 * batch * n, total),
        "peak_rss_bytes": 900 * 2**20, "energy_j_per_sample": 2.0, "energy_measured": False,
        "energy_method": "estimated: test", "wer": None,
    }
    if transcripts is not None:
        row["transcripts"] = [{"clip": c, "ref": REFS[c], "hyp": h} for c, h in transcripts.items()]
    else:
        row["wer_missing_reason"] = "random weights: outputs are not speech recognition"
    row.update(extra)
    return row


def _store(path, cells: list[tuple[dict, np.ndarray]], run_id: str = "r1", env: dict = ENV):
    with Store(path) as s:
        s.begin_run(run_id, {"test": True}, env)
        for row, samples in cells:
            key = f"{row['model']}|b{row['batch_size']}|{row['scenario']}"
            s.commit_cell(run_id, key, row, 0.0, [], [float(x) for x in samples])
    return path


def _latency(seed: int, scale: float = 1.0, n: int = 30, sigma: float = 0.08) -> np.ndarray:
    # per-call times around 100 ms with a few percent of spread, like a quiet CPU
    return scale * np.random.default_rng(seed).lognormal(np.log(0.1), sigma, n)


def _pair(tmp_path, scale_b: float, hyps_b: dict[str, str] | None = None, seed_b: int = 2):
    a = _latency(1)
    b = _latency(seed_b, scale_b)
    pa = _store(tmp_path / "a.sqlite", [(_row("m", 1, a, dict(REFS)), a)], "runA")
    pb = _store(tmp_path / "b.sqlite", [(_row("m", 1, b, hyps_b or dict(REFS)), b)], "runB")
    return pa, pb


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the real entry point (exit-code mapping included); returns (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["asrperf", "compare", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
        sys.exit(0)
    cap = capsys.readouterr()
    return exc.value.code or 0, cap.out + cap.err


def _verdicts(cmp) -> dict[str, str]:
    (cell,) = cmp.cells
    return {m.metric: m.verdict for m in cell.metrics}


def test_planted_slowdown_is_a_regression_and_fails_the_cli(tmp_path, monkeypatch, capsys):
    pa, pb = _pair(tmp_path, 1.2)
    v = _verdicts(compare(str(pa), str(pb), tmp_path / "none.sqlite"))
    assert v["latency p50"] == v["throughput"] == v["RTFx"] == "regression"
    assert v["WER"] == "no change" and v["peak RSS"] == v["energy J/sample"] == "not tested"
    code, text = _cli(monkeypatch, capsys, pa, pb, "-f", "markdown")
    assert code == 4 and "3 regression(s) beyond 5%" in text
    code, _ = _cli(monkeypatch, capsys, pa, pb, "--no-fail-on-regression")
    assert code == 0


def test_csv_export_names_the_cell_on_every_row(tmp_path, monkeypatch, capsys):
    import csv

    pa, pb = _pair(tmp_path, 1.2)
    code, _ = _cli(monkeypatch, capsys, pa, pb, "-f", "csv", "-o", str(tmp_path / "cmp.csv"), "--no-fail-on-regression")
    assert code == 0
    table = list(csv.DictReader((tmp_path / "cmp.csv").open()))
    assert {r["metric"] for r in table} >= {"latency p50", "WER"} and len({r["cell"] for r in table}) == 1
    assert next(r for r in table if r["metric"] == "latency p50")["verdict"] == "regression"


def test_latency_change_and_ci_are_ratios_of_the_raw_samples(tmp_path):
    pa, pb = _pair(tmp_path, 1.2)
    lat = compare(str(pa), str(pb), tmp_path / "none.sqlite").cells[0].metrics[0]
    a, b = _latency(1), _latency(2, 1.2)
    assert lat.change == pytest.approx(np.median(b) / np.median(a))
    assert 1.0 < lat.ci[0] < lat.change < lat.ci[1] and lat.p_value < 1e-3
    thr = compare(str(pa), str(pb), tmp_path / "none.sqlite").cells[0].metrics[1]
    assert thr.change == pytest.approx(a.mean() / b.mean())
    assert thr.change == pytest.approx(thr.b / thr.a)  # the stored throughputs agree with the samples


@pytest.mark.parametrize("seed_b", [2, 3, 4, 5])
def test_same_distribution_rerun_is_not_flagged(tmp_path, monkeypatch, capsys, seed_b):
    pa, pb = _pair(tmp_path, 1.0, seed_b=seed_b)
    cmp = compare(str(pa), str(pb), tmp_path / "none.sqlite")
    assert not cmp.regressions and not cmp.flagged("improvement")
    assert _verdicts(cmp)["latency p50"] in ("within noise", "within threshold")
    assert _cli(monkeypatch, capsys, pa, pb)[0] == 0


def test_improvement_is_flagged_and_exits_zero(tmp_path, monkeypatch, capsys):
    pa, pb = _pair(tmp_path, 0.8)
    v = _verdicts(compare(str(pa), str(pb), tmp_path / "none.sqlite"))
    assert v["latency p50"] == v["throughput"] == v["RTFx"] == "improvement"
    code, text = _cli(monkeypatch, capsys, pa, pb)
    assert code == 0 and "3 improvement(s)" in text


def test_small_but_real_change_is_within_threshold(tmp_path):
    a, b = _latency(1, sigma=0.005), _latency(2, 1.03, sigma=0.005)
    pa = _store(tmp_path / "a.sqlite", [(_row("m", 1, a, None), a)])
    pb = _store(tmp_path / "b.sqlite", [(_row("m", 1, b, None), b)])
    v = _verdicts(compare(str(pa), str(pb), tmp_path / "none.sqlite", threshold=0.05))
    assert v["latency p50"] == "within threshold"
    assert v["WER"].startswith("missing: A: random weights")
    # the same 3% change counts when the threshold is 2%
    assert _verdicts(compare(str(pa), str(pb), tmp_path / "none.sqlite", threshold=0.02))["latency p50"] == "regression"


def test_wer_regression_is_paired_over_clips(tmp_path):
    worse = dict(REFS)
    for c in list(REFS)[:5]:  # 2 extra errors on 5 of 10 clips: +10 edits / 100 words
        worse[c] = REFS[c].replace("quick brown", "quack brawn")
    pa, pb = _pair(tmp_path, 1.0, hyps_b=worse)
    cell = compare(str(pa), str(pb), tmp_path / "none.sqlite").cells[0]
    wer = next(m for m in cell.metrics if m.metric == "WER")
    assert (wer.a, wer.b, wer.change) == (0.0, pytest.approx(0.1), pytest.approx(0.1))
    assert wer.ci[0] > 0 and wer.verdict == "regression"
    assert "paired over 10 clips: 5 worse, 0 better" in wer.method


def test_different_clips_fall_back_to_unpaired_and_say_so(tmp_path):
    a, b = _latency(1), _latency(2)
    pa = _store(tmp_path / "a.sqlite", [(_row("m", 1, a, {c: REFS[c] for c in list(REFS)[:6]}), a)])
    pb = _store(tmp_path / "b.sqlite", [(_row("m", 1, b, {c: REFS[c] for c in list(REFS)[4:]}), b)])
    cell = compare(str(pa), str(pb), tmp_path / "none.sqlite").cells[0]
    wer = next(m for m in cell.metrics if m.metric == "WER")
    assert wer.method.startswith("UNPAIRED") and "2 with the same id and text" in wer.method
    assert any("unpaired" in n for n in cell.notes)


def test_mismatched_and_failed_cells_are_listed_not_compared(tmp_path, monkeypatch, capsys):
    s = _latency(1)
    failed = {"engine": "transformers", "model": "f", "model_name": "f", "weights_requested": "real", "dtype": "fp32",
              "device": "cpu", "threads": 2, "clip_length_s": 5.0, "batch_size": 1, "scenario": "latency",
              "status": "failed", "error": "out of memory"}
    pa = _store(tmp_path / "a.sqlite", [(_row("m", 1, s, None), s), (_row("m", 2, s, None), s), (failed, [])])
    pb = _store(tmp_path / "b.sqlite", [(_row("m", 1, s, None), s), (_row("m", 4, s, None), s),
                                        (_row("f", 1, s, None), s)])
    cmp = compare(str(pa), str(pb), tmp_path / "none.sqlite")
    assert [c.label for c in cmp.cells] == ["m (transformers, fp32, real) cpu t2 5 s b1 latency"]
    assert len(cmp.only_a) == 1 and "b2" in cmp.only_a[0] and "batch_size=4 instead of 2" in cmp.only_a[0]
    assert len(cmp.only_b) == 1 and "b4" in cmp.only_b[0]
    assert cmp.failed == ["A: f (transformers, fp32, real) cpu t2 5 s b1 latency: out of memory"]
    md = to_markdown(cmp)
    assert "only in A:" in md and "failed (not compared): A: f" in md


def test_environment_difference_is_printed(tmp_path, monkeypatch, capsys):
    s = _latency(1)
    pa = _store(tmp_path / "a.sqlite", [(_row("m", 1, s, None), s)])
    env_b = {**ENV, "cpu_model": "Other CPU", "packages": {**ENV["packages"], "torch": "2.14.0"}}
    pb = _store(tmp_path / "b.sqlite", [(_row("m", 1, s, None), s)], env=env_b)
    cmp = compare(str(pa), str(pb), tmp_path / "none.sqlite")
    assert ("cpu_model", "Test CPU", "Other CPU") in cmp.env_diff and ("torch", "2.13.0", "2.14.0") in cmp.env_diff
    code, text = _cli(monkeypatch, capsys, pa, pb, "-f", "markdown")
    assert code == 0 and "environment differs" in text and "torch: A 2.13.0 | B 2.14.0" in text
    assert not compare(str(pa), str(pa), tmp_path / "none.sqlite").env_diff


def test_run_specs_path_path_run_and_bare_id(tmp_path):
    s, t = _latency(1), _latency(2, 1.2)
    path = tmp_path / "both.sqlite"
    _store(path, [(_row("m", 1, s, None), s)], "old")
    _store(path, [(_row("m", 1, t, None), t)], "new")
    latest = compare(f"{path}:old", str(path), tmp_path / "none.sqlite")  # a store path means its latest run
    assert (latest.a.run_id, latest.b.run_id) == ("old", "new") and latest.regressions
    by_id = compare("old", "new", path)
    assert by_id.cells[0].metrics[0].change == latest.cells[0].metrics[0].change


@pytest.mark.parametrize("spec, message", [
    ("nope", "B 'nope': not a store file or PATH:RUN_ID, and no store at"),
    ("{tmp}/missing.sqlite", "B '{tmp}/missing.sqlite': no results store at {tmp}/missing.sqlite"),
    ("{tmp}/a.sqlite:zzz", "B '{tmp}/a.sqlite:zzz': no run 'zzz' in {tmp}/a.sqlite; runs: r1"),
    ("{tmp}/junk.txt", "B '{tmp}/junk.txt': {tmp}/junk.txt is not an asrperf results store"),
])
def test_bad_spec_is_one_line_naming_it(tmp_path, monkeypatch, capsys, spec, message):
    s = _latency(1)
    _store(tmp_path / "a.sqlite", [(_row("m", 1, s, None), s)])
    (tmp_path / "junk.txt").write_text("not a database, just text " * 100)
    spec, message = spec.format(tmp=tmp_path), message.format(tmp=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(message)):
        compare(str(tmp_path / "a.sqlite"), spec, tmp_path / "none.sqlite")
    code, text = _cli(monkeypatch, capsys, tmp_path / "a.sqlite", spec, "--store", tmp_path / "none.sqlite")
    assert code == 2 and message in text.replace("\n", "") and text.startswith("error:")


@pytest.mark.parametrize("change, ci, exceeds, worse_up, expected", [
    (1.2, (1.1, 1.3), True, True, "regression"),
    (1.2, (1.1, 1.3), True, False, "improvement"),
    (0.8, (0.7, 0.9), True, True, "improvement"),
    (1.2, (0.9, 1.5), True, True, "within noise"),
    (1.03, (1.01, 1.05), False, True, "within threshold"),
    (0.0, (0.0, 0.0), False, True, "no change"),
])
def test_verdict_rule(change, ci, exceeds, worse_up, expected):
    null = 0.0 if change == 0.0 else 1.0
    assert verdict(change, ci, null, exceeds, worse_up) == expected

