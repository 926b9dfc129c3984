"""Where utterances come from: manifests, folders, Hugging Face datasets and the built-in corpus.

Every source has the same small interface (`Source`): a `key` that changes when the content
changes (it names the clip cache), a lazy `utterances(sample_rate)` iterator in a fixed order
(so streaming works and clip building can stop early), and `describe()` for provenance.

Reference text goes through `clean_reference` in every source, so dataset markup (GigaSpeech
tags) never reaches the WER computation.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from asrperf.data.audio import Utterance, load_audio, resample, to_mono_float32
from asrperf.errors import ConfigError, DataError, MissingExtraError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Reference text cleaning
# --------------------------------------------------------------------------------------------

# GigaSpeech keeps four punctuation marks as tags in its normalized text (text_tn).
_PUNCTUATION_TAGS = {"<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!"}
# GigaSpeech dev/test label non-speech stretches with these "garbage utterance" tags.
_GARBAGE_TAGS = frozenset({"<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>"})
# ESB / Open ASR Leaderboard mark segments without scorable speech with this sentence.
_NO_SPEECH_MARKERS = frozenset({"ignore time segment in scoring"})
# Tags may be glued to a word ("WORD<COMMA>"); pad them with spaces before splitting.
_TAG_RE = re.compile("|".join(re.escape(t) for t in sorted({*_PUNCTUATION_TAGS, *_GARBAGE_TAGS})))


def clean_reference(text: str) -> str | None:
    """Remove dataset markup from a reference transcript; None when no speech is left to score.

    GigaSpeech punctuation tags become the mark itself, attached to the previous word
    ("LEAVING <COMMA> CAN" -> "LEAVING, CAN"); garbage tags (<SIL> <MUSIC> <NOISE> <OTHER>) are
    dropped. Text that is only garbage tags, or the ESB marker "ignore time segment in scoring",
    returns None: such utterances have no speech to score, so sources skip them (as ESPnet and
    the Open ASR Leaderboard do). Whitespace is collapsed; the text is otherwise unchanged.
    """
    if text.strip().lower() in _NO_SPEECH_MARKERS:
        return None
    words: list[str] = []
    for token in _TAG_RE.sub(lambda m: f" {m.group(0)} ", text).split():
        if token in _GARBAGE_TAGS:
            continue
        mark = _PUNCTUATION_TAGS.get(token)
        if mark is not None:
            if words:  # a mark with no word before it has nothing to attach to
                words[-1] += mark
            continue
        words.append(token)
    return " ".join(words) or None


def _reference(raw: Any, item: str, fix: str) -> str | None:
    """Check a raw transcript is present, then clean it (None = documented no-speech skip)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise DataError(f"{item}: transcript is empty or missing; {fix}")
    if not isinstance(raw, str):
        raise DataError(f"{item}: transcript is {type(raw).__name__} {raw!r}, expected text; {fix}")
    return clean_reference(raw)


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Source(Protocol):
    """A deterministic, lazily read collection of transcribed utterances."""

    @property
    def key(self) -> str:
        """Stable string that identifies the content; changes when the content changes."""
        ...

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Yield utterances, mono float32 at `sample_rate`, always in the same order."""
        ...

    def describe(self) -> dict:
        """JSON-serialisable provenance for result rows."""
        ...


def _short_hash(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")  # separator, so ("ab", "c") and ("a", "bc") differ
    return digest.hexdigest()[:16]


def _file_signature(path: Path) -> str:
    """Cheap change detector for an audio file: size and modification time, not its bytes.

    Hashing every audio file would read the whole dataset just to compute a cache key; a copy
    that changes mtime only costs a cache miss, never a stale hit.
    """
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _missing_column(column: str, role: str, where: str, available: Iterable[str], option: str) -> DataError:
    names = ", ".join(repr(c) for c in available) or "(none)"
    return DataError(
        f"{role} column {column!r} not found in {where}; available columns: {names}; set {option} to one of them"
    )


def _check_sample_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")


# --------------------------------------------------------------------------------------------
# Manifest: CSV / TSV / JSONL listing audio paths and transcripts
# --------------------------------------------------------------------------------------------

_MANIFEST_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class ManifestSource:
    """Utterances listed in a CSV, TSV or JSON-lines file, one row per audio file.

    Audio paths may be absolute or relative to the manifest's folder; any format and rate
    soundfile reads is accepted and resampled once. An optional `id` column names utterances;
    otherwise the audio path as written in the manifest is the id.
    """

    def __init__(self, path: str | Path, audio_column: str = "audio", text_column: str = "text") -> None:
        self.path = Path(path).expanduser().resolve()
        self.audio_column = audio_column
        self.text_column = text_column
        self.format = _MANIFEST_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise DataError(
                f"manifest {self.path}: unknown extension {self.path.suffix!r}; name it .csv, .tsv or .jsonl"
            )

    def _read_bytes(self) -> bytes:
        if not self.path.is_file():
            raise DataError(f"manifest not found: {self.path}; check the source path")
        return self.path.read_bytes()

    def _rows(self, content: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, row) pairs; raises DataError on a missing column or malformed line."""
        # utf-8-sig: spreadsheet exports often start with a byte-order mark
        text = content.decode("utf-8-sig")
        if self.format == "jsonl":
            yield from self._json_rows(text)
        else:
            yield from self._delimited_rows(text)

    def _delimited_rows(self, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format == "tsv":
            # TSV transcripts carry bare quotes (Common Voice style); don't treat them as quoting
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        for column, role, option in self._required():
            if column not in header:
                raise _missing_column(column, role, f"manifest {self.path}", header, option)
        for row in reader:
            yield reader.line_num, row

    def _json_rows(self, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"manifest {self.path} line {line_no}: invalid JSON ({exc}); "
                    f"write one JSON object per line (JSON lines)"
                ) from exc
            if not isinstance(row, dict):
                raise DataError(
                    f"manifest {self.path} line {line_no}: expected a JSON object, got {type(row).__name__}; "
                    f"write one JSON object per line (JSON lines)"
                )
            for column, role, option in self._required():
                if column not in row:
                    raise _missing_column(column, role, f"manifest {self.path} line {line_no}", row, option)
            yield line_no, row

    def _required(self) -> list[tuple[str, str, str]]:
        return [(self.audio_column, "audio", "audio_column"), (self.text_column, "text", "text_column")]

    def _audio_path(self, line_no: int, row: dict[str, Any]) -> Path:
        value = row.get(self.audio_column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(
                f"manifest {self.path} line {line_no}: column {self.audio_column!r} holds no audio path; "
                f"fill it in or remove the row"
            )
        path = Path(value.strip()).expanduser()
        return path if path.is_absolute() else self.path.parent / path

    @property
    def key(self) -> str:
        """`manifest:<abs path>:<hash of manifest bytes, columns and audio file signatures>`."""
        content = self._read_bytes()
        audio = [_file_signature(self._audio_path(n, row)) for n, row in self._rows(content)]
        digest = _short_hash([content, self.audio_column, self.text_column, *audio])
        return f"manifest:{self.path}:{digest}"

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Decode each row's audio and yield it with its cleaned transcript, in file order."""
        _check_sample_rate(sample_rate)
        for line_no, row in self._rows(self._read_bytes()):
            item = f"manifest {self.path} line {line_no}"
            text = _reference(row.get(self.text_column), item, "fill it in or remove the row")
            if text is None:
                continue  # only no-speech markup: nothing to score (see clean_reference)
            path = self._audio_path(line_no, row)
            try:
                audio = load_audio(path, sample_rate)
            except DataError as exc:
                raise DataError(f"{exc} ({item})") from exc
            utt_id = str(row.get("id") or row[self.audio_column]).strip()
            yield Utterance(id=utt_id, audio=audio, sample_rate=sample_rate, text=text)

    def describe(self) -> dict:
        """Manifest path, format, columns and content hash."""
        return {
            "kind": "manifest",
            "path": str(self.path),
            "format": self.format,
            "audio_column": self.audio_column,
            "text_column": self.text_column,
            "sha256": hashlib.sha256(self._read_bytes()).hexdigest(),
        }


# --------------------------------------------------------------------------------------------
# Folder: audio files with same-stem .txt transcripts
# --------------------------------------------------------------------------------------------

# Formats libsndfile decodes (what load_audio uses).
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64", ".rf64"}
)
# Common audio formats libsndfile cannot read: refuse them rather than silently leave them out.
_UNSUPPORTED_AUDIO = frozenset({".m4a", ".aac", ".wma", ".mp4", ".webm", ".amr"})


class FolderSource:
    """Audio files in one folder, each with a transcript in a `.txt` file of the same stem.

    Files are read in name order; other files (README, metadata) are ignored.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()

    def _audio_files(self) -> list[Path]:
        if not self.path.is_dir():
            raise DataError(f"audio folder not found: {self.path}; check the source path")
        files = sorted(p for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))
        unsupported = [p.name for p in files if p.suffix.lower() in _UNSUPPORTED_AUDIO]
        if unsupported:
            raise DataError(f"{self.path}: cannot decode {', '.join(unsupported[:5])}; convert them to wav or flac")
        audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
        if not audio:
            raise DataError(
                f"{self.path}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}); "
                f"add audio with same-stem .txt transcripts"
            )
        stems: dict[str, Path] = {}
        for p in audio:
            if p.stem in stems:
                raise DataError(f"{p} and {stems[p.stem].name} share the transcript {p.stem}.txt; rename one of them")
            stems[p.stem] = p
        return audio

    @staticmethod
    def _transcript_path(audio: Path) -> Path:
        return audio.with_suffix(".txt")

    @property
    def key(self) -> str:
        """`folder:<abs path>:<hash of audio file signatures and transcript bytes>`."""
        parts: list[str | bytes] = []
        for audio in self._audio_files():
            txt = self._transcript_path(audio)
            parts += [_file_signature(audio), txt.read_bytes() if txt.is_file() else b"<missing>"]
        return f"folder:{self.path}:{_short_hash(parts)}"

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Decode each audio file and pair it with its transcript, in name order."""
        _check_sample_rate(sample_rate)
        for audio_path in self._audio_files():
            txt = self._transcript_path(audio_path)
            if not txt.is_file():
                raise DataError(f"{audio_path}: transcript {txt.name} not found; add it or remove the audio file")
            text = _reference(txt.read_text(encoding="utf-8-sig"), str(txt), "write the transcript into it")
            if text is None:
                continue  # only no-speech markup: nothing to score (see clean_reference)
            audio = load_audio(audio_path, sample_rate)
            yield Utterance(id=audio_path.stem, audio=audio, sample_rate=sample_rate, text=text)

    def describe(self) -> dict:
        """Folder path and content hash."""
        return {"kind": "folder", "path": str(self.path), "key": self.key}


# --------------------------------------------------------------------------------------------
# Hugging Face datasets: save_to_disk folders, audiofolder, hub names
# --------------------------------------------------------------------------------------------

TEXT_COLUMN_CANDIDATES = ("text", "sentence", "transcript", "normalized_text", "transcription")
_ID_COLUMN_CANDIDATES = ("id", "segment_id", "utt_id", "key")


def _require_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingExtraError("datasets", "Hugging Face dataset sources", "datasets") from exc
    return datasets


def _fingerprint(dataset_dir: Path) -> str:
    """The `_fingerprint` datasets records in state.json: changes whenever the data changes."""
    state = dataset_dir / "state.json"
    try:
        return str(json.loads(state.read_text())["_fingerprint"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{state}: unreadable dataset state ({exc}); re-save the dataset with save_to_disk") from exc


def _decode_hf_audio(value: Any, sample_rate: int, item: str) -> np.ndarray:
    """Decode one audio cell, as stored without decoding, to mono float32 at `sample_rate`.

    datasets>=4 decodes Audio with torchcodec, which asrperf does not require, so the column is
    read with Audio(decode=False) ({"bytes", "path"}) and decoded here with soundfile.
    """
    import soundfile as sf

    if isinstance(value, dict) and value.get("array") is not None:  # already decoded upstream
        rate = value.get("sampling_rate")
        if not rate:
            raise DataError(f"{item}: audio array has no sampling_rate; add it to the dataset")
        return resample(to_mono_float32(np.asarray(value["array"]), item), int(rate), sample_rate)
    if isinstance(value, dict) and value.get("bytes"):
        try:
            audio, rate = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=False)
        except Exception as exc:  # soundfile's errors do not say which row
            raise DataError(f"{item}: cannot decode audio bytes ({exc}); re-encode it as wav or flac") from exc
        return resample(to_mono_float32(audio, item), int(rate), sample_rate)
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        try:
            return load_audio(path, sample_rate)
        except DataError as exc:
            raise DataError(f"{exc} ({item})") from exc
    raise DataError(f"{item}: audio cell holds neither bytes nor a path ({type(value).__name__}); fix the dataset")


class HFDatasetSource:
    """A split of a Hugging Face dataset: a save_to_disk folder, an audiofolder, or a hub name.

    - a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` is read with
      `load_from_disk` (memory-mapped, so it is already read lazily; `streaming` is not needed);
    - a plain folder of audio (with metadata.csv/jsonl), or `path_or_name="audiofolder"` with
      `data_dir`, is read with the "audiofolder" loader;
    - anything else is a hub name (`speechcolab/gigaspeech` config "xs", `openslr/librispeech_asr`
      config "clean") read with `load_dataset(..., streaming=streaming)`. Gated datasets need
      `huggingface-cli login`. Pin `revision` for reproducible numbers.

    `text_column=None` picks the first of TEXT_COLUMN_CANDIDATES the dataset has.
    `trust_remote_code` is passed on only when set explicitly.
    """

    def __init__(
        self,
        path_or_name: str | Path,
        config: str | None = None,
        split: str = "validation",
        streaming: bool = False,
        audio_column: str = "audio",
        text_column: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        data_dir: str | Path | None = None,
    ) -> None:
        # Fail at configuration time, not after a long run has started.
        if importlib.util.find_spec("datasets") is None:
            raise MissingExtraError("datasets", "Hugging Face dataset sources", "datasets")
        self.name = str(path_or_name)
        self.config = config
        self.split = split
        self.streaming = streaming
        self.audio_column = audio_column
        self.text_column = text_column
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.loader, self.local_dir = self._pick_loader()
        self.skipped: list[str] = []  # ids of no-speech rows left out by the last iteration

    def _pick_loader(self) -> tuple[str, Path | None]:
        local = Path(self.name).expanduser()
        if self.name == "audiofolder":
            if self.data_dir is None:
                raise ConfigError("hf source 'audiofolder' needs data_dir = the folder of audio files")
            folder = Path(self.data_dir).expanduser().resolve()
            if not folder.is_dir():
                raise DataError(f"audiofolder data_dir not found: {folder}; check the path")
            return "audiofolder", folder
        if not local.is_dir():
            return "hub", None
        if self.data_dir is not None:
            raise ConfigError(
                f"data_dir applies to hub datasets and 'audiofolder', not to the local folder {local}; "
                f"remove data_dir or point path at the data folder"
            )
        local = local.resolve()
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            return "disk", local
        return "audiofolder", local

    # -- key and provenance -------------------------------------------------------------------

    def _disk_split_dir(self) -> Path:
        assert self.local_dir is not None
        if (self.local_dir / "state.json").is_file():
            return self.local_dir  # a single Dataset: it has no splits to choose from
        splits = self._disk_splits()
        if self.split not in splits:
            raise DataError(
                f"split {self.split!r} not in {self.local_dir}; available splits: {', '.join(splits)}; "
                f"set split to one of them"
            )
        return self.local_dir / self.split

    def _disk_splits(self) -> list[str]:
        assert self.local_dir is not None
        try:
            return list(json.loads((self.local_dir / "dataset_dict.json").read_text())["splits"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{self.local_dir}/dataset_dict.json is unreadable ({exc}); re-save the dataset") from exc

    @property
    def key(self) -> str:
        """Identifies the data: path + fingerprint on disk, or name/config/split/revision."""
        columns = f"audio={self.audio_column}:text={self.text_column or 'auto'}"
        if self.loader == "disk":
            split_dir = self._disk_split_dir()
            return f"hf-disk:{split_dir}:{_fingerprint(split_dir)}:{columns}"
        if self.loader == "audiofolder":
            assert self.local_dir is not None
            files = sorted(p for p in self.local_dir.rglob("*") if p.is_file())
            digest = _short_hash(
                _file_signature(p) if p.suffix.lower() in AUDIO_EXTENSIONS else p.read_bytes() for p in files
            )
            return f"hf-audiofolder:{self.local_dir}:{self.split}:{digest}:{columns}"
        # Without a pinned revision the hub content may change under the same key (the key says
        # "unpinned" so it is visible in the cache); pinning `revision` is the fix.
        return (
            f"hf:{self.name}:{self.config or '-'}:{self.split}:{self.revision or 'unpinned'}:"
            f"{self.data_dir or '-'}:{columns}"
        )

    def describe(self) -> dict:
        """Dataset name or path, loader, config, split, revision, columns."""
        info: dict[str, Any] = {
            "kind": "hf",
            "path": str(self.local_dir) if self.local_dir else self.name,
            "loader": self.loader,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
            "streaming": self.streaming,
            "audio_column": self.audio_column,
            "text_column": self.text_column,
            "data_dir": self.data_dir,
        }
        if self.loader == "disk":
            info["fingerprint"] = _fingerprint(self._disk_split_dir())
        return info

    # -- loading ------------------------------------------------------------------------------

    def _where(self) -> str:
        if self.local_dir is not None:
            return f"dataset {self.local_dir} split {self.split!r}"
        return f"dataset {self.name!r} config {self.config!r} split {self.split!r}"

    def _load(self) -> Any:
        """The chosen split as a Dataset or IterableDataset, audio not yet decoded."""
        datasets = _require_datasets()
        if self.loader == "disk":
            loaded = datasets.load_from_disk(str(self.local_dir))
            if isinstance(loaded, datasets.DatasetDict):
                self._disk_split_dir()  # raises the DataError listing the splits
                loaded = loaded[self.split]
            return loaded
        if self.loader == "audiofolder":
            return self._load_audiofolder(datasets)
        return self._load_hub(datasets)

    def _load_audiofolder(self, datasets: Any) -> Any:
        # Always streamed: preparing an audiofolder as Arrow encodes every file through the Audio
        # feature, which needs torchcodec in datasets>=4. Streaming local files costs nothing, and
        # casting the column to a plain string keeps the file path for soundfile to decode.
        try:
            loaded = datasets.load_dataset("audiofolder", data_dir=str(self.local_dir), streaming=True)
        except Exception as exc:
            raise DataError(f"cannot read audiofolder {self.local_dir} ({exc}); check metadata.csv/jsonl") from exc
        if self.split not in loaded:
            raise DataError(
                f"split {self.split!r} not in audiofolder {self.local_dir}; available splits: "
                f"{', '.join(loaded)}; set split to one of them (a folder without split subfolders is 'train')"
            )
        dataset = loaded[self.split]
        if dataset.features is not None and self.audio_column in dataset.features:
            dataset = dataset.cast_column(self.audio_column, datasets.Value("string"))
        return dataset

    def _load_hub(self, datasets: Any) -> Any:
        kwargs: dict[str, Any] = {"split": self.split, "streaming": self.streaming}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.data_dir is not None:
            kwargs["data_dir"] = self.data_dir
        if self.trust_remote_code:  # never implicit: it runs the dataset author's code
            kwargs["trust_remote_code"] = True
        try:
            return datasets.load_dataset(self.name, self.config, **kwargs)
        except Exception as exc:  # network, auth, unknown config/split: all end here
            raise DataError(
                f"cannot load {self._where()} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                f"check the name, config and split, and run `huggingface-cli login` for gated datasets"
            ) from exc

    def _undecoded(self, dataset: Any) -> Any:
        """Cast Audio columns to decode=False so datasets never calls torchcodec."""
        from datasets import Audio

        features = getattr(dataset, "features", None)
        if features is not None and isinstance(features.get(self.audio_column), Audio):
            dataset = dataset.cast_column(self.audio_column, Audio(decode=False))
        return dataset

    def _resolve_columns(self, columns: Iterable[str]) -> str:
        """Check the audio column exists and return the text column to use."""
        columns = list(columns)
        if self.audio_column not in columns:
            raise _missing_column(self.audio_column, "audio", self._where(), columns, "audio_column")
        if self.text_column is not None:
            if self.text_column not in columns:
                raise _missing_column(self.text_column, "text", self._where(), columns, "text_column")
            return self.text_column
        for candidate in TEXT_COLUMN_CANDIDATES:
            if candidate in columns:
                return candidate
        names = ", ".join(repr(c) for c in columns)
        raise DataError(
            f"no transcript column in {self._where()} (looked for {', '.join(TEXT_COLUMN_CANDIDATES)}); "
            f"available columns: {names}; set text_column"
        )

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Yield the split's rows in dataset order, decoding audio with soundfile as they come."""
        _check_sample_rate(sample_rate)
        dataset = self._undecoded(self._load())
        self.skipped = []
        text_column = None
        known = getattr(dataset, "column_names", None)  # None for some streamed datasets
        if known is not None:
            text_column = self._resolve_columns(known)
        for index, row in enumerate(dataset):
            if text_column is None:
                text_column = self._resolve_columns(row.keys())
            utt_id = self._row_id(index, row)
            item = f"{self._where()} row {index} ({utt_id})"
            text = _reference(row.get(text_column), item, "drop the row from the dataset or pick another split")
            if text is None:
                self.skipped.append(utt_id)  # only no-speech markup (see clean_reference)
                log.debug("skipping %s: no speech to score", item)
                continue
            audio = _decode_hf_audio(row[self.audio_column], sample_rate, item)
            yield Utterance(id=utt_id, audio=audio, sample_rate=sample_rate, text=text)

    def _row_id(self, index: int, row: dict[str, Any]) -> str:
        for column in _ID_COLUMN_CANDIDATES:
            if column in row and row[column] not in (None, ""):
                return str(row[column])
        audio = row.get(self.audio_column)
        path = audio.get("path") if isinstance(audio, dict) else audio
        stem = Path(path).stem if isinstance(path, str) and path else ""
        return f"{index:06d}-{stem}" if stem else f"{index:06d}"


# --------------------------------------------------------------------------------------------
# Built-in synthetic corpus
# --------------------------------------------------------------------------------------------


_BUILTIN_CHUNK = 10  # sentences synthesised per step (~2.5 s of work at ~0.25 s per sentence)


class BuiltinSource:
    """Harvard sentences spoken by the bundled Piper "joe" voice, synthesised once and cached."""

    def __init__(
        self, cache_dir: str | Path, n_sentences: int = 120, progress: Callable[..., Any] | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.n_sentences = n_sentences
        self.progress = progress

    @property
    def key(self) -> str:
        """`builtin:harvard-joe:<n_sentences>`: the corpus is fixed by the package version."""
        return f"builtin:harvard-joe:{self.n_sentences}"

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Synthesise (or read from the cache) the sentences and yield them in corpus order."""
        _check_sample_rate(sample_rate)
        from asrperf.data.tts import builtin_corpus  # needs the `tts` extra; import only when used

        # Synthesise in chunks, so a consumer that stops early (clip building) never pays for
        # sentences it does not use; builtin_corpus synthesises only what is not cached yet.
        done = 0
        while done < self.n_sentences:
            upto = min(self.n_sentences, done + _BUILTIN_CHUNK)
            corpus = builtin_corpus(
                cache_dir=self.cache_dir, n_sentences=upto, sample_rate=sample_rate, progress=self.progress
            )
            for utt in corpus[done:upto]:
                text = _reference(utt.text, f"builtin corpus utterance {utt.id}", "regenerate the corpus cache")
                if text is None:
                    continue
                yield utt if text == utt.text else dataclasses.replace(utt, text=text)
            done = upto

    def describe(self) -> dict:
        """Corpus name and size."""
        return {"kind": "builtin", "corpus": "harvard-joe", "n_sentences": self.n_sentences}


# --------------------------------------------------------------------------------------------
# From a config table
# --------------------------------------------------------------------------------------------

# kind -> {key: (expected type, required)}; "kind" itself is implied.
_SPEC_KEYS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "manifest": {"path": (str, True), "audio_column": (str, False), "text_column": (str, False)},
    "folder": {"path": (str, True)},
    "hf": {
        "path": (str, True),
        "config": (str, False),
        "split": (str, False),
        "streaming": (bool, False),
        "audio_column": (str, False),
        "text_column": (str, False),
        "revision": (str, False),
        "trust_remote_code": (bool, False),
        "data_dir": (str, False),
    },
    "builtin": {"n_sentences": (int, False)},
}


def _validated(spec: dict, kind: str) -> dict[str, Any]:
    """The spec's options for `kind`, with unknown keys, missing keys and wrong types refused."""
    allowed = _SPEC_KEYS[kind]
    options = {k: v for k, v in spec.items() if k != "kind"}
    for key, value in options.items():
        if key not in allowed:
            raise ConfigError(
                f"source key {key!r} is not valid for kind {kind!r}; valid keys: kind, {', '.join(allowed)}"
            )
        expected, _ = allowed[key]
        # bool is an int subclass; n_sentences = true is a typo, not a number
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"source key {key!r} must be {getattr(expected, '__name__', expected)}, got {value!r}")
    for key, (_, required) in allowed.items():
        if required and key not in options:
            raise ConfigError(f"source of kind {kind!r} needs the key {key!r}")
    return options


def source_from_spec(spec: dict, cache_dir: Path) -> Source:
    """Build a source from a config table such as {"kind": "manifest", "path": "data/dev.csv"}.

    Kinds: manifest, folder, hf, builtin (keys in _SPEC_KEYS). Relative paths are taken from
    the current directory; callers that read a config file resolve them against it first.
    `cache_dir` holds the built-in corpus.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"a source must be a table with a 'kind' key, got {spec!r}")
    kind = spec.get("kind")
    if kind not in _SPEC_KEYS:
        raise ConfigError(f"source kind {kind!r} is unknown; valid kinds: {', '.join(_SPEC_KEYS)}")
    options = _validated(spec, kind)
    if kind == "manifest":
        return ManifestSource(**options)
    if kind == "folder":
        return FolderSource(options["path"])
    if kind == "hf":
        return HFDatasetSource(path_or_name=options.pop("path"), **options)
    if options.get("n_sentences", 1) <= 0:
        raise ConfigError(f"n_sentences must be a positive integer, got {options['n_sentences']}")
    return BuiltinSource(cache_dir=cache_dir, **options)


__all__ = [
    "AUDIO_EXTENSIONS",
    "TEXT_COLUMN_CANDIDATES",
    "BuiltinSource",
    "FolderSource",
    "HFDatasetSource",
    "ManifestSource",
    "Source",
    "clean_reference",
    "source_from_spec",
]
