"""Serving under load: the issue's performance targets for `asrperf serve` + `asrperf load`.

    python benchmarks/serving.py [--engines ct2:int8,transformers:fp32] [--batch 16] [--slo 'p99<=2s']
                                 [--length 15] [--probe-s 120] [--sweep-s 60] [--quick | --smoke | --model-only]

For each engine (whisper tiny.en, real weights, clips of the built-in corpus):
  1. offline, as `asrperf run` measures it (one process per cell, the same clips): latency and WER
     at batch 1, and the max-throughput batch search (`scenarios = ["latency", "max_throughput"]`);
  2. served with max_batch_size = 1 and with dynamic batching (max_batch_size = --batch), each in
     its own `asrperf serve` process: the maximum sustainable Poisson rate under the SLO
     (synchronous and saturation probes, then bisection), and for the batching server a sweep of
     the latency-vs-offered-load curve at fractions of its saturation rate, with its knee;
  3. the targets: max rate with batching >= 1.5x the rate with max_batch_size = 1; saturation
     rate served >= 80% of the offline max throughput; WER under load = WER offline (the same
     transcript for every clip, since decoding is greedy).
Rows go to --store (offline cells and every load probe, so `asrperf report` and later tools read
them); the summary is printed as markdown (and written to --out). --smoke runs a tiny version
(5 s clips, 2 clips, probes of a few seconds, ct2 only) to check that the script works; its
numbers mean nothing. --quick keeps the real setting (15 s clips, both engines, batch 8) with
15 s probes, 2 bisection steps at 20% precision and a 3-rate sweep, so it finishes in about 10
minutes on 2 cores; its probes are too short to resolve a p99, so its rates say "unresolved".

The summary also gives what the offline batch latencies allow under the SLO: the compute bound
(no queueing) and a queue model of the server's batcher (Poisson arrivals, the offline L(b) as a
fixed compute time, no server overhead), whose max rates with and without batching need no long
probes to be settled; they model the machine, they do not measure the server. --model-only runs
the offline part and prints only these (a few minutes).

A probe must hold >= 381 requests to *resolve* a 99th-percentile SLO (Wilson 95% CI, see
asrperf.load.slo.requests_to_resolve); shorter probes still bisect on the point estimate but
report "unresolved". At ~3 requests/s of 15 s clips that is ~2 minutes per probe: a full run
takes about (2 anchors + up to --max-probes) x --probe-s per server, plus the sweep.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.config import config_from_dict
from asrperf.load.arrivals import Arrivals, inter_arrival_s
from asrperf.load.generator import Bounds, Target
from asrperf.load.launch import SERVER_NICE, asrperf_serve_argv, server_process
from asrperf.load.record import save_rows
from asrperf.load.search import SWEEP_FRACTIONS
from asrperf.load.session import LoadPlan, execute
from asrperf.load.slo import SloTerm, parse_slo, requests_to_resolve
from asrperf.load.workload import load_workload
from asrperf.measure.wer import error_rates
from asrperf.results.store import Store
from asrperf.run.runner import run as run_cells

MODEL = "whisper-tiny.en"
BATCHING_TARGET = 1.5  # max rate with dynamic batching / with max_batch_size = 1
SATURATION_TARGET = 0.8  # served saturation rate / offline max throughput
QUICK_SWEEP_FRACTIONS = (0.3, 0.7, 1.0)  # --quick: the curve's start, its bend and saturation


def offline(engines: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """`asrperf run` on the same clips: engine -> {"latency": row, "max_throughput": row}."""
    cfg = config_from_dict({
        "run": {"clip_lengths_s": [args.length], "n_clips": args.n_clips, "scenarios": ["latency", "max_throughput"],
                "batch_sizes": [1], "max_batch": args.batch, "store": args.store, "cache_dir": args.cache_dir,
                "energy": False},
        "source": {"kind": "builtin"},
        "timing": {"warmup_calls": 1, "min_calls": 2 if args.smoke or args.quick else 3,
                   "min_time_s": 0.5 if args.smoke or args.quick else 2.0},
        "models": [{"name": MODEL, "engine": e, "dtype": d, "weights": "real"} for e, d in engines],
    }, "benchmarks/serving.py")
    summary = run_cells(cfg, on_cell=lambda cell, state, i, n: print(f"offline {i + 1}/{n} {cell.model.engine} "
                                                                      f"{cell.scenario}: {state}", file=sys.stderr))
    with Store(args.store) as store:
        rows = [r for r in store.rows(summary.run_id) if r["status"] == "ok"]
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["engine"], {})[r["scenario"]] = r
    return out


def served(engine: str, dtype: str, max_batch: int, clips: list, clip_info: dict, args: argparse.Namespace,
           slo_text: str) -> list[dict[str, Any]]:
    """One `asrperf serve` process: the max-rate search, and (batching on) the sweep."""
    argv = asrperf_serve_argv(["-m", MODEL, "-e", engine, "--dtype", dtype, "--weights", "real",
                               "--max-batch-size", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
                               "--max-queue", str(args.max_queue), "--cache-dir", args.cache_dir])
    bounds = Bounds(max_requests=args.requests, duration_s=args.probe_s, timeout_s=args.timeout,
                    warmup_s=args.warmup_s)
    poisson = Arrivals("poisson", rate_rps=1.0)
    context = {**clip_info, "source_kind": "builtin"}  # the run config (save_rows) names the benchmark
    with server_process(argv, startup_timeout_s=900, nice=SERVER_NICE) as server:
        target = Target(server.url, MODEL)

        def progress(row: dict[str, Any]) -> None:
            print(f"  {engine} b{max_batch} {row['probe_role']} {row['arrival']}: achieved "
                  f"{row['achieved_rate_rps'] or 0:.2f} req/s, p99 {row['latency_s_p99'] or float('nan'):.2f} s, "
                  f"{row['n_ok']}/{row['n_requests']} ok, SLO {row['slo_verdict']}", file=sys.stderr)

        rows = execute(LoadPlan("search", poisson, bounds, parse_slo(slo_text), precision=args.precision,
                                max_probes=args.max_probes), target, clips, context, progress)
        saturation = rows[-1]["saturation_rate_rps"]
        if max_batch > 1 and saturation:
            sweep_bounds = Bounds(args.requests, args.sweep_s, args.timeout, args.warmup_s)
            fractions = (0.5, 1.0) if args.smoke else QUICK_SWEEP_FRACTIONS if args.quick else SWEEP_FRACTIONS
            rows += execute(LoadPlan("sweep", poisson, sweep_bounds, parse_slo(slo_text),
                                     sweep_rates_rps=tuple(float(f"{f * saturation:.4g}") for f in fractions)),
                            target, clips, context, progress)
    return rows


def _per_clip(rows: list[dict[str, Any]]) -> dict[int, set[str]]:
    texts: dict[int, set[str]] = {}
    for row in rows:
        for r in row.get("requests", ()):
            if r["outcome"] == "ok":
                texts.setdefault(r["clip_index"], set()).add(r["text"])
    return texts


def _latency_slo_and_probes(mt: dict[str, Any], slo_text: str) -> tuple[SloTerm | None, list[dict[str, Any]]]:
    """The SLO's tightest end-to-end latency term (None without one) and the max-throughput search's
    measured batch sizes."""
    terms = [t for t in parse_slo(slo_text).latency_terms if t.metric == "latency_s"]
    probes = [p for p in mt.get("max_throughput_probes") or () if p.get("status") == "ok" and p.get("latency_s_p50")]
    return min(terms, key=lambda t: t.bound, default=None), probes


def slo_bound(mt: dict[str, Any], slo_text: str, rate_b1: float | None) -> list[str]:
    """What compute alone allows: a request's latency is at least its batch's compute time, so a server
    meeting a latency SLO of S seconds can at best run batches b whose offline latency L(b) <= S, and
    serve at most max b / L(b) over them (no queueing, no waiting for a batch to fill: an upper bound).
    Offline L(b) comes from the max-throughput search of the same run, on the same clips."""
    term, probes = _latency_slo_and_probes(mt, slo_text)
    if term is None or not probes:
        return []
    bound_s = term.bound
    fits = [(p["batch_size"] / p["latency_s_p50"], p["batch_size"], p["latency_s_p50"]) for p in probes
            if p["latency_s_p50"] <= bound_s]
    curve = ", ".join(f"b{p['batch_size']} {p['latency_s_p50']:.2f} s" for p in probes)
    if not fits:
        return [f"- compute bound: no batch size runs within {bound_s:g} s offline ({curve})"]
    top, b, lat = max(fits)
    line = (f"- compute bound under the SLO: offline batch latency p50 {curve}; the largest batch within "
            f"{bound_s:g} s allows at most **{top:.3g} req/s** (batch {b}, {lat:.2f} s)")
    if rate_b1:
        line += (f" = {top / rate_b1:.2f}x the measured max rate with max_batch_size 1, before any queueing "
                 f"(so a batching gain above {top / rate_b1:.2f}x cannot be reached on this machine)")
    return [line]


def batch_latency(probes: list[dict[str, Any]]) -> Callable[[int], float]:
    """L(b), the offline latency of a batch of b, from the max-throughput probes: measured sizes as
    measured, sizes between them linearly interpolated, sizes past the largest scaled per clip."""
    points = sorted((p["batch_size"], p["latency_s_p50"]) for p in probes)
    sizes = [b for b, _ in points]

    def latency(b: int) -> float:
        if b <= sizes[0]:
            return points[0][1]
        if b >= sizes[-1]:
            return points[-1][1] * b / sizes[-1]
        i = bisect.bisect_left(sizes, b)
        (b0, l0), (b1, l1) = points[i - 1], points[i]
        return l0 + (l1 - l0) * (b - b0) / (b1 - b0)

    return latency


def queue_latencies(arrivals: list[float], latency: Callable[[int], float], max_batch: int,
                    max_wait_s: float) -> list[float]:
    """Each request's latency at the server's batcher (serve/batcher.py) as a queue: one worker takes
    the oldest waiting request and waits up to `max_wait_s` after its arrival for more (at most
    `max_batch`; once the worker is free it takes what is waiting), then computes for `latency(b)`."""
    out: list[float] = []
    free, i, n = 0.0, 0, len(arrivals)
    while i < n:
        close = max(free, arrivals[i] + max_wait_s)  # the batch's deadline, or when the worker is free
        j = i + 1
        while j < n and j - i < max_batch and arrivals[j] <= close:
            j += 1
        if j - i == max_batch:  # full before the deadline: it goes as soon as the worker is free
            close = max(free, arrivals[j - 1])
        done = close + latency(j - i)
        out += [done - a for a in arrivals[i:j]]
        free, i = done, j
    return out


def simulated_latencies(rate: float, latency: Callable[[int], float], max_batch: int, max_wait_s: float,
                        n: int = 20_000, seed: int = 0) -> list[float]:
    """queue_latencies of `n` Poisson arrivals at `rate`, less the first 10% (the queue's start-up).
    No server overhead and no variance in the compute: what this machine's batch latencies allow,
    not a measurement of the server."""
    arrivals = np.cumsum(inter_arrival_s(Arrivals("poisson", rate), n, np.random.default_rng(seed))).tolist()
    return queue_latencies(arrivals, latency, max_batch, max_wait_s)[n // 10:]


def simulated_max_rate(latency: Callable[[int], float], max_batch: int, max_wait_s: float, term: SloTerm,
                       precision: float = 0.01) -> float:
    """The highest Poisson rate at which the simulated requests meet `term` (bisection): a share
    `term.required` of them within `term.bound` seconds, as the load search judges a probe."""
    def meets(rate: float) -> bool:
        lat = simulated_latencies(rate, latency, max_batch, max_wait_s)
        return sum(x <= term.bound for x in lat) >= term.required * len(lat)

    if latency(1) + max_wait_s > term.bound:  # even a request that never queues misses it
        return 0.0
    lo, hi = 0.0, max(b / latency(b) for b in range(1, max_batch + 1))  # no rate past the best throughput
    while hi - lo > precision * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def batching_model(mt: dict[str, Any], slo_text: str, max_batch: int, max_wait_s: float) -> list[str]:
    """The batching gain this machine's offline batch latencies allow under a pNN latency SLO: the
    simulated max Poisson rate of the batcher at max_batch against max_batch_size 1 (serve/batcher.py's
    policy, no server overhead). It needs no long probes, so it settles what a short served run cannot."""
    term, probes = _latency_slo_and_probes(mt, slo_text)
    if term is None or not probes:
        return []
    latency = batch_latency(probes)
    one = simulated_max_rate(latency, 1, 0.0, term)
    if not one:
        return [f"- queue model with these offline batch latencies: no rate meets {slo_text} (a batch of 1 "
                f"takes {latency(1):.2f} s), with or without batching"]
    batched = simulated_max_rate(latency, max_batch, max_wait_s, term)
    return [f"- queue model with these offline batch latencies (Poisson, this batcher, no server overhead): max "
            f"rate under {slo_text} {one:.3g} req/s with max_batch_size 1, {batched:.3g} req/s with {max_batch} "
            f"(max_wait_ms {1000 * max_wait_s:g}): **{batched / one:.2f}x** (target >= {BATCHING_TARGET}x)"]


def summarise(engine: str, dtype: str, off: dict[str, Any], by_batch: dict[int, list[dict[str, Any]]],
              clips: list, slo_text: str, max_wait_s: float) -> list[str]:
    """Markdown lines for one engine: the targets and the curve."""
    lat, mt = off.get("latency", {}), off.get("max_throughput", {})
    # the search's result row (the sweep, when there is one, adds its own after it)
    result = {b: next(r for r in rows if "max_sustainable_rate_rps" in r) for b, rows in by_batch.items()}
    lines = [f"### {MODEL}, {engine} {dtype}", "",
             "| max_batch_size | max sustainable Poisson rate req/s (bracket) | resolved | sync req/s | saturation req/s |"
             " batch sizes formed (requests per size) |", "|---|---|---|---|---|---|"]
    for b, rows in by_batch.items():
        r = result[b]
        formed: dict[str, int] = {}
        for p in rows:
            for k, v in (p.get("batch_size_counts") or {}).items():
                formed[k] = formed.get(k, 0) + v
        top = r["max_sustainable_rate_rps"]
        lines.append(f"| {b} | {'-' if top is None else f'{top:.3g}'} ({r['upper_rate_rps'] or 0:.3g}) | "
                     f"{r['resolved']} ({r['search_status']}) | {r['sync_rate_rps'] or 0:.3g} | "
                     f"{r['saturation_rate_rps'] or 0:.3g} | {json.dumps(dict(sorted(formed.items(), key=lambda kv: int(kv[0]))))} |")
    rates = {b: result[b]["max_sustainable_rate_rps"] for b in by_batch}
    batched = max(by_batch)
    if rates.get(1) and rates.get(batched):
        ratio = rates[batched] / rates[1]
        lines.append(f"\n- dynamic batching (max {batched}) / max_batch_size 1: **{ratio:.2f}x** "
                     f"(target >= {BATCHING_TARGET}x: {'met' if ratio >= BATCHING_TARGET else 'NOT met'})")
    sat, offline_max = result[batched]["saturation_rate_rps"], mt.get("max_throughput_samples_per_s")
    if sat and offline_max:
        share = sat / offline_max
        lines.append(f"- served saturation {sat:.3g} req/s / offline max throughput {offline_max:.3g} samples/s "
                     f"(batch {mt.get('max_throughput_batch_size')}): **{share:.0%}** (target >= "
                     f"{SATURATION_TARGET:.0%}: {'met' if share >= SATURATION_TARGET else 'NOT met'})")
    lines += slo_bound(mt, slo_text, rates.get(1))
    lines += batching_model(mt, slo_text, batched, max_wait_s)
    all_rows = [r for rows in by_batch.values() for r in rows]
    texts = _per_clip(all_rows)
    offline_hyp = {t["clip"]: t["hyp"] for t in lat.get("transcripts", [])}
    if texts and offline_hyp:
        same = sum(texts[i] == {offline_hyp.get(clips[i].id)} for i in texts)
        first = {i: sorted(t)[0] for i, t in texts.items()}
        load_wer = error_rates([clips[i].reference for i in first], [first[i] for i in first]).wer
        lines.append(f"- WER under load {100 * load_wer:.2f}% vs offline {100 * lat['wer']:.2f}% (batch 1); "
                     f"{same}/{len(texts)} clips answered with exactly the offline transcript in every probe")
    sweep = [r for r in by_batch[batched] if r.get("probe_role") == "sweep"]
    if sweep:
        knee = next((r["knee_rate_rps"] for r in by_batch[batched] if r.get("knee_rate_rps") is not None), None)
        lines += ["", f"Latency vs offered load (max_batch_size {batched}; knee: "
                      f"{'-' if knee is None else f'{knee:.3g} req/s'}):", "",
                  "| offered req/s | achieved req/s | p50 s | p90 s | p99 s | queue p50 s | compute p50 s | batch mean | 429 | SLO |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sweep:
            f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
            lines.append(f"| {f(r['offered_rate_rps'])} | {f(r['achieved_rate_rps'])} | {f(r['latency_s_p50'])} | "
                         f"{f(r['latency_s_p90'])} | {f(r['latency_s_p99'])} | {f(r['queue_s_p50'])} | "
                         f"{f(r['compute_s_p50'])} | {f(r['batch_size_mean'])} | {r['n_rejected']} | {r['slo_verdict']} |")
    for loop, label in ((True, "open-loop probes (Poisson: the search, the sweep)"),
                        (False, "closed-loop probes (each client sends when its answer is in)")):
        late = [r["lateness_s_p99"] for r in all_rows if r.get("lateness_s_p99") is not None
                and bool(r.get("open_loop")) == loop]
        if late:
            lines.append(f"\n- generator lateness p99, worst of {len(late)} {label}: {1000 * max(late):.2f} ms "
                         "(target <= 2 ms)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="ct2:int8,transformers:fp32", help="engine:dtype, comma-separated")
    ap.add_argument("--batch", type=int, default=16, help="max_batch_size of the batching server (and max_batch offline)")
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--slo", default="p99<=2s")
    ap.add_argument("--length", type=float, default=15.0)
    ap.add_argument("--n-clips", type=int, default=8)
    ap.add_argument("--probe-s", type=float, default=120.0, help="seconds of sending per search probe")
    ap.add_argument("--sweep-s", type=float, default=60.0, help="seconds of sending per sweep probe")
    ap.add_argument("--requests", type=int, default=400, help="most requests per probe")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--precision", type=float, default=0.05)
    ap.add_argument("--max-probes", type=int, default=6)
    ap.add_argument("--store", default="asrperf-results/serving.sqlite")
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--out", default="", help="also write the markdown summary here")
    ap.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works (numbers meaningless)")
    ap.add_argument("--model-only", action="store_true", help="the offline part and what it allows (compute bound, "
                                                               "queue model), no server")
    ap.add_argument("--quick", action="store_true", help="~10 min on 2 cores: short probes, few bisection steps "
                                                          "(rates marked unresolved where the CI straddles)")
    args = ap.parse_args()
    if args.quick and args.smoke:
        ap.error("give one of --quick, --smoke")
    if args.quick:
        args.batch, args.n_clips, args.probe_s, args.sweep_s = 8, 4, 15.0, 10.0
        args.requests, args.warmup_s, args.max_probes, args.precision, args.timeout = 200, 2.0, 2, 0.2, 30.0
    if args.smoke:
        tmp = tempfile.mkdtemp(prefix="asrperf-serving-smoke-")
        args.engines, args.batch, args.length, args.n_clips = "ct2:int8", 2, 5.0, 2
        args.probe_s, args.sweep_s, args.requests, args.warmup_s, args.max_probes = 3.0, 2.0, 12, 0.0, 2
        args.slo, args.store = "p99<=30s", str(Path(tmp) / "serving.sqlite")
    engines = [tuple(e.split(":", 1)) for e in args.engines.split(",")]
    print(f"a probe needs >= {requests_to_resolve(parse_slo(args.slo).terms[0].required)} requests to resolve "
          f"'{args.slo}'; probes here hold at most {args.requests}", file=sys.stderr)
    off = offline(engines, args)
    if args.model_only:
        for engine, dtype in engines:
            mt = off.get(engine, {}).get("max_throughput", {})
            print("\n".join([f"### {MODEL}, {engine} {dtype}, offline only"] + slo_bound(mt, args.slo, None)
                             + batching_model(mt, args.slo, args.batch, args.max_wait_ms / 1000)))
        return
    clips, clip_info = load_workload({"kind": "builtin"}, args.cache_dir, args.length, args.n_clips)
    lines = [f"## Serving: {MODEL}, {args.length:g} s clips, SLO {args.slo}, Poisson arrivals"
             + (" (--quick: probes too short to resolve the SLO; rates are point estimates)" if args.quick else ""), ""]
    for engine, dtype in engines:
        by_batch = {b: served(engine, dtype, b, clips, clip_info, args, args.slo) for b in (1, args.batch)}
        for b, rows in by_batch.items():
            save_rows(args.store, {"benchmark": "serving", "engine": engine, "dtype": dtype, "max_batch_size": b,
                                   "slo": args.slo, "length_s": args.length}, rows)
        lines += summarise(engine, dtype, off.get(engine, {}), by_batch, clips, args.slo, args.max_wait_ms / 1000) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
