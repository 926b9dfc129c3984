"""Cell claims: runs sharing one store never measure the same cell at the same time.

Before measuring a cell, a runner claims it in the store's `claims` table, in one write
transaction that also reads the cell's committed status (so a cell committed meanwhile is skipped,
not measured again). While the cell runs, a heartbeat thread refreshes the claim; the commit of the
cell releases it in the same transaction as the row.

A claim held by another runner is **live** unless it is stale:

- its heartbeat is older than `stale_after_s` (a runner on another host, or one that hangs), or
- it was made on this host (same hostname and pid namespace) by a pid that no longer runs, or
  only as a zombie: the runner was killed (kill -9, OOM killer, a reboot).

A live claim makes the other runner wait (or move on to other cells first); a stale one is taken
over. Two runners that both consider a claim stale serialize on the write lock: the first takes
it over, the second then sees a fresh, live claim.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 5.0  # how often a runner refreshes its claims
STALE_AFTER_S = 60.0  # a claim whose heartbeat is this old is dead (12 missed beats)

CLAIMED, DONE_OK, DONE_FAILED, BUSY = "claimed", "ok", "failed", "busy"


def host_id() -> str:
    """This host and pid namespace: pids of claims made elsewhere cannot be checked from here."""
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        ns = ""
    return f"{socket.gethostname()} {ns}".strip()


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs on this host (a zombie, killed but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@dataclass(frozen=True)
class Owner:
    """The runner that claims: its pid, host id and a token unique to this run invocation."""

    pid: int
    host: str
    token: str

    @classmethod
    def here(cls) -> "Owner":
        return cls(os.getpid(), host_id(), uuid.uuid4().hex)


@dataclass(frozen=True)
class Claim:
    """A claim as stored."""

    pid: int
    host: str
    token: str
    claimed_at: float
    heartbeat: float

    def stale_reason(self, now: float, here: str, stale_after_s: float = STALE_AFTER_S) -> str | None:
        """Why this claim is dead, or None when it is live."""
        age = now - self.heartbeat
        if age > stale_after_s:
            return f"its heartbeat is {age:.0f} s old (> {stale_after_s:g} s)"
        if self.host == here and not pid_alive(self.pid):
            return f"its runner (pid {self.pid}) is no longer running"
        return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host.split(' ')[0]}"


@dataclass(frozen=True)
class ClaimResult:
    state: str  # CLAIMED | DONE_OK | DONE_FAILED | BUSY
    holder: Claim | None = None  # BUSY: the live claim; CLAIMED: the stale claim taken over, if any
    taken_over: str | None = None  # why the previous claim was stale


def claim(store, run_id: str, cell_key: str, owner: Owner, retry_failed: bool = False,
          stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> ClaimResult:
    """Claim one cell of `run_id` in `store` (a results.store.Store), unless it is done or live-claimed.

    A cell committed ok is DONE_OK; one committed as failed is DONE_FAILED unless `retry_failed`.
    """
    now = time.time() if now is None else now
    with store._tx() as db:
        row = db.execute("SELECT status FROM cells WHERE run_id=? AND cell_key=?", (run_id, cell_key)).fetchone()
        if row is not None and (row[0] == "ok" or not retry_failed):
            return ClaimResult(DONE_OK if row[0] == "ok" else DONE_FAILED)
        held = db.execute("SELECT pid, host, token, claimed_at, heartbeat FROM claims WHERE run_id=? AND cell_key=?",
                          (run_id, cell_key)).fetchone()
        stale = None
        if held is not None and held[2] != owner.token:
            current = Claim(*held)
            stale = current.stale_reason(now, owner.host, stale_after_s)
            if stale is None:
                return ClaimResult(BUSY, current)
        db.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, cell_key) DO UPDATE SET "
                   "pid=excluded.pid, host=excluded.host, token=excluded.token, claimed_at=excluded.claimed_at, "
                   "heartbeat=excluded.heartbeat", (run_id, cell_key, owner.pid, owner.host, owner.token, now, now))
        return ClaimResult(CLAIMED, Claim(*held) if held is not None and stale else None, stale)


def release(store, run_id: str, cell_key: str, owner: Owner) -> None:
    """Drop this runner's claim on a cell it did not commit (an interrupted run)."""
    with store._tx() as db:
        db.execute("DELETE FROM claims WHERE run_id=? AND cell_key=? AND token=?", (run_id, cell_key, owner.token))


def claims(store, run_id: str) -> dict[str, Claim]:
    """cell_key -> its current claim."""
    rows = store.db.execute("SELECT cell_key, pid, host, token, claimed_at, heartbeat FROM claims WHERE run_id=?",
                            (run_id,))
    return {r[0]: Claim(*r[1:]) for r in rows}


class Heartbeat:
    """A daemon thread that refreshes every claim of `owner` every `period_s`, on its own connection."""

    def __init__(self, store_path: str | Path, owner: Owner, period_s: float = HEARTBEAT_S) -> None:
        self.store_path, self.owner, self.period_s = Path(store_path), owner, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="asrperf-claim-heartbeat")

    def _run(self) -> None:
        from asrperf.results.store import Store

        store = Store(self.store_path)
        try:
            while not self._stop.wait(self.period_s):
                try:
                    with store._tx() as db:
                        db.execute("UPDATE claims SET heartbeat=? WHERE token=?", (time.time(), self.owner.token))
                except sqlite3.Error:  # a store locked past its timeout: beat again next period
                    continue
        finally:
            store.close()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s + 30)
