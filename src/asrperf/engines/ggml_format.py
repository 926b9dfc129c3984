"""whisper.cpp's ggml model file: written from OpenAI-layout tensors, and checked before loading.

The layout is the one whisper.cpp's `whisper_model_load` (`src/whisper.cpp`) reads and its
`models/convert-h5-to-ggml.py` writes; all integers are little-endian int32:

    magic 0x67676d6c ("ggml")
    hparams: n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
             n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype
             (ftype = the file's weight type; quantized files add GGML_QNT_VERSION * 1000)
    mel filters: n_mel n_fft, then n_mel * n_fft float32 (the Slaney mel filterbank Whisper uses)
    vocab: n, then n x (u32 length, the token's raw bytes)   ids 0..n-1; whisper.cpp names the
           special tokens after them itself (end-of-text, language, task, timestamps)
    tensors until EOF: n_dims name_length ggml_type, dims innermost first, name, data

Which type each tensor must have is fixed by the loader, not chosen per tensor: positional
embeddings, every 1-D tensor and the conv biases (stored as [n, 1]) are f32; the two conv kernels
are f16 (f32 in an f32 file); every other matrix, the token embedding included, has the file's
type. Quantized blocks (q8_0, q5_0, q5_1, q4_0, q4_1: 32 weights each) are made by `gguf.quants`,
ggml-org's numpy port of ggml's reference quantizers, bit for bit (tests/test_engine_whispercpp.py
checks that against the `ggml_quantize_chunk` of the whisper.cpp library pywhispercpp loads).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from asrperf.engines.openai_layout import expected_names
from asrperf.errors import ModelError, require

GGML_FILE_MAGIC = 0x67676D6C
GGML_QNT_VERSION = 2  # ggml.h: bumped on quantization format changes
GGML_QNT_VERSION_FACTOR = 1000
QK = 32  # weights per quantization block, for every type below
# name -> (ggml_type id, file ftype id, bytes per block of QK weights; f32/f16 per weight)
GGML_TYPES: dict[str, tuple[int, int, int]] = {
    "f32": (0, 0, 4), "f16": (1, 1, 2),
    "q4_0": (2, 2, 18), "q4_1": (3, 3, 20), "q5_0": (6, 8, 22), "q5_1": (7, 9, 24), "q8_0": (8, 7, 34),
}
_TYPE_BY_ID = {tid: name for name, (tid, _, _) in GGML_TYPES.items()}
_FTYPE_BY_ID = {fid: name for name, (_, fid, _) in GGML_TYPES.items()}
HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx",
           "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")
_F32_ALWAYS = {"encoder.positional_embedding", "decoder.positional_embedding", "encoder.conv1.bias", "encoder.conv2.bias"}
_CONV_KERNELS = {"encoder.conv1.weight", "encoder.conv2.weight"}
WHISPER_N_FFT = 400  # 25 ms window at 16 kHz: 201 frequency bins per mel filter


def tensor_type(name: str, ndim: int, wtype: str) -> str:
    """The ggml type whisper.cpp's loader declares for tensor `name` in a file of type `wtype`."""
    if ndim < 2 or name in _F32_ALWAYS:
        return "f32"
    if name in _CONV_KERNELS:
        return "f32" if wtype == "f32" else "f16"
    return wtype


def _nbytes(ggml_type: str, n_elements: int) -> int:
    _, _, size = GGML_TYPES[ggml_type]
    return n_elements * size if ggml_type in ("f32", "f16") else n_elements // QK * size


def _encode(name: str, data: np.ndarray, ggml_type: str) -> bytes:
    if ggml_type == "f32":
        return np.ascontiguousarray(data, dtype="<f4").tobytes()
    if ggml_type == "f16":
        return np.ascontiguousarray(data, dtype="<f2").tobytes()
    if data.shape[-1] % QK:
        raise ModelError(f"{name}: rows of {data.shape[-1]} weights cannot be cut into {QK}-weight {ggml_type} blocks; "
                         f"use dtype fp16 or fp32 for this model")
    gguf = require("gguf", f"ggml {ggml_type} quantization for engine whispercpp", "whispercpp")
    qtype = getattr(gguf.GGMLQuantizationType, ggml_type.upper())
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype).tobytes()


def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's (n_mels, 201) Slaney mel filterbank, as the transformers feature extractor builds it
    (equal to openai-whisper's `assets/mel_filters.npz` to float32 rounding)."""
    from transformers import WhisperFeatureExtractor

    return np.ascontiguousarray(WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T, dtype=np.float32)


def token_bytes(vocab: dict[str, int]) -> list[bytes]:
    """The raw bytes of byte-level BPE tokens (GPT-2's printable-character alphabet), in id order.

    `vocab` maps token strings to ids 0..n-1 (tokenizer.json `model.vocab`, or vocab.json).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in ordered] != list(range(len(ordered))):
        raise ModelError("the tokenizer's vocabulary ids are not 0..n-1; not a Whisper byte-level BPE vocabulary")
    try:
        return [bytes(decoder[c] for c in token) for token, _ in ordered]
    except KeyError as exc:
        raise ModelError(f"token character {exc} is outside GPT-2's byte alphabet; not a Whisper vocabulary") from None


def write_ggml(path: Path, dims: dict[str, int], tensors: dict[str, np.ndarray], vocab: list[bytes], wtype: str) -> None:
    """Write a whisper.cpp model file: `tensors` in OpenAI's names and shapes, weights as `wtype`."""
    if wtype not in GGML_TYPES:
        raise ModelError(f"ggml type '{wtype}' is not one whisper.cpp loads here; use one of {', '.join(GGML_TYPES)}")
    want = expected_names(dims)
    if set(tensors) != want:
        raise ModelError(f"ggml writer: tensors differ from Whisper's (missing {sorted(want - set(tensors))[:3]}, "
                         f"unexpected {sorted(set(tensors) - want)[:3]})")
    _, ftype, _ = GGML_TYPES[wtype]
    if wtype not in ("f32", "f16"):
        ftype += GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR
    filters = mel_filters(dims["n_mels"])
    with open(path, "wb") as f:
        f.write(struct.pack("<I", GGML_FILE_MAGIC))
        f.write(struct.pack(f"<{len(HPARAMS)}i", *(dims[k] for k in HPARAMS[:-1]), ftype))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.astype("<f4").tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for token in vocab:
            f.write(struct.pack("<I", len(token)) + token)
        for name in sorted(want):  # any order loads; sorted makes the file reproducible
            data = tensors[name]
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)  # the loader declares them [1, n_state]
            ggml_type = tensor_type(name, data.ndim, wtype)
            encoded = name.encode()
            f.write(struct.pack("<3i", data.ndim, len(encoded), GGML_TYPES[ggml_type][0]))
            f.write(struct.pack(f"<{data.ndim}i", *reversed(data.shape)))  # ggml lists the innermost dim first
            f.write(encoded)
            f.write(_encode(name, data, ggml_type))


