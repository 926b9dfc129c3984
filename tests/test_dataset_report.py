"""Dataset evaluations in `asrperf report` (text and HTML) and `asrperf compare`, from stores built by
real evaluations: tiny.en (ct2 int8, real weights) and wav2vec2-base (random weights) on 3 built-in
sentences at batch 2."""

import subprocess
import sys
from html import escape

import pytest

from asrperf.config import ModelConfig
from asrperf.report.dataset_tables import COLUMNS, PADDING_CHANGES, dataset_tables
from asrperf.report.html import render_html
from asrperf.results.store import Store
from asrperf.run.evaluate import EvalConfig, evaluate

TINY = ModelConfig(name="whisper-tiny.en", engine="ct2", weights="real", dtype="int8")
W2V_RANDOM = ModelConfig(name="wav2vec2-base", engine="transformers", weights="random", dtype="fp32")
SOURCE = {"kind": "builtin", "n_sentences": 3}


def _eval(model: ModelConfig, store, cache_dir) -> dict:
    cfg = EvalConfig(model=model, source=SOURCE, threads=1, batch_size=2, store=str(store), cache_dir=str(cache_dir))
    return evaluate(cfg).row


@pytest.fixture(scope="module")
def evals(tmp_path_factory, cache_dir):
    """One store with a real-weight and a random-weight evaluation; their rows (as stored)."""
    store = tmp_path_factory.mktemp("dsreport") / "r.sqlite"
    real, rnd = _eval(TINY, store, cache_dir), _eval(W2V_RANDOM, store, cache_dir)
    return store, real, rnd


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "asrperf", *args], capture_output=True, text=True, timeout=300)


