"""The results store: one SQLite file, one committed row per finished cell, raw samples kept.

A cell is written in a single transaction (row + raw per-call samples), so a run killed at any
moment leaves only whole cells behind; re-running the same config skips them (resume). A committed
ok row is never replaced (a later failed attempt of the same cell, e.g. from a second run on the
same store, is dropped). Runs sharing a store claim each cell before measuring it (claims.py).

Readers (`Store.open_readonly`: `report`, `compare`) open the file with SQLite's `mode=ro`, so
they work on read-only media and never change a store: no schema is added to an empty file and
no table is re-created. On read-only media, where SQLite cannot create its `-shm` coordination
file, the file is opened `immutable=1` (nothing can write it there). In a writable folder, a
read-only connection may leave SQLite's empty `-wal`/`-shm` files beside the store; they hold no
data and the next writer removes them.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asrperf.errors import StoreError
from asrperf.results.migrate import MIGRATIONS
from asrperf.results.schema import SCHEMA_VERSION, Row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,      -- the config identity: same config, same run (resume)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    config_json TEXT NOT NULL,
    env_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    cell_key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (run_id, cell_key)
);
CREATE TABLE IF NOT EXISTS claims (
    run_id TEXT NOT NULL,
    cell_key TEXT NOT NULL,
    pid INTEGER NOT NULL,         -- the runner measuring the cell
    host TEXT NOT NULL,           -- its host and pid namespace: a pid means something only there
    token TEXT NOT NULL,          -- the claiming runner's id: only it refreshes or releases the claim
    claimed_at REAL NOT NULL,
    heartbeat REAL NOT NULL,      -- refreshed while the cell runs; an old one marks a dead claim
    PRIMARY KEY (run_id, cell_key)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL,
    cell_key TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('warmup', 'timed')),
    idx INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    PRIMARY KEY (run_id, cell_key, phase, idx)
);
"""


_TABLES = ("runs", "cells", "samples")  # what a reader needs; older stores may lack `claims`


