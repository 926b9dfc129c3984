"""Load rows into asrperf's results store, and the table `asrperf load` prints.

One store run per `asrperf load` invocation (a load measures a moment, there is nothing to
resume); one cell per probe, plus one for a search's or sweep's result. Each probe's cell holds
its row (with every request's record under "requests") and, in the samples table, the latency
of each successful measured request from its scheduled send time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asrperf.load.client import OK


def cell_key(row: dict[str, Any], index: int) -> str:
    return f"server/{row.get('mode', 'single')}/{index:02d}-{row.get('probe_role', 'probe')}-{row.get('arrival', '')}"


def save_rows(store_path: str | Path, config: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """Commit every row (each in its own transaction); returns the new run id."""
    from asrperf.results import env as envmod
    from asrperf.results.store import Store

    started = time.time()
    digest = hashlib.sha256(json.dumps([config, started], sort_keys=True, default=str).encode()).hexdigest()[:12]
    run_id = f"load-{digest}"
    with Store(store_path) as store:
        store.begin_run(run_id, config, envmod.capture())
        for i, row in enumerate(rows):
            samples = [r["latency_s"] for r in row.get("requests", ()) if r["outcome"] == OK and not r["warmup"]]
            store.commit_cell(run_id, cell_key(row, i), {"status": "ok", **row}, row.get("started_at") or started,
                              samples_s=samples)
    return run_id


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:,.0f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


TABLE_COLUMNS = ("probe", "offered req/s", "achieved req/s", "audio s/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                 "queue p50 ms", "compute p50 ms", "batch mean", "ok / sent", "429", "err", "goodput (95% CI)",
                 "SLO", "WER", "late p99 ms")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One line of text cells per probe row (result rows are left out)."""
    out = []
    for r in rows:
        if r.get("probe_role") == "result":
            continue
        goodput = "-" if r.get("goodput_fraction") is None else (
            f"{r['goodput_fraction']:.3f} ({r['goodput_ci_low']:.3f}-{r['goodput_ci_high']:.3f})")
        errors = r["n_errors"] - r["n_rejected"]
        out.append((f"{r.get('probe_role', '')} {r['arrival']}", _num(r.get("offered_rate_rps")),
                    _num(r.get("achieved_rate_rps")), _num(r.get("audio_s_per_s")), _ms(r.get("latency_s_p50")),
                    _ms(r.get("latency_s_p90")), _ms(r.get("latency_s_p99")), _ms(r.get("latency_s_max")),
                    _ms(r.get("queue_s_p50")), _ms(r.get("compute_s_p50")), _num(r.get("batch_size_mean"), ".1f"),
                    f"{r['n_ok']}/{r['n_requests']}", str(r["n_rejected"]), str(errors), goodput,
                    r.get("slo_verdict") or "-", _num(r.get("wer"), ".3f"), _num(
                        None if r.get("lateness_s_p99") is None else 1000 * r["lateness_s_p99"], ".2f")))
    return out


def render_table(rows: Sequence[dict[str, Any]], title: str):
    """A rich Table of the probes."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col == "probe" else "right")
    for cells in table_rows(rows):
        table.add_row(*(escape(c) for c in cells))
    return table