def _md_line(text: str, model: str) -> list[str]:
    """The cells of the markdown table line of `model`'s evaluation."""
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {model} (")]
    return [c.strip() for c in line.strip("|").split(" | ")]


def _wer(r: dict) -> str:
    return f"{100 * r['wer']:.2f} [{100 * r['wer_ci_low']:.2f}–{100 * r['wer_ci_high']:.2f}]"


def test_the_rows_are_real_evaluations(evals):
    _, real, rnd = evals
    assert real["scenario"] == rnd["scenario"] == "dataset" and real.get("clip_length_s") is None
    assert real["weights"] == "real" and real["wer"] is not None and real["n_utterances"] == 3
    assert rnd["weights"] == "random" and rnd.get("wer") is None and rnd["padding_policy"] == "unmasked"


def test_text_report_has_one_line_per_evaluation_with_the_rows_figures(evals):
    store, real, rnd = evals
    res = _cli("report", "--store", str(store), "--run", "all", "-f", "markdown")
    assert res.returncode == 0, res.stderr
    assert "**Dataset evaluation**" in res.stdout
    cells = dict(zip(COLUMNS, _md_line(res.stdout, "whisper-tiny.en")[1:]))
    assert cells["engine"] == "ct2" and cells["dtype"] == "int8" and cells["weights"] == "real"
    assert cells["source"] == "builtin: harvard-joe"
    assert cells["utterances (audio h)"] == f"3 ({real['audio_s_total'] / 3600:.3f} h)"
    assert cells["batch"] == "2" and cells["executor"] == "local" and cells["threads"] == "1"
    assert cells["WER % [95% CI]"] == _wer(real)
    assert cells["CER %"] == f"{100 * real['cer']:.2f}"
    assert cells["RTFx"] == f"{real['dataset_rtfx']:.1f}" and cells["wall RTFx"] == f"{real['wall_rtfx']:.1f}"
    assert cells["padding"] == "fixed_window (check: same output)"
    rnd_cells = dict(zip(COLUMNS, _md_line(res.stdout, "wav2vec2-base")[1:]))
    assert rnd_cells["weights"] == "random"
    assert rnd_cells["WER % [95% CI]"].startswith("— (random weights") and rnd_cells["CER %"].startswith("—")
    assert rnd_cells["RTFx"] == f"{rnd['dataset_rtfx']:.1f}"
    table = _cli("report", "--store", str(store), "--run", "all")  # the rich tables print too
    assert table.returncode == 0, table.stderr
    assert "Dataset evaluation" in table.stdout


def test_a_random_weight_row_never_shows_a_wer():
    # a row that (wrongly) carries a WER with random weights: the table shows none
    row = {"scenario": "dataset", "status": "ok", "model": "m", "engine": "ct2", "dtype": "int8", "device": "cpu",
           "weights": "random", "wer": 0.5, "wer_ci_low": 0.4, "wer_ci_high": 0.6, "cer": 0.3, "dataset_rtfx": 10.0}
    (t,) = dataset_tables([row])
    cells = dict(zip(COLUMNS, t.rows[0][1]))
    assert cells["WER % [95% CI]"] == "— (random weights: no WER)" and cells["CER %"].startswith("—")
    assert cells["RTFx"] == "10.0" and cells["wall RTFx"] == "— (not recorded)"


def test_padding_flag_when_batching_changes_outputs(evals):
    _, _, rnd = evals
    changed = {**rnd, "padding_changes_output": True}
    cells = dict(zip(COLUMNS, dataset_tables([changed])[0].rows[0][1]))
    assert cells["padding"] == f"unmasked [{PADDING_CHANGES}]"
    assert any("compare at batch 1" in n for n in dataset_tables([changed])[0].notes)


def test_html_section_table_definitions_and_worst_utterances(evals):
    store, real, rnd = evals
    with Store.open_readonly(store) as s:
        rows, runs = s.rows(), s.runs()
    page = render_html(rows, runs)
    assert '<section id="dataset"><h2>Dataset evaluation</h2>' in page and 'href="#dataset"' in page
    assert f"{_wer(real)}</td>" in page and f">{real['dataset_rtfx']:.1f}</td>" in page
    for term in ("RTFx (OASR)", "wall RTFx", "corpus WER", "padding policy"):
        assert f"<dt>{term}</dt>" in page
    worst = real["worst_utterances"]
    if worst:  # tiny.en may transcribe 3 clean sentences perfectly: then the page says so
        assert "<details><summary>Worst utterances of whisper-tiny.en" in page
        assert f"<td class=\"text\">{escape(worst[0]['hyp'])}</td>" in page
    else:
        assert "no utterance has a word edit" in page
    section = page.split('<section id="dataset">')[1].split("</section>")[0]
    assert "Worst utterances of wav2vec2-base" in section and "random weights" in section
    assert "2 dataset evaluation(s)" in page


def test_no_dataset_section_without_dataset_rows_and_mixed_stores_report_both(run_rows, tmp_path, cache_dir):
    run_rows([{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8", "weights": "real"}])
    store = tmp_path / "r.sqlite"
    res = _cli("report", "--store", str(store), "-f", "markdown")
    assert res.returncode == 0, res.stderr
    assert "Dataset evaluation" not in res.stdout
    with Store.open_readonly(store) as s:
        page = render_html(s.rows(), s.runs())
    assert 'id="dataset"' not in page and "Dataset evaluation: not measured in this run (no dataset rows)" in page
    row = _eval(TINY, store, cache_dir)  # an evaluation into the same store: both tables, nothing crashes
    res = _cli("report", "--store", str(store), "--run", "all", "-f", "markdown")
    assert res.returncode == 0, res.stderr
    assert "**Dataset evaluation**" in res.stdout and "latency ms p50" in res.stdout
    assert _md_line(res.stdout, "whisper-tiny.en")[10] == _wer(row)
    html = tmp_path / "page.html"
    res = _cli("report", "--store", str(store), "--run", "all", "--html", str(html))
    assert res.returncode == 0, res.stderr
    assert '<section id="dataset">' in html.read_text() and '<section id="cells">' in html.read_text()


def test_compare_matches_evaluations_and_compares_rtfx_and_wer(evals, tmp_path, cache_dir):
    from asrperf.report.compare import compare

    store_a, real, _ = evals
    store_b = tmp_path / "b.sqlite"
    again = _eval(TINY, store_b, cache_dir)  # the same evaluation, measured again
    result = compare(f"{store_a}:{real['run_id']}", str(store_b), store_b, 0.05)
    (cell,) = result.cells
    assert "whole utterances of" in cell.label and cell.identity["dataset_source_key"] == real["dataset_source_key"]
    metrics = {m.metric: m for m in cell.metrics}
    assert metrics["RTFx"].a == real["dataset_rtfx"] and metrics["RTFx"].b == again["dataset_rtfx"]
    assert metrics["RTFx"].change == pytest.approx(again["dataset_rtfx"] / real["dataset_rtfx"])
    assert metrics["RTFx"].ci is not None and metrics["wall RTFx"].b == again["wall_rtfx"]
    assert metrics["WER"].a == pytest.approx(real["wer"]) and metrics["WER"].change == pytest.approx(0.0)
    assert "latency p50" not in metrics
