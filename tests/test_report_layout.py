"""The report answers first: the first screen, tables that fit and sort, plots only when they compare,
legends off the data, flags on the rows they qualify, and the same answer in the terminal.

The store holds five model columns written through the strict row schema (Store.commit_cell), with
the long provenance strings of real runs, so the layout is checked at the width that broke it.
"""

import html as htmllib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_stores import INJECTED, guard_fields, page_file, write_store

from asrperf.report import plots as plots_mod
from asrperf.report.html import render_html
from asrperf.report.page_sections import SECTIONS, PageSection, register_section
from asrperf.report.plots import make_plots
from asrperf.report.summary import not_measured
from asrperf.results.store import Store
from asrperf.run.coverage import engine_offers

ENV = {"cpu_model": "Test CPU 9000 with a long marketing name", "usable_cores": 8, "memory_bytes": 32 * 2**30,
       "gpus": [], "packages": {"torch": "2.5", "transformers": "4.46", "ctranslate2": None, "faster-whisper": None,
                                "onnxruntime": None, "onnx": None}}
# (model, engine, variant/dtype, weights, p50 s, WER): p50s chosen so text order differs from numeric order
FIVE = [("whisper-tiny.en", "transformers", "fp32", "real", 0.09, 0.081),
        ("whisper-base.en", "transformers", "fp32", "real", 0.30, 0.062),
        ("whisper-small.en", "ct2", "int8", "real", 1.20, 0.045),
        ("wav2vec2-base", "transformers", "fp32", "random", 0.05, None),
        ("distil-whisper-large-v3", "transformers", "fp32", "real", 2.50, 0.040)]


def _row(model: str, engine: str, dtype: str, weights: str, p50: float, wer: float | None, batch: int = 1,
         length: float = 5.0, contended: bool = False, measured: bool = True) -> dict:
    calls = 4
    row = {"status": "ok", "scenario": "latency", "model": model, "model_name": model, "engine": engine,
           "dtype": dtype, "variant": dtype, "weights": weights, "weights_requested": weights, "device": "cpu",
           "device_name": "Test CPU 9000 with a long marketing name", "threads": 2, "clip_length_s": length,
           "batch_size": batch, "n_calls": calls, "latency_s_p50": p50 * batch, "latency_s_p90": 1.1 * p50 * batch,
           "latency_s_min": 0.9 * p50 * batch, "latency_s_max": 1.2 * p50 * batch, "rtfx": length / p50,
           "throughput_samples_per_s": 1 / p50, "first_call_s": 3 * p50, "load_s": 1.5,
           "energy_j": 10.0 * p50 * calls, "energy_j_per_sample": 10.0 * p50, "energy_j_per_audio_s": 2.0 * p50,
           "energy_measured": measured,
           "energy_method": "measured: RAPL package counters" if measured else "estimated: TDP x CPU utilisation",
           "rss_peak_timed_bytes": 600 * 2**20, "timing_policy": {"warmup_calls": 1, "min_calls": calls},
           "timed_region": ["feature_extraction", "host_to_device", "model_forward_and_decoding", "detokenize"],
           "tokens_policy": "real: the model ended its own decoding at end-of-text, greedy, no timestamps",
           **guard_fields(contended)}
    if wer is not None:
        row.update(wer=wer, wer_ci_low=wer - 0.01, wer_ci_high=wer + 0.012, ref_words=400)
    else:
        row["wer_missing_reason"] = "random weights: no meaningful transcript"
    return row


def _five_rows(batches=(1,), contended_model: str = "whisper-base.en", estimated_model: str = "whisper-small.en"):
    return [_row(m, e, d, w, p50, wer, batch=b, contended=m == contended_model, measured=m != estimated_model)
            for m, e, d, w, p50, wer in FIVE for b in batches]


@pytest.fixture(scope="module")
def five_store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("layout") / "five.sqlite", _five_rows(), ENV)


def test_first_screen_holds_the_answer_and_nothing_scrolls_sideways(five_store, tmp_path, open_page):
    page, errors, requests = open_page(page_file(five_store, tmp_path))
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # no network
    recs = page.locator("ol.recs")
    hero = page.locator(".hero img.plot")
    assert hero.count() == 1 and hero.get_attribute("alt").startswith("WER vs latency")
    for box in (recs.bounding_box(), hero.bounding_box(), page.locator("dl.measured").bounding_box()):
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 800, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1280, box
    assert page.locator("ol.recs li").count() >= 6  # every scenario, each one line of reason
    # nothing is wider than the viewport; no table box scrolls sideways, with five model columns
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    widths = page.eval_on_selector_all(".scroll", "els => els.map(e => [e.scrollWidth, e.clientWidth])")
    assert len(widths) >= 3 and all(s <= c for s, c in widths), widths
    assert page.locator("#latency table.study thead th").count() == 6  # corner + five models
    # each recommendation links to the row behind it
    hrefs = page.eval_on_selector_all("ol.recs a", "as => as.map(a => a.getAttribute('href'))")
    assert hrefs and all(page.locator(h).count() == 1 for h in hrefs)
    # one nav link per section shown, each with its definitions drawer
    for sid in ("cells", "latency", "max-throughput", "guard", "environment"):
        assert page.locator(f'nav a[href="#{sid}"]').count() == 1
    assert page.locator("#latency details.defs").count() == 1 and page.locator("#cells details.defs").count() == 1


