"""The real thing: `asrperf serve` with real whisper tiny.en on CTranslate2 int8, and `asrperf load` against it."""

import os
import subprocess
import sys

import httpx
import pytest

pytest.importorskip("faster_whisper", reason="engine ct2 needs pip install 'asrperf[ct2]'")

from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import ClipCache
from asrperf.engines.catalog import resolve
from asrperf.engines.ct2 import CTranslate2Engine
from asrperf.load.launch import asrperf_serve_argv, server_process
from asrperf.load.workload import load_workload
from asrperf.measure.wer import error_rates
from asrperf.results.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workload(cache_dir, tiny_source):
    return load_workload(tiny_source, cache_dir, 5.0, 2)


@pytest.fixture(scope="module")
def server(cache_dir, workload):
    argv = asrperf_serve_argv(["-m", "whisper-tiny.en", "-e", "ct2", "--dtype", "int8", "--cache-dir", str(cache_dir),
                               "--max-batch-size", "4", "--max-wait-ms", "20"])
    with server_process(argv, startup_timeout_s=300) as running:
        yield running


def test_serve_answers_with_the_transcript_of_a_builtin_clip(server, workload, cache_dir):
    clips, info = workload
    r = httpx.post(f"{server.url}/v1/audio/transcriptions", trust_env=False, timeout=60,
                   files={"file": ("clip.wav", clips[0].wav, "audio/wav")}, data={"model": "whisper-tiny.en"})
    assert r.status_code == 200, r.text
    text = r.json()["text"]
    # the first repacked 5 s clip: tiny.en gets 4 of its 16 words wrong offline too ("birch can use lid")
    assert error_rates([clips[0].reference], [text]).wer <= 0.3, (clips[0].reference, text)
    # the same text as the engine gives offline on the same samples (deterministic greedy decoding)
    offline = CTranslate2Engine(cache_dir)
    offline.load(resolve("whisper-tiny.en"), "real", "int8", "cpu")
    audio = ClipCache(cache_dir).load(info["clip_key"], 1)[0].audio
    assert offline.transcribe([audio], SAMPLE_RATE).texts[0] == text
    health = httpx.get(f"{server.url}/health", trust_env=False).json()
    assert (health["engine"], health["dtype"], health["engine_info"]["weights"]) == ("ct2", "int8", "real")
    assert health["engine_info"]["warmup_call_s"] > 0


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrperf", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "250"})


def test_load_against_the_url_prints_the_table_and_stores_rows_with_wer(server, workload, cache_dir, tmp_path):
    store = tmp_path / "load.sqlite"
    done = _cli("load", "--url", server.url, "--rate", "poisson:2", "--duration", "3", "--requests", "6",
                "--length", "5", "--n-clips", "2", "--cache-dir", str(cache_dir), "--store", str(store),
                "--slo", "p90<=30s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "asrperf load single whisper-tiny.en" in done.stdout and "poisson:2" in done.stdout
    with Store(store) as s:
        rows = s.rows()
        row = rows[0]
        assert len(s.samples(row["run_id"], row["cell_key"])) == row["n_ok"]
    assert row["scenario"] == "server" and row["server"] == "asrperf" and row["engine"] == "ct2"
    assert row["n_ok"] == row["n_requests"] > 0 and row["transcripts_consistent"] is True
    # WER under load is scored on the returned transcripts against the clips' exact references
    clips, _ = workload
    ok = [r for r in row["requests"] if r["outcome"] == "ok" and not r["warmup"]]
    expected = error_rates([clips[r["clip_index"]].reference for r in ok], [r["text"] for r in ok])
    assert row["n_scored"] == row["n_ok"] == len(ok) and row["wer"] == pytest.approx(expected.wer)
    assert row["slo_met"] is True and row["batch_size_max"] >= 1


def test_load_starts_and_stops_its_own_server(cache_dir, workload, tmp_path):
    store = tmp_path / "own.sqlite"
    done = _cli("load", "-m", "whisper-tiny.en", "-e", "ct2", "--dtype", "int8", "--rate", "concurrency:2",
                "--duration", "2", "--requests", "4", "--length", "5", "--n-clips", "2", "--cache-dir", str(cache_dir),
                "--store", str(store), "--max-batch-size", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    with Store(store) as s:
        row = s.rows()[0]
    assert row["target_url"].startswith("http://127.0.0.1:") and row["max_batch_size"] == 2
    assert row["n_ok"] == 4 and row["offered_rate_rps"] > 0  # closed loop: the measured send rate
