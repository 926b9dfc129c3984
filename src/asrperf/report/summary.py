"""The answer first: what was measured, what was not (and could change the answer), in a few lines.

Shared by the HTML page's first screen and the terminal report. Pure data in: rows, the runs'
environments, and the engines that could run the measured models (`EngineOffer`s, built from the
engine declarations by run/coverage.py: report/ does not import engines). Nothing here imports an
engine's library: whether one is installed is read from the run's recorded package versions,
else looked up with find_spec.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from asrperf.report.gate import is_baseline
from asrperf.report.recommend import contended_caveat, pick_lines, shared_caveats
from asrperf.report.tables import column_label

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Gap:
    """Something not measured that could change the answer, and the command that measures it."""

    what: str  # "engine ct2 is installed and runs whisper-tiny.en, but was not run"
    command: str  # "asrperf run -m whisper-tiny.en -e ct2"


@dataclass(frozen=True)
class EngineOffer:
    """An engine that runs some of the measured models (from its declaration; run/coverage.py)."""

    engine: str
    models: tuple[str, ...]  # measured model names whose family it runs
    requires: tuple[str, ...]  # import names of the libraries it needs


def _ok(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok"]


def _join(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values)) or "none"


def measured_lines(rows: Iterable[Row], runs: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(label, text) lines: the machine, the models, the engines, the clip lengths and batches."""
    rows, runs = list(rows), list(runs)
    ok = _ok(rows)
    machines = []
    for run in runs:
        env = run.get("env") or {}
        gpus = "; ".join(str(g.get("name")) for g in env.get("gpus") or []) or "no GPU"
        mem = env.get("memory_bytes")
        machines.append(f"{env.get('cpu_model') or 'unknown CPU'}, {env.get('usable_cores') or '?'} usable cores"
                        + (f", {mem / 2**30:.0f} GiB" if mem else "") + f", {gpus}")
    devices = _join(f"{r['device']}" + (f" ({r['device_name']})" if r.get("device_name") and r.get("device_name")
                                        != r["device"] else "") for r in ok)
    models = _join(f"{r['model']} ({r.get('weights') or r.get('weights_requested') or '?'} weights)" for r in rows)
    engines = _join(f"{r['engine']} {r.get('variant') or r.get('dtype')}" for r in rows)
    lengths = sorted({float(r["clip_length_s"]) for r in rows})
    batches = sorted({int(r["batch_size"]) for r in rows if r.get("batch_size") is not None
                      and (r.get("scenario") or "latency") != "max_throughput"})  # a search row has no fixed batch
    searched = " + batch-size search" if any(r.get("scenario") == "max_throughput" for r in rows) else ""
    scenarios = _join(r.get("scenario") or "latency" for r in rows)
    failed = sum(r.get("status") != "ok" for r in rows)
    return [
        ("machine", "; ".join(dict.fromkeys(machines)) or "no run environment recorded"),
        ("devices", devices),
        ("models", models),
        ("engines", engines + f" ({scenarios})"),
        ("lengths", (", ".join(f"{x:g} s" for x in lengths) or "none") + "; batch "
         + (", ".join(str(b) for b in batches) or "none") + searched
         + f"; {len(rows)} cell(s), {failed} failed"),
    ]