def _column(page, header: str) -> list[float | None]:
    idx = page.eval_on_selector_all("table.cells thead th",
                                    f"ths => ths.findIndex(th => th.textContent.startsWith({header!r}))")
    assert idx > 0
    return page.eval_on_selector_all(
        "table.cells tbody.cell:not([hidden]) tr:first-child",
        f"trs => trs.map(tr => tr.cells[{idx}].hasAttribute('data-v') ? Number(tr.cells[{idx}].dataset.v) : null)")


def test_sorting_is_numeric_and_filtering_hides_other_engines(five_store, tmp_path, open_page):
    page, errors, _ = open_page(page_file(five_store, tmp_path))
    header = page.locator("table.cells th.sortable", has_text="latency p50 ms")
    header.click()
    up = _column(page, "latency p50 ms")
    assert up == sorted(up) == [50.0, 90.0, 300.0, 1200.0, 2500.0]
    texts = page.eval_on_selector_all("table.cells tbody.cell tr:first-child td:nth-child(5)",
                                      "tds => tds.map(td => td.textContent)")
    assert texts != sorted(texts)  # as text, "1,200.0" < "2,500.0" < "300.0" < "50.0" < "90.0"
    header.click()
    assert _column(page, "latency p50 ms") == [2500.0, 1200.0, 300.0, 90.0, 50.0]
    assert page.locator("table.cells th[aria-sort=descending]").count() == 1
    page.select_option('select[data-filter="engine"]', "ct2")
    visible = page.locator("table.cells tbody.cell:not([hidden])")
    assert visible.count() == 1 and visible.first.get_attribute("data-engine") == "ct2"
    assert page.locator("tbody.cell[data-engine=transformers]").first.is_hidden()
    assert "1 of 5 cells shown" in page.locator('[data-count="cells-table"]').inner_text()
    page.select_option('select[data-filter="engine"]', "")
    assert page.locator("table.cells tbody.cell:not([hidden])").count() == 5
    # the provenance opens under its row
    first = page.locator("table.cells tbody.cell").first
    first.locator("button.more").click()
    assert first.locator("tr.details").is_visible() and "timed call(s)" in first.locator("tr.details").inner_text()
    assert errors == []


def test_each_flag_sits_on_the_row_it_qualifies(five_store, tmp_path, open_page):
    page, errors, _ = open_page(page_file(five_store, tmp_path))

    def badges(model: str) -> set[str]:
        body = page.locator(f'table.cells tbody.cell[data-model="{model}"]')
        return set(body.locator(".badge").all_inner_texts())

    assert "random weights" in badges("wav2vec2-base") and "real weights" in badges("whisper-tiny.en")
    assert "random weights" not in badges("whisper-tiny.en")
    assert "energy estimated" in badges("whisper-small.en") and "energy measured" in badges("whisper-tiny.en")
    assert "contended" in badges("whisper-base.en") and "contended" not in badges("whisper-tiny.en")
    tip = page.locator('tbody.cell[data-model="whisper-base.en"] .badge.contended').get_attribute("title")
    assert "it got 45% of the CPU" in tip
    assert page.locator('tbody.cell[data-model="wav2vec2-base"] .badge.random').is_visible()
    assert errors == []


def test_injected_script_stays_text(tmp_path, open_page):
    rows = _five_rows()
    rows[0] = {**rows[0], "model": INJECTED, "model_name": INJECTED, "tokens_policy": INJECTED}
    path = page_file(write_store(tmp_path / "inject.sqlite", rows, ENV), tmp_path)
    text = path.read_text(encoding="utf-8")
    assert INJECTED not in text and text.count("<script") == 1  # the page's own script only
    assert htmllib.escape(INJECTED) in text
    page, errors, requests = open_page(path)
    assert errors == [] and [u for u in requests if not u.startswith(("file:", "data:"))] == []
    body = page.locator("table.cells tbody.cell", has_text=INJECTED).first
    assert body.is_visible()
    page.select_option('select[data-filter="model"]', INJECTED)  # a filter value from data stays a value
    assert page.locator("table.cells tbody.cell:not([hidden])").count() == 1


