"""The ray executor on a real Ray: a simulated cluster (ray.cluster_utils.Cluster) of three worker
nodes with two CPUs and one fake GPU each, and a zero-CPU head that holds the driver.

Cells run the real runner, worker, latency scenario and store; only the engine is a stub that sleeps
a fixed time per call (tests/ray_stub.py), so a dozen cells cost seconds and one can be kept running
long enough to kill its node.
"""

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray executor needs ray: pip install 'asrperf[ray]'")

import ray_stub  # registers the toy_sleep engine
from ray.cluster_utils import Cluster

from asrperf.config import config_from_dict
from asrperf.errors import ConfigError
from asrperf.results.store import Store
from asrperf.run.clip_bundle import ClipBundle
from asrperf.run.plan import expand
from asrperf.run.ray_executor import cell_resources
from asrperf.run.runner import prepare, run

TESTS = Path(__file__).resolve().parent
NODES = 3
CPUS_PER_NODE = 2
LENGTHS = [3, 4, 4.5, 5]  # each packs >= 90% speech from the 30 test sentences (min_speech_share)


@pytest.fixture(scope="module")
def cluster():
    # nodes are processes started from here: they (and their workers) inherit this PYTHONPATH, so
    # workers import asrperf from this tree and the stub engine from tests/
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old) if p)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20})
    workers = [c.add_node(num_cpus=CPUS_PER_NODE, num_gpus=1, object_store_memory=100 * 2**20) for _ in range(NODES)]
    c.wait_for_nodes()
    yield c, workers
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _config(tmp_path, cache_dir, tiny_source, lengths=LENGTHS, batches=(1, 2, 3), min_time_s=0.0, **run_keys):
    return config_from_dict({
        "source": tiny_source, "models": [{"name": "whisper-tiny.en", "engine": "toy_sleep"}],
        "timing": {"warmup_calls": 0, "min_calls": 1, "min_time_s": min_time_s, "max_calls": 10_000,
                   "max_time_s": max(1.0, min_time_s)},
        "run": {"clip_lengths_s": list(lengths), "batch_sizes": list(batches), "n_clips": 1, "threads": [1],
                "energy": False, "store": str(tmp_path / "r.sqlite"), "cache_dir": str(cache_dir), **run_keys},
    })


def _rows(cfg):
    with Store(cfg.store) as s:
        rows = s.rows(cfg.identity())
        n = s.db.execute("SELECT count(*) FROM cells").fetchone()[0]
    assert n == len(rows)  # one run, every row read back
    return rows


def test_a_cell_asks_ray_for_its_gpu_or_threads():
    assert cell_resources("cuda", 8) == {"num_cpus": 1, "num_gpus": 1}
    assert cell_resources("cuda:0", 1) == {"num_cpus": 1, "num_gpus": 1}
    assert cell_resources("cpu", 4) == {"num_cpus": 4, "num_gpus": 0}


