"""Recommendations derived from the measured rows, one per scenario and device.

The study closed with a hand-written table (real-time -> wav2vec2, balanced -> whisper tiny/base,
...). Here every choice is computed from committed rows by a stated rule, carries the numbers that
justify it with their provenance, lists the near-ties, and says "not measured: <reason>" when the
data cannot answer. Rows of different devices are never compared. Pure data in; no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from asrperf.errors import check_keys
from asrperf.errors import ConfigError
from asrperf.report.tables import MISSING, Table, column_label

AUDIO_HOUR_S = 3600.0
MIB = 2**20
Row = dict[str, Any]


@dataclass(frozen=True)
class Thresholds:
    """The bounds the scenarios apply; `[recommend]` in a TOML file (see `load_thresholds`)."""

    wer_bound: float = 0.10  # max corpus WER (a fraction) for every scenario except best quality
    realtime_clip_s: float = 5.0  # real-time clip length; the closest measured length is used
    p90_budget_ms: float | None = None  # real-time: p90 latency must not exceed this (None: no budget)
    edge_memory_mib: float = 1024.0  # low memory: peak memory must not exceed this
    tie_tolerance: float = 0.05  # relative: candidates within 5% of the best are reported as ties

    def validate(self) -> "Thresholds":
        checks = (("wer_bound", 0 < self.wer_bound <= 1, "a WER fraction in (0, 1], e.g. 0.10"),
                  ("realtime_clip_s", self.realtime_clip_s > 0, "a clip length in seconds > 0"),
                  ("p90_budget_ms", self.p90_budget_ms is None or self.p90_budget_ms > 0, "milliseconds > 0"),
                  ("edge_memory_mib", self.edge_memory_mib > 0, "MiB > 0"),
                  ("tie_tolerance", 0 <= self.tie_tolerance < 1, "a relative tolerance in [0, 1), e.g. 0.05"))
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"[recommend] {key}: {getattr(self, key)!r} must be {what}")
        return self


def thresholds_from_dict(data: dict[str, Any], where: str = "thresholds") -> Thresholds:
    """Thresholds from a TOML-shaped dict holding one `[recommend]` table; unknown keys are errors."""
    check_keys(data, {"recommend"}, where)
    table = data.get("recommend", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: 'recommend' must be a table ([recommend])")
    check_keys(table, {f.name for f in dataclasses.fields(Thresholds)}, f"{where} [recommend]")
    values = {}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} [recommend] {key}: {value!r} is not a number")
        values[key] = float(value)
    return Thresholds(**values).validate()


def load_thresholds(path: str | Path) -> Thresholds:
    """Read a TOML file with a `[recommend]` table, e.g. `wer_bound = 0.15`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"thresholds file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    return thresholds_from_dict(data, str(path))


@dataclass(frozen=True)
class Recommendation:
    """One scenario's answer on one device."""

    scenario: str  # "real-time", "balanced", "best quality", "throughput", "energy", "low memory (edge)"
    device: str
    criterion: str  # the rule that picked it, with the thresholds applied
    choice: str | None  # column label, clip length, batch, device, threads; None when the data cannot answer
    why: str  # the choice's numbers with units and provenance, or "not measured: <reason>"
    ties: tuple[str, ...] = ()  # candidates within the tie tolerance (quality: within the WER CI), with numbers
    caveats: tuple[str, ...] = ()  # what was excluded or could not be checked, and why
    # the row behind the choice (its run and cell), so a page can link the answer to its measurements
    run_id: str | None = None
    cell_key: str | None = None


# ---- formatting: every number with its unit and how it was obtained ----

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _wer_text(r: Row) -> str:
    if r.get("wer") is None:
        return f"WER not measured ({r.get('wer_missing_reason') or r.get('weights', '?') + ' weights'})"
    ci = (f" [95% CI {_pct(r['wer_ci_low'])}–{_pct(r['wer_ci_high'])}]"
          if r.get("wer_ci_low") is not None and r.get("wer_ci_high") is not None else "")
    words = f" over {r['ref_words']} words" if r.get("ref_words") else ""
    return f"WER {_pct(r['wer'])}{ci}{words} ({r.get('weights', '?')} weights)"