def test_single_batch_size_draws_no_throughput_plot_and_says_why(five_store):
    with Store(five_store) as s:
        rows = s.rows()
    plots = {p.name: p for p in make_plots(rows)}
    tp = plots["throughput-vs-batch-cpu"]
    assert tp.png is None and "one batch size (1) measured on cpu" in tp.missing
    assert plots["latency-vs-length-cpu"].png is not None  # five configurations at one length still compare
    page = render_html(rows, [])
    assert "Throughput vs batch size, cpu: not drawn: one batch size (1)" in page
    swept = make_plots(_five_rows(batches=(1, 4)))
    assert next(p for p in swept if p.name == "throughput-vs-batch-cpu").png is not None
    one = make_plots([_five_rows()[0]])  # one configuration, one length, one batch: nothing compares
    assert all(p.png is None for p in one if p.name.startswith(("latency-vs", "wer-vs", "energy", "throughput")))
    assert "a Pareto front needs two" in next(p.missing for p in one if p.name.startswith("wer-vs-latency"))


def test_legends_sit_outside_every_axes(monkeypatch):
    figures = []
    real_png = plots_mod._png
    monkeypatch.setattr(plots_mod, "_png", lambda fig: (figures.append(fig), real_png(fig))[1])
    rows = [_row(m, e, d, w, p50, wer, batch=b, length=length, measured=m != "whisper-small.en")
            for m, e, d, w, p50, wer in FIVE for b in (1, 4) for length in (5.0, 15.0)]
    prof = dict(rows[0], scenario="profile",
                op_categories=[{"category": "matmul", "self_ms": 300.0, "share": 0.75},
                               {"category": "other", "self_ms": 100.0, "share": 0.25}],
                stages=[{"stage": "model", "ms": 300.0, "share": 0.9, "nested": False},
                        {"stage": "encoder", "ms": 100.0, "share": 0.3, "nested": True}])
    dec = dict(rows[0], scenario="decode", decode_curve=[
        {"position": i, "ms": 2.0 + i * kv, "kv_cache": kv, "decoding": "greedy"} for kv in (True, False)
        for i in range(8)])
    drawn = [p for p in make_plots(rows + [prof, dec]) if p.png is not None]
    assert {p.name for p in drawn} >= {"latency-vs-length-cpu", "throughput-vs-batch-cpu", "energy-cpu",
                                       "wer-vs-latency-cpu", "profile-cpu", "decode-curve-cpu"}
    assert len(figures) == len(drawn)
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert legends, fig
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (fig.texts, legend.get_texts()[0])


def test_not_measured_names_engines_variants_and_the_gpu(tmp_path):
    rows = _five_rows()
    gaps = not_measured(rows, [{"run_id": "run1", "env": ENV}], engine_offers(rows))
    text = [f"{g.what}: {g.command}" for g in gaps]
    variant = next(t for t in text if t.startswith("no optimization variant"))
    assert "whisper-tiny.en, whisper-base.en" in variant and "asrperf optimize whisper-tiny.en --device cpu" in variant
    assert "whisper-small.en" not in variant  # it ran as int8
    assert len(text) == len(set(text)) and sum(t.startswith("engine ") for t in text) == len(
        {t.split()[1] for t in text if t.startswith("engine ")})  # one line per engine, not per model
    assert any(t.startswith("no GPU on the measuring machine") for t in text)
    # ct2 is recorded as not installed where the run was measured: not offered
    assert not any("engine ct2" in t for t in text)
    with_ct2 = {**ENV, "packages": {**ENV["packages"], "ctranslate2": "4.5", "faster-whisper": "1.1"},
                "gpus": [{"name": "NVIDIA H200"}]}
    gaps = not_measured(rows, [{"run_id": "run1", "env": with_ct2}], engine_offers(rows))
    text = [f"{g.what}: {g.command}" for g in gaps]
    assert any("engine ct2" in t and "asrperf run -m whisper-tiny.en -m whisper-base.en" in t and t.endswith("-e ct2")
               for t in text)
    assert not any("-e ct2" in t and "wav2vec2-base" in t for t in text)  # ct2 runs Whisper only
    assert any("the GPU (NVIDIA H200) was not measured" in t for t in text)


def test_a_new_section_is_one_entry(five_store):
    with Store(five_store) as s:
        rows, runs = s.rows(), s.runs()
    saved = list(SECTIONS)
    try:
        register_section(PageSection("serving", "Serving under load", ("latency",),
                                     lambda data: f"<p>{len(data.rows)} rows under load</p>",
                                     (("offered load", "requests per second sent on a schedule"),)))
        page = render_html(rows, runs, plots=[])
        assert '<a href="#serving">Serving under load</a>' in page and "5 rows under load" in page
        assert page.index('id="serving"') < page.index('id="guard"')
        assert "offered load" in page
    finally:
        SECTIONS[:] = saved


def test_terminal_prints_the_answer_before_the_tables(five_store, tmp_path):
    env = {**os.environ, "COLUMNS": "110", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-m", "asrperf", "report", "--store", str(five_store)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    first_table = out.index("cpu: Test CPU 9000")
    assert out.index("Recommendations (among what was measured)") < first_table
    assert out.index("Not measured (could change the answer)") < first_table
    assert "asrperf optimize distil-whisper-large-v3 --device cpu" in " ".join(out[:first_table].split())
    assert max(len(line) for line in out.splitlines()) <= 110  # the tables follow the terminal width
