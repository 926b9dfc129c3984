"""The report's figures, drawn from committed result rows with matplotlib's Agg backend.

Each figure kind is one function `rows -> list[Plot]`. A kind whose data is absent returns one
Plot with no image and a one-line reason, so a report never shows an empty axes. Every figure
names its provenance: device in the title, model / engine / dtype / weights (/ variant) in the
legend or tick labels. No torch, no engine imports (report/ sits at the end of the data flow).
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrperf.errors import require

BASELINE = "baseline"  # rows without a `variant` key ran the model as configured
_MARKERS = "osD^v<>Pph*"


@dataclass(frozen=True)
class Plot:
    """One figure: a stable file stem, a caption, and PNG bytes or the reason there are none."""

    name: str  # file stem, stable across runs: kind plus device ("latency-vs-length-cpu")
    title: str
    png: bytes | None = None
    missing: str | None = None  # "not measured in this run: ..." when png is None


# ---------------------------------------------------------------------------------------------
# labels and row selection


def variant(row: dict[str, Any]) -> str:
    """The row's variant, or BASELINE; a variant label that is just the dtype ("fp32") is the baseline."""
    v = row.get("variant")
    return BASELINE if not v or v == row.get("dtype") else v


def series_label(row: dict[str, Any]) -> str:
    """model (engine, variant or dtype, weights): the provenance every series carries.

    A variant label starts with its dtype ("fp32+quant=int8_dynamic"), as in the tables' columns.
    """
    weights = row.get("weights") or row.get("weights_requested")  # a failed cell may not know which it got
    v = variant(row)
    parts = [row["engine"], row["dtype"] if v == BASELINE else v] + ([f"{weights} weights"] if weights else [])
    return f"{row['model']} ({', '.join(parts)})"


def _tex_safe(text: str) -> str:
    # matplotlib reads $...$ as mathtext: a `$` from data must print as itself, not fail to parse
    return str(text).replace("$", r"\$")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "device"


def _ok(rows: Iterable[dict[str, Any]], scenario: str = "latency") -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and r.get("scenario", "latency") == scenario]


def _by_device(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["device"]].append(r)
    return out


def _device_title(device: str, rows: list[dict[str, Any]]) -> str:
    name = next((r.get("device_name") for r in rows if r.get("device_name")), None)
    return f"{device} ({name})" if name and name != device else device