def test_the_executor_is_not_part_of_the_run_identity_and_is_checked(tmp_path, cache_dir, tiny_source):
    local = _config(tmp_path, cache_dir, tiny_source)
    on_ray = _config(tmp_path, cache_dir, tiny_source, executor="ray", ray_address="auto")
    assert local.identity() == on_ray.identity()  # a run started locally is finished on Ray, and back
    for bad, message in (({"executor": "slurm"}, "executor (--executor): 'slurm' is not one of local, ray"),
                         ({"ray_address": "auto"}, "needs executor = 'ray'"),
                         ({"executor": "ray", "isolate": False}, "own worker process"),
                         ({"executor": "ray", "devices": ["cuda:1"]}, "use 'cuda'")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _config(tmp_path, cache_dir, tiny_source, **bad)


def test_clips_travel_with_their_hash_and_a_changed_byte_is_refused(tmp_path, cache_dir, tiny_source):
    from asrperf.data.clips import ClipCache
    from asrperf.errors import DataError

    cfg = _config(tmp_path, cache_dir, tiny_source, lengths=[5])
    key = prepare(cfg)[5.0]
    bundle = ClipBundle.from_cache(cache_dir, key, 1)
    root = bundle.unpack(tmp_path / "node", bundle.sha256)
    (shipped,) = ClipCache(root).load(key, 1)
    (original,) = ClipCache(cache_dir).load(key, 1)
    assert (shipped.audio == original.audio).all() and shipped.text == original.text
    wav = next(n for n in bundle.files if n.endswith(".wav"))
    data = bytearray(bundle.files[wav])
    data[-1] ^= 1
    tampered = dataclasses.replace(bundle, files={**bundle.files, wav: bytes(data)})
    with pytest.raises(DataError, match="hash to"):
        tampered.unpack(tmp_path / "other", bundle.sha256)


def test_a_sweep_started_locally_finishes_on_the_cluster_with_the_same_cells(tmp_path, cache_dir, tiny_source, cluster):
    c, _ = cluster
    local = _config(tmp_path, cache_dir, tiny_source)
    keys = [cell.key for cell in expand(local)]
    assert len(keys) == 12

    class Stop(Exception):
        pass

    done = []

    def stop_after_three(cell, state, i, n):
        if state == "ok":
            done.append(cell.key)
            if len(done) == 3:
                raise Stop

    with pytest.raises(Stop):
        run(local, on_cell=stop_after_three)
    on_ray = dataclasses.replace(local, executor="ray", ray_address=c.address)
    summary = run(on_ray)
    assert (summary.skipped, summary.ran, summary.failed) == (3, 9, 0)
    rows = _rows(on_ray)
    assert sorted(r["cell_key"] for r in rows) == sorted(keys)  # every cell once: none lost, none twice
    assert all(r["status"] == "ok" for r in rows)
    by_executor = {e: [r for r in rows if r["executor"] == e] for e in ("local", "ray")}
    assert len(by_executor["local"]) == 3 and len(by_executor["ray"]) == 9
    ray_nodes = {r["node_id"] for r in by_executor["ray"]}
    assert len(ray_nodes) == NODES  # 9 one-CPU cells on 3 nodes of 2 CPUs: every node took some
    assert sum(summary.cells_per_node.values()) == 9 and len(summary.cells_per_node) == NODES
    for r in by_executor["ray"]:
        assert r["isolated"] is True and r["node_hostname"] and r["node_cpu_model"] and len(r["clips_sha256"]) == 64
        assert r["n_calls"] >= 1 and r["latency_s_p50"] >= ray_stub.SERVICE_S
    with Store(on_ray.store) as s:
        (run_row,) = s.runs()
    assert set(run_row["env"]["nodes"]) == ray_nodes  # each node's environment, captured once, kept with the run


def test_a_killed_driver_then_a_rerun_loses_and_duplicates_nothing(tmp_path, cache_dir, tiny_source, cluster):
    c, _ = cluster
    cfg = _config(tmp_path, cache_dir, tiny_source, min_time_s=1.5, executor="ray", ray_address=c.address)
    prepare(cfg)  # the clips exist before the driver is started and killed
    script = textwrap.dedent(f"""
        import ray_stub
        from asrperf.config import load_config
        from asrperf.run.runner import run
        run(load_config({str(tmp_path / "run.toml")!r}))
    """)
    from asrperf.config import dump_config

    (tmp_path / "run.toml").write_text(dump_config(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed, deadline = 0, time.time() + 120
    while time.time() < deadline and committed < 2:
        time.sleep(0.2)
        try:
            committed = sqlite3.connect(cfg.store).execute("SELECT count(*) FROM cells").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    assert committed >= 2, "no cells finished within the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, with cells in flight on the cluster
    proc.wait()
    with Store(cfg.store) as s:
        before = {r["cell_key"]: r for r in s.rows()}
    assert 2 <= len(before) < 12
    summary = run(cfg)  # its claims were made by a pid that is gone: taken over at once
    assert summary.skipped == len(before) and summary.ran == 12 - len(before) and summary.failed == 0
    rows = _rows(cfg)
    assert sorted(r["cell_key"] for r in rows) == sorted(cell.key for cell in expand(cfg))
    for r in rows:
        if r["cell_key"] in before:  # kept as committed, not measured again
            assert r["latency_s_p50"] == before[r["cell_key"]]["latency_s_p50"]


@pytest.mark.slow
def test_a_lost_node_fails_its_running_cells_and_retry_failed_completes_them(tmp_path, cache_dir, tiny_source,
                                                                             cluster):
    # last in the module: it removes a node
    c, workers = cluster
    cfg = _config(tmp_path, cache_dir, tiny_source, batches=(1, 2), min_time_s=6.0, executor="ray",
                  ray_address=c.address)
    by_id = {w.node_id: w for w in workers}
    running: dict[str, set[str]] = {}
    killed: list[str] = []

    def kill_a_busy_node(cell, state, i, n):
        # runs on the runner's thread: the node is gone before the runner looks at its cells again
        if not state.startswith("running on ") or killed:
            return
        node = next(nid for nid in by_id if state.endswith(nid[:8]))
        running.setdefault(node, set()).add(cell.key)
        if len(running[node]) == CPUS_PER_NODE:  # both of its slots busy
            killed.append(node)
            c.remove_node(by_id[node], allow_graceful=False)

    summary = run(cfg, on_cell=kill_a_busy_node)
    assert killed, "no node ever ran two cells at once"
    lost = running[killed[0]]
    rows = {r["cell_key"]: r for r in _rows(cfg)}
    failed = {k for k, r in rows.items() if r["status"] == "failed"}
    assert failed == lost and summary.failed == len(lost)
    for k in failed:
        assert rows[k]["error"].startswith("node died: ") and killed[0] in rows[k]["error"]
    assert all(r["status"] == "ok" for k, r in rows.items() if k not in lost)  # the rest completed
    assert len(rows) == len(expand(cfg))
    again = run(cfg, retry_failed=True)
    assert (again.ran, again.failed, again.skipped) == (len(lost), 0, len(rows) - len(lost))
    after = {r["cell_key"]: r for r in _rows(cfg)}
    assert all(r["status"] == "ok" for r in after.values()) and set(after) == set(rows)
    assert killed[0] not in {after[k]["node_id"] for k in lost}  # re-run elsewhere


def test_without_ray_the_run_stops_with_one_error_naming_the_extra(tmp_path, cache_dir, tiny_source, monkeypatch):
    from asrperf.errors import MissingExtraError
    from asrperf.run.runner import check

    monkeypatch.setitem(sys.modules, "ray", None)  # what a machine without the extra sees: ImportError
    cfg = _config(tmp_path, cache_dir, tiny_source, executor="ray")
    with pytest.raises(MissingExtraError, match=r"`ray` is needed for executor ray: pip install 'asrperf\[ray\]'"):
        check(cfg)
    assert not (tmp_path / "r.sqlite").exists()
