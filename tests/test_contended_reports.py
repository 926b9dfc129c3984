"""Rows the busy-machine guard flagged: marked in every table, export and the HTML page, and kept
out of recommendations and comparisons unless --allow-contended."""

import json
import sys

import pytest
from report_stores import guard_fields, write_store

from asrperf.report.compare import compare
from asrperf.report.html import render_html
from asrperf.report.recommend import recommend
from asrperf.report.tables import CONTENDED_MARK, study_tables, to_markdown
from asrperf.results.store import export_rows


def row(model: str, p50: float, contended: bool, wer: float = 0.1, run_id: str = "r1") -> dict:
    return {"run_id": run_id, "cell_key": f"{model}|5s", "status": "ok", "engine": "transformers", "model": model,
            "model_name": model, "dtype": "fp32", "variant": "fp32", "weights": "real", "weights_requested": "real",
            "device": "cpu", "threads": 2, "clip_length_s": 5.0, "batch_size": 1, "scenario": "latency",
            "latency_s_p50": p50, "latency_s_p90": p50 * 1.1, "n_calls": 3, "rtfx": 5.0 / p50,
            "throughput_samples_per_s": 1 / p50, "wer": wer, "wer_ci_low": wer - 0.02, "wer_ci_high": wer + 0.02,
            **guard_fields(contended)}


ROWS = [row("fast-but-busy", 0.2, True), row("quiet", 0.5, False)]


def test_tables_mark_every_timing_figure_of_a_contended_row():
    (t,) = study_tables(ROWS)
    cells = dict(t.rows)
    assert cells["contended (busy machine)"] == ["YES: 5 s b1", "no"]
    lat = cells["latency ms p50 (p90), b1, 5 s"]
    assert lat[0] == "200.0 (p90 220.0)" + CONTENDED_MARK and lat[1] == "500.0 (p90 550.0)"
    assert cells["RTFx, b1, 5 s"] == ["25.0" + CONTENDED_MARK, "10.0"]
    note = next(n for n in t.notes if n.startswith("contended:"))
    # the figures that decided it, against the thresholds
    assert "other processes used 1.20 core(s) of the 2" in note and "60%" in note and "limit 25%" in note
    assert "it got 45% of the CPU its threads were ready to use (limit 85%)" in note
    md = to_markdown([t])
    assert "YES: 5 s b1" in md and "[contended]" in md


def test_recommendations_leave_contended_rows_out_unless_allowed():
    rec = {r.scenario: r for r in recommend(ROWS)}["balanced"]
    assert rec.choice.startswith("quiet") and any("1 contended row(s) left out" in c for c in rec.caveats)
    allowed = {r.scenario: r for r in recommend(ROWS, allow_contended=True)}["balanced"]
    assert allowed.choice.startswith("fast-but-busy")
    only_busy = recommend([ROWS[0]])
    assert only_busy and all(r.choice is None and "no row measured on a quiet machine" in r.why for r in only_busy)


def test_export_and_html_carry_the_flag(tmp_path):
    data = json.loads(export_rows(ROWS, tmp_path / "rows.json").read_text())
    assert [r["contended"] for r in data] == [True, False]
    assert data[0]["contention_reasons"] == ["others_cpu", "cpu_wait"]
    header, first, second = (export_rows(ROWS, tmp_path / "rows.csv").read_text().splitlines())
    col = header.split(",").index("contended")
    assert first.split(",")[col] == "True" and second.split(",")[col] == "False"
    page = render_html(ROWS, [], plots=[])
    assert "1 contended" in page and "Busy-machine guard" in page and 'class="contended"' in page
    assert "it got 45% of the CPU" in page


def _store(path, rows):
    return write_store(path, rows, {"cpu_model": "Test CPU"}, rows[0]["run_id"], n_samples=12)


def test_compare_leaves_contended_pairs_out_unless_allowed(tmp_path, monkeypatch, capsys):
    a = _store(tmp_path / "a.sqlite", [row("m", 0.5, False), row("n", 0.5, False)])
    b = _store(tmp_path / "b.sqlite", [row("m", 1.5, True), row("n", 0.5, False)])  # m slower, but contended
    cmp = compare(str(a), str(b), tmp_path / "none.sqlite")
    assert [c.label.split(" ")[0] for c in cmp.cells] == ["n"] and not cmp.regressions
    assert len(cmp.contended) == 1 and cmp.contended[0].startswith("B: m (transformers")
    assert "1 contended (not compared)" in cmp.summary()
    allowed = compare(str(a), str(b), tmp_path / "none.sqlite", allow_contended=True)
    assert len(allowed.cells) == 2 and allowed.regressions
    assert any("B was contended" in n for c in allowed.cells for n in c.notes)
    from asrperf.cli import main

    monkeypatch.setattr(sys, "argv", ["asrperf", "compare", str(a), str(b)])
    with pytest.raises(SystemExit) as exc:
        main()
        sys.exit(0)
    assert (exc.value.code or 0) == 0  # the regression is in a contended cell: not counted
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["asrperf", "compare", str(a), str(b), "--allow-contended"])
    with pytest.raises(SystemExit) as exc:
        main()
        sys.exit(0)
    assert exc.value.code == 4


def test_first_screen_names_the_contended_rows_and_shows_each_caveat():
    from rich.console import Console

    from asrperf.report.summary import not_measured, render_answer_rich

    busy = [row("fast-but-busy", 0.2, True), {**row("fast-but-busy", 0.3, True), "clip_length_s": 15.0}]
    rows = busy + [row("quiet", 0.5, False), row("fast-random", 0.1, False) | {
        "weights": "random", "wer": None, "wer_ci_low": None, "wer_ci_high": None}]
    gaps = not_measured(rows, [])
    gap = next(g for g in gaps if "contended" in g.what)
    assert gap.what.startswith("2 contended row(s) left out")
    assert "fast-but-busy (transformers, fp32) 5 s b1, 15 s b1" in gap.what and "--wait-quiet" in gap.command
    assert not any("contended" in g.what for g in not_measured(rows, [], allow_contended=True))
    console = Console(width=400, record=True)
    console.print(render_answer_rich(rows, [], recommend(rows)))
    text = console.export_text()
    # a per-pick caveat (a faster row without WER) is on the first screen, the shared contended one once, as a gap
    assert "caveats: not considered, no WER" in text and "fast-random" in text
    assert text.count("contended row(s) left out") == 1 and "fast-but-busy (transformers, fp32) 5 s b1" in text
    page = render_html(rows, [], plots=[])
    first = page[page.index('id="recommendations"'):page.index("<details>")]
    assert 'class="caveats"' in first and "not considered, no WER" in first
    assert "2 contended row(s) left out of the recommendations" in page and "--wait-quiet" in page
