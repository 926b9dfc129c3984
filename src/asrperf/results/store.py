"""The results store: one SQLite file, one committed row per finished cell, raw samples kept.

A cell is written in a single transaction (row + raw per-call samples), so a run killed at any
moment leaves only whole cells behind; re-running the same config skips them (resume).
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL,
    cell_key TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('warmup', 'timed')),
    idx INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    PRIMARY KEY (run_id, cell_key, phase, idx)
);
"""


class Store:
    """SQLite-backed results; safe against kill -9 between and during cell commits."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.db.commit()
        self.version = self._version()
        if self.version < SCHEMA_VERSION:
            self._migrate()

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
        with self.db:  # commits on success, rolls back on error
            yield self.db

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
    ) -> None:
        """Write one cell (its row and raw samples) atomically, replacing an earlier failed attempt.

        The row is validated against the schema first (results/schema.py): a row that does not
        match raises SchemaError before anything is written."""
        row = Row.from_flat(row).flat()
        status = row.get("status", "ok")
        with self._tx() as db:
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