def _short(r: Row) -> str:
    """A candidate within one scenario, whose clip length is fixed: column, batch, threads."""
    threads = f", {r['threads']} threads" if r.get("threads") is not None else ""
    run = f", run {r['run_id']}" if "_multi_run" in r else ""
    chunk = f", {r['chunk_ms']} ms chunks" if r.get("chunk_ms") else ""
    return f"{column_label(r)}{chunk}, batch {_batch(r)}{threads}{run}"


def _full(r: Row) -> str:
    chunk = f", {r['chunk_ms']} ms chunks" if r.get("chunk_ms") else ""
    return f"{column_label(r)}, {r['clip_length_s']:g} s{chunk}, batch {_batch(r)}, {r['device']}" + (
        f", {r['threads']} threads" if r.get("threads") is not None else "") + (
        f", run {r['run_id']}" if "_multi_run" in r else "")


def _batch(r: Row) -> int:
    return r["max_throughput_batch_size"] if r.get("scenario") == "max_throughput" else r["batch_size"]


def _ms(s: float) -> str:
    return f"{1000 * s:,.0f} ms" if s >= 0.1 else f"{1000 * s:,.1f} ms"


def _energy_method(r: Row) -> str:
    kind = "measured" if r.get("energy_measured") else "estimated"
    return f"{kind}: {r['energy_method'].split(': ', 1)[-1]}" if r.get("energy_method") else kind


# ---- which rows count ----

def _is_latency(r: Row) -> bool:
    return r.get("scenario", "latency") == "latency"


def _audio_s_per_s(r: Row) -> float | None:
    """Audio seconds transcribed per compute second (RTFx); a batch-size search row gives samples/s x length."""
    if r.get("scenario") == "max_throughput":
        sps = r.get("max_throughput_samples_per_s")
        return None if sps is None else sps * r["clip_length_s"]
    return r.get("rtfx")


# Memory fields in order of preference, one compared per device: (row key, what it is, where its
# missing reason is). The "timed" fields cover the timed calls only; the older whole-cell fields
# also hold the FLOP count and device-peak probe that run after them when flops = true.
_CPU_MEMORY = (("rss_peak_timed_bytes", "peak RSS over the timed calls", "rss_peak_timed_missing_reason"),
               ("peak_rss_bytes", "peak RSS of the cell's process", ""))
_CUDA_MEMORY = (("nvml_process_peak_bytes", "GPU memory of the process (NVML) over the timed calls",
                 "nvml_process_missing_reason"),
                ("cuda_peak_allocated_timed_bytes", "peak CUDA memory allocated by torch over the timed calls",
                 "cuda_memory_missing_reason"),
                ("cuda_peak_allocated_bytes", "peak CUDA memory allocated by torch in the cell", ""))
_WHOLE_CELL = {"peak_rss_bytes", "cuda_peak_allocated_bytes"}


def _memory_fields(device: str) -> tuple[tuple[str, str, str], ...]:
    return _CUDA_MEMORY if device.startswith("cuda") else _CPU_MEMORY


def _memory(r: Row, key: str) -> float | str:
    """MiB of memory field `key` for the low-memory scenario, or why it cannot be compared."""
    if not r.get("isolated"):
        return "cell not isolated: the process holds earlier cells' memory; re-run with --isolate"
    missing_key = next(m for k, _, m in _memory_fields(r["device"]) if k == key)
    if r.get(key) is None:
        return str(r.get(missing_key) or f"no {key} recorded")
    if key in _WHOLE_CELL and r.get("flops_probe_ran"):
        return "its peak includes the FLOP count and device-peak probe (flops = true); re-run with flops off"
    if key == "cuda_peak_allocated_bytes" and not r.get("runs_torch"):
        return f"engine {r['engine']} does not allocate through torch: its device memory is not visible"
    return r[key] / MIB


# ---- the selection rule shared by the metric scenarios ----

@dataclass
class _Pick:
    row: Row | None
    value: float | None = None
    ties: list[str] = dataclasses.field(default_factory=list)
    caveats: list[str] = dataclasses.field(default_factory=list)
    none_reason: str = ""


