"""The study's table shape from the store: metric rows x model columns, one table per device.

Pure data in, rich tables out; no torch, no engine imports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asrperf.report.gate import gate, is_baseline
from asrperf.results.env import SUMMARY_PACKAGES

MISSING = "—"


def pct(v: float | None, digits: int = 1) -> str:
    """A share (0-1) as a percentage with `digits` decimals, or the missing mark."""
    return MISSING if v is None else f"{100 * v:.{digits}f}"


@dataclass
class Table:
    """A metric-rows x model-columns table; cells are display strings, `notes` explain missing ones."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    corner: str = "metric"  # header of the row-name column


def column_label(row: dict[str, Any]) -> str:
    """Model, engine and variant identify a column; the short form is used when it is unambiguous.

    The variant is the dtype for the baseline ("fp32"), and names every option otherwise
    ("fp32+quant=int8_dynamic"), so a variant never shares a column with its baseline.
    """
    return f"{row['model']} ({row['engine']}, {row.get('variant') or row['dtype']})"


def _short_labels(columns: list[str]) -> dict[str, str]:
    short = {c: c.split(" (")[0] for c in columns}
    return short if len(set(short.values())) == len(short) else {c: c for c in columns}


def _unusable(r: dict[str, Any] | None) -> str | None:
    """The text for a cell with no row or a failed row; None when the row can be shown."""
    if r is None:
        return MISSING
    return None if r.get("status") == "ok" else "failed"


CONTENDED_MARK = " [contended]"  # after every timing-derived figure of a row the busy-machine guard flagged
_TIMED_KEYS = ("throughput_samples_per_s", "rtfx", "first_call_s")


def _mark(r: dict[str, Any], text: str) -> str:
    return text + CONTENDED_MARK if r.get("contended") is True else text


def contention_note(r: dict[str, Any]) -> str:
    """One line on why the guard flagged a row: the figures that decided it, against the thresholds."""
    parts = []
    share, got = r.get("contention_others_share"), r.get("contention_own_got_share")
    if "others_cpu" in (r.get("contention_reasons") or []) and share is not None:
        parts.append(f"other processes used {r.get('contention_others_cores', 0):.2f} core(s) of the "
                     f"{r.get('contention_cpus')} it could run on ({100 * share:.0f}% of its "
                     f"{r.get('contention_threads')} thread(s)' cores beyond the free ones; limit "
                     f"{100 * r.get('contention_max_others_share', 0):.0f}%)")
    if "cpu_wait" in (r.get("contention_reasons") or []) and got is not None:
        parts.append(f"it got {100 * got:.0f}% of the CPU its threads were ready to use (limit "
                     f"{100 * r.get('contention_min_got_share', 0):.0f}%)")
    if "gpu_processes" in (r.get("contention_reasons") or []):
        parts.append(f"{r.get('contention_gpu_other_processes')} other process(es) computed on its GPU")
    windows = r.get("contention_windows") or 1
    if windows > 1:
        parts.append(f"{r.get('contention_windows_contended')} of {windows} timed windows contended")
    return "; ".join(parts) or "flagged by the busy-machine guard"


def _fmt_ms(s: float | None) -> str:
    return MISSING if s is None else f"{s * 1000:,.1f}"


def _latency(r: dict[str, Any] | None) -> str:
    if (text := _unusable(r)) is not None:
        return text
    return _mark(r, f"{_fmt_ms(r['latency_s_p50'])} (p90 {_fmt_ms(r['latency_s_p90'])})")


def _wer(r: dict[str, Any] | None) -> str:
    if (text := _unusable(r)) is not None:
        return text
    if r.get("wer") is None:
        return f"{MISSING} (random weights)" if r.get("weights") == "random" else MISSING
    return f"{100 * r['wer']:.1f} [{100 * r['wer_ci_low']:.1f}–{100 * r['wer_ci_high']:.1f}]"


