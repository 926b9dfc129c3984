"""Shared fixtures: one small built-in corpus and one clip cache for the whole session."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("asrperf-cache")


@pytest.fixture(scope="session")
def tiny_source() -> dict:
    # 30 Harvard sentences (~64 s of speech): enough for a few short clips and one 60 s clip
    return {"kind": "builtin", "n_sentences": 30}


# one call per cell, no warm-up: enough to run the full measurement path, not to measure
FAST_TIMING = {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0, "max_calls": 1}


@pytest.fixture
def run_rows(tmp_path, cache_dir, tiny_source):
    """Run a small config through the runner (config -> run -> store) and return its rows.

    `run_rows(models, lengths=(5,), timing=FAST_TIMING, streaming=None, **run_keys)`: models as in
    [[models]], a [streaming] table, extra [run] keys as keywords; every cell must succeed (its error
    is shown if not).
    """
    from asrperf.config import config_from_dict
    from asrperf.results.store import Store
    from asrperf.run.runner import run

    def go(models: list, lengths=(5,), timing: dict = FAST_TIMING, streaming: dict | None = None, **run_keys) -> list:
        cfg = config_from_dict({
            "source": tiny_source, "models": models, "timing": timing, "streaming": streaming or {},
            "run": {"clip_lengths_s": list(lengths), "n_clips": 1, "store": str(tmp_path / "r.sqlite"),
                    "cache_dir": str(cache_dir), **run_keys},
        })
        summary = run(cfg)
        with Store(cfg.store) as s:
            rows = s.rows(summary.run_id)
        assert summary.failed == 0, [r.get("error") for r in rows]
        return rows

    return go