@dataclass(frozen=True)
class GgmlModel:
    """What a ggml Whisper file declares: hyperparameters, weight type, vocab size and tensors."""

    path: Path
    hparams: dict[str, int]
    wtype: str  # the file's weight type ("f16", "q8_0", ...)
    n_vocab_tokens: int  # tokens stored (whisper.cpp names the rest up to n_vocab itself)
    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (ggml type, numpy-order shape)

    @property
    def dims(self) -> dict[str, int]:
        return {k: v for k, v in self.hparams.items() if k != "ftype"}


def read_ggml(path: Path) -> GgmlModel:
    """Parse and check a ggml Whisper file's headers (tensor data is skipped, not read).

    whisper.cpp's loader aborts or returns NULL on a bad file with its reason only in its log, so
    every check it makes is made here first, each failure one ModelError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ggml model file not found; let asrperf convert the checkpoint again")
    size = path.stat().st_size
    fix = "delete it so asrperf converts the checkpoint again"
    with open(path, "rb") as f:
        def ints(n: int, what: str) -> tuple[int, ...]:
            raw = f.read(4 * n)
            if len(raw) != 4 * n:
                raise ModelError(f"{path}: truncated while reading {what} at byte {f.tell()}; {fix}")
            return struct.unpack(f"<{n}i", raw)

        (magic,) = ints(1, "the magic")  # 0x67676d6c fits an int32
        if magic != GGML_FILE_MAGIC:
            raise ModelError(f"{path}: not a ggml file (magic {magic:#010x}, expected {GGML_FILE_MAGIC:#010x}); {fix}")
        hparams = dict(zip(HPARAMS, ints(len(HPARAMS), "the hyperparameters")))
        wtype = _FTYPE_BY_ID.get(hparams["ftype"] % GGML_QNT_VERSION_FACTOR)
        if wtype is None or min(v for k, v in hparams.items() if k != "ftype") <= 0:
            raise ModelError(f"{path}: hyperparameters {hparams} are not a Whisper model's; {fix}")
        n_mel, n_fft = ints(2, "the mel filter shape")
        if n_mel != hparams["n_mels"] or n_fft != WHISPER_N_FFT // 2 + 1:
            raise ModelError(f"{path}: mel filters are {n_mel}x{n_fft}, expected {hparams['n_mels']}x{WHISPER_N_FFT // 2 + 1}; {fix}")
        f.seek(4 * n_mel * n_fft, 1)
        (n_tokens,) = ints(1, "the vocabulary size")
        if not 0 < n_tokens <= hparams["n_vocab"]:
            raise ModelError(f"{path}: {n_tokens} vocabulary entries for n_vocab {hparams['n_vocab']}; {fix}")
        for i in range(n_tokens):
            (length,) = ints(1, f"token {i}")
            f.seek(length, 1)
        tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
        while f.tell() < size:
            n_dims, name_len, type_id = ints(3, "a tensor header")
            if not 0 < n_dims <= 4 or not 0 < name_len < 256 or type_id not in _TYPE_BY_ID:
                raise ModelError(f"{path}: bad tensor header at byte {f.tell() - 12} (dims {n_dims}, type {type_id}); {fix}")
            shape = tuple(reversed(ints(n_dims, "a tensor shape")))
            name = f.read(name_len).decode("utf-8", errors="replace")
            ggml_type = _TYPE_BY_ID[type_id]
            f.seek(_nbytes(ggml_type, int(np.prod(shape))), 1)
            if f.tell() > size:
                raise ModelError(f"{path}: tensor {name} runs past the end of the file; {fix}")
            tensors[name] = (ggml_type, shape)
    model = GgmlModel(path, hparams, wtype, n_tokens, tensors)
    _check_tensors(model, fix)
    return model


def _check_tensors(model: GgmlModel, fix: str) -> None:
    want = expected_names(model.dims)
    missing, extra = sorted(want - set(model.tensors)), sorted(set(model.tensors) - want)
    if missing or extra:
        raise ModelError(f"{model.path}: tensors do not match the header's Whisper (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, {len(missing)} + {len(extra)} in all); {fix}")
    for name, (ggml_type, shape) in model.tensors.items():
        want_type = tensor_type(name, len(shape), model.wtype)
        if ggml_type != want_type:
            raise ModelError(f"{model.path}: tensor {name} is {ggml_type}, whisper.cpp expects {want_type} in a "
                             f"{model.wtype} file; {fix}")

