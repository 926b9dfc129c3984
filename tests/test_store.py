import json

import pytest

from asrperf.results.store import Store, export_rows


def row(model: str, p50: float) -> dict:
    return {"status": "ok", "model": model, "device": "cpu", "latency_s_p50": p50, "transcripts": [{"hyp": "x"}]}


def test_round_trip_rows_and_raw_samples(tmp_path):
    path = tmp_path / "r.sqlite"
    with Store(path) as s:
        s.begin_run("run1", {"a": 1}, {"cpu": "x"})
        s.commit_cell("run1", "k1", row("m1", 0.5), 0.0, [0.9], [0.5, 0.6, 0.4])
        s.commit_cell("run1", "k2", {"status": "failed", "error": "boom", "model": "m2", "device": "cpu"}, 1.0)
    with Store(path) as s:
        rows = s.rows("run1")
        assert [r["cell_key"] for r in rows] == ["k1", "k2"]
        assert rows[0]["latency_s_p50"] == 0.5 and rows[0]["transcripts"] == [{"hyp": "x"}]
        assert rows[1]["status"] == "failed" and rows[1]["error"] == "boom"
        assert s.samples("run1", "k1") == [0.5, 0.6, 0.4]
        assert s.samples("run1", "k1", "warmup") == [0.9]
        assert s.cell_status("run1") == {"k1": "ok", "k2": "failed"}
        assert s.runs()[0]["config"] == {"a": 1}


def test_retrying_a_cell_replaces_it_without_duplicates(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        s.begin_run("r", {}, {})
        s.commit_cell("r", "k", {"status": "failed", "error": "oom"}, 0.0, [], [1.0, 2.0])
        s.commit_cell("r", "k", row("m", 0.1), 1.0, [], [0.1])
        assert len(s.rows("r")) == 1 and s.rows("r")[0]["status"] == "ok"
        assert s.samples("r", "k") == [0.1]


def test_export_csv_and_json(tmp_path):
    rows = [row("m1", 0.5), {**row("m2", 0.7), "extra": 3}]
    j = export_rows(rows, tmp_path / "out.json")
    assert json.loads(j.read_text())[1]["extra"] == 3
    c = export_rows(rows, tmp_path / "out.csv").read_text().splitlines()
    assert c[0].split(",")[:4] == ["status", "model", "device", "latency_s_p50"]
    assert c[0].endswith("extra") and len(c) == 3
    with pytest.raises(Exception, match="use .csv or .json"):
        export_rows(rows, tmp_path / "out.xlsx")
