"""End to end through the CLI and the runner: resume after kill -9, failed cells, bad input."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asrperf.config import config_from_dict
from asrperf.results.store import Store
from asrperf.run.runner import run, run_isolated

FAST_TIMING = {"warmup_calls": 0, "min_calls": 1, "min_time_s": 0.0, "max_calls": 1}


def _config(tmp_path: Path, cache_dir: Path, source: dict, models: list, lengths: list, timing: dict = FAST_TIMING,
            **run_kw) -> dict:
    return {
        "source": source,
        "models": models,
        "timing": timing,
        "run": {"clip_lengths_s": lengths, "n_clips": 1, "store": str(tmp_path / "r.sqlite"),
                "cache_dir": str(cache_dir), **run_kw},
    }


def _toml(path: Path, data: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(data))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrperf", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


W2V = {"name": "wav2vec2-base", "weights": "random"}


def test_failed_cell_is_recorded_and_the_run_goes_on(tmp_path, cache_dir, tiny_source):
    # a 50 ms timeout, too short to even load a model, fails every isolated cell, each recorded with its reason
    cfg = config_from_dict(_config(tmp_path, cache_dir, tiny_source, [W2V], [3, 4], cell_timeout_s=0.05))
    summary = run(cfg)
    assert summary.ran == 2 and summary.failed == 2
    with Store(cfg.store) as s:
        rows = s.rows()
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert "timeout" in rows[0]["error"] and "cell_timeout_s" in rows[0]["error"]
    # retry on request: now with a sane timeout both cells succeed, nothing duplicated
    cfg2 = config_from_dict(_config(tmp_path, cache_dir, tiny_source, [W2V], [3, 4], cell_timeout_s=600))
    assert cfg2.identity() == cfg.identity()
    assert run(cfg2).ran == 0, "failed cells are not retried unless asked"
    again = run(cfg2, retry_failed=True)
    assert again.ran == 2 and again.failed == 0
    with Store(cfg.store) as s:
        rows = s.rows()
        assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
        assert all(r["weights"] == "random" and r["wer"] is None for r in rows)
        assert len(s.samples(rows[0]["run_id"], rows[0]["cell_key"])) == 1


def test_worker_crash_becomes_a_failed_row():
    # a cell the worker dies on before it can write a row (threads "x" cannot size a thread pool):
    # the process exits with a traceback and no result file; the row says so, with the cell's identity
    from asrperf.config import ModelConfig, TimingConfig
    from asrperf.run.plan import Cell
    from asrperf.run.worker import CellPayload
    from asrperf.scenarios.base import ScenarioSettings

    settings = ScenarioSettings(energy=False, energy_idle_s=0.0, flops=False, max_batch=1, memory_budget_bytes=None,
                                trace_dir="", decode_tokens=0, decode_curve_length_s=5.0)
    cell = Cell(ModelConfig("wav2vec2-base", weights="random"), "cpu", "x", 5.0, 1, "latency")
    result = run_isolated(CellPayload(cell, "", "", 1, TimingConfig(), False, True, settings), timeout_s=120)
    assert result.row["status"] == "failed" and result.row["model_name"] == "wav2vec2-base"
    assert "worker exited with code 1" in result.row["error"]


@pytest.mark.parametrize("value", ["3", None])
def test_the_cell_process_takes_the_environment_its_launcher_gives(value, monkeypatch):
    # a reused Ray worker passes the GPUs Ray gave this task; the fork server kept its first caller's
    from asrperf.config import ModelConfig, TimingConfig
    from asrperf.run.plan import Cell
    from asrperf.run.worker import CellPayload
    from asrperf.scenarios.base import ScenarioSettings

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what a fork server started now would inherit
    settings = ScenarioSettings(energy=False, energy_idle_s=0.0, flops=False, max_batch=1, memory_budget_bytes=None,
                                trace_dir="", decode_tokens=0, decode_curve_length_s=5.0)
    cell = Cell(ModelConfig("wav2vec2-base", weights="random"), "cpu", 1, 5.0, 1, "latency")
    payload = CellPayload(cell, "", "", 1, TimingConfig(), False, True, settings, plugins=("env_probe",))
    result = run_isolated(payload, timeout_s=120, env={"CUDA_VISIBLE_DEVICES": value})
    assert result.row["status"] == "failed"
    assert f"sees CUDA_VISIBLE_DEVICES={value!r}" in result.row["error"]


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path, cache_dir, tiny_source):
    lengths = [3, 4, 4.5, 5]  # each packs >= 90% speech from the 30 test sentences (min_speech_share)
    config = _toml(tmp_path / "run.toml", _config(tmp_path, cache_dir, tiny_source, [W2V], lengths))
    store = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "asrperf", "run", str(config)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    committed = 0
    while time.time() < deadline and committed < 1:
        time.sleep(0.2)
        if store.is_file():
            try:
                committed = sqlite3.connect(store).execute("SELECT count(*) FROM cells").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    assert committed >= 1, "no cell finished within the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its cell worker, mid-run
    proc.wait()
    with Store(store) as s:
        before = {r["cell_key"]: r for r in s.rows()}
    assert 1 <= len(before) < len(lengths)
    done = _cli("run", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} already done" in done.stderr.replace("\n", " ")
    with Store(store) as s:
        after = s.rows()
    assert sorted(r["clip_length_s"] for r in after) == lengths
    for r in after:
        if r["cell_key"] in before:  # kept as committed, not re-measured
            assert r["latency_s_p50"] == before[r["cell_key"]]["latency_s_p50"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "-m", "whisper-tyni"], "unknown model 'whisper-tyni'; known: whisper-tiny.en"),
        (["run", "--manifest", "nope.csv"], "nope.csv"),
        (["run", "--lengths", "5,x"], "--lengths: '5,x' is not a comma-separated list"),
        (["run", "--device", "gpu"], "devices: 'gpu' is not a device"),
        (["report", "--store", "missing.sqlite"], "no results store at missing.sqlite"),
        # a dtype only CTranslate2 runs, asked of an engine that cannot: names both and the fix
        (["run", "-m", "whisper-tiny", "--dtype", "fp8"], "models.dtype: 'fp8' is not one of"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, args, message):
    res = _cli(*args, cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and message in " ".join(lines), res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_column_names_the_column(tmp_path, cache_dir):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "m.csv").write_text("path,sentence\na.wav,hello\n")
    res = _cli("run", "--manifest", "m.csv", "-m", "wav2vec2-base", "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert res.returncode == 2
    assert "audio" in res.stderr and "path, sentence" in res.stderr.replace("'", "")


def test_max_throughput_scenario_searches_batches(tmp_path, cache_dir, tiny_source):
    cfg = config_from_dict(_config(tmp_path, cache_dir, tiny_source, [W2V], [3],
                                   scenarios=["max_throughput"], max_batch=4))
    assert run(cfg).failed == 0
    with Store(cfg.store) as s:
        (row,) = s.rows()
    assert row["scenario"] == "max_throughput" and row["batch_size"] == 0
    tried = [p["batch_size"] for p in row["max_throughput_probes"]]
    assert tried[:2] == [1, 2] and max(tried) <= 4
    assert row["max_throughput_batch_size"] in tried
    assert row["max_throughput_stop_reason"] in ("plateau", "max_batch")
    # the busy-machine guard watched every probe's timed window
    assert row["contention_windows"] == len(tried) and all(p["contended"] in (True, False) for p in row["max_throughput_probes"])
    from asrperf.report.tables import study_tables

    mt = dict(study_tables([row])[0].rows)["max throughput samples/s, 3 s"]
    assert mt[0].startswith(f"{row['max_throughput_samples_per_s']:.2f} at b{row['max_throughput_batch_size']}")


def test_a_killed_runner_leaves_no_cell_process_behind(tmp_path, cache_dir, tiny_source):
    # the cell's process is the fork server's child: it must notice the runner is gone and stop
    config = _toml(tmp_path / "run.toml", _config(tmp_path, cache_dir, tiny_source, [W2V], [60],
                                                  timing={"warmup_calls": 0, "min_calls": 50, "min_time_s": 600}))
    proc = subprocess.Popen([sys.executable, "-m", "asrperf", "run", str(config)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children(pids: set[int]) -> set[int]:
        out = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in pids:  # field 4 of /proc/PID/stat: the parent pid
                out.add(int(stat.parent.name))
        return out

    def cells() -> set[int]:  # the runner's fork server's children
        return children(children({proc.pid}))

    deadline = time.time() + 120
    while time.time() < deadline and not cells():
        time.sleep(0.5)
    running = cells()
    assert running, "no cell process started"
    proc.kill()  # SIGKILL: the runner gets no chance to clean up
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in running):
        time.sleep(0.5)
    assert not any(Path(f"/proc/{p}").exists() for p in running), "a cell kept running without its runner"
