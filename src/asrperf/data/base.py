"""What every source shares: the Source interface, reference-text cleaning, and small helpers."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from asrperf.data.audio import Utterance
from asrperf.errors import ConfigError, DataError

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


def reference_text(raw: Any, item: str, fix: str) -> str | None:
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


def short_hash(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")  # separator, so ("ab", "c") and ("a", "bc") differ
    return digest.hexdigest()[:16]


def file_signature(path: Path) -> str:
    """Cheap change detector for an audio file: size and modification time, not its bytes.

    Hashing every audio file would read the whole dataset just to compute a cache key; a copy
    that changes mtime only costs a cache miss, never a stale hit.
    """
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def missing_column(column: str, role: str, where: str, available: Iterable[str], option: str) -> DataError:
    names = ", ".join(repr(c) for c in available) or "(none)"
    return DataError(
        f"{role} column {column!r} not found in {where}; available columns: {names}; set {option} to one of them"
    )


def check_sample_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")


# --------------------------------------------------------------------------------------------


# Formats libsndfile decodes; anything else is refused by name, never silently left out.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64", ".rf64"}
)
