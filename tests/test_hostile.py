"""Hostile input, as a new user would try it: each case is a literal row of
input -> the one-line message (a stable prefix) -> exit code -> the store left as it was.

The CLI runs in this process through its real entry point (`asrperf.cli.main`: the same error
mapping as the console script), so the table costs no interpreter start per case.
"""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from asrperf.cli import main
from asrperf.results.store import Store

W2V = ["-m", "wav2vec2-base", "--weights", "random"]


def cli(monkeypatch, capsys, args: list[str]) -> tuple[int, list[str], str]:
    """(exit code, the non-empty stderr lines, stdout) of `asrperf ARGS`."""
    monkeypatch.setattr(sys, "argv", ["asrperf", *args])
    with pytest.raises(SystemExit) as exc:
        main()
        sys.exit(0)
    cap = capsys.readouterr()
    return exc.value.code or 0, [line for line in cap.err.splitlines() if line.strip()], cap.out


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> its sha256 (SQLite's empty -wal/-shm coordination files aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


ROW = {"status": "ok", "engine": "transformers", "model": "m", "model_name": "m", "dtype": "fp32", "variant": "fp32",
       "weights": "random", "device": "cpu", "threads": 2, "clip_length_s": 5.0, "batch_size": 1,
       "scenario": "latency", "latency_s_p50": 0.5, "latency_s_p90": 0.6, "n_calls": 3, "rtfx": 10.0,
       "throughput_samples_per_s": 2.0}


def make_store(path: Path, rows: list[dict] = (ROW,)) -> Path:
    with Store(path) as s:
        s.begin_run("r1", {"models": []}, {"cpu_model": "Test CPU"})
        for i, r in enumerate(rows):
            s.commit_cell("r1", f"k{i}", dict(r), float(i), [], [0.5, 0.5, 0.5])
    return path


# ---- setups: each writes what its case needs under tmp and returns nothing ----

def latin1_manifest(tmp: Path) -> None:
    import numpy as np
    import soundfile as sf

    sf.write(tmp / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp / "m.csv").write_bytes("audio,text\na.wav,café au lait\n".encode("latin-1"))


def latin1_transcript(tmp: Path) -> None:
    import numpy as np
    import soundfile as sf

    (tmp / "audio").mkdir()
    sf.write(tmp / "audio" / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp / "audio" / "a.txt").write_bytes("déjà vu".encode("latin-1"))


def toml(text: str):
    def write(tmp: Path) -> None:
        (tmp / "run.toml").write_text(text + '\n[[models]]\nname = "wav2vec2-base"\nweights = "random"\n'
                                      if "[[models]]" not in text else text)
    return write


def corrupt_store(tmp: Path) -> None:
    (tmp / "s.sqlite").write_bytes(b"this is not a database, only some text " * 50)


def zero_byte_store(tmp: Path) -> None:
    (tmp / "s.sqlite").touch()


def dropped_table_store(tmp: Path) -> None:
    make_store(tmp / "s.sqlite")
    db = sqlite3.connect(tmp / "s.sqlite")
    db.execute("DROP TABLE cells")
    db.commit()
    db.close()


def regular_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a folder")


def nothing(tmp: Path) -> None:
    pass


# setup, args ({tmp} is the case's folder), the message after "error: " (a prefix), exit code
CASES = [
    ("latin-1 manifest", latin1_manifest, ["run", "--manifest", "{tmp}/m.csv", *W2V, "--store", "{tmp}/s.sqlite"],
     "manifest {tmp}/m.csv is not utf-8 text (byte 0xe9 on line 2); save it as UTF-8, or declare its encoding in "
     "the [source] table, e.g. encoding = 'latin-1'", 2),
    ("latin-1 transcript", latin1_transcript, ["run", "--folder", "{tmp}/audio", *W2V, "--store", "{tmp}/s.sqlite"],
     "transcript {tmp}/audio/a.txt is not utf-8 text (byte 0xe9 on line 1)", 2),
    ("n_clips = \"one\"", toml('[run]\nn_clips = "one"'), ["run", "{tmp}/run.toml"],
     "{tmp}/run.toml [run] n_clips: 'one' is not a whole number", 2),
    ("min_calls = \"three\"", toml('[timing]\nmin_calls = "three"'), ["run", "{tmp}/run.toml"],
     "{tmp}/run.toml [timing] min_calls: 'three' is not a whole number", 2),
    ("store = 5", toml("[run]\nstore = 5"), ["run", "{tmp}/run.toml"],
     "{tmp}/run.toml [run] store: 5 is not a string", 2),
    ("name = 42", toml("[[models]]\nname = 42\n"), ["run", "{tmp}/run.toml"],
     "{tmp}/run.toml [[models]] #1 name: 42 is not a string", 2),
    ("threads = 1.5 in TOML", toml("[run]\nthreads = [1.5]"), ["run", "{tmp}/run.toml"],
     "{tmp}/run.toml [run] threads: 1.5 is not a whole number", 2),
    ("store under /proc", nothing, ["run", *W2V, "--store", "/proc/asrperf-nope/r.sqlite"],
     "results store /proc/asrperf-nope/r.sqlite cannot be created (No such file or directory", 2),
    ("store under a file", regular_file, ["run", *W2V, "--store", "{tmp}/afile/r.sqlite"],
     "results store {tmp}/afile/r.sqlite cannot be created: {tmp}/afile is a file, not a folder", 2),
    ("run into a corrupt store", corrupt_store, ["run", *W2V, "--store", "{tmp}/s.sqlite"],
     "results store {tmp}/s.sqlite cannot be created or opened for writing (file is not a database)", 2),
    ("report on a corrupt store", corrupt_store, ["report", "--store", "{tmp}/s.sqlite"],
     "{tmp}/s.sqlite is not an asrperf results store (file is not a database)", 2),
    ("report on a zero-byte store", zero_byte_store, ["report", "--store", "{tmp}/s.sqlite"],
     "{tmp}/s.sqlite is not an asrperf results store (an empty file)", 2),
    ("report on a store without cells", dropped_table_store, ["report", "--store", "{tmp}/s.sqlite"],
     "{tmp}/s.sqlite is not an asrperf results store (it has no table cells)", 2),
    ("compare with a zero-byte store", zero_byte_store, ["compare", "{tmp}/s.sqlite", "{tmp}/s.sqlite"],
     "A '{tmp}/s.sqlite': {tmp}/s.sqlite is not an asrperf results store (an empty file)", 2),
    ("--device cuda without CUDA", nothing, ["run", *W2V, "--device", "cuda", "--store", "{tmp}/s.sqlite"],
     "device 'cuda': this machine has no CUDA device", 2),
    ("--threads 1.5", nothing, ["run", *W2V, "--threads", "1.5"],
     "--threads: '1.5' is not a comma-separated list of whole numbers", 2),
    ("--batch 1.7", nothing, ["run", *W2V, "--batch", "1.7"],
     "--batch: '1.7' is not a comma-separated list of whole numbers", 2),
    ("--timeout -1", nothing, ["run", *W2V, "--timeout", "-1"],
     "cell_timeout_s (--timeout): -1.0 must be > 0 seconds", 2),
    ("--wait-quiet -5", nothing, ["run", *W2V, "--wait-quiet", "-5", "--store", "{tmp}/s.sqlite"],
     "--wait-quiet: -5 must be >= 0 seconds", 2),
    ("-e ort --dtype bf16", nothing, ["run", "-m", "whisper-tiny.en", "-e", "ort", "--dtype", "bf16"],
     "whisper-tiny.en: dtype = 'bf16' with engine = 'ort': engine ort runs fp32, int8; choose one of them or another engine", 2),
    ("-e nemo --dtype fp16", nothing, ["run", "-m", "whisper-tiny.en", "-e", "nemo", "--dtype", "fp16"],
     "whisper-tiny.en: dtype = 'fp16' with engine = 'nemo': engine nemo runs fp32; choose one of them or another engine", 2),
]


@pytest.mark.parametrize("name, setup, args, message, code", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, name, setup, args, message,
                                                       code):
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = fingerprint(tmp_path)
    got, lines, _ = cli(monkeypatch, capsys, [a.format(tmp=tmp_path) for a in args])
    assert got == code, lines
    assert len(lines) == 1, lines  # one line, never a traceback
    assert lines[0].startswith("error: " + message.format(tmp=tmp_path)), lines[0]
    assert fingerprint(tmp_path) == before, "the store (or anything else) was changed"


def test_speech_share_below_the_minimum_is_an_error_unless_allowed(tmp_path, monkeypatch, capsys, cache_dir,
                                                                   tiny_source):
    # 30 sentences hold ~64 s of speech: the third 30 s clip gets only what is left (~6.7 s)
    import tomli_w

    base = {"source": tiny_source, "models": [{"name": "wav2vec2-base", "weights": "random"}],
            "run": {"clip_lengths_s": [30], "n_clips": 3, "cache_dir": str(cache_dir),
                    "store": str(tmp_path / "s.sqlite")}}
    (tmp_path / "run.toml").write_text(tomli_w.dumps(base))
    code, lines, _ = cli(monkeypatch, capsys, ["prepare", str(tmp_path / "run.toml")])
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: clip 30s-002 from source builtin:harvard-joe:30 holds 6.7 s of speech in 30 s "
                               "(22%, below min_speech_share 0.9)"), lines[0]
    base["run"]["min_speech_share"] = 0.2  # the explicit key that accepts the padding
    (tmp_path / "run.toml").write_text(tomli_w.dumps(base))
    code, lines, out = cli(monkeypatch, capsys, ["prepare", str(tmp_path / "run.toml")])
    assert code == 0 and "30 s: 3 clip(s)" in out, lines


