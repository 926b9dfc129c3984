"""A transformers Whisper checkpoint in OpenAI's own layout: `ModelDimensions` and state-dict names.

OpenAI's `whisper/model.py` and whisper.cpp (`src/whisper-arch.h`, ASR_TENSOR_NAMES) use the same
167 tensor names for tiny (e.g. `encoder.blocks.0.attn.query.weight`, `decoder.token_embedding.weight`),
so one mapping from transformers' names serves both the openai-whisper engine and the ggml writer.

Transformers names (`WhisperForConditionalGeneration.state_dict()`) -> OpenAI names:

    model.encoder.conv{1,2}.{weight,bias}           encoder.conv{1,2}.*
    model.encoder.embed_positions.weight            encoder.positional_embedding
    model.encoder.layer_norm.*                      encoder.ln_post.*
    model.decoder.embed_tokens.weight               decoder.token_embedding.weight
    model.decoder.embed_positions.weight            decoder.positional_embedding
    model.decoder.layer_norm.*                      decoder.ln.*
    model.{enc,dec}oder.layers.N.<part>.*           {enc,dec}oder.blocks.N.<_BLOCK_PARTS[part]>.*
    proj_out.weight                                 (none: OpenAI ties the output projection to the
                                                     token embedding; an untied one is refused)

Pure numpy; safetensors reads the checkpoint. Random weights are built through transformers (torch)
by `random_hf_state`, so they are the transformers engine's own random model, tensor for tensor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from asrperf.errors import ModelError, require

# transformers' block sub-module -> OpenAI's (the encoder's self-attention is "attn" in both stacks)
_BLOCK_PARTS = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP = {
    "model.encoder.conv1.weight": "encoder.conv1.weight", "model.encoder.conv1.bias": "encoder.conv1.bias",
    "model.encoder.conv2.weight": "encoder.conv2.weight", "model.encoder.conv2.bias": "encoder.conv2.bias",
    "model.encoder.embed_positions.weight": "encoder.positional_embedding",
    "model.encoder.layer_norm.weight": "encoder.ln_post.weight", "model.encoder.layer_norm.bias": "encoder.ln_post.bias",
    "model.decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "model.decoder.embed_positions.weight": "decoder.positional_embedding",
    "model.decoder.layer_norm.weight": "decoder.ln.weight", "model.decoder.layer_norm.bias": "decoder.ln.bias",
}
_LAYER_RE = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")
# the fields of OpenAI's whisper.model.ModelDimensions, from a transformers WhisperConfig
_DIMS_FROM_CONFIG = {
    "n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions", "n_audio_state": "d_model",
    "n_audio_head": "encoder_attention_heads", "n_audio_layer": "encoder_layers", "n_vocab": "vocab_size",
    "n_text_ctx": "max_target_positions", "n_text_state": "d_model", "n_text_head": "decoder_attention_heads",
    "n_text_layer": "decoder_layers",
}
# transformers' defaults for keys a config.json may omit (WhisperConfig's own defaults)
_CONFIG_DEFAULTS = {"max_source_positions": 1500, "max_target_positions": 448}


def openai_dims(config: dict[str, Any], where: str = "config") -> dict[str, int]:
    """OpenAI's ModelDimensions as a dict, from a transformers Whisper config (config.json contents)."""
    if config.get("model_type", "whisper") != "whisper":
        raise ModelError(f"{where}: model_type '{config.get('model_type')}' is not Whisper; "
                         f"only Whisper checkpoints convert to OpenAI's layout")
    if config.get("encoder_ffn_dim", 4 * config.get("d_model", 0)) != 4 * config.get("d_model", -1):
        raise ModelError(f"{where}: encoder_ffn_dim {config.get('encoder_ffn_dim')} is not 4 x d_model; "
                         f"OpenAI's Whisper (and whisper.cpp) fix the MLP at 4 x d_model")
    try:
        return {field: int(config.get(key, _CONFIG_DEFAULTS.get(key))) for field, key in _DIMS_FROM_CONFIG.items()}
    except TypeError as exc:
        missing = [k for k in _DIMS_FROM_CONFIG.values() if config.get(k, _CONFIG_DEFAULTS.get(k)) is None]
        raise ModelError(f"{where}: Whisper config lacks {', '.join(missing)}; not a complete WhisperConfig") from exc


