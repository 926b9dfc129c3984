"""The busy-machine guard and safe concurrent runs, end to end through the CLI (benchmarks/README.md).

1. The same cell measured twice: once after `--wait-quiet`, once beside CPU hogs (one spinning
   process per usable core, started and stopped here). Prints both rows and the figures that decided
   the `contended` flag.
2. Two runs on one store, started 2 s apart (the issue's reproduction): the second run's cell worker
   is killed with SIGKILL while it measures, then the second runner itself is killed mid-cell.
   Prints what the store holds: ok / failed rows, samples per cell, claims left, and what a re-run
   (with --retry-failed) then measures.

    python benchmarks/contention.py [--model whisper-tiny.en] [--length 30] [--out DIR]

Run it on a machine nobody else uses while it runs (`asrperf doctor` shows the load): the quiet
row is only quiet if the machine is.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ASRPERF = [sys.executable, "-m", "asrperf"]


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kw)


def rows(store: Path) -> list[dict]:
    from asrperf.results.store import Store

    with Store.open_readonly(store) as s:
        return s.rows()


def spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


FIGURES = [("latency p50 ms", lambda r: f"{1000 * r['latency_s_p50']:,.1f}"),
           ("contended", lambda r: str(r.get("contended"))),
           ("reasons", lambda r: ", ".join(r.get("contention_reasons") or []) or "-"),
           ("others' cores (of allowed CPUs)", lambda r: f"{r['contention_others_cores']:.2f} of {r['contention_cpus']}"),
           ("others' share of the cell's cores (limit)",
            lambda r: f"{r['contention_others_share']:.2f} ({r['contention_max_others_share']:.2f})"),
           ("CPU it got of what it wanted (limit)",
            lambda r: f"{r['contention_own_got_share']:.2f} ({r['contention_min_got_share']:.2f})"),
           ("own CPU / (wall x threads)", lambda r: f"{r['contention_own_cpu_share']:.2f}"),
           ("steal s", lambda r: f"{r['contention_steal_s']:.2f}"),
           ("run queue (max of 2 readings)", lambda r: str(r.get("contention_runqueue_max"))),
           ("timed window s", lambda r: f"{r['contention_wall_s']:.1f}")]


def guard_demo(out: Path, model: str, length: float, n_clips: int, threads: int, wait_quiet_s: float) -> None:
    cell = ["-m", model, "--lengths", f"{length:g}", "--n-clips", str(n_clips), "--threads", str(threads),
            "--batch", "1", "--cache-dir", str(out / "cache")]
    quiet_store, hog_store = out / "quiet.sqlite", out / "hog.sqlite"
    done = sh(ASRPERF + ["run", *cell, "--store", str(quiet_store), "--wait-quiet", f"{wait_quiet_s:g}"])
    if done.returncode not in (0, 3):
        sys.exit(f"quiet run failed:\n{done.stderr}")
    hogs = spinners(len(os.sched_getaffinity(0)))
    try:
        done = sh(ASRPERF + ["run", *cell, "--store", str(hog_store)])
    finally:
        stop(hogs)
    if done.returncode not in (0, 3):
        sys.exit(f"hog run failed:\n{done.stderr}")
    (quiet,), (hog,) = rows(quiet_store), rows(hog_store)
    print(f"## one cell quiet and beside {len(hogs)} CPU hog(s): {model}, {length:g} s, batch 1, {threads} thread(s)\n")
    print("| figure | quiet | beside the hogs |\n|---|---|---|")
    for name, fmt in FIGURES:
        print(f"| {name} | {fmt(quiet)} | {fmt(hog)} |")
    print(f"\nmethod: {hog['contention_method']}\n")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _count(store: Path, sql: str) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def _summary(stderr: str) -> str:
    """"N cell(s) measured, N already done, N failed" from a run's stderr."""
    found = re.search(r"run \w+: (\d+ cell\(s\) measured, \d+ already done, \d+ failed)", " ".join(stderr.split()))
    return found.group(1) if found else "no summary (the run ended early)"