def test_a_rerun_that_skips_stored_failed_cells_says_so_and_exits_non_zero(tmp_path, monkeypatch, capsys, cache_dir,
                                                                           tiny_source):
    import tomli_w

    from asrperf.config import load_config
    from asrperf.run.plan import expand

    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps({"source": tiny_source, "models": [{"name": "wav2vec2-base", "weights": "random"}],
                                     "run": {"clip_lengths_s": [3], "n_clips": 1, "cache_dir": str(cache_dir),
                                             "store": str(tmp_path / "s.sqlite")}}))
    cfg = load_config(config)
    (cell,) = expand(cfg)
    with Store(cfg.store) as s:  # an earlier attempt of this run, whose only cell failed
        s.begin_run(cfg.identity(), cfg.to_dict(), {})
        s.commit_cell(cfg.identity(), cell.key, {**ROW, "status": "failed", "error": "out of memory"}, 0.0)
    code, lines, _ = cli(monkeypatch, capsys, ["run", str(config)])
    text = " ".join(" ".join(lines).split())
    assert code == 3, lines
    assert "0 cell(s) measured, 1 already done, 0 failed" in text
    assert ("1 cell(s) are stored as failed (by an earlier attempt or another run on this store) and were not "
            "re-run; --retry-failed re-runs them") in text