def openai_name(hf_name: str) -> str | None:
    """The OpenAI name of a transformers Whisper tensor; None for proj_out (tied in OpenAI's layout)."""
    if hf_name == "proj_out.weight":
        return None
    if hf_name in _TOP:
        return _TOP[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m is None or m.group(3) not in _BLOCK_PARTS:
        raise ModelError(f"transformers tensor {hf_name} has no OpenAI Whisper counterpart; "
                         f"this is not a standard WhisperForConditionalGeneration checkpoint")
    stack, layer, part, leaf = m.groups()
    return f"{stack}.blocks.{layer}.{_BLOCK_PARTS[part]}.{leaf}"


def expected_names(dims: dict[str, int]) -> set[str]:
    """Every tensor OpenAI's Whisper holds for `dims` (keys have no bias in OpenAI's attention)."""
    names = set(_TOP.values())
    for stack, n_layers in (("encoder", dims["n_audio_layer"]), ("decoder", dims["n_text_layer"])):
        for i in range(n_layers):
            for hf_part, part in _BLOCK_PARTS.items():
                if stack == "encoder" and hf_part.startswith("encoder_attn"):
                    continue
                leaves = ("weight",) if part.endswith(".key") else ("weight", "bias")
                names |= {f"{stack}.blocks.{i}.{part}.{leaf}" for leaf in leaves}
    return names


def to_openai(state: dict[str, np.ndarray], dims: dict[str, int], where: str) -> dict[str, np.ndarray]:
    """Rename a transformers Whisper state dict to OpenAI's names, checking nothing is left over or missing.

    An untied proj_out (different from the token embedding) cannot be expressed in OpenAI's layout,
    which always projects with the token embedding: a ModelError, never a silent substitution.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        target = openai_name(name)
        if target is None:
            embed = state.get("model.decoder.embed_tokens.weight")
            if embed is None or not np.array_equal(value, embed):
                raise ModelError(f"{where}: proj_out.weight differs from the token embedding; OpenAI's Whisper "
                                 f"and whisper.cpp tie them, so this checkpoint cannot be converted")
            continue
        out[target] = np.asarray(value)
    want = expected_names(dims)
    missing, extra = sorted(want - set(out)), sorted(set(out) - want)
    if missing or extra:
        raise ModelError(f"{where}: tensors do not match Whisper {dims['n_audio_layer']}/{dims['n_text_layer']} layers "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); the checkpoint is incomplete")
    shapes = {"decoder.token_embedding.weight": (dims["n_vocab"], dims["n_text_state"]),
              "encoder.conv1.weight": (dims["n_audio_state"], dims["n_mels"], 3),
              "encoder.positional_embedding": (dims["n_audio_ctx"], dims["n_audio_state"]),
              "decoder.positional_embedding": (dims["n_text_ctx"], dims["n_text_state"])}
    for name, shape in shapes.items():
        if tuple(out[name].shape) != shape:
            raise ModelError(f"{where}: {name} has shape {tuple(out[name].shape)}, config.json implies {shape}; "
                             f"the weights and config disagree")
    return out


def read_hf_checkpoint(checkpoint: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json contents, float32 state dict) of a local transformers Whisper checkpoint."""
    checkpoint = Path(checkpoint)
    config_file, weights = checkpoint / "config.json", checkpoint / "model.safetensors"
    if not config_file.is_file():
        raise ModelError(f"{checkpoint}: no config.json; point to a transformers Whisper checkpoint directory")
    if not weights.is_file():
        raise ModelError(f"{checkpoint}: no model.safetensors (sharded and .bin checkpoints are not read); "
                         f"re-save it with save_pretrained(safe_serialization=True)")
    from safetensors.numpy import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types for corrupt files
        raise ModelError(f"{weights}: cannot be read ({type(exc).__name__}: {exc}); the file is corrupt, re-save it") from exc
    return json.loads(config_file.read_text()), {k: v.astype(np.float32) for k, v in state.items()}


def random_hf_state(architecture: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config dict, state dict) of the transformers engine's random-weight Whisper for `architecture`.

    Built the same way (`hf_random.random_fill`, seed 0), so every engine runs the same random model.
    """
    torch = require("torch", f"random weights for '{name}' outside engine transformers", "hf")
    tf = require("transformers", f"random weights for '{name}' outside engine transformers", "hf")
    from asrperf.engines.hf_random import random_fill

    arch = dict(architecture)
    if arch.pop("model_type", "whisper") != "whisper":
        raise ModelError(f"'{name}' is not a Whisper architecture; only Whisper converts to OpenAI's layout")
    config = tf.WhisperConfig(**arch)
    with torch.device("meta"):
        model = tf.WhisperForConditionalGeneration(config)
    random_fill(model)
    state = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    return config.to_dict(), state
