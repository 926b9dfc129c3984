"""benchmarks/perf_target.py --quick: configurations load, transcribe each audio kind, and land in
the contract-matched tables (the numbers of a quick run mean nothing and are not checked).

One configuration per way the script builds one (faster-whisper transcribe and batched, the
pywhispercpp wheel, the transformers pipeline, an asrperf engine) plus a peer of the other
contract: each is a fresh process that imports its library, so all 17 would take minutes."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "perf_target.py"
NEEDED = ("faster_whisper", "_pywhispercpp", "torch")
ONLY = ("faster-whisper transcribe int8, timestamps", "faster-whisper batched int8, no VAD",
        "whisper.cpp wheel q8_0, text", "transformers pipeline fp32, chunked b2",
        "asrperf ct2 int8_float32 + longform=batched")


@pytest.mark.slow
def test_quick_mode_runs_every_configuration(cache_dir, tmp_path):
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"perf_target's peers need {', '.join(missing)}: pip install 'asrperf[test]'")
    spec = importlib.util.spec_from_file_location("perf_target", SCRIPT)
    perf_target = importlib.util.module_from_spec(spec)
    sys.modules["perf_target"] = perf_target  # dataclasses resolve their module by name
    spec.loader.exec_module(perf_target)
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--cache-dir", str(cache_dir), *(arg for name in ONLY for arg in ("--only", name))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    kinds = ["exact", "continuous"] + (["real"] if perf_target.LIBRIVOX_DIR.is_dir() else [])
    tables = out.stdout.split("### audio: ")[1:]
    assert [t.split(" ")[0] for t in tables] == kinds
    for table in tables:
        for config in (c for c in perf_target.CONFIGS if c.name in ONLY):
            row = next(line for line in table.splitlines() if line.startswith(f"| {config.name} |"))
            assert "failed" not in row, row
            cells = [c.strip() for c in row.split("|")[1:-1]]
            assert cells[2] == config.contract and float(cells[5].replace(",", "")) > 0
            assert float(cells[7].split(" ")[0].replace(",", "")) > 0  # the floor

        # every contract has a peer to compare with
        assert "| — |" not in table