def test_markdown_escapes_html(tmp_path, monkeypatch, capsys):
    evil = "<script>alert(1)</script>"
    make_store(tmp_path / "s.sqlite", [{**ROW, "model": evil, "model_name": evil}])
    code, _, out = cli(monkeypatch, capsys, ["report", "--store", str(tmp_path / "s.sqlite"), "-f", "markdown"])
    assert code == 0
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out


def _read_only_copy(store: Path, folder: Path) -> Path | None:
    """`store` copied onto read-only media: a read-only tmpfs as root (root ignores file modes), else
    a folder and file without write permission. None where neither can be made here."""
    folder.mkdir()
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
        if ok.returncode != 0:
            return None
        shutil.copy(store, folder / store.name)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        shutil.copy(store, folder / store.name)
        os.chmod(folder / store.name, 0o444)
        os.chmod(folder, 0o555)
    return folder / store.name


def test_report_and_compare_read_a_store_on_read_only_media(tmp_path, monkeypatch, capsys):
    source = make_store(tmp_path / "s.sqlite")
    ro = _read_only_copy(source, tmp_path / "ro")
    if ro is None:
        pytest.skip("root without permission to mount a read-only tmpfs here")
    try:
        with pytest.raises(sqlite3.OperationalError):  # what a writer (the old report) hit there
            sqlite3.connect(ro).execute("PRAGMA journal_mode=WAL").fetchall()
        before = fingerprint(ro.parent)
        code, lines, _ = cli(monkeypatch, capsys, ["report", "--store", str(ro), "-f", "json", "-o",
                                                  str(tmp_path / "o.json")])
        assert code == 0, lines
        import json

        assert json.loads((tmp_path / "o.json").read_text())[0]["latency_s_p50"] == 0.5
        code, lines, _ = cli(monkeypatch, capsys, ["compare", str(ro), str(ro), "-f", "json"])
        assert code == 0, lines
        assert fingerprint(ro.parent) == before
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro.parent)], check=False)
        else:
            os.chmod(ro.parent, 0o755)