def _energy(r: dict[str, Any] | None, key: str) -> str:
    """Energy figures always carry their method: measured counters or a labelled estimate."""
    if (text := _unusable(r)) is not None:
        return text
    if r.get(key) is None:
        return f"{MISSING} ({r['energy_missing_reason']})" if r.get("energy_missing_reason") else MISSING
    return _mark(r, f"{r[key]:.3g} ({'measured' if r.get('energy_measured') else 'estimated'})")


def _mfu(r: dict[str, Any] | None) -> str:
    if r is None or r.get("status") != "ok" or r.get("achieved_flops_per_s") is None:
        return MISSING if r is None or r.get("status") == "ok" else "failed"
    mfu = f" ({100 * r['mfu']:.1f}%)" if r.get("mfu") is not None else ""
    return f"{r['achieved_flops_per_s'] / 1e9:,.1f}{mfu}"


def _num(r: dict[str, Any] | None, key: str, fmt: str, scale: float = 1.0) -> str:
    if (text := _unusable(r)) is not None:
        return text
    v = r.get(key)
    if v is None:
        return MISSING
    text = format(v * scale, fmt)
    return _mark(r, text) if key in _TIMED_KEYS else text


def _or_reason(r: dict[str, Any] | None, key: str, reasons: tuple[str, ...], fmt: str, scale: float = 1.0) -> str:
    """A measured figure, or "—" with the first reason the row gives for it being missing."""
    if (text := _unusable(r)) is not None:
        return text
    if r.get(key) is not None:
        return format(r[key] * scale, fmt)
    why = next((r[k] for k in reasons if r.get(k)), "")
    return f"{MISSING} ({why})" if why else f"{MISSING} (not recorded)"


def _weights(r: dict[str, Any] | None) -> str:
    """Weights MiB; a file size (CTranslate2, ONNX Runtime) is labelled as one."""
    text = _or_reason(r, "weights_bytes", ("weights_missing_reason",), ",.1f", 1 / 2**20)
    if r is not None and r.get("weights_bytes") is not None and r.get("weights_bytes_kind") == "file_size":
        text += " (file size)"
    return text


def _token_policy(r: Any) -> str | None:
    """"real" when the model ended its own decoding; otherwise the policy in words (a fixed count)."""
    return "real" if r.get("token_policy") == "real" else r.get("tokens_policy")


def study_tables(rows: Iterable[dict[str, Any]]) -> list[Table]:
    """One table per device from committed rows (failed ones shown as 'failed' with the reason in notes)."""
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("scenario", "latency") in ("latency", "max_throughput"):  # profile / decode: profile_tables
            by_device[r["device"]].append(r)
    return [_device_table(device, rs) for device, rs in by_device.items()]


