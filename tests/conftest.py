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
