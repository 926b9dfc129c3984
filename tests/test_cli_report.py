"""The report and export paths from a store built by a real (small) run, and `doctor`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrperf.config import config_from_dict
from asrperf.report.tables import CONTENDED_MARK, study_tables, to_markdown
from asrperf.results.store import Store
from asrperf.run.runner import run


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir, tiny_source):
    tmp = tmp_path_factory.mktemp("report")
    cfg = config_from_dict({
        "source": tiny_source,
        "models": [{"name": "whisper-tiny.en", "weights": "real"}, {"name": "whisper-tiny", "weights": "random"}],
        "timing": {"warmup_calls": 1, "min_calls": 2, "min_time_s": 0.0},
        "run": {"clip_lengths_s": [5], "n_clips": 2, "store": str(tmp / "r.sqlite"), "cache_dir": str(cache_dir)},
    })
    assert run(cfg).failed == 0
    return tmp / "r.sqlite"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "asrperf", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_rows_carry_provenance_and_measurements(store):
    with Store(store) as s:
        rows = {r["model"]: r for r in s.rows()}
    real, rnd = rows["whisper-tiny.en"], rows["whisper-tiny"]
    assert real["weights"] == "real" and rnd["weights"] == "random"
    assert 0 <= real["wer"] < 0.3 and real["wer_ci_low"] <= real["wer"] <= real["wer_ci_high"]
    assert rnd["wer"] is None and "random weights" in rnd["wer_missing_reason"]
    for r in (real, rnd):
        assert r["n_calls"] == 2 and r["latency_s_min"] <= r["latency_s_p50"] <= r["latency_s_max"]
        assert r["rtfx"] == pytest.approx(5.0 * r["n_calls"] / sum(s_ for s_ in Store(store).samples(r["run_id"], r["cell_key"])))
        assert r["timed_region"] == ["feature_extraction", "host_to_device", "model_forward_and_decoding", "detokenize"]
        assert r["threads"] >= 1 and r["peak_rss_bytes"] > 100 * 2**20 and r["isolated"] is True
    assert rnd["tokens_per_audio_s"] == pytest.approx(3.0)
    for r in (real, rnd):  # energy always says how it was obtained, and per-sample is derived once
        assert r["energy_method"].startswith(("measured", "estimated"))
        assert r["energy_j"] > 0 and r["energy_j_per_sample"] == pytest.approx(r["energy_j"] / r["n_calls"])
        assert r["energy_j_per_audio_s"] == pytest.approx(r["energy_j"] / (5.0 * r["n_calls"]))
    assert len(real["transcripts"]) == 2


def test_study_table_shape(store):
    with Store(store) as s:
        tables = study_tables(s.rows())
    assert len(tables) == 1 and tables[0].columns == ["whisper-tiny.en", "whisper-tiny"]
    names = [name for name, _ in tables[0].rows]
    assert "latency ms p50 (p90), b1, 5 s" in names and "WER % [95% CI], 5 s" in names
    wer = dict(tables[0].rows)["WER % [95% CI], 5 s"]
    assert wer[1] == "— (random weights)" and wer[0][0].isdigit()
    md = to_markdown(tables)
    assert "| metric | whisper-tiny.en | whisper-tiny |" in md
    energy = dict(tables[0].rows)["energy J/sample, b1, 5 s"]
    # (a row measured on a busy machine also carries the contended mark)
    assert all(v.removesuffix(CONTENDED_MARK).endswith(("(measured)", "(estimated)")) for v in energy)


def test_report_exports_csv_and_json(store, tmp_path):
    res = _cli("report", "--store", str(store), "-f", "json", "-o", str(tmp_path / "rows.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["model"] for r in rows} == {"whisper-tiny.en", "whisper-tiny"}
    res = _cli("report", "--store", str(store), "-f", "csv", "-o", str(tmp_path / "rows.csv"), cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "rows.csv").read_text().count("\n") == 3
    res = _cli("report", "--store", str(store), cwd=tmp_path)
    assert res.returncode == 0 and "whisper-tiny.en" in res.stdout and "RTFx" in res.stdout


def test_report_of_every_run_in_the_store(store, tmp_path):
    res = _cli("report", "--store", str(store), "--run", "all", "-f", "json", "-o", str(tmp_path / "all.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr  # "all" is no run id: it must not be looked up as one
    assert {r["model"] for r in json.loads((tmp_path / "all.json").read_text())} == {"whisper-tiny.en", "whisper-tiny"}


def test_doctor_lists_engines_and_devices(tmp_path):
    res = _cli("doctor", cwd=tmp_path)
    assert res.returncode == 0
    for component in ("engine transformers", "built-in TTS corpus", "cpu", "cuda"):
        assert component in res.stdout


def test_a_decoding_mismatch_between_columns_is_flagged():
    base = {"status": "ok", "device": "cpu", "engine": "transformers", "dtype": "fp32", "clip_length_s": 5.0,
            "batch_size": 1, "latency_s_p50": 1.0, "latency_s_p90": 1.0, "n_calls": 3}
    rows = [{**base, "model": "a", "decoding": "greedy (num_beams=1), temperature 0, no fallback"},
            {**base, "model": "b", "engine": "ct2", "decoding": "beam 5, temperature fallback"}]
    notes = study_tables(rows)[0].notes
    assert any(n.startswith("WARNING: decoding settings differ") for n in notes)
    same = study_tables([rows[0], {**rows[1], "decoding": rows[0]["decoding"]}])[0].notes
    assert not any("differ" in n for n in same)


def test_missing_extra_message_keeps_the_extra_name(tmp_path):
    # rich markup would swallow "[ct2]" in "pip install 'asrperf[ct2]'": the fix must reach the user
    code = ("import sys; from asrperf.errors import MissingExtraError; import asrperf.cli as c\n"
            "@c.app.command()\ndef boom():\n    raise MissingExtraError('ctranslate2', 'engine ct2', 'ct2')\n"
            "sys.argv=['asrperf','boom']; c.main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "pip install 'asrperf[ct2]'" in res.stderr


def test_profile_command_is_a_one_cell_profile_run(tmp_path, cache_dir):
    store = tmp_path / "prof" / "r.sqlite"
    res = _cli("profile", "-m", "whisper-tiny", "--weights", "random", "--length", "5", "--active", "1",
               "--store", str(store), "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "matmul" in res.stdout and "encoder" in res.stdout  # the report's own profile tables
    with Store(store) as s:
        (row,) = s.rows()
    assert row["scenario"] == "profile" and row["weights"] == "random" and row["profiled_calls"] == 1
    assert abs(sum(r["share"] for r in row["op_categories"]) - 1) < 1e-3
    import gzip

    assert Path(row["trace_path"]).is_file() and "trace (open in chrome://tracing or Perfetto)" in res.stderr
    assert "traceEvents" in json.loads(gzip.open(row["trace_path"]).read())

def test_status_lines_are_not_wrapped_at_80_columns_when_piped():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    code = "from asrperf import cli; print(cli.console.width, cli.out.width)"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.stdout.split() == ["200", "200"], res.stderr


def test_run_prints_one_plain_line_per_cell_state_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    from asrperf import cli
    from asrperf.run import runner
    from asrperf.run.plan import expand

    def fake_run(cfg, on_cell, **_):
        (cell, *_) = expand(cfg)
        on_cell(cell, "running on local", 0, 1)
        on_cell(cell, "ok", 0, 1)
        return runner.RunSummary("r1", cfg.store, ran=1)

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setattr(runner, "check", lambda cfg: None)
    monkeypatch.setattr(cli, "_print_report", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["asrperf", "run", "-m", "whisper-tiny.en", "--lengths", "5",
                                      "--store", str(tmp_path / "r.sqlite")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
        sys.exit(0)
    assert (exc.value.code or 0) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " cell " in ln]
    assert len(lines) == 2, lines
    assert lines[0].endswith("cell 0/1 done; whisper-tiny.en 5 s b1 cpu: running on local")
    assert " cell 1/1 done; whisper-tiny.en 5 s b1 cpu: ok after " in lines[1] and lines[1].endswith(" s")