def _select(cands: list[Row], metric: Callable[[Row], float | None], lower: bool, show: Callable[[float], str],
            th: Thresholds, what: str) -> _Pick:
    """Best candidate on `metric` among those within the WER bound; ties within the tolerance.

    Rows without WER (random weights, accuracy off) compete only when no row has a WER, and then
    the choice says the bound was not checked. Better-scoring rows that were excluded are named.
    """
    scored = sorted(((r, v) for r in cands if (v := metric(r)) is not None),
                    key=lambda x: (x[1] if lower else -x[1], _short(x[0])))
    if not scored:
        return _Pick(None, none_reason=f"not measured: no row has {what}")
    checked = [x for x in scored if x[0].get("wer") is not None]
    passed = [x for x in checked if x[0]["wer"] <= th.wer_bound]
    unknown = [x for x in scored if x[0].get("wer") is None]
    caveats: list[str] = []
    if passed:
        pool = passed
    elif checked:
        best_wer = min(checked, key=lambda x: x[0]["wer"])[0]
        extra = f"; {len(unknown)} more without WER ({_reasons(r for r, _ in unknown)})" if unknown else ""
        return _Pick(None, none_reason=f"no configuration within WER ≤ {_pct(th.wer_bound)}: lowest measured "
                                       f"{_pct(best_wer['wer'])} ({_short(best_wer)}){extra}")
    else:
        pool = unknown
        caveats.append(f"WER bound ≤ {_pct(th.wer_bound)} not checked: {_reasons(r for r, _ in unknown)}")
    best, best_v = pool[0]
    better = (lambda v: v < best_v) if lower else (lambda v: v > best_v)
    if pool is passed:
        for r, v in checked:
            if r["wer"] > th.wer_bound and better(v):
                unsure = r.get("wer_ci_low") is not None and r["wer_ci_low"] <= th.wer_bound
                caveats.append(f"excluded by the WER bound: {_short(r)} ({show(v)}, WER {_pct(r['wer'])}" + (
                    f"; its 95% CI from {_pct(r['wer_ci_low'])} includes the bound: more clips would settle it)"
                    if unsure else ")"))
        faster_unknown = [(r, v) for r, v in unknown if better(v)]
        if faster_unknown:
            caveats.append(f"not considered, no WER ({_reasons(r for r, _ in faster_unknown)}): "
                           + ", ".join(f"{_short(r)} ({show(v)})" for r, v in faster_unknown))
    limit = best_v * (1 + th.tie_tolerance) if lower else best_v * (1 - th.tie_tolerance)
    ties = [f"{_short(r)}: {show(v)}" for r, v in pool[1:] if (v <= limit if lower else v >= limit)]
    return _Pick(best, best_v, ties, caveats)


def _reasons(rows: Iterable[Row]) -> str:
    return "; ".join(dict.fromkeys(str(r.get("wer_missing_reason") or f"{r.get('weights')} weights") for r in rows))


def _rec(scenario: str, device: str, criterion: str, pick: _Pick, why: Callable[[Row, float], str]) -> Recommendation:
    if pick.row is None:
        return Recommendation(scenario, device, criterion, None, pick.none_reason, caveats=tuple(pick.caveats))
    return Recommendation(scenario, device, criterion, _full(pick.row), why(pick.row, pick.value),
                          tuple(pick.ties), tuple(pick.caveats), pick.row.get("run_id"), pick.row.get("cell_key"))


def _missing(scenario: str, device: str, criterion: str, reason: str) -> Recommendation:
    return Recommendation(scenario, device, criterion, None, f"not measured: {reason}")


# ---- the scenarios ----

