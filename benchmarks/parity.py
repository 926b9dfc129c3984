"""Same cells, two asrperf source trees, alternating fresh runs: do the figures agree within noise?

Used to check that a refactor changed no measurement (benchmarks/README.md, "One shape for every
part"). Each round runs the same small config once with each tree, in alternating order, each into
a fresh store; the table gives every cell's p50 per tree (median over rounds), the ratio, and
whether the WER and the transcripts are identical.

    git worktree add /tmp/asrperf-before <commit>      # the tree to compare against
    python benchmarks/parity.py --before /tmp/asrperf-before/src [--rounds 2]

Run it on a quiet machine (`asrperf doctor`): both trees are timed side by side, so a busy
machine moves both, but not by the same amount.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"
CONFIG = """
[run]
clip_lengths_s = [15]
n_clips = 2
energy = false
store = "{store}"
cache_dir = "{cache}"
[source]
kind = "builtin"
n_sentences = 30
[timing]
min_calls = 5
min_time_s = 1.0
[[models]]
name = "whisper-tiny.en"
weights = "real"
[[models]]
name = "whisper-tiny.en"
engine = "ct2"
dtype = "int8"
weights = "real"
[[models]]
name = "wav2vec2-base"
weights = "random"
"""


def run_tree(src: Path, work: Path, tag: str, cache: Path) -> dict[str, dict]:
    """One fresh run of CONFIG with the asrperf in `src`; cell key -> its row (read without asrperf)."""
    store = work / f"{tag}.sqlite"
    cfg = work / f"{tag}.toml"
    cfg.write_text(CONFIG.format(store=store, cache=cache))
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run([sys.executable, "-m", "asrperf", "run", str(cfg)], env=env, capture_output=True, text=True)
    if res.returncode not in (0, 3):
        raise SystemExit(f"{tag}: asrperf run failed ({res.returncode}): {res.stderr[-400:]}")
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    return {k: json.loads(r) for k, r in db.execute("SELECT cell_key, row_json FROM cells WHERE status='ok'")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="src/ folder of the tree to compare against")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": HERE}
    p50: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    texts: dict[str, dict[str, list]] = {t: {} for t in trees}
    with tempfile.TemporaryDirectory(prefix="asrperf-parity-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for tag in order:
                for key, row in run_tree(trees[tag], work, f"{tag}-{r}", cache).items():
                    p50[tag].setdefault(key, []).append(row["latency_s_p50"])
                    texts[tag][key] = ([t["hyp"] for t in row.get("transcripts") or []], row.get("wer"))
    print(f"{'cell':<72} {'before ms':>10} {'after ms':>10} {'after/before':>12}  same WER and text")
    for key in sorted(p50["before"]):
        b, a = statistics.median(p50["before"][key]), statistics.median(p50["after"].get(key, [float("nan")]))
        same = texts["before"][key] == texts["after"].get(key)
        print(f"{key:<72} {1000 * b:>10,.1f} {1000 * a:>10,.1f} {a / b:>12.3f}  {same}")
        spread = [x / y for x, y in zip(p50["after"].get(key, []), p50["before"][key])]
        print(f"{'':<72} per-round ratios: {', '.join(f'{x:.3f}' for x in spread)}")


if __name__ == "__main__":
    main()
