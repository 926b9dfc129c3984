"""Hugging Face `datasets` as a source: save_to_disk folders, audiofolders and Hub datasets (streaming too)."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.data.audio import Utterance, load_audio, resample, to_mono_float32
from asrperf.data.base import (
    AUDIO_EXTENSIONS,
    check_sample_rate,
    file_signature,
    missing_column,
    reference_text,
    short_hash,
)
from asrperf.errors import ConfigError, DataError, MissingExtraError

log = logging.getLogger(__name__)

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
            digest = short_hash(
                file_signature(p) if p.suffix.lower() in AUDIO_EXTENSIONS else p.read_bytes() for p in files
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
            raise missing_column(self.audio_column, "audio", self._where(), columns, "audio_column")
        if self.text_column is not None:
            if self.text_column not in columns:
                raise missing_column(self.text_column, "text", self._where(), columns, "text_column")
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
        check_sample_rate(sample_rate)
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
            text = reference_text(row.get(text_column), item, "drop the row from the dataset or pick another split")
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