def recommend(rows: Iterable[Row], thresholds: Thresholds = Thresholds(),
              allow_contended: bool = False) -> list[Recommendation]:
    """One recommendation per scenario and device, from committed rows (status 'ok' only).

    Rows the busy-machine guard flagged (`contended`, measure/contention.py) are left out unless
    `allow_contended`; each recommendation of the device then says how many were.

    Let L_max be the longest clip length measured on the device. A configuration is a column
    (model, engine, dtype) at one thread count; WER is the corpus WER of its row's clips.

    - live captions (only where streaming rows exist; report/streaming_recommend.py): lowest p90
      finalization latency among streamed configurations that keep up in real time, within the
      WER bound on streamed WER. It comes first and takes precedence over real-time for live audio.
    - real-time: batch-1 latency of whole clips (not streamed): lowest p90 latency at batch 1 on the measured clip length closest to
      `realtime_clip_s`, among configurations with WER ≤ `wer_bound`, whose p90 is below the clip
      length (it keeps pace with live audio) and within `p90_budget_ms` when set.
    - balanced: highest RTFx (audio seconds per compute second) at batch 1 on L_max clips, within
      the WER bound: the fastest single-stream transcription that is accurate enough.
    - best quality: lowest WER at batch 1 on the longest clips that have a WER. Configurations
      whose 95% CI overlaps the best one's, or whose WER is within `tie_tolerance` of it, tie;
      the fastest tie (RTFx) is chosen.
    - throughput: highest audio seconds per second on L_max clips over every batch size (and
      batch-size search rows), within the WER bound; also given as samples/s and device-seconds
      per audio-hour (3600 / RTFx).
    - energy: lowest joules per audio-hour on L_max clips over every batch size, within the WER
      bound; measured energy only when any row has it, else estimates, labelled as such.
    - low memory (edge): lowest peak memory at batch 1 on L_max clips within the WER bound and
      `edge_memory_mib`. One field per device, the first any row has of: on CPU, peak RSS over the
      timed calls, then the cell process's peak RSS; on GPU, the process's NVML memory over the
      timed calls, then torch's peak CUDA allocation (timed, then whole cell). Cells not isolated,
      and whole-cell peaks that include the FLOP/peak probes, are not compared.

    Rows without WER (random weights) compete only when no row has a WER; the choice then says the
    bound was not checked. Values within `tie_tolerance` (relative) of the best are listed as ties.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    multi_run = len({r.get("run_id") for r in ok}) > 1
    if multi_run:  # the same configuration from two runs needs the run id to be told apart
        ok = [{**r, "_multi_run": True} for r in ok]
    by_device: dict[str, list[Row]] = {}
    for r in ok:
        by_device.setdefault(r["device"], []).append(r)
    out: list[Recommendation] = []
    for device, rs in by_device.items():
        busy = [r for r in rs if r.get("contended") is True]
        if allow_contended or not busy:
            out += _device_recommendations(device, rs, thresholds)
            continue
        caveat = contended_caveat(len(busy))
        quiet = [r for r in rs if r.get("contended") is not True]
        recs = _device_recommendations(device, quiet, thresholds, busy) if quiet else [
            _missing(s, device, "every row on this device was contended", "no row measured on a quiet machine")
            for s in SCENARIO_NAMES]
        out += [dataclasses.replace(rec, caveats=rec.caveats + (caveat,)) for rec in recs]
    return out


def contended_caveat(n: int) -> str:
    """The caveat every recommendation of a device gets when `n` of its rows were left out as contended."""
    return f"{n} contended row(s) left out (measured on a busy machine; --allow-contended includes them)"


SCENARIO_NAMES = ("real-time", "balanced", "best quality", "throughput", "energy", "low memory (edge)")


def _device_recommendations(device: str, rows: list[Row], th: Thresholds,
                            contended: list[Row] | None = None) -> list[Recommendation]:
    """`contended`: the device's rows left out as contended, named where they would have changed a rule."""
    lat = [r for r in rows if _is_latency(r) and r.get("latency_s_p90") is not None]
    lengths = sorted({r["clip_length_s"] for r in lat} | {r["clip_length_s"] for r in rows})
    if not lengths:
        return []
    longest = lengths[-1]
    b1 = [r for r in lat if r["batch_size"] == 1]
    wer_txt = f"WER ≤ {_pct(th.wer_bound)}"
    realtime = _realtime(device, b1, th)
    out = [_balanced(device, b1, longest, th, wer_txt), _quality(device, b1, th, contended or []),
           _throughput(device, rows, longest, th, wer_txt), _energy(device, lat, longest, th, wer_txt),
           _edge(device, b1, longest, th, wer_txt)]
    from asrperf.report.streaming_recommend import live_captions  # it builds on this module

    from asrperf.report.serving_recommend import serving

    served = serving(device, rows, th)
    out += [served] if served is not None else []
    live = live_captions(device, rows, th)
    if live is None:
        return [realtime, *out]
    if live.choice is not None:  # streamed measurements answer "live audio" better than whole-clip latency
        realtime = dataclasses.replace(realtime, caveats=realtime.caveats + (
            f"for live audio the streamed '{live.scenario}' row takes precedence: {live.choice}",))
    return [live, realtime, *out]


