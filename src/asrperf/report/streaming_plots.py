"""The streaming figures: latency against chunk size (with the WER cost of streaming on a second
axis) and latency against the number of concurrent real-time streams. Rows in, PNGs out; no torch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from asrperf.report.plots import (_MARKERS, Plot, _by_device, _device_title, _figure, _missing, _no_comparison, _png, _slug,
                                  _tex_safe, legend_outside, series_label)
from asrperf.report.streaming_tables import endpoint_suffix

Row = dict[str, Any]


def _stream_ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok" and r.get("scenario") == "streaming" and r.get("chunk_ms")]


def latency_vs_chunk(rows: list[Row]) -> list[Plot]:
    """Finalization latency p50 and p90 (and first-partial p50) against chunk size, one line per model
    column and clip length; streamed minus offline WER, in points, on the right axis."""
    title = "Streaming latency vs chunk size"
    ok = [r for r in _stream_ok(rows) if r.get("finalization_s_p90") is not None]
    if not ok:
        return [_missing("streaming-latency-vs-chunk", title, "no streaming cell with a finalization latency "
                         "(scenario streaming, exact clips)")]
    plots = []
    for device, drows in _by_device(ok).items():
        fig, (ax,) = _figure(height=4.6)
        wer_ax = None
        series: dict[str, list[Row]] = defaultdict(list)
        for r in drows:
            series[f"{series_label(r)}, {r['clip_length_s']:g} s{endpoint_suffix(r)}"].append(r)
        if len(series) < 2 and all(len({r["chunk_ms"] for r in rs}) < 2 for rs in series.values()):
            plots.append(_no_comparison(f"streaming-latency-vs-chunk-{_slug(device)}", f"{title}, {device}",
                                        f"one chunk size and one configuration on {device}; sweep with "
                                        "--chunk-ms 500,1000,2000"))
            continue
        for i, (label, rs) in enumerate(series.items()):
            rs = sorted(rs, key=lambda r: r["chunk_ms"])
            x = [r["chunk_ms"] for r in rs]
            line, = ax.plot(x, [r["finalization_s_p90"] for r in rs], marker=_MARKERS[i % len(_MARKERS)],
                            label=_tex_safe(f"{label}: finalization p90"))
            ax.plot(x, [r["finalization_s_p50"] for r in rs], linestyle="--", marker=".", color=line.get_color(),
                    label=_tex_safe(f"{label}: finalization p50"))
            deltas = [(r["chunk_ms"], 100 * r["stream_wer_delta"]) for r in rs if r.get("stream_wer_delta") is not None]
            if deltas:
                wer_ax = wer_ax or ax.twinx()
                wer_ax.plot([d[0] for d in deltas], [d[1] for d in deltas], linestyle=":", marker="x",
                            color=line.get_color(), label=_tex_safe(f"{label}: ΔWER"))
        ax.set_xscale("log")
        ticks = sorted({r["chunk_ms"] for r in drows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("chunk size (ms)")
        ax.set_ylabel("finalization latency (s): end of utterance → text final")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if wer_ax is not None:
            wer_ax.set_ylabel("ΔWER streamed − offline (points), dotted")
            wer_ax.axhline(0, color="grey", linewidth=0.6)
        clocks = ", ".join(sorted({str(r.get("stream_clock")) for r in drows}))
        ax.set_title(_tex_safe(f"{title}, {_device_title(device, drows)}\nsolid p90, dashed p50 ({clocks} clock); "
                               "dotted ΔWER on the right axis"), fontsize="medium")
        handles, labels = ax.get_legend_handles_labels()
        if wer_ax is not None:
            h2, l2 = wer_ax.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        legend_outside(fig, handles, labels, ncol=2)
        plots.append(Plot(f"streaming-latency-vs-chunk-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


def streams_vs_latency(rows: list[Row]) -> list[Plot]:
    """p90 finalization latency and the share of chunks past their deadline against the number of
    concurrent real-time streams (every probe of the capacity search); ★ marks the capacity."""
    title = "Streaming latency vs concurrent real-time streams"
    ok = [r for r in _stream_ok(rows) if r.get("capacity_probes")]
    if not ok:
        reasons = sorted({str(r.get("capacity_missing_reason")) for r in _stream_ok(rows)
                          if r.get("capacity_missing_reason") and "searched in the" not in r["capacity_missing_reason"]})
        return [_missing("streaming-streams-vs-latency", title,
                         "; ".join(reasons) or "no streaming cell searched its capacity (streaming.capacity)")]
    plots = []
    for device, drows in _by_device(ok).items():
        fig, axes = _figure(ncols=2, width=5.2, height=4.4)
        for i, r in enumerate(sorted(drows, key=lambda r: (series_label(r), r["chunk_ms"]))):
            probes = sorted(r["capacity_probes"], key=lambda p: p["streams"])
            label = _tex_safe(f"{series_label(r)}, {r['chunk_ms']} ms chunks{endpoint_suffix(r)} "
                              f"({r.get('capacity_workers')})")
            marker = _MARKERS[i % len(_MARKERS)]
            n = [p["streams"] for p in probes]
            fin = [(p["streams"], p["finalization_s_p90"]) for p in probes if p.get("finalization_s_p90") is not None]
            line, = axes[0].plot([f[0] for f in fin], [f[1] for f in fin], marker=marker, label=label)
            axes[1].plot(n, [100 * p["deadline_miss_share"] for p in probes], marker=marker, color=line.get_color())
            cap = r.get("capacity_streams")
            at = next((p for p in probes if p["streams"] == cap), None)
            if at is not None and at.get("finalization_s_p90") is not None:
                axes[0].plot([cap], [at["finalization_s_p90"]], marker="*", markersize=14, color=line.get_color(),
                             linestyle="none")
        from matplotlib.ticker import MaxNLocator

        for ax, key, scale, what in ((axes[0], "capacity_max_finalization_p90_s", 1, "p90 finalization latency (s)"),
                                     (axes[1], "capacity_max_miss_share", 100, "chunks past deadline (%)")):
            for bound in sorted({r[key] for r in drows if r.get(key) is not None}):
                ax.axhline(scale * bound, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel("concurrent real-time streams")
            ax.set_ylabel(what + ("; dashed: the bound" if any(r.get(key) is not None for r in drows) else ""))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncol=1)
        fig.suptitle(_tex_safe(f"{title}, {_device_title(device, drows)}\nevery probe of the capacity search; "
                               "★ = most streams that kept up"), fontsize="medium")
        plots.append(Plot(f"streaming-streams-vs-latency-{_slug(device)}", f"{title}, {device}", _png(fig)))
    return plots


STREAMING_KINDS = (latency_vs_chunk, streams_vs_latency)
