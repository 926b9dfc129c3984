"""Built-in catalog: model names, where their real weights live, and their architectures.

The architecture kwargs are those of the published checkpoints' config.json, so a random-weight
model has the real shapes and costs the same FLOPs and memory; only its outputs are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

from asrperf.engines.base import ModelSpec
from asrperf.errors import ModelError


def _whisper(d_model: int, layers: int, heads: int, mel: int = 80, vocab: int = 51865, dec_layers: int = 0) -> dict:
    return {
        "model_type": "whisper",
        "d_model": d_model,
        "encoder_layers": layers,
        "decoder_layers": dec_layers or layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": 4 * d_model,
        "decoder_ffn_dim": 4 * d_model,
        "num_mel_bins": mel,
        "vocab_size": vocab,
    }


def _w2v2(hidden: int, layers: int, heads: int, large: bool, model_type: str = "wav2vec2") -> dict:
    # large LV-60 / HuBERT-large checkpoints use layer-norm feature extractors and pre-norm layers
    return {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "feat_extract_norm": "layer" if large else "group",
        "do_stable_layer_norm": large,
        "conv_bias": large,
        "vocab_size": 32,
    }


def _w2v2_conformer(hidden: int, layers: int, heads: int, position: str) -> dict:
    # the published conformer checkpoints are all "large": layer-norm feature extractor, conv bias
    # (there is no do_stable_layer_norm: conformer blocks are always pre-norm)
    return {
        "model_type": "wav2vec2-conformer",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "feat_extract_norm": "layer",
        "conv_bias": True,
        "position_embeddings_type": position,
        "conv_depthwise_kernel_size": 31,
        "vocab_size": 32,
    }


def _fastconformer(layers: int, hidden: int = 1024, heads: int = 8) -> dict:
    # NeMo FastConformer: 80 mel bins, 8x depthwise-conv subsampling (256 channels), conv kernel 9, 4x FFN
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "conv_kernel_size": 9,
        "subsampling_factor": 8,
        "subsampling_conv_channels": 256,
        "num_mel_bins": 80,
    }


def _parakeet_ctc(layers: int, hidden: int = 1024, heads: int = 8, vocab: int = 1025) -> dict:
    # The CTC head has the 1024 SentencePiece pieces + 1 blank, the blank last (= pad id).
    return {"model_type": "parakeet_ctc", "vocab_size": vocab, "pad_token_id": vocab - 1,
            "encoder_config": _fastconformer(layers, hidden, heads)}


def _parakeet_transducer(model_type: str, layers: int, vocab: int) -> dict:
    # FastConformer encoder, a 2-layer LSTM prediction network and a joint network of width 640
    # (transformers' defaults for these checkpoints); the blank is the last id. TDT's joint also
    # predicts a duration of 0-4 frames per step.
    return {"model_type": model_type, "vocab_size": vocab, "blank_token_id": vocab - 1, "decoder_hidden_size": 640,
            "num_decoder_layers": 2, "encoder_config": _fastconformer(layers)}


CATALOG: dict[str, ModelSpec] = {
    "whisper-tiny.en": ModelSpec("whisper-tiny.en", "whisper", "openai/whisper-tiny.en", _whisper(384, 4, 6, vocab=51864), True),
    "whisper-tiny": ModelSpec("whisper-tiny", "whisper", "openai/whisper-tiny", _whisper(384, 4, 6)),
    "whisper-base": ModelSpec("whisper-base", "whisper", "openai/whisper-base", _whisper(512, 6, 8)),
    "whisper-base.en": ModelSpec("whisper-base.en", "whisper", "openai/whisper-base.en", _whisper(512, 6, 8, vocab=51864), True),
    "whisper-small": ModelSpec("whisper-small", "whisper", "openai/whisper-small", _whisper(768, 12, 12)),
    "whisper-medium": ModelSpec("whisper-medium", "whisper", "openai/whisper-medium", _whisper(1024, 24, 16)),
    "whisper-large-v3": ModelSpec("whisper-large-v3", "whisper", "openai/whisper-large-v3", _whisper(1280, 32, 20, 128, 51866)),
    "whisper-large-v3-turbo": ModelSpec(
        "whisper-large-v3-turbo", "whisper", "openai/whisper-large-v3-turbo", _whisper(1280, 32, 20, 128, 51866, dec_layers=4)
    ),
    "wav2vec2-base": ModelSpec("wav2vec2-base", "ctc", "facebook/wav2vec2-base-960h", _w2v2(768, 12, 12, False), True),
    "wav2vec2-large": ModelSpec("wav2vec2-large", "ctc", "facebook/wav2vec2-large-960h-lv60-self", _w2v2(1024, 24, 16, True), True),
    "hubert-large": ModelSpec("hubert-large", "ctc", "facebook/hubert-large-ls960-ft", _w2v2(1024, 24, 16, True, "hubert"), True),
    "wav2vec2-conformer-large": ModelSpec(
        "wav2vec2-conformer-large", "ctc", "facebook/wav2vec2-conformer-rope-large-960h-ft",
        _w2v2_conformer(1024, 24, 16, "rotary"), True,
    ),
    # 0.6b = FastConformer-Large (24 layers), 1.1b = FastConformer-XXL (42 layers), same width
    "parakeet-ctc-0.6b": ModelSpec("parakeet-ctc-0.6b", "ctc", "nvidia/parakeet-ctc-0.6b", _parakeet_ctc(24), True),
    "parakeet-ctc-1.1b": ModelSpec("parakeet-ctc-1.1b", "ctc", "nvidia/parakeet-ctc-1.1b", _parakeet_ctc(42), True),
    # transducers: 1024 English pieces (RNN-T 0.6b), 8192 multilingual pieces (TDT 0.6b v3), + blank
    "parakeet-rnnt-0.6b": ModelSpec("parakeet-rnnt-0.6b", "transducer", "nvidia/parakeet-rnnt-0.6b",
                                    _parakeet_transducer("parakeet_rnnt", 24, 1025), True),
    "parakeet-tdt-0.6b-v3": ModelSpec("parakeet-tdt-0.6b-v3", "transducer", "nvidia/parakeet-tdt-0.6b-v3",
                                      _parakeet_transducer("parakeet_tdt", 24, 8193)),
}

# model_type in a checkpoint's config.json -> family; decides the decoding path, never the name
FAMILY_BY_MODEL_TYPE = {"whisper": "whisper", "wav2vec2": "ctc", "hubert": "ctc", "wav2vec2-conformer": "ctc", "wavlm": "ctc",
                        "parakeet_ctc": "ctc", "parakeet_rnnt": "transducer", "parakeet_tdt": "transducer"}
# transducer model_type -> the transformers class that runs it (greedy decoding in its generate())
TRANSDUCER_CLASSES = {"parakeet_rnnt": "ParakeetForRNNT", "parakeet_tdt": "ParakeetForTDT"}


def resolve(name: str) -> ModelSpec:
    """A catalog name, a local checkpoint directory, a NeMo `.nemo` file, or a Hub id (family read from its config)."""
    if name in CATALOG:
        return CATALOG[name]
    path = Path(name)
    if path.suffix == ".nemo" and path.is_file():  # a NeMo checkpoint: engine nemo reads what is inside
        return ModelSpec(str(path), "nemo", str(path))
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{path}: no config.json; point to a transformers checkpoint directory")
        model_type = json.loads(config_file.read_text()).get("model_type", "")
        if model_type not in FAMILY_BY_MODEL_TYPE:
            raise ModelError(f"{path}: model_type '{model_type}' is not supported; supported: {', '.join(FAMILY_BY_MODEL_TYPE)}")
        return ModelSpec(str(path), FAMILY_BY_MODEL_TYPE[model_type], str(path))
    if "/" in name and not name.startswith((".", "/")):
        return ModelSpec(name, "", name)  # a Hub id: the engine reads its config to get the family
    raise ModelError(f"unknown model '{name}'; known: {', '.join(CATALOG)}; or give a Hub id or a local directory")
