"""Exact-length clips with exact reference text, cached on disk.

A clip of L seconds holds exactly round(L * rate) samples. In "exact" mode it is built from
consecutive *whole* utterances of the source, padded with digital silence, so its reference is
exactly the utterances' texts joined. "continuous" mode packs whole utterances the same way but
runs them together like one long recording: the audio starts with the first utterance and ends
with the last, and the shortfall is spread over the pauses between them instead of padding the
end, so no stretch of silence is longer than a natural pause plus a fraction of a second (see
`build_continuous`); the reference stays exact. In "loop" mode the source audio is repeated and
cut to fill the length: good for speed-only runs, with no reference text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrperf.data.audio import SAMPLE_RATE, Utterance
from asrperf.errors import DataError

CLIP_FORMAT_VERSION = 1  # bump when the building rule changes, so stale caches are not reused


@dataclass(frozen=True)
class Clip:
    """A fixed-length stretch of audio and, in exact mode, its exact reference."""

    id: str  # "<length>s-<index>", e.g. "60s-002"
    length_s: float
    audio: np.ndarray  # float32 mono, exactly n_samples(length_s, sample_rate) samples
    sample_rate: int
    text: str | None  # None in loop mode
    utterance_ids: tuple[str, ...]
    speech_s: float  # seconds of source audio in the clip; the rest is silence padding

    @property
    def audio_s(self) -> float:
        return len(self.audio) / self.sample_rate


def n_samples(length_s: float, sample_rate: int) -> int:
    """Samples in a clip of `length_s` seconds; rounding keeps 5 s at 16 kHz = 80,000 exactly."""
    return int(round(length_s * sample_rate))


def _clip_id(length_s: float, index: int) -> str:
    return f"{length_s:g}s-{index:03d}"


def build_exact(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[Clip]:
    """Greedily pack consecutive whole utterances into `n` clips of exactly `length_s` seconds.

    An utterance longer than a clip cannot be used whole and is passed over (it is never cut,
    which would make the reference inexact). Raises DataError when the source runs out first.
    """
    target = n_samples(length_s, sample_rate)
    clips = []
    for index, parts in enumerate(_pack(utterances, target, n, sample_rate, length_s)):
        audio = np.zeros(target, dtype=np.float32)
        pos = 0
        for u in parts:
            audio[pos : pos + len(u.audio)] = u.audio
            pos += len(u.audio)
        clips.append(Clip(_clip_id(length_s, index), length_s, audio, sample_rate, " ".join(u.text for u in parts),
                          tuple(u.id for u in parts), pos / sample_rate))
    return clips


def _pack(utterances: Iterable[Utterance], target: int, n: int, sample_rate: int, length_s: float) -> list[list[Utterance]]:
    """Consecutive whole utterances, at most `target` samples per group, `n` groups (see build_exact)."""
    groups: list[list[Utterance]] = []
    parts: list[Utterance] = []
    used = 0
    for u in utterances:
        if u.sample_rate != sample_rate:
            raise DataError(f"utterance {u.id}: rate {u.sample_rate} Hz, expected {sample_rate} Hz")
        if len(u.audio) > target:
            continue
        if used + len(u.audio) > target:
            groups.append(parts)
            if len(groups) == n:
                return groups
            parts, used = [], 0
        parts.append(u)
        used += len(u.audio)
    if parts and len(groups) < n:
        groups.append(parts)
    if len(groups) < n:
        raise DataError(
            f"the source holds only enough whole utterances for {len(groups)} clip(s) of {length_s:g} s, "
            f"{n} asked; lower n_clips or use a larger source"
        )
    return groups


def gap_samples(shortfall: int, n_gaps: int) -> list[int]:
    """Split `shortfall` samples over `n_gaps` pauses as evenly as whole samples allow (earlier gaps
    take the remainder): 10 over 3 -> [4, 3, 3]."""
    base, extra = divmod(shortfall, n_gaps)
    return [base + (i < extra) for i in range(n_gaps)]


def build_continuous(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[Clip]:
    """Whole utterances run together like one recording, exactly `length_s` seconds, exact reference.

    Utterances are packed as in build_exact; the samples left over (less than one utterance) go
    into the k - 1 pauses between the k utterances, evenly, instead of one block of silence at the
    end. Each utterance keeps its own edge silence (the source's natural pause). A clip of a single
    utterance has no pause to widen and is padded at the end, as in exact mode.
    """
    target = n_samples(length_s, sample_rate)
    clips = []
    for index, parts in enumerate(_pack(utterances, target, n, sample_rate, length_s)):
        speech = sum(len(u.audio) for u in parts)
        gaps = gap_samples(target - speech, len(parts) - 1) if len(parts) > 1 else []
        audio = np.zeros(target, dtype=np.float32)
        pos = 0
        for i, u in enumerate(parts):
            audio[pos : pos + len(u.audio)] = u.audio
            pos += len(u.audio) + (gaps[i] if i < len(gaps) else 0)
        clips.append(Clip(_clip_id(length_s, index), length_s, audio, sample_rate, " ".join(u.text for u in parts),
                          tuple(u.id for u in parts), speech / sample_rate))
    return clips


def build_loop(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[Clip]:
    """Fill each clip by repeating the source audio end to end and cutting at the exact length."""
    target = n_samples(length_s, sample_rate)
    pool = [u for _, u in zip(range(10_000), utterances)]
    if not pool:
        raise DataError("the source yielded no utterances; check its path and split")
    stream = np.concatenate([u.audio for u in pool])
    clips = []
    for i in range(n):
        start = (i * target) % len(stream)
        reps = -(-(start + target) // len(stream))  # ceil division
        audio = np.tile(stream, reps)[start : start + target].astype(np.float32)
        clips.append(Clip(_clip_id(length_s, i), length_s, audio, sample_rate, None, (), length_s))
    return clips


BUILDERS: dict[str, Callable[[Iterable[Utterance], float, int, int], list[Clip]]] = {
    "exact": build_exact,
    "continuous": build_continuous,
    "loop": build_loop,
}


class ClipCache:
    """Clips on disk under `root/clips/<key>/`: one float WAV per clip and an index.json.

    The key hashes the source key, length, mode, sample rate and CLIP_FORMAT_VERSION; a clip
    index within it is stable, so a cache built with n clips serves any request of n or fewer.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "clips"

    def key(self, source_key: str, length_s: float, mode: str, sample_rate: int) -> str:
        raw = json.dumps([source_key, length_s, mode, sample_rate, CLIP_FORMAT_VERSION])
        return f"{length_s:g}s-{mode}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"

    def load(self, key: str, n: int) -> list[Clip] | None:
        import soundfile as sf

        folder = self.root / key
        index_path = folder / "index.json"
        if not index_path.is_file():
            return None
        index = json.loads(index_path.read_text())
        if len(index["clips"]) < n:
            return None
        clips = []
        for meta in index["clips"][:n]:
            audio, rate = sf.read(str(folder / meta["file"]), dtype="float32")
            clips.append(
                Clip(
                    id=meta["id"],
                    length_s=meta["length_s"],
                    audio=audio,
                    sample_rate=rate,
                    text=meta["text"],
                    utterance_ids=tuple(meta["utterance_ids"]),
                    speech_s=meta["speech_s"],
                )
            )
        return clips

    def save(self, key: str, clips: list[Clip], source: dict) -> None:
        """Write audio files first, then the index atomically: a killed run leaves no trusted half entry."""
        import soundfile as sf

        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        metas = []
        for c in clips:
            name = f"{c.id}.wav"
            tmp = folder / f".{name}.tmp"
            sf.write(str(tmp), c.audio, c.sample_rate, subtype="FLOAT", format="WAV")
            os.replace(tmp, folder / name)
            metas.append(
                {
                    "id": c.id,
                    "file": name,
                    "length_s": c.length_s,
                    "text": c.text,
                    "utterance_ids": list(c.utterance_ids),
                    "speech_s": c.speech_s,
                    "n_samples": len(c.audio),
                }
            )
        tmp_index = folder / ".index.json.tmp"
        tmp_index.write_text(json.dumps({"source": source, "clips": metas}, indent=1))
        os.replace(tmp_index, folder / "index.json")


def prepare_clips(
    utterances: Callable[[], Iterator[Utterance]],
    source_key: str,
    source_info: dict,
    length_s: float,
    n: int,
    cache: ClipCache,
    mode: str = "exact",
    sample_rate: int = SAMPLE_RATE,
) -> tuple[list[Clip], bool]:
    """Clips for one length from the cache, or built from the source and cached.

    Returns (clips, cached): `cached` is True when nothing was rebuilt.
    """
    key = cache.key(source_key, length_s, mode, sample_rate)
    clips = cache.load(key, n)
    if clips is not None:
        return clips, True
    clips = BUILDERS[mode](utterances(), length_s, n, sample_rate)
    cache.save(key, clips, source_info)
    return clips, False