class Store:
    """SQLite-backed results; safe against kill -9 between and during cell commits."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self.db = _connect_readonly(self.path)
            self.version = self._version()  # an older store is read as it is: rows are lifted as they are read
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit: every write below runs in an explicit BEGIN IMMEDIATE transaction (`_tx`),
            # so two runs on one store serialize their claims and commits instead of deadlocking
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"results store {self.path} cannot be created or opened for writing "
                             f"({_reason(exc)}); pass --store with a writable file path") from None
        self.version = self._version()
        if self.version < SCHEMA_VERSION:
            self._migrate()

    @classmethod
    def open_readonly(cls, path: str | Path) -> "Store":
        """The store at `path` for reading only (report, compare); StoreError when it is not one."""
        return cls(path, readonly=True)

    def _version(self) -> int:
        got = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(got[0]) if got else SCHEMA_VERSION

    def _migrate(self) -> None:
        """Rewrite every row of an older store in the current schema, in one transaction."""
        with self._tx() as db:
            for rid, key, row_json in db.execute("SELECT run_id, cell_key, row_json FROM cells").fetchall():
                row = _lift(json.loads(row_json), self.version)
                db.execute("UPDATE cells SET row_json=? WHERE run_id=? AND cell_key=?", (json.dumps(row), rid, key))
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        self.version = SCHEMA_VERSION

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start; rolled back on error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def begin_run(self, run_id: str, config: dict[str, Any], env: dict[str, Any]) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                "updated_at=excluded.updated_at, env_json=excluded.env_json",
                (run_id, now, now, json.dumps(config), json.dumps(env)),
            )

    def cell_status(self, run_id: str) -> dict[str, str]:
        """cell_key -> 'ok' | 'failed' for cells already committed in this run."""
        rows = self.db.execute("SELECT cell_key, status FROM cells WHERE run_id=?", (run_id,))
        return dict(rows.fetchall())

    def commit_cell(
        self,
        run_id: str,
        cell_key: str,
        row: dict[str, Any],
        started_at: float,
        warmup_s: list[float] = (),
        samples_s: list[float] = (),
        claim_token: str | None = None,
    ) -> bool:
        """Write one cell (its row and raw samples) atomically, replacing an earlier failed attempt;
        release the claim `claim_token` holds on it. An ok row already stored is kept, whatever the
        new attempt's status: returns False when nothing was written for that reason.

        The row is validated against the schema first (results/schema.py): a row that does not
        match raises SchemaError before anything is written."""
        row = Row.from_flat(row).flat()
        status = row.get("status", "ok")
        with self._tx() as db:
            if claim_token is not None:
                db.execute("DELETE FROM claims WHERE run_id=? AND cell_key=? AND token=?", (run_id, cell_key, claim_token))
            stored = db.execute("SELECT status FROM cells WHERE run_id=? AND cell_key=?", (run_id, cell_key)).fetchone()
            if stored is not None and stored[0] == "ok":
                return False
            db.execute("DELETE FROM samples WHERE run_id=? AND cell_key=?", (run_id, cell_key))
            db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, cell_key, status, row.get("error"), started_at, time.time(), json.dumps(row)),
            )
            db.executemany(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?)",
                [(run_id, cell_key, "warmup", i, t) for i, t in enumerate(warmup_s)]
                + [(run_id, cell_key, "timed", i, t) for i, t in enumerate(samples_s)],
            )
            db.execute("UPDATE runs SET updated_at=? WHERE run_id=?", (time.time(), run_id))
        return True

    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT run_id, created_at, updated_at, config_json, env_json FROM runs ORDER BY updated_at")
        return [
            {"run_id": r[0], "created_at": r[1], "updated_at": r[2], "config": json.loads(r[3]), "env": json.loads(r[4])}
            for r in rows
        ]

    def rows(self, run_id: str | None = None, status: str | None = None) -> list[Row]:
        """Cell rows as typed `Row`s (run_id, cell_key, status and error from the cell), oldest first;
        rows of an older schema are lifted to the current one as they are read."""
        sql = "SELECT run_id, cell_key, status, error, row_json FROM cells"
        where, args = [], []
        if run_id:
            where.append("run_id=?"), args.append(run_id)
        if status:
            where.append("status=?"), args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for rid, key, st, err, row_json in self.db.execute(sql + " ORDER BY started_at", args):
            row = _lift(json.loads(row_json), self.version)
            row.update(run_id=rid, cell_key=key, status=st, error=err)
            out.append(Row.from_flat(row, strict=False))
        return out

    def samples(self, run_id: str, cell_key: str, phase: str = "timed") -> list[float]:
        rows = self.db.execute(
            "SELECT latency_s FROM samples WHERE run_id=? AND cell_key=? AND phase=? ORDER BY idx",
            (run_id, cell_key, phase),
        )
        return [r[0] for r in rows]


def _lift(row: dict[str, Any], version: int) -> dict[str, Any]:
    """A stored flat row of schema `version`, in the current schema's flat form."""
    while version < SCHEMA_VERSION:
        row = MIGRATIONS[version](row)
        version += 1
    return row


def check_writable(path: str | Path) -> None:
    """StoreError unless a store can be written at `path`, without creating it: an existing store
    must open for writing; otherwise its folder must be creatable and accept a new file (probed
    with a file created and removed at once, which also catches read-only mounts as root)."""
    path = Path(path)
    if path.exists():
        Store(path).close()
        return
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise StoreError(f"results store {path} cannot be created: {above} is a file, not a folder; pass --store "
                         "with a writable file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"results store {path} cannot be created ({_reason(exc)}); pass --store with a writable "
                         "file path") from None


def _reason(exc: BaseException) -> str:
    return f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """`mode=ro`; on read-only media (SQLite cannot create its -shm file there) `immutable=1`."""
    if not path.is_file():
        raise StoreError(f"no results store at {path}; run `asrperf run` first or pass --store")
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    try:
        try:
            db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError:
            db = sqlite3.connect(uri + "?immutable=1", uri=True)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not an asrperf results store ({exc})") from None
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        db.close()
        what = "an empty file" if path.stat().st_size == 0 else f"it has no table {', '.join(missing)}"
        raise StoreError(f"{path} is not an asrperf results store ({what}); pass the results.sqlite that "
                         "`asrperf run` wrote")
    return db


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (dict, list, tuple)) else v) for k, v in row.items()}


def export_rows(rows: list[Row] | list[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as CSV (nested values JSON-encoded) or JSON, by the file's extension."""
    rows = [dict(r) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=1))
    elif path.suffix == ".csv":
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(_flat(r) for r in rows)
    else:
        from asrperf.errors import ConfigError

        raise ConfigError(f"export: '{path.suffix}' is not a supported format; use .csv or .json")
    return path
