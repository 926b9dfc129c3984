"""Dataset evaluation RTFx: the 120-sentence built-in corpus with whisper tiny.en, locally and on Ray.

    python benchmarks/dataset_eval.py [--engine ct2] [--dtype int8] [--batch 8] [--threads 0]
                                      [--actors 2] [--repeats 2] [--store PATH] [--out FILE] [--smoke]

Each configuration is one `asrperf eval` (run/evaluate.py), so the figures are what the command
stores: RTFx = sum of audio s / sum of per-batch transcription s (Open ASR Leaderboard), and wall
RTFx = sum of audio s / the wall time of the transcription (on Ray: the whole map_batches job, actor
start and model loads included). Configurations, alternated `--repeats` times so a drift in the
machine hits both alike:
  - local: one process, `--threads` threads (0: all cores);
  - ray: a local Ray cluster started by the script with `--actors` actors sharing the cores
    (each asks for cores // actors CPUs and runs that many engine threads).
WER must agree between them (the same batches, the same transcripts); the script checks it. A
repeat is a new evaluation: the store gets a fresh file per repeat. The summary is printed as
markdown (and written to --out). --smoke: 8 sentences, one repeat, 2 actors; numbers mean nothing.
Run it on a quiet machine (`asrperf doctor` shows readiness).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from asrperf.config import ModelConfig
from asrperf.run.evaluate import EvalConfig, evaluate


def one(args: argparse.Namespace, ray: bool, store: Path, n_sentences: int) -> dict[str, Any]:
    cfg = EvalConfig(
        model=ModelConfig(name="whisper-tiny.en", engine=args.engine, weights="real", dtype=args.dtype),
        source={"kind": "builtin", "n_sentences": n_sentences}, threads=args.threads, batch_size=args.batch,
        ray=ray, actors=args.actors if ray else 1, store=str(store), cache_dir=args.cache_dir,
    ).validate()
    return evaluate(cfg).row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="ct2")
    p.add_argument("--dtype", default="int8")
    p.add_argument("--batch", type=int, default=8, help="utterances per call (0: the auto search)")
    p.add_argument("--threads", type=int, default=0, help="local engine threads (0: all cores)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cache-dir", default=".asrperf-cache")
    p.add_argument("--store", type=Path, default=None, help="folder for the stores (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="a tiny run that checks the script works (numbers mean nothing)")
    args = p.parse_args(argv)
    n_sentences, repeats = (8, 1) if args.smoke else (120, args.repeats)
    folder = args.store or Path(tempfile.mkdtemp(prefix="asrperf-dataset-eval-"))
    results: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    for r in range(repeats):
        for name in ("local", "ray"):
            results[name].append(one(args, name == "ray", folder / f"{name}-{r}.sqlite", n_sentences))
    wers = {row["wer"] for rows in results.values() for row in rows}
    lines = [f"# Dataset evaluation: built-in corpus ({n_sentences} sentences), whisper tiny.en "
             f"{args.engine} {args.dtype}, batch {args.batch or 'auto'}" + (" (SMOKE: numbers mean nothing)" if args.smoke else ""),
             "", "| executor | threads | repeats | RTFx (median) | RTFx (each) | wall RTFx (median) | WER |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        label = f"ray, {args.actors} actors" if name == "ray" else "local, one process"
        lines.append(f"| {label} | {rows[0]['threads']} | {len(rows)} | "
                     f"{statistics.median(x['dataset_rtfx'] for x in rows):.1f} | "
                     f"{', '.join(format(x['dataset_rtfx'], '.1f') for x in rows)} | "
                     f"{statistics.median(x['wall_rtfx'] for x in rows):.1f} | {100 * rows[0]['wer']:.2f}% |")
    lines += ["", f"- device: {results['local'][0].get('device_name') or 'cpu'}; RTFx = "
                  f"{results['local'][0]['dataset_rtfx_method']}",
              f"- WER identical across executors and repeats: {len(wers) == 1}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if len(wers) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
