"""Data sources: manifests, folders, Hugging Face datasets, reference cleaning, config specs.

Every dataset here is built locally in a temporary folder: the hub is not reachable in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.sources import (
    BuiltinSource,
    FolderSource,
    HFDatasetSource,
    ManifestSource,
    Source,
    clean_reference,
    source_from_spec,
)
from asrperf.errors import ConfigError, DataError

# (file name, sample rate, channels, duration s, subtype)
CLIPS = [
    ("a.wav", 8_000, 2, 0.50, "PCM_16"),
    ("b.flac", 44_100, 1, 0.30, "PCM_16"),
    ("c.wav", 16_000, 1, 0.25, "FLOAT"),
]
TEXTS = {"a.wav": "hello world", "b.flac": "Second line, with punctuation.", "c.wav": "third"}


def write_tone(path: Path, rate: int, channels: int, seconds: float, subtype: str = "PCM_16") -> int:
    """A quiet sine (noise on the second channel); returns the expected length at 16 kHz."""
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    left = 0.3 * np.sin(2 * np.pi * 440 * t)
    data = left if channels == 1 else np.stack([left, 0.05 * np.random.default_rng(0).standard_normal(n)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return int(round(n * SAMPLE_RATE / rate))


@pytest.fixture
def audio_dir(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """Three clips of different rates/channels/formats under tmp/audio; expected 16 kHz lengths."""
    folder = tmp_path / "audio"
    lengths = {name: write_tone(folder / name, rate, ch, dur, sub) for name, rate, ch, dur, sub in CLIPS}
    return folder, lengths


def check_utterances(utts: list, lengths: dict[str, int]) -> None:
    assert [u.text for u in utts] == [TEXTS[name] for name, *_ in CLIPS]
    for u, (name, *_) in zip(utts, CLIPS, strict=True):
        assert u.sample_rate == SAMPLE_RATE
        assert u.audio.dtype == np.float32 and u.audio.ndim == 1
        assert abs(len(u.audio) - lengths[name]) <= 1, (name, len(u.audio), lengths[name])
        assert np.isfinite(u.audio).all() and np.abs(u.audio).max() > 0.05


# --- reference cleaning ---------------------------------------------------------------------

CLEANING_CASES = [
    (
        "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE REALLY QUICKLY <QUESTIONMARK>",
        "AS THEY'RE LEAVING, CAN KASH PULL ZAHRA ASIDE REALLY QUICKLY?",
    ),
    ("I SAID SO <PERIOD> NO <EXCLAMATIONPOINT>", "I SAID SO. NO!"),
    ("WELL<COMMA> OK<PERIOD>", "WELL, OK."),
    ("<SIL>", None),
    ("<MUSIC> <NOISE>", None),
    ("<OTHER>", None),
    ("<NOISE> <COMMA> <SIL>", None),
    ("<NOISE> HELLO <SIL> THERE <MUSIC>", "HELLO THERE"),
    ("<COMMA> LEADING MARK", "LEADING MARK"),
    ("ignore time segment in scoring", None),
    ("  plain   text\twith\nspaces ", "plain text with spaces"),
    ("Mixed Case, kept as is.", "Mixed Case, kept as is."),
    ("   ", None),
]


@pytest.mark.parametrize(("raw", "expected"), CLEANING_CASES)
def test_clean_reference(raw: str, expected: str | None) -> None:
    assert clean_reference(raw) == expected


# --- manifests -------------------------------------------------------------------------------


def write_manifest(path: Path, rows: list[dict], fmt: str) -> None:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    sep = "," if fmt == "csv" else "\t"
    cols = list(rows[0])
    lines = [sep.join(cols)]
    for r in rows:
        cells = [str(r[c]) for c in cols]
        lines.append(sep.join(f'"{c}"' if sep in c and fmt == "csv" else c for c in cells))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_manifest_round_trip(tmp_path: Path, audio_dir, fmt: str) -> None:
    folder, lengths = audio_dir
    rows = [{"audio": f"audio/{name}", "text": TEXTS[name]} for name, *_ in CLIPS]
    manifest = tmp_path / f"dev.{fmt}"
    write_manifest(manifest, rows, fmt)
    source = ManifestSource(manifest)
    assert isinstance(source, Source)
    utts = list(source.utterances(SAMPLE_RATE))
    check_utterances(utts, lengths)
    assert [u.id for u in utts] == [r["audio"] for r in rows]
    assert source.key.startswith(f"manifest:{manifest.resolve()}:")
    assert source.describe()["format"] == fmt


def test_manifest_relative_paths_are_from_its_folder(tmp_path: Path, audio_dir, monkeypatch) -> None:
    folder, lengths = audio_dir
    sub = tmp_path / "lists"
    sub.mkdir()
    rows = [{"audio": f"../audio/{name}", "text": TEXTS[name]} for name, *_ in CLIPS]
    write_manifest(sub / "m.csv", rows, "csv")
    monkeypatch.chdir(folder)  # the working directory must not matter
    check_utterances(list(ManifestSource(sub / "m.csv").utterances(SAMPLE_RATE)), lengths)
    # absolute paths work too
    rows = [{"audio": str(folder / name), "text": TEXTS[name]} for name, *_ in CLIPS]
    write_manifest(sub / "abs.jsonl", rows, "jsonl")
    check_utterances(list(ManifestSource(sub / "abs.jsonl").utterances(SAMPLE_RATE)), lengths)


def test_manifest_custom_columns_and_resample_rate(tmp_path: Path, audio_dir) -> None:
    rows = [{"path": f"audio/{name}", "sentence": TEXTS[name]} for name, *_ in CLIPS]
    write_manifest(tmp_path / "m.tsv", rows, "tsv")
    utts = list(ManifestSource(tmp_path / "m.tsv", audio_column="path", text_column="sentence").utterances(8_000))
    assert utts[0].sample_rate == 8_000
    assert abs(len(utts[0].audio) - 4_000) <= 1  # a.wav: 0.5 s at 8 kHz, not resampled


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_manifest_wrong_column_names_it_and_lists_available(tmp_path: Path, audio_dir, fmt: str) -> None:
    rows = [{"file": f"audio/{name}", "transcript": TEXTS[name]} for name, *_ in CLIPS]
    manifest = tmp_path / f"m.{fmt}"
    write_manifest(manifest, rows, fmt)
    with pytest.raises(DataError) as err:
        list(ManifestSource(manifest).utterances(SAMPLE_RATE))
    msg = str(err.value)
    assert "'audio'" in msg and str(manifest.resolve()) in msg
    assert "'file'" in msg and "'transcript'" in msg and "audio_column" in msg
    with pytest.raises(DataError, match=r"text column 'text'.*'file', 'transcript'.*text_column"):
        list(ManifestSource(manifest, audio_column="file").utterances(SAMPLE_RATE))


def test_manifest_empty_transcript_names_the_row(tmp_path: Path, audio_dir) -> None:
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [{"audio": "audio/a.wav", "text": "ok"}, {"audio": "audio/c.wav", "text": "  "}], "jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl line 2: transcript is empty"):
        list(ManifestSource(manifest).utterances(SAMPLE_RATE))
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,text\naudio/a.wav,ok\naudio/c.wav\n")  # short row: text missing
    with pytest.raises(DataError, match=r"m\.csv line 3: transcript is empty or missing"):
        list(ManifestSource(manifest).utterances(SAMPLE_RATE))


def test_manifest_is_lazy(tmp_path: Path, audio_dir) -> None:
    """Rows after the ones consumed are not decoded: a broken later row does not matter."""
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,text\naudio/a.wav,first\nmissing.wav,never read\n")
    first = next(ManifestSource(manifest).utterances(SAMPLE_RATE))
    assert first.text == "first"


def test_manifest_skips_garbage_only_rows(tmp_path: Path, audio_dir) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,text\naudio/a.wav,<SIL>\naudio/c.wav,YES <PERIOD>\n")
    assert [u.text for u in ManifestSource(manifest).utterances(SAMPLE_RATE)] == ["YES."]


def bad_audio(folder: Path, kind: str) -> Path:
    """A file that cannot be used as audio, of the given kind."""
    path = folder / f"bad_{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).bytes(2048))
    elif kind == "empty":
        sf.write(str(path), np.zeros(0, dtype=np.float32), 16_000)
    elif kind == "nan":
        data = np.zeros(1600, dtype=np.float32)
        data[100] = np.nan
        sf.write(str(path), data, 16_000, subtype="FLOAT")
    return path  # "missing": never written


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "nan"])
def test_manifest_bad_audio_names_the_file(tmp_path: Path, kind: str) -> None:
    path = bad_audio(tmp_path, kind)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"audio,text\n{path.name},words\n")
    with pytest.raises(DataError) as err:
        list(ManifestSource(manifest).utterances(SAMPLE_RATE))
    assert path.name in str(err.value) and "line 2" in str(err.value)


def test_manifest_key_follows_content(tmp_path: Path, audio_dir) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("audio,text\naudio/a.wav,one\n")
    source = ManifestSource(manifest)
    first = source.key
    assert source.key == first == ManifestSource(manifest).key  # stable
    manifest.write_text("audio,text\naudio/a.wav,two\n")
    second = source.key
    assert second != first
    assert ManifestSource(manifest, text_column="text").key == second
    write_tone(tmp_path / "audio" / "a.wav", 16_000, 1, 0.9)  # the audio changes, the manifest not
    assert source.key != second


def test_manifest_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.txt.*\.csv, \.tsv or \.jsonl"):
        ManifestSource(tmp_path / "list.txt")


# --- folders ---------------------------------------------------------------------------------


def test_folder_source(audio_dir) -> None:
    folder, lengths = audio_dir
    for name, *_ in CLIPS:
        (folder / name).with_suffix(".txt").write_text(TEXTS[name] + "\n")
    (folder / "README.md").write_text("not audio")
    source = FolderSource(folder)
    utts = list(source.utterances(SAMPLE_RATE))
    check_utterances(utts, lengths)
    assert [u.id for u in utts] == ["a", "b", "c"]
    key = source.key
    (folder / "b.txt").write_text("changed")
    assert source.key != key


def test_folder_missing_transcript_names_the_file(audio_dir) -> None:
    folder, _ = audio_dir
    (folder / "a.txt").write_text("one")
    with pytest.raises(DataError, match=r"b\.flac.*b\.txt not found"):
        list(FolderSource(folder).utterances(SAMPLE_RATE))


def test_folder_empty_or_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no audio files"):
        list(FolderSource(tmp_path).utterances(SAMPLE_RATE))
    with pytest.raises(DataError, match="not found"):
        list(FolderSource(tmp_path / "nope").utterances(SAMPLE_RATE))


@pytest.mark.parametrize("kind", ["corrupt", "empty", "nan"])
def test_folder_bad_audio_names_the_file(tmp_path: Path, kind: str) -> None:
    path = bad_audio(tmp_path, kind)
    path.with_suffix(".txt").write_text("words")
    with pytest.raises(DataError, match=path.name):
        list(FolderSource(tmp_path).utterances(SAMPLE_RATE))


# --- Hugging Face datasets -----------------------------------------------------------------

datasets = pytest.importorskip("datasets")


def hf_dataset(audio_dir, texts: list[str] | None = None):
    folder, _ = audio_dir
    paths = [str(folder / name) for name, *_ in CLIPS]
    data = {"audio": paths, "text": texts or [TEXTS[name] for name, *_ in CLIPS], "id": ["u0", "u1", "u2"]}
    return datasets.Dataset.from_dict(data).cast_column("audio", datasets.Audio())


def test_hf_save_to_disk_dataset(tmp_path: Path, audio_dir) -> None:
    folder, lengths = audio_dir
    hf_dataset(audio_dir).save_to_disk(str(tmp_path / "saved"))
    for name, *_ in CLIPS:  # save_to_disk embedded the bytes: the originals are not needed
        (folder / name).unlink()
    source = HFDatasetSource(tmp_path / "saved")
    utts = list(source.utterances(SAMPLE_RATE))
    check_utterances(utts, lengths)
    assert [u.id for u in utts] == ["u0", "u1", "u2"]
    assert source.describe()["loader"] == "disk" and source.describe()["fingerprint"]
    assert source.key.startswith("hf-disk:")


def test_hf_save_to_disk_dataset_dict(tmp_path: Path, audio_dir) -> None:
    _, lengths = audio_dir
    dd = datasets.DatasetDict({"validation": hf_dataset(audio_dir), "test": hf_dataset(audio_dir, ["x", "y", "z"])})
    dd.save_to_disk(str(tmp_path / "dd"))
    check_utterances(list(HFDatasetSource(tmp_path / "dd").utterances(SAMPLE_RATE)), lengths)
    test = HFDatasetSource(tmp_path / "dd", split="test")
    assert [u.text for u in test.utterances(SAMPLE_RATE)] == ["x", "y", "z"]
    assert test.key != HFDatasetSource(tmp_path / "dd").key
    with pytest.raises(DataError, match=r"split 'train'.*validation, test"):
        list(HFDatasetSource(tmp_path / "dd", split="train").utterances(SAMPLE_RATE))


def test_hf_columns(tmp_path: Path, audio_dir) -> None:
    ds = hf_dataset(audio_dir).rename_column("text", "sentence")
    ds.save_to_disk(str(tmp_path / "s"))
    assert [u.text for u in HFDatasetSource(tmp_path / "s").utterances(SAMPLE_RATE)][0] == "hello world"
    with pytest.raises(DataError, match=r"audio column 'speech'.*'audio', 'sentence', 'id'.*audio_column"):
        list(HFDatasetSource(tmp_path / "s", audio_column="speech").utterances(SAMPLE_RATE))
    with pytest.raises(DataError, match=r"text column 'words'.*'audio', 'sentence', 'id'"):
        list(HFDatasetSource(tmp_path / "s", text_column="words").utterances(SAMPLE_RATE))
    ds.remove_columns("sentence").save_to_disk(str(tmp_path / "notext"))
    with pytest.raises(DataError, match=r"no transcript column.*set text_column"):
        list(HFDatasetSource(tmp_path / "notext").utterances(SAMPLE_RATE))


def test_hf_skips_garbage_only_rows_and_cleans_tags(tmp_path: Path, audio_dir) -> None:
    texts = ["<SIL>", "HELLO <COMMA> WORLD <PERIOD>", "<MUSIC> <NOISE>"]
    hf_dataset(audio_dir, texts).save_to_disk(str(tmp_path / "giga"))
    source = HFDatasetSource(tmp_path / "giga")
    utts = list(source.utterances(SAMPLE_RATE))
    assert [(u.id, u.text) for u in utts] == [("u1", "HELLO, WORLD.")]
    assert source.skipped == ["u0", "u2"]


def test_hf_empty_text_is_an_error(tmp_path: Path, audio_dir) -> None:
    hf_dataset(audio_dir, ["one", "", "three"]).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(DataError, match=r"row 1 \(u1\): transcript is empty"):
        list(HFDatasetSource(tmp_path / "e").utterances(SAMPLE_RATE))


def write_audiofolder(root: Path, lengths_out: dict[str, int]) -> None:
    rows = []
    for name, rate, ch, dur, sub in CLIPS:
        lengths_out[name] = write_tone(root / name, rate, ch, dur, sub)
        rows.append(f'{name},"{TEXTS[name]}"')
    (root / "metadata.csv").write_text("file_name,transcription\n" + "\n".join(rows) + "\n")


def test_hf_audiofolder(tmp_path: Path) -> None:
    lengths: dict[str, int] = {}
    write_audiofolder(tmp_path / "af", lengths)
    for source in (
        HFDatasetSource(tmp_path / "af", split="train"),
        HFDatasetSource("audiofolder", data_dir=tmp_path / "af", split="train"),
    ):
        utts = list(source.utterances(SAMPLE_RATE))
        check_utterances(utts, lengths)
        assert utts[0].id == "000000-a"
        assert source.key.startswith("hf-audiofolder:")
    with pytest.raises(DataError, match=r"split 'validation'.*train"):
        list(HFDatasetSource(tmp_path / "af").utterances(SAMPLE_RATE))


def test_hf_hub_path_calls_load_dataset_as_configured(tmp_path: Path, audio_dir, monkeypatch) -> None:
    """The hub branch, with load_dataset replaced by a local streamed dataset."""
    _, lengths = audio_dir
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return hf_dataset(audio_dir).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = HFDatasetSource("speechcolab/gigaspeech", config="xs", split="validation", streaming=True)
    check_utterances(list(source.utterances(SAMPLE_RATE)), lengths)
    assert calls == [("speechcolab/gigaspeech", "xs", {"split": "validation", "streaming": True})]
    assert source.key == "hf:speechcolab/gigaspeech:xs:validation:unpinned:-:audio=audio:text=auto"
    pinned = HFDatasetSource("openslr/librispeech_asr", "clean", revision="abc123", trust_remote_code=True)
    list(pinned.utterances(SAMPLE_RATE))
    assert calls[-1][2] == {"split": "validation", "streaming": False, "revision": "abc123", "trust_remote_code": True}
    assert "abc123" in pinned.key


def test_hf_hub_failure_is_a_data_error(monkeypatch) -> None:
    def failing(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match=r"'speechcolab/gigaspeech' config 'xs'.*no network.*huggingface-cli login"):
        list(HFDatasetSource("speechcolab/gigaspeech", "xs").utterances(SAMPLE_RATE))


def test_hf_missing_datasets_package(monkeypatch) -> None:
    import importlib.util

    from asrperf.errors import MissingExtraError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"asrperf\[datasets\]"):
        HFDatasetSource("librispeech_asr")


# --- built-in corpus and specs ---------------------------------------------------------------


def test_builtin_source_wraps_tts_lazily(tmp_path: Path, monkeypatch) -> None:
    import sys
    import types

    from asrperf.data.audio import Utterance

    seen = {}

    def fake_corpus(cache_dir, n_sentences, sample_rate, progress):
        seen.update(cache_dir=cache_dir, n=n_sentences, rate=sample_rate)
        audio = np.full(160, 0.1, dtype=np.float32)
        return [
            Utterance("h1", audio, sample_rate, "The birch canoe slid."),
            Utterance("h2", audio, sample_rate, "<SIL>"),
        ]

    monkeypatch.setitem(sys.modules, "asrperf.data.tts", types.SimpleNamespace(builtin_corpus=fake_corpus))
    source = BuiltinSource(tmp_path, n_sentences=7)
    assert source.key == "builtin:harvard-joe:7"
    assert [u.text for u in source.utterances(SAMPLE_RATE)] == ["The birch canoe slid."]
    assert seen == {"cache_dir": tmp_path, "n": 7, "rate": SAMPLE_RATE}


def test_source_from_spec(tmp_path: Path, audio_dir) -> None:
    (tmp_path / "m.csv").write_text("wav,words\naudio/a.wav,hi\n")
    manifest = source_from_spec(
        {"kind": "manifest", "path": str(tmp_path / "m.csv"), "audio_column": "wav", "text_column": "words"}, tmp_path
    )
    assert isinstance(manifest, ManifestSource) and [u.text for u in manifest.utterances(SAMPLE_RATE)] == ["hi"]
    assert isinstance(source_from_spec({"kind": "folder", "path": str(tmp_path)}, tmp_path), FolderSource)
    hf = source_from_spec(
        {"kind": "hf", "path": "speechcolab/gigaspeech", "config": "xs", "split": "validation", "streaming": True},
        tmp_path,
    )
    assert isinstance(hf, HFDatasetSource) and hf.streaming and hf.config == "xs" and not hf.trust_remote_code
    builtin = source_from_spec({"kind": "builtin"}, tmp_path)
    assert isinstance(builtin, BuiltinSource) and builtin.key == "builtin:harvard-joe:120"
    assert source_from_spec({"kind": "builtin", "n_sentences": 5}, tmp_path).key == "builtin:harvard-joe:5"


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"kind": "tape"}, r"kind 'tape' is unknown; valid kinds: manifest, folder, hf, builtin"),
        ({"path": "x.csv"}, r"kind None is unknown"),
        ({"kind": "manifest", "path": "m.csv", "colum": "a"}, r"'colum' is not valid.*audio_column, text_column"),
        ({"kind": "folder"}, r"needs the key 'path'"),
        ({"kind": "hf", "path": "x/y", "streaming": "yes"}, r"'streaming' must be bool"),
        ({"kind": "builtin", "n_sentences": True}, r"'n_sentences' must be int"),
        ({"kind": "builtin", "n_sentences": 0}, r"positive"),
        ({"kind": "hf", "path": "x/y", "token": "s"}, r"'token' is not valid.*trust_remote_code, data_dir"),
    ],
)
def test_source_from_spec_errors(tmp_path: Path, spec: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        source_from_spec(spec, tmp_path)


def test_manifest_json_array_is_refused_with_the_fix(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text('[{"audio": "a.wav", "text": "x"}]')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list; write one JSON object per line"):
        list(ManifestSource(manifest).utterances(SAMPLE_RATE))
