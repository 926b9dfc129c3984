"""A cached clip set as bytes with its content hash, to ship to a node that has no copy of the cache.

The driver prepares the clips once (`runner.prepare`) and bundles the cache entry a cell reads:
`index.json` and the first `n` clip files (data/clips.py `ClipCache` layout). A node unpacks the
bundle into a folder of its own after checking the hash of the bytes it received, so it never
measures audio other than the driver's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from asrperf.data.clips import ClipCache
from asrperf.errors import DataError


def content_hash(files: dict[str, bytes]) -> str:
    """sha256 over the files' names and bytes, in name order (a renamed or reordered clip changes it)."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


@dataclass(frozen=True)
class ClipBundle:
    """The files of one clip cache entry (`key`), by name, and their content hash."""

    key: str
    files: dict[str, bytes]
    sha256: str

    @classmethod
    def from_cache(cls, cache_dir: str | Path, key: str, n: int) -> ClipBundle:
        """Bundle the first `n` clips of cache entry `key` under `cache_dir` (built by `prepare`)."""
        folder = ClipCache(cache_dir).root / key
        index_path = folder / "index.json"
        if not index_path.is_file():
            raise DataError(f"clips {key} are not in the cache {cache_dir}; run `asrperf prepare` first")
        index = json.loads(index_path.read_text())
        files = {"index.json": index_path.read_bytes()}
        for meta in index["clips"][:n]:
            files[meta["file"]] = (folder / meta["file"]).read_bytes()
        return cls(key, files, content_hash(files))

    @property
    def size_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    def unpack(self, root: str | Path, expected_sha256: str) -> Path:
        """Write the files as a clip cache under `root` (a `ClipCache(root)` then loads them) after
        checking their hash against the one the driver computed; returns `root`."""
        got = content_hash(self.files)
        if got != expected_sha256:
            raise DataError(f"clips {self.key}: the bytes received hash to {got[:16]}, not the driver's "
                            f"{expected_sha256[:16]}; the cell was not measured on different audio")
        folder = ClipCache(root).root / self.key
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            if Path(name).name != name:
                raise DataError(f"clips {self.key}: file name {name!r} is not a plain name")
            (folder / name).write_bytes(data)
        return Path(root)