def _wer_delta(r: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    """A variant's accuracy change against the fp32 reference on the same clips (report.gate)."""
    if (text := _unusable(r)) is not None:
        return text
    g = gate(r, rows)
    if g is None:
        return "reference" if is_baseline(r) and r.get("wer") is not None else MISSING
    if g.delta is None:
        return f"{MISSING} ({g.reason})"
    if not g.paired:
        return f"{100 * g.delta:+.2f} (unpaired: {g.reason})"
    return f"{100 * g.delta:+.2f} [{100 * g.ci_low:+.2f}, {100 * g.ci_high:+.2f}], {g.n_worse}/{g.n_utts} worse"


def _max_throughput(r: dict[str, Any] | None) -> str:
    if (text := _unusable(r)) is not None:
        return text
    if r.get("max_throughput_samples_per_s") is None:
        return f"{MISSING} (no batch succeeded: {r.get('max_throughput_stop_reason')})"
    latency = r.get("max_throughput_latency_s_p50")
    at = f", p50 {1000 * latency:,.0f} ms per batch" if latency is not None else ""
    return _mark(r, f"{r['max_throughput_samples_per_s']:.2f} at b{r['max_throughput_batch_size']}{at} "
                    f"(stop: {r['max_throughput_stop_reason']})")


def _contended_cells(col: str, ok: list[dict[str, Any]]) -> str:
    """'no', or the clip lengths and batches of the column's rows the guard flagged."""
    mine = [r for r in ok if column_label(r) == col]
    if all(r.get("contended") is None for r in mine):
        return f"{MISSING} (not measured)"
    busy = [r for r in mine if r.get("contended") is True]
    if not busy:
        return "no"
    return "YES: " + ", ".join(
        f"{r['clip_length_s']:g} s " + ("searched" if r.get("scenario") == "max_throughput" else f"b{r['batch_size']}")
        for r in busy)


def _device_table(device: str, all_rows: list[dict[str, Any]]) -> Table:
    columns: list[str] = []
    for r in all_rows:
        if column_label(r) not in columns:
            columns.append(column_label(r))
    searched = {(column_label(r), r["clip_length_s"]): r for r in all_rows if r.get("scenario") == "max_throughput"}
    rows = [r for r in all_rows if r.get("scenario", "latency") == "latency"]
    cell: dict[tuple[str, float, int], dict[str, Any]] = {}
    for r in rows:
        cell[(column_label(r), r["clip_length_s"], r["batch_size"])] = r
    lengths = sorted({r["clip_length_s"] for r in rows}) or sorted({length for _, length in searched})
    batches = sorted({r["batch_size"] for r in rows}) or [1]
    ok = [r for r in all_rows if r.get("status") == "ok"]
    device_name = next((r.get("device_name") for r in ok if r.get("device_name")), device)
    t = Table(f"{device}: {device_name}", [_short_labels(columns)[c] for c in columns])

    def first(col: str, key: str | Callable[[Any], Any]) -> str:
        get = key if callable(key) else (lambda r: r.get(key))
        vals = sorted({str(get(r)) for r in ok if column_label(r) == col and get(r) is not None})
        return ", ".join(vals) if vals else MISSING

    t.rows.append(("engine", [first(c, "engine") for c in columns]))
    t.rows.append(("dtype", [first(c, "dtype") for c in columns]))
    t.rows.append(("weights", [first(c, "weights") for c in columns]))
    t.rows.append(("threads", [first(c, "threads") for c in columns]))
    t.rows.append(("decoder tokens", [first(c, _token_policy) for c in columns]))
    b1 = batches[0]
    t.rows.append(("timed calls per cell", [first(c, "n_calls") for c in columns]))
    if any(r.get("contended") is not None for r in ok):
        t.rows.append(("contended (busy machine)", [_contended_cells(c, ok) for c in columns]))
    if lengths:
        longest_rows = {c: cell.get((c, lengths[-1], b1)) for c in columns}
        t.rows.append((f"long-form, {lengths[-1]:g} s", [str((r or {}).get("longform") or MISSING) for r in longest_rows.values()]))
    for length in lengths:
        t.rows.append((f"latency ms p50 (p90), b{b1}, {length:g} s", [_latency(cell.get((c, length, b1))) for c in columns]))
    longest = lengths[-1]
    for b in batches:
        t.rows.append((f"throughput samples/s, b{b}, {longest:g} s",
                       [_num(cell.get((c, longest, b)), "throughput_samples_per_s", ".2f") for c in columns]))
    for length in sorted({length for _, length in searched}):
        t.rows.append((f"max throughput samples/s, {length:g} s",
                       [_max_throughput(searched.get((c, length))) for c in columns]))
    t.rows.append((f"RTFx, b{b1}, {longest:g} s", [_num(cell.get((c, longest, b1)), "rtfx", ".1f") for c in columns]))
    for length in lengths:
        t.rows.append((f"WER % [95% CI], {length:g} s", [_wer(cell.get((c, length, b1))) for c in columns]))
    if any(not is_baseline(r) and r.get("wer") is not None for r in ok):  # variants: never without accuracy
        for length in lengths:
            t.rows.append((f"ΔWER pts vs fp32 ref [95% CI], worse clips, {length:g} s",
                           [_wer_delta(cell.get((c, length, b1)), rows) for c in columns]))
    idle_measured = any(r.get("idle_power_w") is not None for r in ok)  # real counters only
    energy = [("energy", "energy_j_per_sample", "energy_j_per_audio_s")]
    if idle_measured:
        energy.append(("energy net of idle", "energy_net_j_per_sample", "energy_net_j_per_audio_s"))
    for name, per_sample, per_audio_s in energy:
        for b in batches:
            t.rows.append((f"{name} J/sample, b{b}, {longest:g} s",
                           [_energy(cell.get((c, longest, b)), per_sample) for c in columns]))
        t.rows.append((f"{name} J/audio-s, b{b1}, {longest:g} s",
                       [_energy(cell.get((c, longest, b1)), per_audio_s) for c in columns]))
    if idle_measured:
        t.rows.append((f"idle power W (before the window), b{b1}, {longest:g} s",
                       [_or_reason(cell.get((c, longest, b1)), "idle_power_w", ("energy_missing_reason",), ".1f")
                        for c in columns]))
    t.rows.append((f"first call ms (cold), b{b1}, {longest:g} s",
                   [_num(cell.get((c, longest, b1)), "first_call_s", ",.1f", 1000) for c in columns]))
    if any(r.get("flops_per_call") for r in ok):
        t.rows.append((f"GFLOPs per call, b{b1}, {longest:g} s",
                       [_num(cell.get((c, longest, b1)), "flops_per_call", ",.1f", 1e-9) for c in columns]))
        t.rows.append((f"achieved GFLOP/s (MFU %), b{b1}, {longest:g} s",
                       [_mfu(cell.get((c, longest, b1))) for c in columns]))
        per_unit = (("encoder GFLOPs per 30 s window", "flops_encoder_per_window", "flops_encoder_missing_reason", 1e-9),
                    ("decoder MFLOPs per token", "flops_decoder_per_token", "flops_decoder_missing_reason", 1e-6),
                    ("GFLOPs per audio s", "flops_per_audio_s", "", 1e-9))
        for name, key, reason, scale in per_unit:
            t.rows.append((f"{name}, b{b1}, {longest:g} s",
                           [_or_reason(cell.get((c, longest, b1)), key, ("flops_missing_reason", reason), ",.2f", scale)
                            for c in columns]))
    t.rows.append(("tokens per audio second", [_num(cell.get((c, longest, b1)), "tokens_per_audio_s", ".2f") for c in columns]))
    memory = (("peak RSS MiB, timed calls", "rss_peak_timed_bytes", ("rss_peak_timed_missing_reason",)),
              ("RSS high-water MiB, whole cell", "peak_rss_bytes", ()),
              ("CUDA peak allocated MiB, timed calls", "cuda_peak_allocated_timed_bytes", ("cuda_memory_missing_reason",)),
              ("CUDA peak reserved MiB, timed calls", "cuda_peak_reserved_timed_bytes", ("cuda_memory_missing_reason",)),
              ("NVML process MiB (peak, sampled), timed calls", "nvml_process_peak_bytes",
               ("nvml_process_missing_reason",)))
    for name, key, reasons in memory:
        t.rows.append((f"{name}, b{b1}, {longest:g} s",
                       [_or_reason(cell.get((c, longest, b1)), key, reasons, ",.0f", 1 / 2**20) for c in columns]))
    t.rows.append(("weights MiB", [_weights(cell.get((c, longest, b1))) for c in columns]))
    t.rows.append(("load s", [_num(cell.get((c, longest, b1)), "load_s", ".2f") for c in columns]))
    for r in all_rows:
        if r.get("status") == "ok" and r.get("contended") is True:
            t.notes.append(f"contended: {column_label(r)} {r['clip_length_s']:g} s batch {r['batch_size']}: "
                           f"{contention_note(r)}; left out of recommendations and comparisons")
    for r in all_rows:
        if r.get("status") != "ok":
            t.notes.append(f"failed: {column_label(r)} {r['clip_length_s']:g} s batch {r['batch_size']}: {r.get('error')}")
        elif r.get("weights_note"):
            t.notes.append(f"{column_label(r)}: {r['weights_note']}")
    if ok:
        r0 = ok[0]
        t.notes.append(
            "timed region: " + " + ".join(r0.get("timed_region", [])) + "; clips decoded and resampled before timing"
        )
        pol = r0.get("timing_policy", {})
        t.notes.append(
            f"timing: {pol.get('warmup_calls')} warm-up call(s) discarded, then >= {pol.get('min_calls')} calls and "
            f">= {pol.get('min_time_s')} s; latency = wall time per call (device synchronised)"
        )
        decodings = sorted({str(r.get("decoding")) for r in ok})
        if len(decodings) > 1:  # comparing engines is only fair with the same decoding settings
            t.notes.append("WARNING: decoding settings differ between columns: " + " | ".join(decodings))
        methods = sorted({r["energy_method"] for r in ok if r.get("energy_method")})
        for m in methods:
            note = next(r.get("energy_note", "") for r in ok if r.get("energy_method") == m)
            t.notes.append(f"energy: {m}" + (f" ({note})" if note else ""))
        t.notes.append("WER: corpus-level after Whisper English normalisation, 95% bootstrap CI over clips; "
                       "random-weight models have no WER")
        for key, what in (("rss_peak_timed_method", "peak RSS, timed calls"), ("peak_rss_method", "RSS high-water"),
                          ("weights_bytes_method", "weights")):
            for m in sorted({str(r[key]) for r in ok if r.get(key)}):
                t.notes.append(f"memory: {what}: {m}")
    return t


def render_rich(tables: list[Table]):
    """rich renderables for the terminal."""
    from rich.console import Group
    from rich.markup import escape  # values come from data: never let them act as rich markup
    from rich.table import Table as RichTable
    from rich.text import Text

    out = []
    for t in tables:
        rt = RichTable(title=escape(t.title), title_justify="left", show_lines=False)
        rt.add_column(escape(t.corner), style="bold")
        for c in t.columns:
            rt.add_column(escape(c), overflow="fold")
        for name, cells in t.rows:
            rt.add_row(escape(name), *(escape(c) for c in cells))
        out.append(rt)
        for n in dict.fromkeys(t.notes):
            out.append(Text(n, style="dim"))
    return Group(*out)


def environment_lines(env: dict[str, Any], run_id: str) -> list[str]:
    """One line on where a run happened: CPU, cores, memory, GPUs, key package versions, commit."""
    pk = env.get("packages", {})
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver')})" for g in env.get("gpus", [])) or "no GPU"
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in SUMMARY_PACKAGES)
    mem = env.get("memory_bytes")
    return [f"run {run_id}: {env.get('cpu_model')}, {env.get('usable_cores')} usable cores, "
            f"{mem / 2**30:.1f} GiB" if mem else f"run {run_id}: {env.get('cpu_model')}",
            f"  {gpus}; {versions}; asrperf {env.get('asrperf_version')} ({env.get('asrperf_git_commit') or 'no git'})"]


def md_escape(text: str, cell: bool = True) -> str:
    """Text for a markdown table cell (`cell`) or line: HTML escaped (a model name or transcript
    holding `<script>` stays text where markdown is rendered); in a cell `|` is escaped too, so a
    cell stays one cell."""
    import html

    out = html.escape(str(text), quote=False)
    return out.replace("|", "\\|") if cell else out


def to_markdown(tables: list[Table]) -> str:
    """GitHub-flavoured markdown of the same tables, for READMEs and issue notes; every value escaped."""
    e = md_escape
    lines = []
    for t in tables:
        lines += [f"**{e(t.title, cell=False)}**", "", f"| {e(t.corner)} | " + " | ".join(e(c) for c in t.columns) + " |",
                  "|---|" + "---|" * len(t.columns)]
        lines += ["| " + e(name) + " | " + " | ".join(e(c) for c in cells) + " |" for name, cells in t.rows]
        lines += [""] + [f"- {e(n, cell=False)}" for n in dict.fromkeys(t.notes)] + [""]
    return "\n".join(lines)