def test_readers_never_change_a_store(tmp_path, monkeypatch, capsys):
    path = make_store(tmp_path / "s.sqlite")
    db = sqlite3.connect(path)
    schema = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    before = fingerprint(tmp_path)
    for args in (["report", "--store", str(path)], ["report", "--store", str(path), "-f", "markdown"],
                 ["compare", str(path), str(path)]):
        code, lines, _ = cli(monkeypatch, capsys, args)
        assert code == 0, lines
    assert fingerprint(tmp_path) == before
    db = sqlite3.connect(path)
    assert db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == schema


def test_a_declared_encoding_reads_latin_1_text(tmp_path):
    from asrperf.data.sources import source_from_spec

    latin1_manifest(tmp_path)
    latin1_transcript(tmp_path)
    manifest = source_from_spec({"kind": "manifest", "path": str(tmp_path / "m.csv"), "encoding": "latin-1"}, tmp_path)
    assert [u.text for u in manifest.utterances(16000)] == ["café au lait"]
    folder = source_from_spec({"kind": "folder", "path": str(tmp_path / "audio"), "encoding": "latin-1"}, tmp_path)
    assert [u.text for u in folder.utterances(16000)] == ["déjà vu"]
    # the declared encoding is part of the source's identity (it changes the reference words)
    utf8 = source_from_spec({"kind": "folder", "path": str(tmp_path / "audio")}, tmp_path)
    assert folder.key != utf8.key
    with pytest.raises(Exception, match="'latin-9x' is not a text encoding Python knows"):
        list(source_from_spec({"kind": "manifest", "path": str(tmp_path / "m.csv"), "encoding": "latin-9x"},
                              tmp_path).utterances(16000))


@pytest.mark.parametrize("argv, expected", [
    (["run", "--wait-quiet"], ["run", "--wait-quiet=600"]),  # no value: the default bound
    (["run", "--wait-quiet", "run.toml"], ["run", "--wait-quiet=600", "run.toml"]),
    (["run", "--wait-quiet", "--lengths", "5"], ["run", "--wait-quiet=600", "--lengths", "5"]),
    (["run", "--wait-quiet", "30"], ["run", "--wait-quiet", "30"]),
    (["run", "--wait-quiet", "-5"], ["run", "--wait-quiet", "-5"]),  # a number, refused later with a message
    (["run", "--wait-quiet=45"], ["run", "--wait-quiet=45"]),
])
def test_wait_quiet_takes_an_optional_value(argv, expected):
    from asrperf.cli import _optional_value

    assert _optional_value(argv, "--wait-quiet", "600") == expected