def _realtime(device: str, b1: list[Row], th: Thresholds) -> Recommendation:
    scenario = "real-time"
    if not b1:
        return _missing(scenario, device, "lowest p90 latency at batch 1", "no batch-1 latency rows")
    length = min({r["clip_length_s"] for r in b1}, key=lambda x: (abs(x - th.realtime_clip_s), x))
    budget = f", p90 ≤ {th.p90_budget_ms:g} ms" if th.p90_budget_ms is not None else ""
    closest = "" if math.isclose(length, th.realtime_clip_s) else f" (closest measured to {th.realtime_clip_s:g} s)"
    criterion = (f"batch-1 latency of whole clips (not streamed): lowest p90 latency, batch 1, {length:g} s "
                 f"clips{closest}; WER ≤ {_pct(th.wer_bound)}, p90 ≤ clip length (keeps pace with live audio){budget}")
    cands = [r for r in b1 if r["clip_length_s"] == length]
    limit = min(length, th.p90_budget_ms / 1000 if th.p90_budget_ms is not None else math.inf)
    limit_text = f"{_ms(limit)} ({'p90 budget' if limit < length else 'clip length'})"
    fits, slow = [], []
    for r in cands:
        (fits if r["latency_s_p90"] <= limit else slow).append(r)
    pick = _select(fits, lambda r: r["latency_s_p90"], True, lambda v: f"p90 {_ms(v)}", th, "a p90 latency")
    if not fits:
        fastest = min(cands, key=lambda r: r["latency_s_p90"])
        pick.none_reason = (f"no configuration fits: fastest p90 {_ms(fastest['latency_s_p90'])} "
                            f"({_short(fastest)}) exceeds {limit_text}")
    elif pick.row is None:
        pick.none_reason = f"among configurations that keep pace: {pick.none_reason}"
    if fits and slow:
        pick.caveats.append(f"p90 over {limit_text}: {', '.join(_short(r) for r in slow)}")

    def why(r: Row, v: float) -> str:
        return (f"p90 {_ms(v)}, p50 {_ms(r['latency_s_p50'])} over {r['n_calls']} timed calls on {length:g} s "
                f"audio (wall clock, device synchronised); {_wer_text(r)}")

    return _rec(scenario, device, criterion, pick, why)


def _balanced(device: str, b1: list[Row], longest: float, th: Thresholds, wer_txt: str) -> Recommendation:
    criterion = f"highest RTFx, batch 1, {longest:g} s clips; {wer_txt}"
    cands = [r for r in b1 if r["clip_length_s"] == longest]
    pick = _select(cands, lambda r: r.get("rtfx"), False, lambda v: f"RTFx {v:.1f}", th, "an RTFx")

    def why(r: Row, v: float) -> str:
        return (f"RTFx {v:.1f} (audio s per compute s), p50 {_ms(r['latency_s_p50'])} per {longest:g} s clip; "
                f"{_wer_text(r)}")

    return _rec("balanced", device, criterion, pick, why)


def _quality(device: str, b1: list[Row], th: Thresholds, contended: list[Row]) -> Recommendation:
    scenario = "best quality"
    scored = [r for r in b1 if r.get("wer") is not None]
    if not scored:
        reason = _reasons(b1) if b1 else "no batch-1 latency rows"
        return _missing(scenario, device, "lowest WER", f"no row has a WER ({reason})")
    length = max(r["clip_length_s"] for r in scored)
    longer = sorted({r["clip_length_s"] for r in contended if r.get("wer") is not None and _is_latency(r)
                     and r["batch_size"] == 1 and r["clip_length_s"] > length})
    longest = (f"longest with WER among uncontended rows; {', '.join(f'{x:g} s' for x in longer)} rows contended"
               if longer else "longest with WER")
    criterion = (f"lowest WER, batch 1, {length:g} s clips ({longest}); ties: 95% CIs overlap or within "
                 f"{100 * th.tie_tolerance:g}% of the best; among ties the highest RTFx")
    cands = sorted((r for r in scored if r["clip_length_s"] == length), key=lambda r: (r["wer"], _short(r)))
    best = cands[0]

    def tied(r: Row) -> bool:
        overlap = (r.get("wer_ci_low") is not None and best.get("wer_ci_high") is not None
                   and r["wer_ci_low"] <= best["wer_ci_high"])
        return overlap or r["wer"] <= best["wer"] * (1 + th.tie_tolerance)

    group = sorted((r for r in cands if tied(r)), key=lambda r: (-(r.get("rtfx") or 0), r["wer"], _short(r)))
    choice = group[0]
    ties = tuple(f"{_short(r)}: WER {_pct(r['wer'])}, RTFx {r.get('rtfx') or 0:.1f}" for r in group[1:])
    caveats = []
    if len(group) > 1:
        caveats.append("WER differences within the 95% CIs: more clips are needed to separate these")
    if choice is not best:
        caveats.append(f"lowest point WER: {_short(best)} ({_pct(best['wer'])})")
    unscored = sorted({column_label(r) for r in b1 if r.get("wer") is None})
    if unscored:
        caveats.append(f"no WER for {', '.join(unscored)} ({_reasons(r for r in b1 if r.get('wer') is None)})")
    why = f"{_wer_text(choice)}; RTFx {choice.get('rtfx') or 0:.1f} at batch 1"
    if choice is not best:  # said in the one line, not only in the caveats: the point WER is not the lowest
        why += f"; tied within the 95% CIs with the lowest point WER ({_short(best)}, {_pct(best['wer'])}), and faster"
    return Recommendation(scenario, device, criterion, _full(choice), why, ties, tuple(caveats), choice.get("run_id"),
                          choice.get("cell_key"))


