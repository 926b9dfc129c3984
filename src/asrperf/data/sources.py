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
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from asrperf.data.audio import Utterance, load_audio
from asrperf.errors import ConfigError, DataError

log = logging.getLogger(__name__)
from asrperf.data.base import (  # noqa: F401  (re-exported: the public names of data sources)
    AUDIO_EXTENSIONS,
    Source,
    check_sample_rate,
    clean_reference,
    file_signature,
    missing_column,
    reference_text,
    short_hash,
)
from asrperf.data.hf_datasets import TEXT_COLUMN_CANDIDATES, HFDatasetSource  # noqa: F401

# Manifest: CSV / TSV / JSONL listing audio paths and transcripts
# --------------------------------------------------------------------------------------------

_MANIFEST_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# Text files (manifests, transcripts) are UTF-8 unless the source declares `encoding`: a wrong
# guess would change the reference words silently, so undecodable bytes are an error, never replaced.
DEFAULT_ENCODING = "utf-8"


def decode_text(content: bytes, encoding: str, what: str) -> str:
    """`content` decoded as `encoding` (UTF-8: a leading byte-order mark dropped), or a DataError
    naming the file, the line and the fix."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"source key 'encoding': {encoding!r} is not a text encoding Python knows "
                          "(e.g. 'utf-8', 'latin-1', 'cp1252')") from None
    try:
        return content.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise DataError(f"{what} is not {encoding} text (byte 0x{content[exc.start]:02x} on line {line}); save it "
                        f"as UTF-8, or declare its encoding in the [source] table, e.g. encoding = 'latin-1'") from None


class ManifestSource:
    """Utterances listed in a CSV, TSV or JSON-lines file, one row per audio file.

    Audio paths may be absolute or relative to the manifest's folder; any format and rate
    soundfile reads is accepted and resampled once. An optional `id` column names utterances;
    otherwise the audio path as written in the manifest is the id.
    """

    def __init__(self, path: str | Path, audio_column: str = "audio", text_column: str = "text",
                 encoding: str = DEFAULT_ENCODING) -> None:
        self.path = Path(path).expanduser().resolve()
        self.audio_column = audio_column
        self.text_column = text_column
        self.encoding = encoding
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
        text = decode_text(content, self.encoding, f"manifest {self.path}")
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
                raise missing_column(column, role, f"manifest {self.path}", header, option)
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
                    raise missing_column(column, role, f"manifest {self.path} line {line_no}", row, option)
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
        audio = [file_signature(self._audio_path(n, row)) for n, row in self._rows(content)]
        encoding = [] if self.encoding == DEFAULT_ENCODING else [self.encoding]  # keeps UTF-8 keys as they were
        digest = short_hash([content, self.audio_column, self.text_column, *encoding, *audio])
        return f"manifest:{self.path}:{digest}"

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Decode each row's audio and yield it with its cleaned transcript, in file order."""
        check_sample_rate(sample_rate)
        for line_no, row in self._rows(self._read_bytes()):
            item = f"manifest {self.path} line {line_no}"
            text = reference_text(row.get(self.text_column), item, "fill it in or remove the row")
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
            "encoding": self.encoding,
            "sha256": hashlib.sha256(self._read_bytes()).hexdigest(),
        }


# --------------------------------------------------------------------------------------------
# Folder: audio files with same-stem .txt transcripts
# --------------------------------------------------------------------------------------------

# Formats libsndfile decodes (what load_audio uses).
# Common audio formats libsndfile cannot read: refuse them rather than silently leave them out.
_UNSUPPORTED_AUDIO = frozenset({".m4a", ".aac", ".wma", ".mp4", ".webm", ".amr"})


class FolderSource:
    """Audio files in one folder, each with a transcript in a `.txt` file of the same stem.

    Files are read in name order; other files (README, metadata) are ignored.
    """

    def __init__(self, path: str | Path, encoding: str = DEFAULT_ENCODING) -> None:
        self.path = Path(path).expanduser().resolve()
        self.encoding = encoding

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
            parts += [file_signature(audio), txt.read_bytes() if txt.is_file() else b"<missing>"]
        if self.encoding != DEFAULT_ENCODING:
            parts.append(self.encoding)
        return f"folder:{self.path}:{short_hash(parts)}"

    def utterances(self, sample_rate: int) -> Iterator[Utterance]:
        """Decode each audio file and pair it with its transcript, in name order."""
        check_sample_rate(sample_rate)
        for audio_path in self._audio_files():
            txt = self._transcript_path(audio_path)
            if not txt.is_file():
                raise DataError(f"{audio_path}: transcript {txt.name} not found; add it or remove the audio file")
            text = reference_text(decode_text(txt.read_bytes(), self.encoding, f"transcript {txt}"), str(txt),
                                  "write the transcript into it")
            if text is None:
                continue  # only no-speech markup: nothing to score (see clean_reference)
            audio = load_audio(audio_path, sample_rate)
            yield Utterance(id=audio_path.stem, audio=audio, sample_rate=sample_rate, text=text)

    def describe(self) -> dict:
        """Folder path and content hash."""
        return {"kind": "folder", "path": str(self.path), "encoding": self.encoding, "key": self.key}


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
        check_sample_rate(sample_rate)
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
                text = reference_text(utt.text, f"builtin corpus utterance {utt.id}", "regenerate the corpus cache")
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
    "manifest": {"path": (str, True), "audio_column": (str, False), "text_column": (str, False),
                 "encoding": (str, False)},
    "folder": {"path": (str, True), "encoding": (str, False)},
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
        return FolderSource(**options)
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
