"""The server scenario through the runner: `scenarios = ["server"]` serves each cell's configuration
with the real `asrperf serve` (a child process on 127.0.0.1) around a plugin engine with a fixed
service time, runs a short bounded search, and stores one row per cell that report and compare read.

This module is also the engine plugin: the cell's process and the server import it by name.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asrperf.engines.base import Engine, ModelSpec, Transcription
from asrperf.engines.capabilities import EngineDecl, register

SERVICE_S = 0.03  # per engine call
PER_ITEM_S = 0.005  # per extra request in a batch
STUB = str(Path(__file__).with_name("serve_stub.py"))


class FixedServiceEngine(Engine):
    """Sleeps a fixed time per call and answers a deterministic text per clip. It reports real
    weights so the cell takes the WER path (its text is wrong on purpose: WER is ~1, and the same
    served as offline). Each load leaves its process id under the cache dir, to check none lingers."""

    name = "toy_fixed_service"

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        pids = Path(self.cache_dir) / "toy-serve-pids"
        pids.mkdir(parents=True, exist_ok=True)
        (pids / str(os.getpid())).touch()
        self._info.update(weights="real", weights_source="none: a fixed-service-time stub", dtype=dtype,
                          device=device, engine_version="0", decoding="none")

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        time.sleep(SERVICE_S + PER_ITEM_S * (len(audios) - 1))
        return Transcription([f"clip of {len(a) // 1600} tenths" for a in audios], [1] * len(audios))


register(EngineDecl(
    name="toy_fixed_service", target=f"{__name__}:FixedServiceEngine", extra="none", requires=(),
    families=("whisper",), dtypes=("fp32",), candidates=lambda ctx: [], describe="a test engine",
    plugin_module=__name__,
))

SERVER = {"mode": "search", "slo": "p99<=1s", "max_batch_size": [1, 4], "max_wait_ms": 5.0, "probe_duration_s": 1.5,
          "probe_requests": 30, "timeout_s": 5.0, "max_probes": 2, "precision": 0.3, "startup_timeout_s": 120.0}


def _config(tmp_path, cache_dir, tiny_source, server=SERVER, **run):
    from asrperf.config import config_from_dict

    return config_from_dict({
        "source": tiny_source, "models": [{"name": "whisper-tiny.en", "engine": "toy_fixed_service"}],
        "server": server, "run": {"clip_lengths_s": [5], "n_clips": 2, "scenarios": ["server"], "energy": False,
                                  "store": str(tmp_path / "r.sqlite"), "cache_dir": str(cache_dir), **run}})


@pytest.fixture(scope="module")
def served_rows(tmp_path_factory, cache_dir, tiny_source):
    from asrperf.results.store import Store
    from asrperf.run.runner import run

    tmp = tmp_path_factory.mktemp("server-scenario")
    cfg = _config(tmp, cache_dir, tiny_source)
    summary = run(cfg)
    with Store(cfg.store) as s:
        rows = s.rows(summary.run_id)
        samples = {r["cell_key"]: s.samples(summary.run_id, r["cell_key"]) for r in rows}
    assert summary.failed == 0, [r.get("error") for r in rows]
    return cfg, rows, samples


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_one_row_per_batcher_setting_with_the_search_and_every_probe(served_rows, cache_dir):
    _, rows, samples = served_rows
    assert sorted(r["batch_size"] for r in rows) == [1, 4]  # [server] max_batch_size is the cell axis
    for r in rows:
        assert r["scenario"] == "server" and r["max_batch_size"] == r["batch_size"]
        assert r["search_status"] in ("found", "up_to_saturation", "below_lowest_probe")
        probes = r["server_probes"]
        assert [p["probe_role"] for p in probes[:2]] == ["synchronous", "saturation"]
        assert len(probes) == r["n_probes"] <= 2 + SERVER["max_probes"]
        assert all(p["n_requests"] <= SERVER["probe_requests"] for p in probes)
        assert all(p["requests"] for p in probes)  # raw per-request records kept
        answer = probes[r["answer_probe_index"]]
        if r["max_sustainable_rate_rps"] is not None:
            assert answer["offered_rate_rps"] == r["max_sustainable_rate_rps"] and answer["slo_met"]
        assert r["latency_s_p99"] == answer["latency_s_p99"]
        assert len(samples[r["cell_key"]]) == answer["n_ok"]  # the answer probe's latencies, in samples
        assert min(p["latency_s_p50"] for p in probes) >= SERVICE_S  # every answer took the engine's time
        assert r["server_exit_code"] == 0  # stopped with SIGTERM and drained
        assert r["target_url"].startswith("http://127.0.0.1:")
        assert r["served_offline_match_share"] == 1.0 and r["wer"] == pytest.approx(r["offline_wer"])
        assert r["transcripts"] and r["offline_transcripts"]
        assert r["server_setup"].startswith("max_wait_ms=5 max_queue=64 mode=search arrival=poisson:1 slo=p99<=1s")
    batched = next(r for r in rows if r["batch_size"] == 4)
    formed = {int(k) for p in batched["server_probes"] for k in p["batch_size_counts"]}
    assert max(formed) > 1  # the saturation probe (8 clients) fills batches
    unbatched = next(r for r in rows if r["batch_size"] == 1)
    assert {int(k) for p in unbatched["server_probes"] for k in p["batch_size_counts"]} == {1}
    pids = [int(p.name) for p in (Path(cache_dir) / "toy-serve-pids").iterdir()]
    assert pids and not [p for p in pids if _alive(p)]  # no server (nor cell) outlived its cell


def test_report_and_html_show_the_server_rows(served_rows):
    from asrperf.report.html import render_html
    from asrperf.report.serving_tables import serving_tables
    from asrperf.report.tables import to_markdown

    _, rows, _ = served_rows
    (table,) = serving_tables(rows)
    text = to_markdown([table])
    assert "max rate under SLO" in text and "batch ≤ 1" in text and "batch ≤ 4" in text
    page = render_html(rows, [], plots=[])
    assert "Serving under load" in page


def test_compare_matches_the_same_server_cells(served_rows):
    from asrperf.report.compare import compare

    cfg, _, _ = served_rows
    cmp = compare(cfg.store, cfg.store, Path(cfg.store))
    assert len(cmp.cells) == 2 and not cmp.only_a
    metrics = {m.metric.split(" at ")[0] for c in cmp.cells for m in c.metrics}
    assert {"max sustainable rate", "p99", "WER"} <= metrics
    assert not cmp.regressions  # a run against itself


def test_the_plan_must_fit_the_cell_timeout_and_vary_an_open_loop_rate(tmp_path, cache_dir, tiny_source):
    from asrperf.errors import ConfigError

    with pytest.raises(ConfigError, match="not below cell_timeout_s"):
        _config(tmp_path, cache_dir, tiny_source, cell_timeout_s=30.0)
    with pytest.raises(ConfigError, match="server.rate: 'concurrency:2'"):
        _config(tmp_path, cache_dir, tiny_source, server={**SERVER, "rate": "concurrency:2"})
    with pytest.raises(ConfigError, match="server.probe_requests"):
        _config(tmp_path, cache_dir, tiny_source, server={**SERVER, "probe_requests": 0})
    with pytest.raises(ConfigError, match=r"\[server\]"):
        _config(tmp_path, cache_dir, tiny_source, server={**SERVER, "bogus": 1})


def test_server_settings_count_in_the_run_identity_only_for_server_runs(tmp_path, cache_dir, tiny_source):
    a = _config(tmp_path, cache_dir, tiny_source)
    b = _config(tmp_path, cache_dir, tiny_source, server={**SERVER, "slo": "p90<=1s"})
    assert a.identity() != b.identity()
    la = _config(tmp_path, cache_dir, tiny_source, scenarios=["latency"])
    lb = _config(tmp_path, cache_dir, tiny_source, scenarios=["latency"], server={**SERVER, "slo": "p90<=1s"})
    assert la.identity() == lb.identity()


def test_cli_scenario_flag_selects_the_server_scenario():
    from asrperf.cli import _build_config

    cfg = _build_config(None, ["whisper-tiny.en"], None, None, [], None, None, None, None, None, None, None, None,
                        None, None, None, None, "int8", scenario=["server"], engines=["ct2"])
    assert cfg.scenarios == ("server",) and cfg.server.mode == "search"
    from asrperf.run.plan import expand

    assert [c.batch_size for c in expand(cfg)] == [8] * len(cfg.clip_lengths_s)  # the default max_batch_size


def test_a_server_whose_parent_is_killed_stops(tmp_path):
    # what a cell past cell_timeout_s gets: SIGKILL, so no `finally` runs; the kernel's parent-death
    # signal (SIGTERM) must still stop its server
    code = ("import sys, time\nfrom asrperf.load.launch import server_process\n"
            f"with server_process([sys.executable, {STUB!r}], startup_timeout_s=120, die_with_parent=True) as s:\n"
            "    print(s.process.pid, flush=True)\n    time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        server_pid = int(parent.stdout.readline())
        assert _alive(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 60
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
