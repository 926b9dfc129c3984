"""The ray executor's costs: scheduling overhead per cell, and scaling over a simulated cluster.

    PYTHONPATH=src python benchmarks/ray_executor.py [--rounds 5] [--cells 16] [--cell-s 10] [--smoke]

(a) Overhead on a local Ray (started once here, on this machine). The same default cell
    (whisper-tiny.en, real weights, 5 s clip, batch 1, default timing) is run by the local executor
    and by the ray executor, alternating which goes first in each round. A cell's wall time is
    from its submission to its row being committed (the runner's "running"/"queued" and "ok"
    notifications), so run()'s fixed costs (clips, environment, store) do not count.
    overhead = ray wall - local wall, paired by round; its share is of the cell's local wall time
    (target <= 2%). The latency p50 of the two is compared on the raw timed calls of every round
    (ratio of medians with a bootstrap CI; "agrees within noise" when the CI holds 1).
(b) Scaling on a simulated 4-node cluster (ray.cluster_utils.Cluster, 1 CPU per node, zero-CPU
    head): `--cells` stub cells (tests/ray_stub.py) that each keep calling for `--cell-s` seconds.
    Serial = the same sweep through the local executor; target: ray wall <= serial / 3.6. The Ray
    sweep runs twice on the same cluster: with cold workers (each one's first cell starts its fork
    server) and again with warm ones.

Prints markdown tables; numbers from a loaded machine are not results (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # the stub engine (b); Ray workers get it through PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)

import ray
import ray_stub

from asrperf.config import RunConfig, config_from_dict
from asrperf.measure.paired import ratio_of_medians_ci
from asrperf.results.store import Store
from asrperf.run.runner import prepare, run


def timed_cells(cfg: RunConfig) -> dict[str, float]:
    """Run `cfg`; cell key -> seconds from its submission to its committed ok row."""
    began: dict[str, float] = {}
    walls: dict[str, float] = {}

    def on_cell(cell, state: str, i: int, n: int) -> None:
        if state in ("running", "queued"):
            began[cell.key] = time.perf_counter()
        elif state == "ok":
            walls[cell.key] = time.perf_counter() - began[cell.key]
        elif state.startswith("failed"):
            raise SystemExit(f"{cell.key}: {state}")

    run(cfg, on_cell=on_cell)
    return walls


def overhead(args: argparse.Namespace, tmp: Path) -> None:
    base = config_from_dict({
        "models": [{"name": "whisper-tiny.en", "weights": "real"}], "source": {"kind": "builtin"},
        **({"timing": {"warmup_calls": 1, "min_calls": 2, "min_time_s": 0.0}} if args.smoke else {}),
        "run": {"clip_lengths_s": [5.0], "n_clips": 1 if args.smoke else 3, "cache_dir": args.cache_dir,
                "energy": False},
    })
    prepare(base)
    ray.init(address="local", log_to_driver=False, logging_level="ERROR", include_dashboard=False)  # once, not per cell
    rows, samples = {"local": [], "ray": []}, {"local": [], "ray": []}
    print("\n(a) one default cell, local executor vs ray executor on a local Ray\n")
    print("| round | first | local wall s | ray wall s | overhead s | overhead % | local p50 ms | ray p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.rounds):
        order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
        wall, p50 = {}, {}
        for ex in order:
            cfg = dataclasses.replace(base, executor=ex, store=str(tmp / f"a-{r}-{ex}.sqlite"))
            (wall[ex],) = timed_cells(cfg).values()
            with Store(cfg.store) as s:
                (row,) = s.rows()
                samples[ex] += s.samples(row["run_id"], row["cell_key"])
            p50[ex] = row["latency_s_p50"]
            rows[ex].append(wall[ex])
        extra = wall["ray"] - wall["local"]
        print(f"| {r + 1} | {order[0]} | {wall['local']:.2f} | {wall['ray']:.2f} | {extra:+.3f} | "
              f"{100 * extra / wall['local']:+.1f} | {1e3 * p50['local']:.1f} | {1e3 * p50['ray']:.1f} |")
    ray.shutdown()
    diffs = [b - a for a, b in zip(rows["local"], rows["ray"])]
    share = statistics.median(diffs) / statistics.median(rows["local"])
    ci = ratio_of_medians_ci(samples["local"], samples["ray"])
    print(f"\noverhead per cell: median {statistics.median(diffs):+.3f} s = {100 * share:+.2f}% of the cell's local "
          f"wall time (target <= 2%); {args.rounds} paired rounds")
    print(f"latency p50 ray / local: {ci.ratio:.3f} [95% CI {ci.ci_low:.3f}-{ci.ci_high:.3f}] over {ci.n_a} + {ci.n_b} "
          f"timed calls: {'agrees within noise' if ci.ci_low <= 1 <= ci.ci_high else 'differs'}")


def scaling(args: argparse.Namespace, tmp: Path) -> None:
    from ray.cluster_utils import Cluster

    nodes = 4
    cfg = config_from_dict({
        "models": [{"name": "whisper-tiny.en", "engine": "toy_sleep"}], "source": {"kind": "builtin", "n_sentences": 30},
        "timing": {"warmup_calls": 0, "min_calls": 1, "min_time_s": args.cell_s, "max_calls": 10**6,
                   "max_time_s": args.cell_s},
        # cells = lengths x batches: 3, 4, 4.5, 5 s clips (>= 90% speech from 30 sentences) x batches 1..k
        "run": {"clip_lengths_s": [3, 4, 4.5, 5], "batch_sizes": list(range(1, max(1, args.cells // 4) + 1)),
                "n_clips": 1, "threads": [1], "energy": False, "cache_dir": args.cache_dir},
    })
    prepare(cfg)
    t = time.perf_counter()
    serial = timed_cells(dataclasses.replace(cfg, store=str(tmp / "b-serial.sqlite")))
    serial_wall = time.perf_counter() - t
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    sweeps: list[tuple[str, float, dict[str, float]]] = []
    try:  # twice on the same cluster: cold (each worker's first cell starts its fork server), then warm
        for label in ("cold workers", "warm workers"):
            t = time.perf_counter()
            spread = timed_cells(dataclasses.replace(cfg, executor="ray", ray_address=cluster.address,
                                                     store=str(tmp / f"b-ray-{len(sweeps)}.sqlite")))
            sweeps.append((label, time.perf_counter() - t, spread))
    finally:
        ray.shutdown()
        cluster.shutdown()
    n = len(serial)
    assert all(len(spread) == n for _, _, spread in sweeps)
    print(f"\n(b) {n} stub cells of {args.cell_s:g} s timed calls each, {nodes} simulated nodes x 1 CPU\n")
    print("| executor | wall s | per cell s (median) | wall / serial | scaling efficiency | target (<= serial / 3.6) |")
    print("|---|---|---|---|---|---|")
    print(f"| local (serial) | {serial_wall:.1f} | {statistics.median(serial.values()):.2f} | 1 | - | - |")
    for label, ray_wall, spread in sweeps:
        print(f"| ray, {nodes} nodes, {label} | {ray_wall:.1f} | {statistics.median(spread.values()):.2f} | "
              f"1/{serial_wall / ray_wall:.2f} | {100 * serial_wall / (nodes * ray_wall):.0f}% | "
              f"{'met' if ray_wall <= serial_wall / 3.6 else 'not met'} |")
    print("\ncold: the sweep includes each worker's first fork-server start (importing torch), all at once "
          "on this machine's cores; warm: the same sweep again on the same workers, as every cell after a "
          "worker's first one runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="(a) paired rounds")
    ap.add_argument("--cells", type=int, default=16, help="(b) stub cells in the sweep (a multiple of 4)")
    # each Ray worker's first cell starts its fork server (imports torch): 10 s cells, like default real cells, keep
    # that start-up from dominating, as it does for sub-second cells
    ap.add_argument("--cell-s", type=float, default=10.0, help="(b) seconds of timed calls per stub cell")
    ap.add_argument("--cache-dir", default=".asrperf-cache")
    ap.add_argument("--only", choices=("overhead", "scaling"), default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.cells, args.cell_s = 2, 8, 0.5
    with tempfile.TemporaryDirectory(prefix="asrperf-ray-bench-") as tmp:
        if args.only in (None, "overhead"):
            overhead(args, Path(tmp))
        if args.only in (None, "scaling"):
            scaling(args, Path(tmp))
    if args.smoke:
        print("\n(smoke run: sizes too small to mean anything; not a measurement)")


if __name__ == "__main__":
    main()
