"""The typed row schema: validation as a literal table, the flat round trip, and stores written
by the previous version (tests/data/store_v1.sqlite: a real run of asrperf before the schema,
five configurations x four scenarios, one failed cell) read and migrated."""

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from asrperf.results.schema import SCHEMA_VERSION, Row, SchemaError, Section, describe, doc, register_section
from asrperf.results.migrate import v1_to_v2
from asrperf.results.store import Store

TINY = "whisper-tiny.en"
V1_STORE = Path(__file__).parent / "data" / "store_v1.sqlite"
GOOD = {"engine": "ct2", "model": "whisper-tiny.en", "status": "ok", "threads": 2, "clip_length_s": 5.0,
        "latency_s_p50": 0.8, "wer": 0.05, "energy_measured": False, "token_policy": "real",
        "transcripts": [{"clip": "5s-000", "ref": "a", "hyp": "a"}]}


@pytest.mark.parametrize("change, message", [
    ({"latency_p50": 1.0}, "row field 'latency_p50' is not in the schema"),
    ({"threads": "2"}, "row field 'threads' (identity): '2' is a str, expected int"),
    ({"threads": True}, "row field 'threads' (identity): True is a bool, expected int"),
    ({"energy_measured": 1}, "row field 'energy_measured' (energy): 1 is a int, expected bool"),
    ({"wer": "5%"}, "row field 'wer' (accuracy): '5%' is a str, expected int/float"),
    ({"token_policy": "maybe"}, "row field 'token_policy' (provenance): 'maybe' is not one of real, fixed, n/a"),
    ({"status": "done"}, "row field 'status' (identity): 'done' is not one of ok, failed"),
    ({"weights_bytes_kind": "disk"}, "row field 'weights_bytes_kind' (memory): 'disk' is not one of in_memory, file_size"),
])
def test_a_row_that_does_not_match_is_refused_naming_the_field(change, message):
    with pytest.raises(SchemaError) as exc:
        Row.from_flat({**GOOD, **change})
    assert str(exc.value).startswith(message)


def test_flat_round_trip_sections_and_mapping_access():
    row = Row.from_flat(GOOD)
    assert row.flat() == GOOD
    assert row.section("latency").latency_s_p50 == 0.8 and row.section("identity").engine == "ct2"
    assert row["wer"] == 0.05 and row["cer"] is None and row.get("cer", "none") == "none"
    assert "wer" in row and "cer" not in row
    with pytest.raises(KeyError, match="'latency_p50' is not a row field"):
        row.get("latency_p50")  # a misspelt key fails loudly instead of reading None
    assert int(1) == Row.from_flat({"threads": 1})["threads"]  # ints are floats where a float is declared
    assert Row.from_flat({"latency_s_p50": 1})["latency_s_p50"] == 1


def test_unknown_keys_are_kept_aside_when_reading():
    row = Row.from_flat({**GOOD, "from_the_future_s": 3.0}, strict=False)
    assert row.extra == {"from_the_future_s": 3.0} and row["from_the_future_s"] == 3.0
    assert row.flat()["from_the_future_s"] == 3.0


def test_a_section_cannot_redeclare_a_field():
    @dataclass(frozen=True)
    class Clash(Section):
        name: ClassVar[str] = "clash"
        wer: float | None = doc("again")

    with pytest.raises(SchemaError, match="field 'wer' is already declared by section accuracy"):
        register_section(Clash)


def test_every_field_is_documented_and_has_a_unit_or_a_kind_in_its_name():
    fields = describe()
    assert len({f for _, f, _, _ in fields}) == len(fields)  # one name, one section
    assert all(d for *_, d in fields), [f for _, f, _, d in fields if not d]


def _v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "v1.sqlite"
    shutil.copy(V1_STORE, path)
    return path


def test_a_version_1_store_is_read_with_the_typed_facts_derived(tmp_path):
    with Store(_v1_copy(tmp_path)) as store:
        rows = {(r["model"], r["engine"], r["variant"], r["scenario"]): r for r in store.rows()}
    assert len(rows) == 20
    tf, ct2 = rows[(TINY, "transformers", "fp32", "latency")], rows[(TINY, "ct2", "int8", "latency")]
    assert tf["runs_torch"] is True and ct2["runs_torch"] is False
    assert tf["accuracy_reference"] is True and ct2["accuracy_reference"] is False
    assert tf["token_policy"] == "real" and tf["weights_bytes_kind"] == "in_memory"
    assert rows[("wav2vec2-base", "transformers", "fp32", "latency")]["token_policy"] == "n/a"
    assert rows[("parakeet-tdt-0.6b-v3", "transformers", "fp32", "latency")]["token_policy"] == "fixed"
    assert ct2["weights_bytes_kind"] == "file_size"
    assert tf["flops_probe_ran"] is True  # the v1 run had flops = true
    assert ct2["compute_type"] == "int8_float32" and ct2["wer"] is not None
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"]


def test_a_writer_migrates_a_version_1_store_once_and_reads_the_same(tmp_path):
    raw = sqlite3.connect(f"file:{V1_STORE}?mode=ro", uri=True)
    lifted = []
    for rid, key, st, err, row_json in raw.execute(
            "SELECT run_id, cell_key, status, error, row_json FROM cells ORDER BY started_at"):
        flat = {**v1_to_v2(json.loads(row_json)), "run_id": rid, "cell_key": key, "status": st, "error": err}
        lifted.append(Row.from_flat(flat).flat())  # strict: a migrated v1 row matches the schema exactly
    path = _v1_copy(tmp_path)
    with Store(path) as s:
        assert s.version == SCHEMA_VERSION
        migrated = [r.flat() for r in s.rows()]
    assert migrated == lifted
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    n_samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert n_samples > 0  # the raw per-call times survive the migration


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asrperf", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_report_and_compare_read_a_version_1_store(tmp_path):
    path = _v1_copy(tmp_path)
    res = _cli("report", "--store", str(path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "whisper-tiny.en" in res.stdout and "wav2vec2-base" in res.stdout and "recommend" in res.stdout.lower()
    res = _cli("compare", str(path), str(path), "-f", "markdown", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "0 regression(s), 0 improvement(s) beyond 5% in 19 matched cell(s)" in res.stdout


def test_a_committed_row_is_validated(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        s.begin_run("r", {}, {})
        with pytest.raises(SchemaError, match="'latency_p50'"):
            s.commit_cell("r", "k", {**GOOD, "latency_p50": 1.0}, 0.0)
        assert s.rows() == []
        s.commit_cell("r", "k", GOOD, 0.0)
        (row,) = s.rows()
    assert dataclasses.asdict(row.section("latency"))["latency_s_p50"] == 0.8
