"""benchmarks/gpu: the weight and clip transport, the dry-run configs, and the whole run.sh on the CPU."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
CONFIGS = ("seed_gpu.toml", "max_throughput_gpu.toml", "profile_gpu.toml", "optimize_gpu.toml")


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_bench_{name}", GPU / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


transport = _module("transport")


# --- fp16 mantissa rounding: literal bit patterns, worked by hand (k = 7 drops 3 bits: half = 4) ---

@pytest.mark.parametrize("bits, k, expected", [
    (0x3C00, 7, 0x3C00),  # 1.0 is kept
    (0x3C01, 7, 0x3C00),  # 1 + 1/1024: remainder 1 < 4, down
    (0x3C05, 7, 0x3C08),  # remainder 5 > 4, up
    (0x3C04, 7, 0x3C00),  # a tie, kept part 0x780 even: stays
    (0x3C0C, 7, 0x3C10),  # a tie, kept part 0x781 odd: up to even
    (0x3FFF, 7, 0x4000),  # 1.999...: the carry runs into the exponent, 2.0
    (0xBC05, 7, 0xBC08),  # the sign is untouched
    (0x0001, 7, 0x0000),  # the smallest subnormal rounds to +0
    (0x3C05, 10, 0x3C05),  # all 10 bits kept: unchanged
    (0x3E00, 1, 0x3E00),  # 1.5 has one mantissa bit
    (0x3D00, 1, 0x3C00),  # 1.25 with one bit: a tie, to even (1.0)
])
def test_fp16_mantissa_rounding(bits, k, expected):
    out = transport.round_fp16_mantissa(np.array([bits], dtype=np.uint16), k)
    assert int(out[0]) == expected, f"{bits:#06x} -> {int(out[0]):#06x}, expected {expected:#06x}"


def test_rounding_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="mantissa_bits=0"):
        transport.round_fp16_mantissa(np.zeros(1, np.uint16), 0)
    with pytest.raises(ValueError, match="overflowed"):
        transport.round_fp16_mantissa(np.array([0x7BFF], dtype=np.uint16), 7)  # 65504 rounds up to inf


@pytest.mark.parametrize("k", [1, 2, 3, 7, 10])
def test_bit_planes_round_trip(k):
    bits = transport.round_fp16_mantissa(np.random.default_rng(k).integers(0, 0x7800, 1001).astype(np.uint16), k)
    top, low = transport.split_planes(bits, k)
    assert len(top) == 1001 and len(low) == -(-1001 * max(0, k - 2) // 8)  # bit-packed: k - 2 bits each
    assert np.array_equal(transport.join_planes(top, low, 1001, k), bits)


def _fp16_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"enc.w": rng.normal(0, 0.05, (48, 32)).astype(np.float16).astype(np.float32),
            "enc.b": rng.normal(0, 0.05, 32).astype(np.float16).astype(np.float32),
            "dec.emb": rng.normal(0, 1.0, (10, 8, 3)).astype(np.float16).astype(np.float32)}


def test_tensors_round_trip_vectors_exact_and_matrices_within_bf16_precision():
    state = _fp16_state()
    manifest, blobs = transport.pack_tensors(state, 7)
    back = transport.unpack_tensors(manifest, blobs)
    assert set(back) == set(state) and all(back[k].shape == state[k].shape for k in state)
    assert np.array_equal(back["enc.b"], state["enc.b"])  # 1-D: exact
    for name in ("enc.w", "dec.emb"):
        x, y = state[name], back[name]
        normal = np.abs(x) >= 2.0**-14  # fp16 normals: 8 significant bits, half an ulp at most
        assert np.all(np.abs(y - x)[normal] <= np.abs(x)[normal] * 2.0**-8)
        assert not np.array_equal(x, y)  # something was rounded
    assert manifest["n_exact"] == 32 and manifest["n_rounded"] == 48 * 32 + 10 * 8 * 3


def test_tensors_refuse_non_fp16_values_and_damaged_files():
    with pytest.raises(ValueError, match="not exactly representable in fp16"):
        transport.pack_tensors({"w": np.full((2, 2), 0.1, np.float32)}, 7)
    manifest, blobs = transport.pack_tensors(_fp16_state(), 7)
    low = bytearray(blobs["rounded_low.bin"])
    low[0] ^= 0xFF
    with pytest.raises(ValueError, match="damaged"):
        transport.unpack_tensors(manifest, {**blobs, "rounded_low.bin": bytes(low)})


def test_unpacked_weights_are_a_hub_cache_snapshot_found_offline(tmp_path):
    from huggingface_hub import snapshot_download
    from safetensors.numpy import load_file

    src = tmp_path / "tiny_en"
    src.mkdir()
    state = _fp16_state()
    manifest, blobs = transport.pack_tensors(state, 7)
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    (src / "manifest.json").write_text(json.dumps(manifest))
    files = tmp_path / "files"
    files.mkdir()
    with tarfile.open(src / "checkpoint_files.tar.xz", "w:xz") as tar:
        for name in transport.CHECKPOINT_FILES:
            (files / name).write_text("{}")
            tar.add(files / name, arcname=name)
    hub = tmp_path / "hub"
    snap = transport.unpack_weights(src, hub)
    assert snap.name.startswith("asrperf-transport-fp16-m7-")  # rows' weights_source says what it is
    found = snapshot_download(transport.REPO_ID, local_files_only=True, cache_dir=str(hub))
    assert Path(found) == snap
    loaded = load_file(str(snap / "model.safetensors"))
    assert np.array_equal(loaded["enc.b"], state["enc.b"]) and loaded["enc.w"].dtype == np.float32
    assert json.loads((snap / "TRANSPORT.json").read_text())["mantissa_bits"] == 7


def _write_cache(root: Path, clips: dict) -> Path:
    import soundfile as sf

    folder = root / "clips" / "5s-exact-abc"
    folder.mkdir(parents=True)
    metas = []
    for cid, audio in clips.items():
        sf.write(str(folder / f"{cid}.wav"), audio, 16000, subtype="FLOAT", format="WAV")
        metas.append({"id": cid, "file": f"{cid}.wav", "length_s": 5.0, "text": "x", "utterance_ids": [],
                      "speech_s": 1.0, "n_samples": len(audio), "utterance_bounds": [[0, len(audio)]],
                      "utterance_texts": ["x"]})
    (folder / "index.json").write_text(json.dumps({"source": {}, "clips": metas}))
    return folder


def test_clips_become_flac_only_where_bit_exact(tmp_path):
    from asrperf.data.clips import ClipCache

    rng = np.random.default_rng(0)
    pcm = (rng.integers(-32768, 32767, 80000) / 32768.0).astype(np.float32)  # what the built-in corpus holds
    pcm[-20000:] = 0.0  # silence padding
    other = rng.normal(0, 0.1, 80000).astype(np.float32)  # not on the 16-bit grid
    folder = _write_cache(tmp_path, {"5s-000": pcm, "5s-001": other})
    assert transport.pack_clips(tmp_path) == {"flac": 1, "wav": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["5s-000.flac", "5s-001.wav", "index.json"]
    loaded = ClipCache(tmp_path).load("5s-exact-abc", 2)
    assert np.array_equal(loaded[0].audio, pcm) and np.array_equal(loaded[1].audio, other)


# --- the configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_gpu_configs_are_valid_and_their_dry_runs_are_small(name):
    from asrperf.config import load_config

    dryrun = _module("dryrun")
    cfg = load_config(GPU / name)
    assert cfg.models and all(m.name for m in cfg.models)
    if name != "optimize_gpu.toml":  # optimize takes its device from the command line
        assert cfg.devices == ("cuda",)
    dry = dryrun.dry_config(cfg)
    assert dry.devices == ("cpu",) and dry.clip_lengths_s == (5.0,) and dry.n_clips == 1
    allowed = {n for names in dryrun.DRY_MODELS.values() for n in names}
    assert {m.name for m in dry.models} <= allowed and all(m.dtype == "fp32" for m in dry.models)
    assert len({m.name for m in dry.models}) == len(dry.models) <= 2  # one Whisper, one CTC model
    if "latency" not in cfg.scenarios:
        assert [m.name for m in dry.models] == ["wav2vec2-base"]
    assert dry.scenarios == cfg.scenarios and dry.flops == cfg.flops and dry.energy == cfg.energy


def test_seed_config_is_the_study_table():
    from asrperf.config import load_config

    cfg = load_config(GPU / "seed_gpu.toml")
    names = {m.name for m in cfg.models}
    assert {"whisper-tiny", "whisper-base", "whisper-small", "whisper-medium", "whisper-tiny.en", "wav2vec2-base"} <= names
    assert cfg.clip_lengths_s == (60.0,) and cfg.batch_sizes == (1, 16) and cfg.flops and cfg.energy
    assert next(m for m in cfg.models if m.name == "whisper-tiny.en").weights == "real"
    assert load_config(GPU / "max_throughput_gpu.toml").scenarios == ("max_throughput",)


@pytest.mark.parametrize("log, expected", [
    ("x\n===== 3 passed, 2 skipped in 40.10s =====\n", "3 passed, 2 skipped in 40.10s"),
    ("collected\n34/457 tests collected (423 deselected) in 6.01s\n", "34/457 tests collected (423 deselected) in 6.01s"),
    ("E   boom\n=== 1 failed, 7 passed, 1 warning in 3.2s ===\n", "1 failed, 7 passed, 1 warning in 3.2s"),
    ("started\nkilled\n", "no pytest summary line (killed?)"),
])
def test_summary_reads_pytest_closing_line(tmp_path, log, expected):
    path = tmp_path / "pytest.log"
    path.write_text(log)
    assert _module("summary").pytest_outcome(path) == expected


# --- the whole script, on the CPU ------------------------------------------------------------------

@pytest.mark.slow
def test_dry_run_produces_the_store_report_and_summary(tmp_path, cache_dir):
    """run.sh --dry-run: every stage, on this CPU, with one 5 s clip and the three smallest models."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    # three times the GPU run's 540 s: the stage limits are for an H200, not a busy 2-core CI machine
    proc = subprocess.run(["bash", str(GPU / "run.sh"), "--dry-run", "--budget-s", "1620", "--out", str(out),
                           "--cache-dir", str(cache_dir)], capture_output=True, text=True, env=env, timeout=1800)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = (out / "summary.txt").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the summary is printed last
    for stage in ("setup", "pytest", "table", "max_throughput", "profile", "optimize", "report"):
        assert f"\n{stage}" in summary, summary
    assert "whisper-tiny.en (transformers, fp32, real)" in summary and "wav2vec2-base (transformers, fp32" in summary
    assert "tests collected" in summary and "optimize whisper-tiny.en on cpu" in summary

    from asrperf.results.store import Store

    with Store(out / "gpu.sqlite") as store:
        rows = store.rows()
    assert {(r["scenario"], r["model"]) for r in rows} == {
        ("latency", "whisper-tiny.en"), ("latency", "wav2vec2-base"), ("max_throughput", "wav2vec2-base"),
        ("profile", "wav2vec2-base")}
    scenarios = {r["scenario"] for r in rows if r["status"] == "ok"}
    assert scenarios == {"latency", "max_throughput", "profile"}, [(r["scenario"], r.get("error")) for r in rows]
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows if r["status"] != "ok"]
    tiny_en = next(r for r in rows if r["model"] == "whisper-tiny.en" and r["scenario"] == "latency")
    assert tiny_en["wer"] is not None and tiny_en["mfu"] is not None and tiny_en["energy_j_per_sample"] is not None
    with Store(out / "optimize.sqlite") as store:
        assert any(r["status"] == "ok" for r in store.rows())
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "whisper-tiny.en" in html
    assert (out / "report.md").read_text().count("|") > 20 and (out / "optimized.toml").is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        ["run.log", "summary.txt", "gpu.sqlite", "optimize.sqlite", "report.html", "report.md", "optimized.toml",
         "traces.tar.gz"])