def _throughput(device: str, rows: list[Row], longest: float, th: Thresholds, wer_txt: str) -> Recommendation:
    criterion = f"highest audio s per s (RTFx) over batch sizes, {longest:g} s clips; {wer_txt}"
    wer_of = {(column_label(r), r.get("threads"), r.get("run_id")): r for r in sorted(
        (r for r in rows if _is_latency(r) and r["clip_length_s"] == longest), key=lambda r: -r["batch_size"])}
    cands = []
    for r in rows:
        if r["clip_length_s"] != longest:
            continue
        if r.get("scenario") == "max_throughput":  # WER from the same configuration's latency row
            src = wer_of.get((column_label(r), r.get("threads"), r.get("run_id")), {})
            r = {**r, **{k: src.get(k) for k in ("wer", "wer_ci_low", "wer_ci_high", "ref_words")},
                 "wer_missing_reason": src.get("wer_missing_reason", "no latency row with WER for this configuration")}
        cands.append(r)
    pick = _select(cands, _audio_s_per_s, False, lambda v: f"RTFx {v:.1f}", th, "a throughput")

    def why(r: Row, v: float) -> str:
        sps = r.get("max_throughput_samples_per_s") or r.get("throughput_samples_per_s")
        how = "batch-size search" if r.get("scenario") == "max_throughput" else "timed calls"
        return (f"{sps:.2f} samples/s = RTFx {v:.1f}, i.e. {AUDIO_HOUR_S / v:,.0f} device-s per audio-hour "
                f"({how}); {_wer_text(r)}")

    return _rec("throughput", device, criterion, pick, why)


def _energy(device: str, lat: list[Row], longest: float, th: Thresholds, wer_txt: str) -> Recommendation:
    scenario = "energy"
    cands = [r for r in lat if r["clip_length_s"] == longest and r.get("energy_j_per_audio_s") is not None]
    if not cands:
        reasons = "; ".join(dict.fromkeys(str(r.get("energy_missing_reason") or "energy not recorded")
                                          for r in lat if r["clip_length_s"] == longest)) or "no latency rows"
        return _missing(scenario, device, f"lowest J per audio-hour, {longest:g} s clips", reasons)
    measured = [r for r in cands if r.get("energy_measured")]
    kind = "measured" if measured else "estimated"
    criterion = f"lowest J per audio-hour ({kind} energy) over batch sizes, {longest:g} s clips; {wer_txt}"
    pick = _select(measured or cands, lambda r: r["energy_j_per_audio_s"] * AUDIO_HOUR_S, True,
                   lambda v: f"{v:,.0f} J/audio-h", th, "an energy figure")
    if measured and len(measured) < len(cands):
        pick.caveats.append(f"{len(cands) - len(measured)} row(s) with estimated energy not compared with measured")
    if not measured:
        pick.caveats.append("estimated energy: a model of power, not a reading; it ranks like compute time")
    if pick.row is not None and pick.row.get("energy_window_ok") is False:
        pick.caveats.append("energy window shorter than the counter's update period: the reading is coarse")

    def why(r: Row, v: float) -> str:
        return (f"{v:,.0f} J per audio-hour ({v / AUDIO_HOUR_S:.3g} Wh; {r['energy_j_per_sample']:.3g} J/sample; "
                f"{_energy_method(r)}); {_wer_text(r)}")

    return _rec(scenario, device, criterion, pick, why)


