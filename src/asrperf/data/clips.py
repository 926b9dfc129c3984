"""Exact-length clips with exact reference text, cached on disk.

A clip of L seconds holds exactly round(L * rate) samples. In "exact" mode it is built from
*whole* utterances of the source, padded with digital silence, so its reference is exactly the
utterances' texts joined. "continuous" mode packs whole utterances the same way but runs them
together like one long recording: the audio starts with the first utterance and ends with the
last, and the shortfall is spread over the pauses between them instead of padding the end
(`build_continuous`); the reference stays exact. In "loop" mode the source audio is repeated and
cut to fill the length: good for speed-only runs, with no reference text.

Exact packing: a clip takes consecutive utterances until the next one does not fit. When those
fill less than FILL_TARGET of it (2.9 s sentences leave a 5 s clip 58% speech), the clip is packed
again: consecutive utterances up to PACK_TAIL_S before its end, then the rest from the next
PACK_WINDOW unused utterances: the subset that fills it to at least FILL_TARGET keeping the
earliest utterances (the first if any such subset has it, then the second, ...), or, when none
does, the one that comes closest to the length (subset sum at 10 ms resolution, never past the
length). Utterances passed over stay, in order, for the next clips. `check_speech_share` then refuses a clip with less than the run's
`min_speech_share` of speech (the source ran out, or its utterances are too long to fill it).
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

CLIP_FORMAT_VERSION = 2  # bump when the building rule changes, so stale caches are not reused (2: repacking)
FILL_TARGET = 0.9  # a greedy clip with less speech than this share is packed again (a constant: clips
# must not depend on a run option, or the cache key would have to)
PACK_WINDOW = 64  # unused utterances the repacking may choose from
PACK_TAIL_S = 30.0  # the repacking chooses the last <= 30 s of a clip; before that, utterances in order
_PACK_UNIT_S = 0.01  # subset-sum resolution


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
    # exact and continuous modes: where each utterance lies in the clip, [start, end) in samples, in
    # order (the clip is built from whole utterances, so "end of speech" is known exactly); loop: ()
    utterance_bounds: tuple[tuple[int, int], ...] = ()
    utterance_texts: tuple[str, ...] = ()  # exact and continuous: each utterance's reference, as joined into `text`

    @property
    def audio_s(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def utterance_bounds_s(self) -> tuple[tuple[float, float], ...]:
        """`utterance_bounds` in seconds from the start of the clip."""
        return tuple((a / self.sample_rate, b / self.sample_rate) for a, b in self.utterance_bounds)


def n_samples(length_s: float, sample_rate: int) -> int:
    """Samples in a clip of `length_s` seconds; rounding keeps 5 s at 16 kHz = 80,000 exactly."""
    return int(round(length_s * sample_rate))


def _clip_id(length_s: float, index: int) -> str:
    return f"{length_s:g}s-{index:03d}"


def _reach(sizes: list[int], capacity: int) -> list[int]:
    """suffix[i]: the sums (bit s set: some subset sums to s, up to capacity) of subsets of sizes[i:]."""
    mask = (1 << (capacity + 1)) - 1
    suffix = [1]
    for w in reversed(sizes):
        suffix.append((suffix[-1] | (suffix[-1] << w)) & mask)
    return suffix[::-1]


def _earliest_subset(sizes: list[int], capacity: int, need: int) -> list[int] | None:
    """The subset of `sizes` summing to [need, capacity] that keeps the earliest items (item 0 if
    any such subset has it, then item 1, ...); None when no subset reaches `need`. With need = 0
    and no such subset wanted, see `_fullest_subset`."""
    suffix = _reach(sizes, capacity)

    def completes(i: int, total: int) -> bool:  # some subset of sizes[i:] brings total into range
        lo, hi = max(0, need - total), capacity - total
        return hi >= lo and (suffix[i] >> lo) & ((1 << (hi - lo + 1)) - 1) != 0

    if not completes(0, 0):
        return None
    chosen, total = [], 0
    for i, w in enumerate(sizes):
        if completes(i + 1, total + w):
            chosen.append(i)
            total += w
    return chosen


def _fullest_subset(sizes: list[int], capacity: int) -> list[int]:
    """The subset with the largest sum <= capacity (the earliest items among equals)."""
    best = _reach(sizes, capacity)[0].bit_length() - 1
    return _earliest_subset(sizes, capacity, best) or []


def _greedy(pool: list[Utterance], target: int) -> list[int]:
    """The leading utterances of `pool` that fit in `target` samples."""
    chosen, used = [], 0
    for i, u in enumerate(pool):
        if used + len(u.audio) > target:
            break
        chosen.append(i)
        used += len(u.audio)
    return chosen


def _repack(pool: list[Utterance], target: int, sample_rate: int) -> list[int]:
    """Utterances in order up to the clip's last PACK_TAIL_S, then the best-fitting subset of the
    next PACK_WINDOW (indices into `pool`)."""
    head = _greedy(pool, max(0, target - int(PACK_TAIL_S * sample_rate)))
    head_used = sum(len(pool[i].audio) for i in head)
    unit = int(_PACK_UNIT_S * sample_rate)
    rest = list(range(len(head), len(pool)))[:PACK_WINDOW]
    # ceil to the unit: chosen units never add up to more samples than the clip has left
    sizes = [-(-len(pool[i].audio) // unit) for i in rest]
    capacity = (target - head_used) // unit
    need = -(-(int(FILL_TARGET * target) - head_used) // unit)
    chosen = _earliest_subset(sizes, capacity, need)
    return head + [rest[k] for k in (chosen if chosen is not None else _fullest_subset(sizes, capacity))]


def _pack(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[list[Utterance]]:
    """The whole utterances of each of `n` clips of exactly `length_s` seconds (module docstring: packing).

    An utterance longer than a clip cannot be used whole and is passed over (it is never cut,
    which would make the reference inexact). Raises DataError when the source runs out first.
    The source is read only as far as the clips need (PACK_WINDOW more utterances when repacking).
    """
    target = n_samples(length_s, sample_rate)
    groups: list[list[Utterance]] = []
    stream = iter(utterances)
    pool: list[Utterance] = []  # read, usable, not yet in a clip, in source order
    exhausted = False

    def fill(samples: int, count: int = 0) -> None:
        nonlocal exhausted
        while not exhausted and (sum(len(u.audio) for u in pool) < samples or len(pool) < count):
            u = next(stream, None)
            if u is None:
                exhausted = True
            elif u.sample_rate != sample_rate:
                raise DataError(f"utterance {u.id}: rate {u.sample_rate} Hz, expected {sample_rate} Hz")
            elif len(u.audio) <= target:
                pool.append(u)

    def speech(chosen: list[int]) -> int:
        return sum(len(pool[i].audio) for i in chosen)

    while len(groups) < n:
        fill(target + 1)  # past the clip's length: the greedy clip knows where it stops
        if not pool:
            break
        chosen = _greedy(pool, target)
        if speech(chosen) < FILL_TARGET * target:
            fill(target + int(PACK_TAIL_S * sample_rate), PACK_WINDOW)
            repacked = _repack(pool, target, sample_rate)
            chosen = repacked if speech(repacked) > speech(chosen) else chosen
        groups.append([pool[i] for i in chosen])
        for i in reversed(chosen):
            del pool[i]
    if len(groups) < n:
        raise DataError(
            f"the source holds only enough whole utterances for {len(groups)} clip(s) of {length_s:g} s, "
            f"{n} asked; lower n_clips or use a larger source"
        )
    return groups


def _clip(parts: list[Utterance], index: int, length_s: float, sample_rate: int, gaps: list[int] = ()) -> Clip:
    """One clip of exactly `length_s` seconds: `parts` in order, `gaps[i]` samples of silence after part i,
    digital silence to the end."""
    audio = np.zeros(n_samples(length_s, sample_rate), dtype=np.float32)
    pos = 0
    bounds = []
    for i, u in enumerate(parts):
        audio[pos : pos + len(u.audio)] = u.audio
        bounds.append((pos, pos + len(u.audio)))
        pos += len(u.audio) + (gaps[i] if i < len(gaps) else 0)
    return Clip(id=_clip_id(length_s, index), length_s=length_s, audio=audio, sample_rate=sample_rate,
                text=" ".join(u.text for u in parts), utterance_ids=tuple(u.id for u in parts),
                speech_s=sum(len(u.audio) for u in parts) / sample_rate,
                utterance_bounds=tuple(bounds), utterance_texts=tuple(u.text for u in parts))


def build_exact(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[Clip]:
    """Whole utterances back to back, then digital silence to exactly `length_s` seconds (see `_pack`)."""
    return [_clip(parts, i, length_s, sample_rate) for i, parts in enumerate(_pack(utterances, length_s, n, sample_rate))]


def gap_samples(shortfall: int, n_gaps: int) -> list[int]:
    """Split `shortfall` samples over `n_gaps` pauses as evenly as whole samples allow (earlier gaps
    take the remainder): 10 over 3 -> [4, 3, 3]."""
    base, extra = divmod(shortfall, n_gaps)
    return [base + (i < extra) for i in range(n_gaps)]


def build_continuous(utterances: Iterable[Utterance], length_s: float, n: int, sample_rate: int) -> list[Clip]:
    """Whole utterances run together like one recording, exactly `length_s` seconds, exact reference.

    Utterances are packed as in build_exact; the samples left over go into the k - 1 pauses between
    the k utterances, evenly, instead of one block of silence at the end. Each utterance keeps its
    own edge silence (the source's natural pause). A clip of a single utterance has no pause to
    widen and is padded at the end, as in exact mode.
    """
    target = n_samples(length_s, sample_rate)
    clips = []
    for i, parts in enumerate(_pack(utterances, length_s, n, sample_rate)):
        speech = sum(len(u.audio) for u in parts)
        gaps = gap_samples(target - speech, len(parts) - 1) if len(parts) > 1 else []
        clips.append(_clip(parts, i, length_s, sample_rate, gaps))
    return clips


def check_speech_share(clips: list[Clip], min_share: float, source: str) -> None:
    """Refuse exact clips with less than `min_share` of speech, naming the source and its seconds."""
    for c in clips:
        if c.text is not None and c.speech_s < min_share * c.length_s:
            raise DataError(
                f"clip {c.id} from source {source} holds {c.speech_s:.1f} s of speech in {c.length_s:g} s "
                f"({100 * c.speech_s / c.length_s:.0f}%, below min_speech_share {min_share:g}): use a larger "
                f"source, fewer or shorter clips, or set [run] min_speech_share = {c.speech_s / c.length_s:.2f} "
                "to accept the silence padding")


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
        if any(m["text"] is not None and "utterance_bounds" not in m for m in index["clips"][:n]):
            return None  # an exact-mode entry written before utterance bounds were kept: rebuilt by prepare_clips
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
                    utterance_bounds=tuple((int(a), int(b)) for a, b in meta.get("utterance_bounds", ())),
                    utterance_texts=tuple(meta.get("utterance_texts", ())),
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
            tmp = folder / f".{name}.{os.getpid()}.tmp"  # two runs may build the same clips at once
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
                    "utterance_bounds": [list(b) for b in c.utterance_bounds],
                    "utterance_texts": list(c.utterance_texts),
                    "n_samples": len(c.audio),
                }
            )
        tmp_index = folder / f".index.json.{os.getpid()}.tmp"
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
    min_speech_share: float = 0.0,
) -> tuple[list[Clip], bool]:
    """Clips for one length from the cache, or built from the source and cached.

    Returns (clips, cached): `cached` is True when nothing was rebuilt. Exact clips with less than
    `min_speech_share` of speech are a DataError (`check_speech_share`), cached or not.
    """
    key = cache.key(source_key, length_s, mode, sample_rate)
    clips = cache.load(key, n)
    cached = clips is not None
    if clips is None:
        clips = BUILDERS[mode](utterances(), length_s, n, sample_rate)
        cache.save(key, clips, source_info)
    check_speech_share(clips, min_speech_share, source_key)
    return clips, cached