def _installed(requires: Sequence[str], runs: list[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the engine's libraries were installed where the rows were measured (the run's recorded
    package versions), else on this machine; and where that was decided."""
    for run in runs:
        packages = (run.get("env") or {}).get("packages") or {}
        known = [next((packages[n] for n in (m, m.replace("_", "-")) if n in packages), "?") for m in requires]
        if "?" not in known:
            return all(v is not None for v in known), "where the run was measured"
    return all(importlib.util.find_spec(m) is not None for m in requires), "on this machine"


def _contended_gap(ok: list[Row]) -> Gap | None:
    """The rows the busy-machine guard flagged (left out of the recommendations), named by column and cell."""
    busy = [r for r in ok if r.get("contended") is True]
    if not busy:
        return None
    cells: dict[str, list[str]] = {}
    for r in busy:
        cells.setdefault(column_label(r), []).append(f"{float(r['clip_length_s']):g} s b{r.get('batch_size')}")
    which = "; ".join(f"{label} {', '.join(c)}" for label, c in cells.items())
    return Gap(f"{len(busy)} contended row(s) left out of the recommendations (measured while the machine was busy, "
               f"flagged by the busy-machine guard; they could change the answer): {which}",
               "asrperf run --wait-quiet (or re-run on a quiet machine)")


def not_measured(rows: Iterable[Row], runs: Iterable[Mapping[str, Any]],
                 offers: Sequence[EngineOffer] = (), allow_contended: bool = False) -> list[Gap]:
    """What these rows leave out that could change a recommendation, each with its command.

    - rows left out as contended (measured on a busy machine), unless `allow_contended` let them in;
    - engines of `offers` whose libraries are installed, never run on a model they run;
    - optimization variants (dtype, quantization, attention, compile) never tried for a model:
      `asrperf optimize` tries those that apply on the device;
    - a GPU: absent from the measuring machine, or present and not measured;
    - random weights only: no WER, so no accuracy bound was checked.
    """
    rows, runs = list(rows), list(runs)
    ok = _ok(rows)
    if not ok:
        return []
    contended = None if allow_contended else _contended_gap(ok)
    gaps: list[Gap] = [contended] if contended else []
    models = list(dict.fromkeys(r.get("model_name") or r["model"] for r in ok))
    lengths = sorted({float(r["clip_length_s"]) for r in ok})
    baseline_only: list[str] = []
    ran: dict[str, set[str]] = {}
    for r in ok:
        ran.setdefault(str(r.get("model_name") or r["model"]), set()).add(r["engine"])
    for name in models:
        mine = [r for r in ok if (r.get("model_name") or r["model"]) == name]
        if all(is_baseline(r) for r in mine):
            baseline_only.append(str(name))
    for offer in offers:
        names = [n for n in offer.models if n in ran and offer.engine not in ran[n]]
        installed, where = _installed(offer.requires, runs)
        if names and installed:
            gaps.append(Gap(f"engine {offer.engine} is installed {where} and runs {', '.join(names)}, but was not run",
                            "asrperf run " + " ".join(f"-m {n}" for n in names) + f" -e {offer.engine}"))
    if baseline_only:
        device = next(r["device"] for r in ok if (r.get("model_name") or r["model"]) == baseline_only[0])
        each = " (one model per call)" if len(baseline_only) > 1 else ""
        gaps.append(Gap(f"no optimization variant (other dtypes, int8, attention, compile) was tried for "
                        f"{', '.join(baseline_only)}: only the fp32 baseline ran",
                        f"asrperf optimize {baseline_only[0]} --device {device} --length {lengths[-1]:g}{each}"))
    devices = {r["device"] for r in ok}
    gpus = [g for run in runs for g in (run.get("env") or {}).get("gpus") or []]
    if not any(d.startswith("cuda") for d in devices):
        if gpus:
            gaps.append(Gap(f"the GPU ({_join(g.get('name') for g in gpus)}) was not measured",
                            "asrperf run --device cuda"))
        elif runs:
            gaps.append(Gap("no GPU on the measuring machine: GPU latency and throughput are not measured",
                            "asrperf run --device cuda (on a machine with an NVIDIA GPU)"))
    if all(r.get("wer") is None for r in ok if (r.get("scenario") or "latency") == "latency"):
        gaps.append(Gap("no row has a WER (random weights or accuracy off): no recommendation checked accuracy",
                        "asrperf run -m whisper-tiny.en --weights real"))
    return gaps


def first_screen_caveats(recs: Sequence[Any], rows: Iterable[Row]) -> dict[str, tuple[str, ...]]:
    """Per device, the caveats all its recommendations share, less the contended-rows one (the
    contended gap of `not_measured` says it with the rows and the fix)."""
    ok = _ok(rows)
    out = {}
    for device, common in shared_caveats(list(recs)).items():
        busy = sum(r.get("contended") is True for r in ok if r["device"] == device)
        out[device] = tuple(c for c in common if not busy or c != contended_caveat(busy))
    return out


def render_answer_rich(rows: list[Row], runs: list[Mapping[str, Any]], recs: list[Any],
                       offers: Sequence[EngineOffer] = (), allow_contended: bool = False):
    """The terminal's first screen: measured lines, the recommendations in one line each (with their
    caveats), and the gaps."""
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts: list[Any] = []
    for label, text in measured_lines(rows, runs):
        line = Text(f"{label}: ", style="bold")
        line.append(text)
        parts.append(line)
    t = RichTable(title="Recommendations (among what was measured)", title_justify="left", expand=False)
    t.add_column("scenario", style="bold", no_wrap=True)
    t.add_column("choice", overflow="fold", ratio=2)
    t.add_column("why", overflow="fold", ratio=3)
    for name, choice, why, caveats in pick_lines(recs):
        cell = Text(why)
        if caveats:
            cell.append(f"\ncaveats: {caveats}", style="yellow")
        t.add_row(Text(name), Text(choice), cell)
    parts.append(t)
    devices = {r.device for r in recs}
    for device, common in first_screen_caveats(recs, rows).items():
        if common:
            parts.append(Text(f"every recommendation{'' if len(devices) == 1 else f' [{device}]'}: "
                              + "; ".join(common), style="yellow"))
    gaps = not_measured(rows, runs, offers, allow_contended)
    if gaps:
        parts.append(Text("Not measured (could change the answer):", style="bold yellow"))
        for g in gaps:
            line = Text(f"  - {g.what}: ")
            line.append(g.command, style="cyan")
            parts.append(line)
    return Group(*parts)