def _series(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[series_label(r)].append(r)
    return out


def _missing(name: str, title: str, reason: str) -> Plot:
    return Plot(name, title, missing=f"not measured in this run: {reason}")


# ---------------------------------------------------------------------------------------------
# drawing


def _figure(ncols: int = 1, width: float = 7.5, height: float = 4.2):
    """A pyplot-free Figure on the Agg canvas: no global backend state, safe in any process."""
    require("matplotlib", "plots in the HTML report", "report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # tight: legends placed below an axes stay inside the image; no version stamp: same data, same bytes
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def legend_outside(fig, handles: list, labels: list, where: str = "lower center", ncol: int | None = None) -> None:
    """The figure's legend outside every axes (constrained layout makes room): it never covers data."""
    if handles:
        fig.legend(handles, labels, loc=f"outside {where}", fontsize="small", frameon=False,
                   ncol=ncol or (2 if len(handles) > 3 else 1))


def _legend(ax, where: str = "lower center", ncol: int | None = None) -> None:
    legend_outside(ax.figure, *ax.get_legend_handles_labels(), where=where, ncol=ncol)


def _no_comparison(name: str, title: str, reason: str) -> Plot:
    """A plot left out because it would compare nothing (one point, one tick); the table has the figure."""
    return Plot(name, title, missing=f"not drawn: {reason}; the tables give the figures")


# ---------------------------------------------------------------------------------------------
# the figure kinds


def latency_vs_length(rows: list[dict[str, Any]], batch_size: int | None = None) -> list[Plot]:
    """Median latency per call vs clip length, one line per model column, min-max band; one figure per device.

    At `batch_size`, by default the smallest batch measured on the device (batch 1 in the study).
    """
    ok = _ok(rows)
    picked = [r for r in ok if batch_size is None or r["batch_size"] == batch_size]
    if not picked:
        at = "" if batch_size is None else f" at batch {batch_size}"
        return [_missing("latency-vs-length", "Latency vs clip length", f"no successful latency cell{at}")]
    plots = []
    for device, drows in _by_device(picked).items():
        b = min(r["batch_size"] for r in drows)
        drows = [r for r in drows if r["batch_size"] == b]
        title = f"Latency vs clip length, batch {b}"
        lengths = sorted({r["clip_length_s"] for r in drows})
        if len(lengths) < 2 and len(_series(drows)) < 2:
            plots.append(_no_comparison(f"latency-vs-length-{_slug(device)}", f"{title}, {device}",
                                        f"one clip length ({lengths[0]:g} s) and one configuration on {device}; "
                                        "measure more with --lengths 5,15,30"))
            continue
        fig, (ax,) = _figure()
        for i, (label, rs) in enumerate(_series(drows).items()):
            rs = sorted(rs, key=lambda r: r["clip_length_s"])
            x = [r["clip_length_s"] for r in rs]
            p50 = [1000 * r["latency_s_p50"] for r in rs]
            lo = [1000 * r.get("latency_s_min", r["latency_s_p50"]) for r in rs]
            hi = [1000 * r.get("latency_s_max", r["latency_s_p50"]) for r in rs]
            line, = ax.plot(x, p50, marker=_MARKERS[i % len(_MARKERS)], label=_tex_safe(label))
            ax.errorbar(x, p50, yerr=[[max(0.0, m - a) for m, a in zip(p50, lo)],
                                           [max(0.0, b - m) for m, b in zip(p50, hi)]],
                        fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
            if len(x) > 1:
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("clip length (s)")
        ax.set_ylabel("latency per call (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}\n"
                               "median of timed calls; band/bars = min–max"), fontsize="medium")
        ax.grid(alpha=0.3)
        _legend(ax)
        plots.append(Plot(f"latency-vs-length-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def throughput_vs_batch(rows: list[dict[str, Any]]) -> list[Plot]:
    """samples/s vs batch size at the longest clip length, plus the max_throughput search's probes."""
    title = "Throughput vs batch size"
    lat = _ok(rows)
    searched = [r for r in _ok(rows, "max_throughput") if r.get("max_throughput_probes")]
    if not lat and not searched:
        return [_missing("throughput-vs-batch", title, "no successful latency or max_throughput cell")]
    plots = []
    for device, drows in _by_device(lat + searched).items():
        dlat = [r for r in drows if r.get("scenario", "latency") == "latency"]
        longest = max((r["clip_length_s"] for r in dlat), default=None)
        batches = sorted({r["batch_size"] for r in dlat if r["clip_length_s"] == longest})
        swept = any(len({r["batch_size"] for r in rs}) > 1
                    for rs in _series(r for r in dlat if r["clip_length_s"] == longest).values())
        probed = any(sum(p.get("status") == "ok" for p in r["max_throughput_probes"]) > 1
                     for r in drows if r.get("scenario") == "max_throughput")
        if not swept and not probed:
            one = f"one batch size ({', '.join(map(str, batches))})" if batches else "no batch sweep"
            plots.append(_no_comparison(f"throughput-vs-batch-{_slug(device)}", f"{title}, {device}",
                                        f"{one} measured on {device}, so there is no curve against batch size; "
                                        "measure one with --batch 1,4,16 or --scenario max_throughput"))
            continue
        fig, (ax,) = _figure()
        colors: dict[str, str] = {}
        for i, (label, rs) in enumerate(_series(r for r in dlat if r["clip_length_s"] == longest).items()):
            rs = sorted(rs, key=lambda r: r["batch_size"])
            line, = ax.plot([r["batch_size"] for r in rs], [r["throughput_samples_per_s"] for r in rs],
                            marker=_MARKERS[i % len(_MARKERS)], label=_tex_safe(f"{label}, {longest:g} s"))
            colors[label] = line.get_color()
        for r in (r for r in drows if r.get("scenario") == "max_throughput"):
            label = series_label(r)
            probes = sorted((p for p in r["max_throughput_probes"] if p.get("status") == "ok"),
                            key=lambda p: p["batch_size"])
            if not probes:
                continue
            kw = {"color": colors[label]} if label in colors else {}
            line, = ax.plot([p["batch_size"] for p in probes], [p["samples_per_s"] for p in probes], linestyle="--",
                            marker="x", label=_tex_safe(f"{label}, {r['clip_length_s']:g} s, search "
                                                        f"(stop: {r.get('max_throughput_stop_reason')})"), **kw)
            if r.get("max_throughput_samples_per_s") is not None:
                ax.plot([r["max_throughput_batch_size"]], [r["max_throughput_samples_per_s"]], marker="*",
                        markersize=14, color=line.get_color(), linestyle="none")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (samples/s)")
        ax.set_ylim(bottom=0)
        star = "; ★ = best batch found by search" if any(r.get("scenario") == "max_throughput" for r in drows) else ""
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}\n"
                               f"samples/s = batch size x calls / timed seconds{star}"), fontsize="medium")
        ax.grid(alpha=0.3)
        _legend(ax)
        plots.append(Plot(f"throughput-vs-batch-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def energy(rows: list[dict[str, Any]]) -> list[Plot]:
    """J per sample and J per audio-second per model column; estimates hatched and labelled."""
    title = "Energy per sample and per audio-second"
    ok = [r for r in _ok(rows) if r.get("energy_j_per_sample") is not None]
    if not ok:
        reasons = sorted({r["energy_missing_reason"] for r in _ok(rows) if r.get("energy_missing_reason")})
        return [_missing("energy", title, "; ".join(reasons) or "no successful cell recorded energy")]
    plots = []
    for device, drows in _by_device(ok).items():
        longest = max(r["clip_length_s"] for r in drows)
        at = [r for r in drows if r["clip_length_s"] == longest]
        series = _series(at)
        batches = sorted({r["batch_size"] for r in at})
        if len(series) * len(batches) < 2:
            plots.append(_no_comparison(f"energy-{_slug(device)}", f"{title}, {device}",
                                        f"one configuration at one batch size on {device}: a single bar"))
            continue
        fig, axes = _figure(ncols=2, width=5.5, height=4.6)
        width = 0.8 / len(batches)
        for ax, key, unit in ((axes[0], "energy_j_per_sample", "J per sample"),
                              (axes[1], "energy_j_per_audio_s", "J per audio-second")):
            for j, b in enumerate(batches):
                for i, rs in enumerate(series.values()):
                    r = next((r for r in rs if r["batch_size"] == b), None)
                    if r is None or r.get(key) is None:
                        continue
                    measured = bool(r.get("energy_measured"))
                    ax.bar(i + (j - (len(batches) - 1) / 2) * width, r[key], width, color=f"C{j}",
                           hatch=None if measured else "//", edgecolor="black", linewidth=0.6)
            ax.set_xticks(range(len(series)))
            ax.set_xticklabels([_tex_safe(_wrap(lbl)) for lbl in series], fontsize="x-small", rotation=20, ha="right")
            ax.set_ylabel(unit)
            ax.grid(alpha=0.3, axis="y")
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=f"C{j}", edgecolor="black", label=f"batch {b}") for j, b in enumerate(batches)]
        kinds = {bool(r.get("energy_measured")) for r in at}
        handles += [Patch(facecolor="white", edgecolor="black", hatch=None if m else "//",
                          label="measured (counters)" if m else "estimated (not measured)") for m in sorted(kinds)]
        legend_outside(fig, handles, [h.get_label() for h in handles], where="right upper", ncol=1)
        methods = sorted({r.get("energy_method", "?") for r in at})
        fig.suptitle(_tex_safe(f"{title}, {_device_title(device, drows)}, {longest:g} s clips\n"
                               + "; ".join(methods)), fontsize="medium")
        plots.append(Plot(f"energy-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def _wrap(label: str) -> str:
    return label.replace(" (", "\n(", 1)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower x and lower y are better), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def wer_vs_latency(rows: list[dict[str, Any]]) -> list[Plot]:
    """WER (95% CI) against median latency at batch 1 and one clip length, with the Pareto front."""
    title = "WER vs latency"
    scored = [r for r in _ok(rows) if r.get("wer") is not None]
    if not scored:
        return [_missing("wer-vs-latency", title,
                         "no cell has a WER (random-weight models have none; run a model with real weights)")]
    plots = []
    for device, drows in _by_device(scored).items():
        b = min(r["batch_size"] for r in drows)
        at_b = [r for r in drows if r["batch_size"] == b]
        length = max(r["clip_length_s"] for r in at_b)
        pts = [r for r in at_b if r["clip_length_s"] == length]
        variants = sorted({variant(r) for r in pts}, key=lambda v: (v != BASELINE, v))
        if len(pts) < 2:
            plots.append(_no_comparison(f"wer-vs-latency-{_slug(device)}", f"{title}, {device}",
                                        f"only one configuration has a WER on {device} ({series_label(pts[0])}); a "
                                        "Pareto front needs two: run more real-weight models or variants"))
            continue
        fig, (ax,) = _figure(height=4.2)
        for i, r in enumerate(pts):
            x, y = 1000 * r["latency_s_p50"], 100 * r["wer"]
            yerr = [[max(0.0, y - 100 * r.get("wer_ci_low", r["wer"]))],
                    [max(0.0, 100 * r.get("wer_ci_high", r["wer"]) - y)]]
            ax.errorbar([x], [y], yerr=yerr, fmt=_MARKERS[variants.index(variant(r)) % len(_MARKERS)],
                        color=f"C{i % 10}", markersize=8, capsize=3, label=_tex_safe(series_label(r)))
        front = pareto_front([(1000 * r["latency_s_p50"], 100 * r["wer"]) for r in pts])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle=":",
                label="Pareto front (lower is better on both)")
        ax.set_xlabel(f"latency per call, median (ms), batch {b}")
        ax.set_ylabel("WER (%), 95% bootstrap CI")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}, {length:g} s clips\n"
                               f"markers by variant: {', '.join(variants)}"), fontsize="medium")
        ax.grid(alpha=0.3)
        _legend(ax)
        plots.append(Plot(f"wer-vs-latency-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def _stage_bars(row: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(stage, ms per call, nested) of a profiled row (the profile scenario's [{stage, ms, share, nested}])."""
    return [(s["stage"], s["ms"], bool(s.get("nested"))) for s in row.get("stages") or []]


def _missing_reasons(rows: list[dict[str, Any]], *keys: str) -> str:
    reasons = sorted({f"{series_label(r)}: {r[k]}" for r in rows for k in keys if r.get(k)})
    return "; ".join(reasons)


def profile_split(rows: list[dict[str, Any]]) -> list[Plot]:
    """Op-category shares (stacked) and per-stage time per call of profiled cells."""
    title = "Where the time goes (profiler)"
    prof = [r for r in rows if r.get("status") == "ok" and (r.get("op_categories") or r.get("stages"))]
    if not prof:
        return [_missing("profile", title, _missing_reasons(rows, "profile_missing_reason")
                         or "no profiled cell (scenario 'profile') in these rows")]
    plots = []
    for device, drows in _by_device(prof).items():
        labels = [f"{series_label(r)}, {r['clip_length_s']:g} s, b{r['batch_size']}" for r in drows]
        fig, axes = _figure(ncols=2, width=6.0, height=max(3.2, 1.0 + 0.9 * len(drows)))
        ax = axes[0]
        cats: list[str] = []
        for r in drows:
            cats += [c["category"] for c in r.get("op_categories") or [] if c["category"] not in cats]
        for k, cat in enumerate(cats):
            left, shares = [], []
            for r in drows:
                by = {c["category"]: c["share"] for c in r.get("op_categories") or []}
                left.append(100 * sum(by.get(c, 0.0) for c in cats[:k]))
                shares.append(100 * by.get(cat, 0.0))
            ax.barh(range(len(drows)), shares, left=left, color=f"C{k % 10}", label=_tex_safe(cat),
                    hatch="//" if k >= 10 else None)
        ax.set_yticks(range(len(drows)))
        ax.set_yticklabels([_tex_safe(_wrap(lbl)) for lbl in labels], fontsize="x-small")
        ax.set_xlabel("share of op self time (%)")
        ax.set_xlim(0, 100)
        timelines = sorted({r.get("op_timeline", "cpu") for r in drows})
        ax.set_title(f"op categories ({', '.join(timelines)} timeline)", fontsize="small")
        _legend(ax, ncol=3)  # below the figure: the bars fill the axes
        ax = axes[1]
        bars = [_stage_bars(r) for r in drows]
        stages: list[tuple[str, bool]] = []
        for b in bars:
            stages += [(name, nested) for name, _, nested in b if (name, nested) not in stages]
        height = 0.8 / max(1, len(stages))
        for k, (stage, nested) in enumerate(stages):
            ms = [next((v for n, v, _ in b if n == stage), 0.0) for b in bars]
            ax.barh([i + (k - (len(stages) - 1) / 2) * height for i in range(len(drows))], ms, height,
                    color=f"C{k % 10}", hatch="//" if nested else None, edgecolor="white" if nested else None,
                    label=_tex_safe(stage + (" (nested)" if nested else "")))
        ax.set_yticks(range(len(drows)))
        ax.set_yticklabels([""] * len(drows))
        ax.set_xlabel("ms per call (inclusive of what a stage encloses)")
        ax.set_title("stages (plain bars add up to a call; hatched ones sit inside another)", fontsize="small")
        _legend(ax, where="right upper", ncol=1)
        if not stages:
            ax.text(0.5, 0.5, "stages not recorded", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(_tex_safe(f"{title}, {_device_title(device, drows)}"), fontsize="medium")
        plots.append(Plot(f"profile-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def decode_curve(rows: list[dict[str, Any]]) -> list[Plot]:
    """ms per decoded token vs its position, one line per model column x KV cache x decoding."""
    title = "Per-token decode time"
    curves = [r for r in rows if r.get("status") == "ok" and r.get("decode_curve")]
    if not curves:
        return [_missing("decode-curve", title,
                         _missing_reasons(rows, "decode_curve_missing_reason", "decode_missing_reason")
                         or "no decode-scenario cell with a per-token curve in these rows")]
    plots = []
    for device, drows in _by_device(curves).items():
        fig, (ax,) = _figure()
        groups: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
        for r in drows:
            for p in r["decode_curve"]:
                key = (f"{series_label(r)}, {r['clip_length_s']:g} s, b{r['batch_size']}",
                       str(p.get("kv_cache")), str(p.get("decoding")))
                groups[key].append((p["position"], p["ms"]))
        styles = {kv: ls for kv, ls in zip(sorted({k[1] for k in groups}), ("-", "--", ":", "-."))}
        for (label, kv, dec), pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles.get(kv, "-"), marker=".",
                    label=_tex_safe(f"{label}; KV cache: {kv}; {dec}"))
        ax.set_xlabel("token position")
        ax.set_ylabel("decode step (ms)")
        ax.set_ylim(bottom=0)
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}"), fontsize="medium")
        ax.grid(alpha=0.3)
        _legend(ax, ncol=1)  # below the figure: the lines fill the axes
        plots.append(Plot(f"decode-curve-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


KINDS: tuple[Callable[[list[dict[str, Any]]], list[Plot]], ...] = (
    latency_vs_length, throughput_vs_batch, energy, wer_vs_latency, profile_split, decode_curve)


def make_plots(rows: Iterable[dict[str, Any]]) -> list[Plot]:
    """Every figure kind for these rows, in report order; absent data gives a Plot with `missing` set."""
    from asrperf.report.serving_plots import SERVING_KINDS  # built on this module's helpers
    from asrperf.report.streaming_plots import STREAMING_KINDS

    rows = list(rows)
    kinds = KINDS + (STREAMING_KINDS if any(r.get("scenario") == "streaming" for r in rows) else ())
    kinds += SERVING_KINDS if any(r.get("scenario") == "server" for r in rows) else ()
    return [p for kind in kinds for p in kind(rows)]


def write_pngs(plots: Iterable[Plot], out_dir: str | Path) -> list[Path]:
    """Write each drawn plot as `<name>.png` under out_dir; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in plots:
        if p.png is not None:
            path = out_dir / f"{p.name}.png"
            path.write_bytes(p.png)
            written.append(path)
    return written