def _edge(device: str, b1: list[Row], longest: float, th: Thresholds, wer_txt: str) -> Recommendation:
    scenario = "low memory (edge)"
    cands = [r for r in b1 if r["clip_length_s"] == longest]
    fields = _memory_fields(device)
    # the most preferred field that any candidate can give; candidates without it are not compared
    key, what, _ = next((f for f in fields if any(isinstance(_memory(r, f[0]), float) for r in cands)), fields[0])
    mib = {id(r): _memory(r, key) for r in cands}
    criterion = f"lowest {what}, batch 1, {longest:g} s clips; {wer_txt}, ≤ {th.edge_memory_mib:,.0f} MiB"
    usable = [r for r in cands if isinstance(mib[id(r)], float)]
    if not usable:
        reason = "; ".join(dict.fromkeys(str(m) for m in mib.values())) or "no batch-1 latency rows"
        return _missing(scenario, device, criterion, f"no usable memory figure ({reason})")
    fits = [r for r in usable if mib[id(r)] <= th.edge_memory_mib]
    pick = _select(fits, lambda r: mib[id(r)], True, lambda v: f"{v:,.0f} MiB", th, "a memory figure")
    if not fits:
        low = min(usable, key=lambda r: mib[id(r)])
        pick.none_reason = (f"nothing within {th.edge_memory_mib:,.0f} MiB: lowest {mib[id(low)]:,.0f} MiB "
                            f"({_short(low)})")
    elif pick.row is None:
        pick.none_reason = f"among configurations within {th.edge_memory_mib:,.0f} MiB: {pick.none_reason}"
    skipped = [r for r in cands if not isinstance(mib[id(r)], float)]
    if skipped:
        reasons = "; ".join(dict.fromkeys(str(mib[id(r)]) for r in skipped))
        pick.caveats.append(f"memory not comparable for {', '.join(sorted({column_label(r) for r in skipped}))}: "
                            f"{reasons}")

    def why(r: Row, v: float) -> str:
        method = r.get("rss_peak_timed_method") if key == "rss_peak_timed_bytes" else None
        method = f"; {method}" if method else ""
        return f"{v:,.0f} MiB ({what}{method}), p50 {_ms(r['latency_s_p50'])}; {_wer_text(r)}"

    return _rec(scenario, device, criterion, pick, why)


def shared_caveats(recs: list[Recommendation]) -> dict[str, tuple[str, ...]]:
    """Per device, the caveats every one of its recommendations has (contended rows left out, ...):
    said once per device rather than on each line."""
    out = {}
    for device in dict.fromkeys(r.device for r in recs):
        mine = [r for r in recs if r.device == device]
        out[device] = tuple(c for c in mine[0].caveats if all(c in r.caveats for r in mine[1:])) if len(mine) > 1 else ()
    return out


def pick_lines(recs: list[Recommendation]) -> list[tuple[str, str, str, str]]:
    """(scenario, choice, why, caveats) per recommendation, worded once for the first screen and the
    full table alike; the caveats shared by a whole device are left to `shared_caveats`."""
    devices = {r.device for r in recs}
    shared = shared_caveats(recs)
    return [(r.scenario if len(devices) == 1 else f"{r.scenario} [{r.device}]", r.choice or MISSING, r.why,
             "; ".join(c for c in r.caveats if c not in shared[r.device])) for r in recs]


def recommendations_table(recs: list[Recommendation]) -> Table:
    """One table for terminal and markdown: a row per scenario (and device), the rules in the notes."""
    devices = list(dict.fromkeys(r.device for r in recs))
    t = Table("Recommendations (derived from the measurements above)", ["Choice", "Why", "Ties"], corner="Scenario")
    for (name, choice, why, caveats), r in zip(pick_lines(recs), recs):
        t.rows.append((name, [choice, f"{why}; caveats: {caveats}" if caveats else why, "; ".join(r.ties) or MISSING]))
    for device, common in shared_caveats(recs).items():
        if common:
            t.notes.append(f"every recommendation{'' if len(devices) == 1 else f' [{device}]'}: {'; '.join(common)}")
    for r in recs:
        t.notes.append(f"{r.scenario}{'' if len(devices) == 1 else f' [{r.device}]'}: {r.criterion}")
    if not recs:
        t.notes.append("no successful rows: nothing to recommend")
    t.notes.append("rows of different devices are never compared; ties: within the relative tie tolerance of the best")
    return t
