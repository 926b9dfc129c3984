"""The serving figure: latency p50 and p99 against offered load, one line per configuration, with
the SLO's latency bound dashed and the knee (sweep) or the maximum sustainable rate (search)
starred. Drawn only for configurations with at least two open-loop offered rates. Rows in, PNGs out.
"""

from __future__ import annotations

from typing import Any

from asrperf.errors import AsrperfError
from asrperf.report.plots import _MARKERS, Plot, _by_device, _device_title, _figure, _missing, _png, _slug, _tex_safe
from asrperf.report.serving_tables import server_column, server_rows

Row = dict[str, Any]
MIN_RATES = 2  # a curve needs two offered rates


def curve(r: Row) -> list[Row]:
    """The open-loop probes of a server cell with a latency, by offered rate."""
    probes = [p for p in r.get("server_probes") or () if p.get("open_loop") and p.get("offered_rate_rps")
              and p.get("latency_s_p99") is not None]
    return sorted(probes, key=lambda p: p["offered_rate_rps"])


def slo_bounds_s(r: Row) -> list[tuple[str, float]]:
    """The SLO's end-to-end latency terms as (term, seconds), from the answer probe's verdicts."""
    from asrperf.load.slo import parse_slo

    if not r.get("slo"):
        return []
    try:
        return [(t.text, t.bound) for t in parse_slo(r["slo"]).latency_terms if t.metric == "latency_s"]
    except AsrperfError:  # an SLO this version cannot read: no line rather than a wrong one
        return []


def latency_vs_load(rows: list[Row]) -> list[Plot]:
    title = "Serving latency vs offered load"
    ok = [r for r in server_rows(rows) if r.get("status") == "ok"]
    drawn = [r for r in ok if len({p["offered_rate_rps"] for p in curve(r)}) >= MIN_RATES]
    if not drawn:
        why = ("no server cell in these rows" if not ok else
               f"no server cell probed {MIN_RATES} or more open-loop offered rates (a sweep, or a search "
               "with more bisection probes, draws the curve)")
        return [_missing("serving-latency-vs-load", title, why)]
    plots = []
    for device, drows in _by_device(drawn).items():
        fig, (ax,) = _figure(width=7.0, height=4.6)
        bounds: dict[str, float] = {}
        for i, r in enumerate(sorted(drows, key=server_column)):
            c = curve(r)
            x = [p["offered_rate_rps"] for p in c]
            label = f"{server_column(r)}, {r['clip_length_s']:g} s"
            line, = ax.plot(x, [p["latency_s_p99"] for p in c], marker=_MARKERS[i % len(_MARKERS)],
                            label=_tex_safe(f"{label}: p99"))
            ax.plot(x, [p["latency_s_p50"] for p in c], linestyle="--", marker=".", color=line.get_color(),
                    label=_tex_safe(f"{label}: p50"))
            mark = r.get("knee_rate_rps") if r.get("search_status") is None else r.get("max_sustainable_rate_rps")
            at = next((p for p in c if p["offered_rate_rps"] == mark), None)
            if at is not None:
                ax.plot([mark], [at["latency_s_p99"]], marker="*", markersize=15, linestyle="none",
                        color=line.get_color())
            bounds.update(slo_bounds_s(r))
        for text, bound in bounds.items():
            ax.axhline(bound, color="grey", linestyle=":", linewidth=1.0)
            ax.annotate(_tex_safe(f"SLO {text}"), (0, bound), xycoords=("axes fraction", "data"), fontsize="x-small",
                        color="grey", va="bottom")
        ax.set_xlabel("offered load (requests/s, open loop)")
        ax.set_ylabel("latency from the scheduled send (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}\nsolid p99, dashed p50; dotted: the SLO; "
                               "★ = the knee (sweep) or the max rate under the SLO (search)"), fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        plots.append(Plot(f"serving-latency-vs-load-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


SERVING_KINDS = (latency_vs_load,)
