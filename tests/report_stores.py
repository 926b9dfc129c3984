"""Stores for the report tests: hand-made rows written through the strict row schema
(Store.commit_cell), as a run would leave them, with the busy-machine guard's figures; and the
HTML page of a store, as a file for the browser."""

from pathlib import Path

from asrperf.measure.contention import ContentionResult
from asrperf.report.html import render_html
from asrperf.results.store import Store

INJECTED = "<script>alert(1)</script>"  # a label or transcript that must stay text on the page


def guard_fields(contended: bool) -> dict:
    """The guard's row fields of a 2-thread cell on 2 CPUs: beside a spinner (1.2 cores of others,
    45% of its CPU) or alone."""
    if contended:
        r = ContentionResult(wall_s=1.0, threads=2, n_cpus=2, own_cpu_s=0.8, own_wait_s=0.98, others_cpu_s=1.2,
                             steal_s=0.0, runqueue_max=5)
    else:
        r = ContentionResult(wall_s=1.0, threads=2, n_cpus=2, own_cpu_s=1.9, own_wait_s=0.01, others_cpu_s=0.04,
                             steal_s=0.0, runqueue_max=2)
    return r.to_row()


def write_store(path: Path, rows: list[dict], env: dict, run_id: str = "run1", n_samples: int | None = None) -> Path:
    """`rows` committed to the store at `path` as the cells of run `run_id`, each with its p50 as
    every timed sample (`n_samples` of them; default: the row's n_calls). A row's `cell_key` is its
    key; a row without one is keyed by its configuration and its index."""
    with Store(path) as s:
        s.begin_run(run_id, {}, env)
        for i, r in enumerate(rows):
            key = r.get("cell_key") or (f"{r['model']}|{r['engine']}|{r['variant']}|{r['clip_length_s']:g}s"
                                        f"|b{r['batch_size']}|{i}")
            s.commit_cell(run_id, key, r, 0.0, [], [r["latency_s_p50"]] * (n_samples or r["n_calls"]))
    return path


def page_file(store: Path, folder: Path) -> Path:
    """The HTML report of every row and run in `store`, written to `folder`/report.html."""
    with Store(store) as s:
        text = render_html(s.rows(), s.runs())
    path = folder / "report.html"
    path.write_text(text, encoding="utf-8")
    return path
