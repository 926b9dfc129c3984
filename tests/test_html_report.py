"""`asrperf report --html`: a self-contained page from a store built by a real small run, checked in Chromium."""

import copy
import html as htmllib
import io
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from report_stores import INJECTED, page_file

from asrperf.config import config_from_dict
from asrperf.report.plots import make_plots, pareto_front
from asrperf.results.store import Store
from asrperf.run.runner import run

# one model at one length: only what compares is drawn (two batch sizes: the throughput curve, two energy bars);
# latency vs length (one point) and WER vs latency (one configuration) say why they are absent
DRAWN = {"throughput-vs-batch-cpu", "energy-cpu"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir, tiny_source) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    cfg = config_from_dict({
        "source": tiny_source,
        "models": [{"name": "whisper-tiny.en", "weights": "real"}],
        "timing": {"warmup_calls": 0, "min_calls": 2, "min_time_s": 0.0},
        "run": {"clip_lengths_s": [5], "n_clips": 2, "batch_sizes": [1, 2], "store": str(tmp / "r.sqlite"),
                "cache_dir": str(cache_dir), "isolate": False},
    })
    assert run(cfg).failed == 0
    return tmp / "r.sqlite"


@pytest.fixture(scope="module")
def injected_store(store, tmp_path_factory) -> Path:
    """A copy of the real store plus one hand-made cell whose model label and transcript carry a script."""
    path = tmp_path_factory.mktemp("inject") / "r.sqlite"
    with sqlite3.connect(store) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    with Store(path) as s:
        real = next(r for r in s.rows() if r["batch_size"] == 1)
        row = copy.deepcopy(real.flat())
        for k in ("run_id", "cell_key", "status", "error"):
            row.pop(k, None)
        row["model"] = INJECTED
        row["transcripts"] = [{"clip": "5s-000", "ref": INJECTED, "hyp": "hello"}]
        s.commit_cell(real["run_id"], "injected", row, time.time())
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrperf", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_writes_page_and_pngs(store, tmp_path):
    res = _cli("report", "--store", str(store), "--html", "out/report.html", "--plots-dir", "plots", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pngs = {p.stem: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")}
    assert set(pngs) == DRAWN  # stable names: kind plus device
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") and len(b) > 5000 for b in pngs.values())
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert text.count('src="data:image/png;base64,') == len(DRAWN)
    assert "http://" not in text and "https://" not in text and text.count("<script") == 1  # self-contained
    # the study table with its provenance rows, and the plots this run could not have
    assert "latency ms p50 (p90), b1, 5 s" in text and '<tr class="prov"><th scope="row">weights</th><td class="num">real' in text
    assert "Per-token decode time: not measured in this run" in text
    assert "Latency vs clip length, batch 1, cpu: not drawn: one clip length (5 s) and one configuration" in text
    assert "WER vs latency, cpu: not drawn: only one configuration has a WER" in text
    assert "Where the time goes (profiler): not measured in this run" in text
    assert "<details><summary>whisper-tiny.en (transformers, fp32, real weights), cpu, 5 s clips, batch 1" in text
    assert "The birch canoe slid on the smooth planks." in text  # a reference transcript of the built-in corpus
    assert "No cell failed." in text and "usable cores" in text  # the run's environment


def test_plots_dir_alone_writes_pngs(store, tmp_path):
    res = _cli("report", "--store", str(store), "--plots-dir", "p", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert {p.stem for p in (tmp_path / "p").glob("*.png") if p.stat().st_size > 0} == DRAWN
    assert "not measured in this run" in res.stderr  # the skipped plots are named, with the reason


def test_page_loads_in_chromium_with_drawn_plots(store, tmp_path, open_page):
    page, errors, _ = open_page(page_file(store, tmp_path))
    assert errors == []  # no console error, page error or dialog
    widths = page.eval_on_selector_all("img.plot", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == len(DRAWN) and all(w > 0 for w in widths)
    from PIL import Image

    shot = page.locator("#plot-throughput-vs-batch-cpu img").screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(float)
    assert pixels.var() > 0
    # drawn data, not just axes: the series are coloured, axes and text are grey
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert coloured.sum() > 50


def test_injected_markup_stays_text(injected_store, tmp_path, open_page):
    path = page_file(injected_store, tmp_path)
    text = path.read_text(encoding="utf-8")
    assert INJECTED not in text and text.count("<script") == 1  # the page's own script only
    assert htmllib.escape(INJECTED) in text
    page, errors, _ = open_page(path)
    assert errors == []  # no console error, page error or dialog
    header = page.locator("thead th", has_text=INJECTED).first
    assert header.is_visible()
    summary = page.locator("summary", has_text=INJECTED).first
    summary.click()  # open the transcript block
    cell = page.locator("details[open] td", has_text=INJECTED).first
    assert cell.is_visible() and cell.inner_text() == INJECTED


def test_absent_data_is_a_note_and_present_shapes_are_drawn(store):
    with Store(store) as s:
        real = next(r for r in s.rows() if r["batch_size"] == 1)
    plots = {p.name.split("-cpu")[0]: p for p in make_plots([real])}
    assert plots["decode-curve"].png is None and plots["decode-curve"].missing.startswith("not measured in this run")
    # the row shapes the profile and decode scenarios store (scenarios/profile.py run_profile, decode.py)
    prof = dict(real, scenario="profile",
                op_categories=[{"category": "matmul", "self_ms": 300.0, "share": 0.75},
                               {"category": "other", "self_ms": 100.0, "share": 0.25}],
                stages=[{"stage": "model", "ms": 300.0, "share": 0.9, "nested": False},
                        {"stage": "encoder", "ms": 100.0, "share": 0.3, "nested": True}])
    dec = dict(real, scenario="decode", decode_curve=[{"position": i, "ms": 2.0 + i * kv, "kv_cache": kv,
                                                       "decoding": "greedy"} for kv in (True, False) for i in range(8)])
    drawn = {p.name: p for p in make_plots([real, prof, dec])}
    assert drawn["profile-cpu"].png and drawn["decode-curve-cpu"].png


def test_empty_rows_draw_nothing():
    plots = make_plots([])
    assert plots and all(p.png is None and p.missing.startswith("not measured in this run") for p in plots)


@pytest.mark.parametrize(
    "points, front",
    [
        ([(1, 5), (2, 4), (3, 6), (4, 1)], [(1, 5), (2, 4), (4, 1)]),  # (3, 6) is beaten by (2, 4)
        ([(2, 2), (1, 3), (3, 1)], [(1, 3), (2, 2), (3, 1)]),
        ([(1, 1), (2, 2), (3, 3)], [(1, 1)]),  # one point beats all
        ([(1, 2), (1, 1)], [(1, 1)]),  # equal latency: the lower WER wins
        ([], []),
    ],
)
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_missing_matplotlib_names_the_extra(store, monkeypatch):
    from asrperf.errors import MissingExtraError

    with Store(store) as s:
        rows = s.rows()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingExtraError, match=r"`matplotlib` is needed for plots in the HTML report: "
                                                r"pip install 'asrperf\[report\]'"):
        make_plots(rows)
