"""Two runs on one store: cells claimed atomically, stale claims taken over, ok rows never replaced."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asrperf.results.claims import BUSY, CLAIMED, DONE_FAILED, DONE_OK, Claim, Owner, claim, claims, host_id, release
from asrperf.results.store import Store

HERE = host_id()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# (the stored claim: pid, host, heartbeat age s) -> stale reason (a prefix), or None: live
STALENESS = [
    (("me", HERE, 1.0), None),
    (("me", HERE, 61.0), "its heartbeat is 61 s old"),
    (("dead", HERE, 1.0), "its runner (pid"),
    (("dead", "other-host pid:[1]", 1.0), None),  # a pid elsewhere cannot be checked: the heartbeat decides
    (("dead", "other-host pid:[1]", 120.0), "its heartbeat is 120 s old"),
]


@pytest.mark.parametrize("stored, reason", STALENESS)
def test_live_and_stale_claims(stored, reason):
    pid, host, age = stored
    pid = os.getpid() if pid == "me" else dead_pid()
    c = Claim(pid, host, "t", 0.0, 1000.0 - age)
    got = c.stale_reason(1000.0, HERE)
    assert (got is None) if reason is None else got.startswith(reason), got


def test_claims_serialize_runs_and_a_stale_claim_is_taken_over(tmp_path):
    path = tmp_path / "s.sqlite"
    a, b = Owner.here(), Owner(os.getpid(), HERE, "other-run")
    with Store(path) as s:
        s.begin_run("r", {}, {})
        assert claim(s, "r", "k1", a).state == CLAIMED
        assert claim(s, "r", "k1", a).state == CLAIMED  # its own claim: refreshed
        busy = claim(s, "r", "k1", b)
        assert busy.state == BUSY and busy.holder.token == a.token
        # a commits: the claim goes in the same transaction, the cell is done for everyone
        assert s.commit_cell("r", "k1", {"status": "ok"}, 0.0, [], [0.1], claim_token=a.token)
        assert claims(s, "r") == {} and claim(s, "r", "k1", b).state == DONE_OK
        # a claim of a runner that was killed (its pid is gone) is taken over at once
        killed = Owner(dead_pid(), HERE, "killed-run")
        assert claim(s, "r", "k2", killed).state == CLAIMED
        took = claim(s, "r", "k2", b)
        assert took.state == CLAIMED and "no longer running" in took.taken_over and took.holder.token == "killed-run"
        assert claims(s, "r")["k2"].token == "other-run"
        release(s, "r", "k2", a)  # not a's claim: nothing happens
        assert "k2" in claims(s, "r")
        release(s, "r", "k2", b)
        assert claims(s, "r") == {}
        # a failed cell is done unless the run retries failures
        s.commit_cell("r", "k3", {"status": "failed", "error": "boom"}, 0.0)
        assert claim(s, "r", "k3", a).state == DONE_FAILED
        assert claim(s, "r", "k3", a, retry_failed=True).state == CLAIMED


def test_an_ok_row_is_never_overwritten_by_a_failure(tmp_path):
    # the issue's reproduction: run 1 commits ok; run 2's cell worker is killed; run 2 commits failed
    with Store(tmp_path / "s.sqlite") as s:
        s.begin_run("r", {}, {})
        assert s.commit_cell("r", "k", {"status": "ok", "latency_s_p50": 0.5}, 0.0, [0.9], [0.5, 0.4])
        kept = s.commit_cell("r", "k", {"status": "failed", "error": "worker killed by SIGKILL"}, 1.0, [], [])
        assert kept is False
        (row,) = s.rows("r")
        assert row["status"] == "ok" and row["latency_s_p50"] == 0.5
        assert s.samples("r", "k") == [0.5, 0.4] and s.samples("r", "k", "warmup") == [0.9]
        # nor by a second ok (the first measurement stands)
        assert s.commit_cell("r", "k", {"status": "ok", "latency_s_p50": 9.9}, 2.0, [], [9.9]) is False
        assert s.rows("r")[0]["latency_s_p50"] == 0.5


# ---- two real runs on one store (cheap cells: random wav2vec2, 1 clip, 1 timed call) -----------

FAST = {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0, "max_calls": 1}
LENGTHS = [3.0, 4.0, 5.0]


def _config(tmp_path: Path, cache_dir: Path, source: dict) -> Path:
    import tomli_w

    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps({
        "source": source, "models": [{"name": "wav2vec2-base", "weights": "random"}], "timing": FAST,
        "run": {"clip_lengths_s": LENGTHS, "n_clips": 1, "store": str(tmp_path / "s.sqlite"),
                "cache_dir": str(cache_dir), "energy": False, "accuracy": False},
    }))
    return path


def _start(config: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "asrperf", "run", str(config)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _db_rows(store: Path, sql: str) -> list:
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return []


def test_two_runs_on_one_store_measure_each_cell_once_and_survive_kill_9(tmp_path, cache_dir, tiny_source):
    from asrperf.config import load_config
    from asrperf.run.runner import prepare, run

    config = _config(tmp_path, cache_dir, tiny_source)
    prepare(load_config(config))  # the clips first, so both runs go straight to their cells
    store = tmp_path / "s.sqlite"
    first = _start(config, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not _db_rows(store, "SELECT pid FROM claims"):
        time.sleep(0.2)
    second = _start(config, tmp_path)
    # wait until the second run holds a claim of its own (it claimed a cell the first had not)
    while time.time() < deadline and second.pid not in {p for (p,) in _db_rows(store, "SELECT pid FROM claims")}:
        assert first.poll() is None or second.poll() is None
        time.sleep(0.2)
    assert second.pid in {p for (p,) in _db_rows(store, "SELECT pid FROM claims")}, "the runs never overlapped"
    overlap = {p for (p,) in _db_rows(store, "SELECT pid FROM claims")}
    os.killpg(second.pid, signal.SIGKILL)  # the second runner and its cell process, mid-cell
    second.communicate()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    rows = _db_rows(store, "SELECT cell_key, status FROM cells")
    assert len(rows) == len(LENGTHS) and all(st == "ok" for _, st in rows), rows
    assert len(overlap) == 2, overlap  # both runs held a claim at the same time, on different cells
    # the first run took over the killed run's cell (its pid was gone) and measured the rest
    assert "taking over a stale claim" in " ".join(err.split()), err
    assert _db_rows(store, "SELECT count(*) FROM claims") == [(0,)]
    n_samples = _db_rows(store, "SELECT cell_key, count(*) FROM samples WHERE phase='timed' GROUP BY cell_key")
    assert sorted(n for _, n in n_samples) == [1] * len(LENGTHS)  # each cell measured once, nothing lost
    # a third run resumes cleanly: nothing to measure, nothing failed
    again = run(load_config(config))
    assert (again.ran, again.skipped, again.skipped_failed) == (0, len(LENGTHS), 0)


def test_a_run_waits_for_a_cell_another_live_run_is_measuring(tmp_path, cache_dir, tiny_source):
    # a live claim (this test process plays the other run) is never measured over; once released
    # and committed, the waiting run skips the cell
    import threading

    from asrperf.config import load_config
    from asrperf.run.runner import run

    config = _config(tmp_path, cache_dir, tiny_source)
    cfg = load_config(config)
    cfg = type(cfg)(**{**cfg.__dict__, "clip_lengths_s": (3.0,), "isolate": False})
    other = Owner(os.getpid(), HERE, "the-other-run")
    with Store(cfg.store) as s:
        s.begin_run(cfg.identity(), cfg.to_dict(), {})
        from asrperf.run.plan import expand

        (cell,) = expand(cfg)
        assert claim(s, cfg.identity(), cell.key, other).state == CLAIMED
    states = []

    def commit_later():
        time.sleep(3)
        with Store(cfg.store) as s:
            s.commit_cell(cfg.identity(), cell.key, {"status": "ok", "latency_s_p50": 1.0}, 0.0, [], [1.0],
                          claim_token=other.token)

    t = threading.Thread(target=commit_later)
    t.start()
    summary = run(cfg, on_cell=lambda c, state, i, n: states.append(state))
    t.join()
    assert summary.ran == 0 and summary.skipped == 1
    assert states[0].startswith("waiting: pid") and states[-1] == "skipped (already ok)"
