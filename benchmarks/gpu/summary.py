"""The short table run.sh prints last: what each stage did and the study's GPU metrics per model.

Every figure is read from the stores' rows (asrperf measured it, with the method on the row); the
one derived figure, MFU at the max-throughput batch, says how it is derived. The study's P100 row
(shared/MISSION.md) is printed beside ours for reference, never mixed into it.

    python benchmarks/gpu/summary.py --store gpu.sqlite --optimize-store optimize.sqlite \
        --stages stages.tsv --pytest-log pytest.log --total-s N
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# the study's GPU (Tesla P100) figures: latency ms at batch 1 on 60 s, J/sample at batch 16 on
# 60 s, max throughput samples/s, WER % (GigaSpeech, unnormalised: not comparable with ours)
STUDY_P100 = {
    "whisper-tiny": (277.2, 0.28, 54.1), "whisper-base": (402.1, 0.55, 26.2), "whisper-small": (724.4, 1.59, 28.4),
    "whisper-medium": (1307.6, 4.77, 12.9), "wav2vec2-base": (204.0, 0.11, 95.4),
}
STUDY_P100["whisper-tiny.en"] = STUDY_P100["whisper-tiny"]  # same architecture as the study's tiny
DASH = "—"


def _rows(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    from asrperf.results.store import Store

    with Store(path) as store:
        return store.rows()


def _stages(path: Path | None) -> list[list[str]]:
    if path is None or not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def pytest_outcome(log: Path | None) -> str:
    """pytest's own closing counts ("12 passed, 3 skipped in 40.1s"), or what it collected."""
    if log is None or not log.is_file():
        return "no pytest log"
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        text = line.strip().strip("=").strip()
        if re.search(r"\d+ (passed|failed|error|errors|skipped|deselected)\b.* in [\d.]+s", text) \
                or re.search(r"\d+(/\d+)? tests? collected", text) or text.startswith("no tests ran"):
            return text
    return "no pytest summary line (killed?)"


def _f(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return DASH if v is None else format(v * scale, fmt)


def _key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r.get("model") or r.get("model_name", "?"), r.get("engine", "?"), r.get("variant") or r.get("dtype", "?"),
            r.get("weights") or r.get("weights_requested", "?"))


def _gpu_j_per_sample(r: dict[str, Any]) -> str:
    """GPU joules per sample (the NVML domain alone) where measured, else the row's labelled figure."""
    domains = r.get("energy_domains_j") or {}
    samples = (r.get("batch_size") or 0) * (r.get("n_calls") or 0)
    gpu = [v for k, v in domains.items() if k.startswith("gpu")]
    if gpu and samples:
        net = r.get("energy_net_j_per_sample")
        return f"{sum(gpu) / samples:.3g} gpu" + (f" (net {net:.3g})" if net is not None else "")
    if r.get("energy_j_per_sample") is not None:
        return f"{r['energy_j_per_sample']:.3g} {'meas' if r.get('energy_measured') else 'est'}"
    return DASH


def model_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per model entry: latency b1, energy at the largest batch, max throughput, WER, MFU."""
    by: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        if r.get("status") != "ok":
            continue
        scenario = r.get("scenario", "latency")
        if scenario == "latency":
            by[_key(r)].setdefault("latency", {})[r["batch_size"]] = r
        elif scenario == "max_throughput":
            by[_key(r)]["max"] = r
    head = (f"{'model (engine, variant, weights)':46} {'b1 p50 ms (p90)':>18} {'J/sample @bN':>22} "
            f"{'max samp/s @b stop':>22} {'WER %':>6} {'MFU b1/bN %':>12} {'MFU@max':>8} {'peak TF/s':>9} | "
            f"{'P100: ms':>8} {'J':>5} {'samp/s':>6}")
    out = [head, "-" * len(head)]
    for key in sorted(by):
        cells = by[key]
        lat = cells.get("latency", {})
        b1 = lat.get(1)
        bn = lat[max(lat)] if lat and max(lat) > 1 else None
        mx = cells.get("max")
        lat_text = f"{_f(b1['latency_s_p50'], ',.1f', 1e3)} ({_f(b1['latency_s_p90'], ',.1f', 1e3)})" if b1 else DASH
        energy = f"{_gpu_j_per_sample(bn)} @{bn['batch_size']}" if bn else DASH
        max_text = (f"{_f(mx.get('max_throughput_samples_per_s'), ',.1f')} @{mx.get('max_throughput_batch_size')} "
                    f"{mx.get('max_throughput_stop_reason')}") if mx else DASH
        wer = _f(b1.get("wer"), ".1f", 100) if b1 else DASH
        mfu = f"{_f((b1 or {}).get('mfu'), '.1f', 100)}/{_f((bn or {}).get('mfu'), '.1f', 100)}"
        peak_row = bn or b1 or {}
        peak = peak_row.get("peak_flops_per_s")
        derived = DASH  # MFU at the max-throughput batch: FLOPs per sample (from the bN call) x samples/s / peak
        if bn and mx and bn.get("flops_per_call") and peak and mx.get("max_throughput_samples_per_s"):
            derived = _f(bn["flops_per_call"] / bn["batch_size"] * mx["max_throughput_samples_per_s"] / peak, ".1f", 100)
        study = STUDY_P100.get(key[0], (None, None, None))
        label = f"{key[0]} ({key[1]}, {key[2]}, {key[3]})"
        out.append(f"{label[:46]:46} {lat_text:>18} {energy:>22} {max_text:>22} {wer:>6} {mfu:>12} {derived:>8} "
                   f"{_f(peak, '.3g', 1e-12):>9} | {_f(study[0], ',.1f'):>8} {_f(study[1], '.2f'):>5} {_f(study[2], '.1f'):>6}")
    return out


def optimize_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each optimize trial: p50, speed-up and WER change against the fp32 sequential reference."""
    lat = [r for r in rows if r.get("scenario", "latency") == "latency"]
    if not lat:
        return []
    ref = next((r for r in lat if r.get("status") == "ok" and r.get("engine") == "transformers"
                and (r.get("variant") or r.get("dtype")) == "fp32"), None)
    length = lat[0].get("clip_length_s")
    out = [f"optimize {lat[0].get('model')} on {lat[0].get('device')}, {length:g} s, batch {lat[0].get('batch_size')}:"]
    for r in lat:
        name = f"  {r.get('engine')} {r.get('variant') or r.get('dtype')}"
        if r.get("status") != "ok":
            out.append(f"{name:44} failed: {str(r.get('error'))[:90]}")
            continue
        speed = f"{ref['latency_s_p50'] / r['latency_s_p50']:.2f}x" if ref else DASH
        dwer = (f"{100 * (r['wer'] - ref['wer']):+.2f}" if ref and r.get("wer") is not None and ref.get("wer") is not None
                else DASH)
        compiled = f", recompiles timed {r['recompilations_timed']}" if r.get("recompilations_timed") is not None else ""
        out.append(f"{name:44} p50 {_f(r['latency_s_p50'], ',.1f', 1e3):>9} ms  {speed:>6}  WER {_f(r.get('wer'), '.2f', 100)} "
                   f"(Δ {dwer})  first call {_f(r.get('first_call_s'), '.2f')} s{compiled}")
    return out


def profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r.get("scenario") != "profile":
            continue
        head = f"profile {r.get('model')} ({r.get('variant') or r.get('dtype')}, {r.get('device')}, {r.get('clip_length_s'):g} s)"
        if r.get("status") != "ok":
            out.append(f"{head}: failed: {str(r.get('error'))[:100]}")
            continue
        cats = sorted(r.get("op_categories") or [], key=lambda c: -c["share"])[:4]
        out.append(f"{head}: {_f(r.get('profiled_latency_s'), ',.1f', 1e3)} ms/call profiled ({r.get('op_timeline')} time); "
                   + ", ".join(f"{c['category']} {100 * c['share']:.0f}%" for c in cats))
    return out


def failures(rows: list[dict[str, Any]]) -> list[str]:
    return [f"  FAILED {r.get('model')} {r.get('variant') or r.get('dtype')} {r.get('scenario')} "
            f"b{r.get('batch_size')}: {str(r.get('error'))[:110]}" for r in rows if r.get("status") != "ok"]


def device_line(rows: list[dict[str, Any]]) -> str:
    r = next((r for r in rows if r.get("status") == "ok" and r.get("device_name")), None)
    if r is None:
        return "device: no ok row"
    return (f"device: {r['device_name']} ({r.get('device')}), torch {r.get('torch_version', '?')}, CUDA {r.get('cuda_version', '-')}, "
            f"transformers {r.get('engine_version', '?')}; energy {r.get('energy_method', '-')}")


def summary(store: Path | None, optimize_store: Path | None, stages: Path | None, pytest_log: Path | None,
            total_s: int | None) -> tuple[str, bool]:
    """(text, all stages ok)."""
    rows, opt = _rows(store), _rows(optimize_store)
    st = _stages(stages)
    lines = ["", "=" * 30 + " asrperf GPU run summary " + "=" * 30, device_line(rows + opt)]
    lines.append("stage            rc      wall s  limit s  note")
    for name, rc, wall, limit in ((s + ["", "", ""])[:4] for s in st):
        note = ""
        if name == "pytest":
            note = pytest_outcome(pytest_log)
        elif name in ("table", "max_throughput", "profile"):
            scen = {"table": "latency", "max_throughput": "max_throughput", "profile": "profile"}[name]
            mine = [r for r in rows if r.get("scenario", "latency") == scen]
            note = f"{sum(r.get('status') == 'ok' for r in mine)} ok, {sum(r.get('status') != 'ok' for r in mine)} failed cells"
        elif name == "optimize":
            note = f"{sum(r.get('status') == 'ok' for r in opt)} ok, {sum(r.get('status') != 'ok' for r in opt)} failed cells"
        status = {"0": "ok", "124": "TIMEOUT", "137": "KILLED", "skipped": "skipped"}.get(rc, f"rc {rc}")
        lines.append(f"{name:16} {status:7} {wall:>6} {limit:>8}  {note}")
    if total_s is not None:
        lines.append(f"total wall time {total_s} s")
    lines += [""] + model_table(rows)
    lines.append("J/sample: the NVML GPU domain alone ('gpu'), net = the row's energy less idle power x window "
                 "(all domains); 'est' = CPU-time estimate. MFU@max derived: FLOPs/sample of the bN call x max "
                 "samples/s / that cell's measured peak.")
    lines += [""] + profile_lines(rows) + [""] + optimize_table(opt)
    bad = failures(rows + opt)
    if bad:
        lines += ["", "failed cells:"] + bad[:12] + ([f"  ... and {len(bad) - 12} more"] if len(bad) > 12 else [])
    ok = bool(st) and all(s[1] in ("0",) for s in st if len(s) > 1)
    return "\n".join(lines) + "\n", ok


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path)
    p.add_argument("--optimize-store", type=Path)
    p.add_argument("--stages", type=Path)
    p.add_argument("--pytest-log", type=Path)
    p.add_argument("--total-s", type=int)
    a = p.parse_args(argv)
    text, ok = summary(a.store, a.optimize_store, a.stages, a.pytest_log, a.total_s)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