def _wait_for(predicate, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    sys.exit("timed out waiting for the runs")


def concurrency_demo(out: Path) -> None:
    store = out / "shared.sqlite"
    cmd = ASRPERF + ["run", "-m", "wav2vec2-base", "--weights", "random", "--lengths", "3,4,5,6", "--n-clips", "1",
                     "--store", str(store), "--cache-dir", str(out / "cache")]
    assert sh(ASRPERF + ["prepare", "--lengths", "3,4,5,6", "--n-clips", "1", "--cache-dir", str(out / "cache")]).returncode == 0
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(2)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def claimed_by(pid: int) -> bool:
        return store.is_file() and _count(store, f"SELECT count(*) FROM claims WHERE pid={pid}") > 0

    # the reproduction: once the first run has committed, kill the second run's cell worker
    _wait_for(lambda: store.is_file() and _count(store, "SELECT count(*) FROM cells WHERE status='ok'") >= 1
              and claimed_by(second.pid))
    workers = [c for server in _children(second.pid) for c in _children(server)]
    for w in workers:
        os.kill(w, signal.SIGKILL)
    # the second runner commits that cell as failed (the first run's ok rows stay), claims the next
    # one, and is then killed itself, mid-cell
    _wait_for(lambda: _count(store, "SELECT count(*) FROM cells WHERE status='failed'") >= 1 or second.poll() is not None)
    _wait_for(lambda: claimed_by(second.pid) or second.poll() is not None)
    if second.poll() is None:
        os.killpg(second.pid, signal.SIGKILL)
    second.communicate()
    _, first_err = first.communicate()
    ok = _count(store, "SELECT count(*) FROM cells WHERE status='ok'")
    failed = _count(store, "SELECT count(*) FROM cells WHERE status='failed'")
    with_samples = _count(store, "SELECT count(DISTINCT cell_key) FROM samples WHERE phase='timed'")
    print("## two runs on one store, 4 cells, started 2 s apart\n")
    print(f"- second run: {len(workers)} cell worker(s) killed with SIGKILL while measuring, then the runner "
          "itself killed with SIGKILL")
    print(f"- first run's summary: {_summary(first_err)} "
          f"(exit {first.returncode}: 3 when it skipped a cell stored as failed)")
    print(f"- stale claims taken over by the first run: {' '.join(first_err.split()).count('taking over a stale claim')}")
    print(f"- store: {ok} ok row(s), {failed} failed, {with_samples} cell(s) with timed samples, "
          f"{_count(store, 'SELECT count(*) FROM claims')} claim(s) left")
    again = sh(cmd + ["--retry-failed"])
    print(f"- re-run with --retry-failed: {_summary(again.stderr)} (exit {again.returncode})")
    print(f"- store after it: {_count(store, 'SELECT count(*) FROM cells WHERE status=' + chr(39) + 'ok' + chr(39))} ok row(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--length", type=float, default=30.0)
    ap.add_argument("--n-clips", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of the cell (0: all usable cores)")
    ap.add_argument("--wait-quiet", type=float, default=300.0, help="bound of the quiet run's wait, seconds")
    ap.add_argument("--out", type=Path, default=Path("asrperf-results/contention"))
    ap.add_argument("--skip-guard", action="store_true")
    ap.add_argument("--skip-concurrency", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.sqlite*"):
        old.unlink()
    print("machine readiness" + sh(ASRPERF + ["doctor"]).stdout.split("machine readiness", 1)[-1])
    if not args.skip_guard:
        guard_demo(args.out, args.model, args.length, args.n_clips, args.threads or len(os.sched_getaffinity(0)),
                   args.wait_quiet)
    if not args.skip_concurrency:
        concurrency_demo(args.out)


if __name__ == "__main__":
    main()
