"""Cache directories built once and published atomically (converted weights, exports)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from asrperf.errors import AsrperfError


def build_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Return `final`, building it first if `final/marker` is missing.

    `build` writes into a private staging sibling that is renamed to `final` only when complete,
    so a crash or a concurrent run never leaves a half-written directory under the final name.
    """
    final = Path(final)
    if (final / marker).is_file():
        return final
    if final.exists():  # only a rename creates it, so someone else put or changed files there
        raise AsrperfError(f"{final}: exists but holds no {marker}; delete the directory to rebuild it")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; the cache is meant to be readable
        build(staging)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / marker).is_file():  # not a lost race with another process
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
