"""The data-source flags of `asrperf run` and `asrperf eval`: their typer options and the [source]
table they name (the built-in corpus when none is given is each command's own default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from asrperf.errors import ConfigError

MANIFEST_OPTION = typer.Option(None, help="CSV/TSV/JSONL manifest with audio and text columns.")
FOLDER_OPTION = typer.Option(None, help="Folder of audio files with same-name .txt transcripts.")
HF_DATASET_OPTION = typer.Option(None, help="Hugging Face dataset name or save_to_disk folder.")
HF_CONFIG_OPTION = typer.Option(None, help="Dataset configuration name.")


def source_table(manifest: Path | None, folder: Path | None, hf_dataset: str | None, hf_config: str | None,
                 split: str | None, default_split: str) -> dict[str, Any] | None:
    """The [source] table of the one source given (a Hugging Face dataset's split defaults to
    `default_split`), or None when none is."""
    if len([s for s in (manifest, folder, hf_dataset) if s]) > 1:
        raise ConfigError("give one of --manifest, --folder, --hf-dataset")
    if manifest:
        return {"kind": "manifest", "path": str(manifest)}
    if folder:
        return {"kind": "folder", "path": str(folder)}
    if hf_dataset:
        return {"kind": "hf", "path": hf_dataset, "split": split or default_split,
                **({"config": hf_config} if hf_config else {})}
    return None
