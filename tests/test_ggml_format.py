"""The ggml writer and reader, and the transformers -> OpenAI layout they share with openai-whisper."""

import ctypes
import struct
from pathlib import Path

import numpy as np
import pytest

from asrperf.engines.ggml_format import GGML_TYPES, mel_filters, read_ggml, tensor_type, token_bytes, write_ggml
from asrperf.engines.openai_layout import expected_names, openai_dims, openai_name, to_openai
from asrperf.errors import ModelError

# a Whisper small enough to write in milliseconds: 2 mel bins would not do (whisper.cpp reads n_mels
# filters of 201 bins), so 80 mels, 64 wide, one layer each side, a 40-token vocabulary
CONFIG = {"model_type": "whisper", "num_mel_bins": 80, "d_model": 64, "encoder_layers": 1, "decoder_layers": 1,
          "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256,
          "vocab_size": 40, "max_source_positions": 1500, "max_target_positions": 448}


@pytest.mark.parametrize("hf, openai", [
    ("model.encoder.conv1.weight", "encoder.conv1.weight"),
    ("model.encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("model.encoder.layer_norm.bias", "encoder.ln_post.bias"),
    ("model.decoder.layer_norm.weight", "decoder.ln.weight"),
    ("model.decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
    ("model.encoder.layers.3.self_attn.k_proj.weight", "encoder.blocks.3.attn.key.weight"),
    ("model.decoder.layers.0.encoder_attn.v_proj.bias", "decoder.blocks.0.cross_attn.value.bias"),
    ("model.decoder.layers.1.encoder_attn_layer_norm.weight", "decoder.blocks.1.cross_attn_ln.weight"),
    ("model.decoder.layers.2.fc2.weight", "decoder.blocks.2.mlp.2.weight"),
    ("model.encoder.layers.0.final_layer_norm.bias", "encoder.blocks.0.mlp_ln.bias"),
    ("proj_out.weight", None),
])
def test_transformers_names_map_to_openai_names(hf, openai):
    assert openai_name(hf) == openai


def test_tiny_has_openai_whispers_167_tensors():
    dims = openai_dims({**CONFIG, "d_model": 384, "encoder_layers": 4, "decoder_layers": 4, "encoder_ffn_dim": 1536,
                        "decoder_ffn_dim": 1536, "vocab_size": 51864})
    # 11 outside the blocks; 15 per encoder block (key has no bias), 24 per decoder block
    assert len(expected_names(dims)) == 11 + 4 * 15 + 4 * 24 == 167


@pytest.mark.parametrize("name, ndim, wtype, expected", [
    ("encoder.positional_embedding", 2, "q8_0", "f32"),
    ("decoder.positional_embedding", 2, "f16", "f32"),
    ("encoder.conv1.bias", 2, "q5_0", "f32"),
    ("encoder.conv2.weight", 3, "q8_0", "f16"),
    ("encoder.conv2.weight", 3, "f32", "f32"),
    ("decoder.blocks.0.attn.query.bias", 1, "q8_0", "f32"),
    ("decoder.token_embedding.weight", 2, "q5_1", "q5_1"),
    ("encoder.blocks.0.mlp.0.weight", 2, "f16", "f16"),
])
def test_tensor_types_follow_whisper_cpps_loader(name, ndim, wtype, expected):
    assert tensor_type(name, ndim, wtype) == expected


def test_token_bytes_undo_gpt2s_byte_alphabet():
    # "Ġ" is the space byte, "Ã©" the two UTF-8 bytes of "é" as GPT-2 spells them
    assert token_bytes({"a": 0, "Ġhello": 1, "Ã©": 2}) == [b"a", b" hello", "é".encode()]
    with pytest.raises(ModelError, match="not 0..n-1"):
        token_bytes({"a": 0, "b": 2})


def _state(seed: int = 0) -> dict:
    """A transformers-named random state dict for `CONFIG` (proj_out tied, as in every checkpoint)."""
    rng = np.random.default_rng(seed)
    shapes = {"model.encoder.conv1.weight": (64, 80, 3), "model.encoder.conv2.weight": (64, 64, 3),
              "model.encoder.embed_positions.weight": (1500, 64), "model.decoder.embed_positions.weight": (448, 64),
              "model.decoder.embed_tokens.weight": (40, 64)}
    state = {}
    for hf in _hf_names():
        width = 256 if ".fc1." in hf else 64
        if hf in shapes:
            shape = shapes[hf]
        elif hf.endswith("bias") or "norm" in hf:
            shape = (width,)
        else:
            shape = (width, 256 if ".fc2." in hf else 64)
        state[hf] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    return state


def _hf_names() -> list[str]:
    names = ["model.encoder.conv1.weight", "model.encoder.conv1.bias", "model.encoder.conv2.weight",
             "model.encoder.conv2.bias", "model.encoder.embed_positions.weight", "model.encoder.layer_norm.weight",
             "model.encoder.layer_norm.bias", "model.decoder.embed_tokens.weight",
             "model.decoder.embed_positions.weight", "model.decoder.layer_norm.weight", "model.decoder.layer_norm.bias"]
    for stack, parts in (("encoder", ("self_attn", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")),
                         ("decoder", ("self_attn", "self_attn_layer_norm", "encoder_attn", "encoder_attn_layer_norm",
                                      "fc1", "fc2", "final_layer_norm"))):
        for part in parts:
            if part.endswith("attn"):
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    names += [f"model.{stack}.layers.0.{part}.{proj}.weight"]
                    names += [] if proj == "k_proj" else [f"model.{stack}.layers.0.{part}.{proj}.bias"]
            else:
                names += [f"model.{stack}.layers.0.{part}.weight", f"model.{stack}.layers.0.{part}.bias"]
    return names


VOCAB = [bytes([97 + i % 26]) * (1 + i // 26) for i in range(38)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[dict, dict]:
    dims = openai_dims(CONFIG)
    return dims, to_openai(_state(), dims, "test")


@pytest.mark.parametrize("wtype", ["f32", "f16", "q8_0", "q5_0", "q5_1"])
def test_write_then_read_gives_the_declared_types_and_exact_size(small, tmp_path, wtype):
    dims, tensors = small
    path = tmp_path / f"m-{wtype}.bin"
    write_ggml(path, dims, tensors, VOCAB, wtype)
    model = read_ggml(path)
    assert model.wtype == wtype and model.dims == dims and model.n_vocab_tokens == 38
    assert model.tensors["decoder.token_embedding.weight"] == (wtype, (40, 64))
    assert model.tensors["encoder.conv1.bias"] == ("f32", (64, 1))
    assert model.tensors["encoder.conv1.weight"] == ("f32" if wtype == "f32" else "f16", (64, 80, 3))
    # header 4 + 11*4, filters 8 + 80*201*4, vocab 4 + sum(4 + len), then every tensor's header and data
    size = 4 + 44 + 8 + 80 * 201 * 4 + 4 + sum(4 + len(t) for t in VOCAB)
    for name, (ggml_type, shape) in model.tensors.items():
        n = int(np.prod(shape))
        per_block = GGML_TYPES[ggml_type][2]
        size += 12 + 4 * len(shape) + len(name) + (n * per_block if ggml_type in ("f32", "f16") else n // 32 * per_block)
    assert path.stat().st_size == size


def test_quantized_rows_must_fill_whole_blocks(small, tmp_path):
    dims, tensors = small
    odd = dict(tensors, **{"decoder.token_embedding.weight": np.zeros((40, 64), np.float32)})
    write_ggml(tmp_path / "ok.bin", dims, odd, VOCAB, "q8_0")  # 64 = 2 blocks of 32
    bad_dims = dict(dims, n_text_state=48, n_audio_state=48)
    bad = {k: (v[..., :48] if v.ndim == 2 and v.shape[-1] == 64 else v) for k, v in tensors.items()}
    with pytest.raises(ModelError, match="cannot be cut into 32-weight q8_0 blocks"):
        write_ggml(tmp_path / "bad.bin", bad_dims, bad, VOCAB, "q8_0")


def _corrupt(src: Path, dst: Path, at: int, data: bytes | None = None, cut: int | None = None) -> Path:
    raw = bytearray(src.read_bytes())
    if data is not None:
        raw[at:at + len(data)] = data
    dst.write_bytes(bytes(raw[:cut]) if cut is not None else bytes(raw))
    return dst


def test_bad_files_give_one_line_errors(small, tmp_path):
    dims, tensors = small
    good = tmp_path / "good.bin"
    write_ggml(good, dims, tensors, VOCAB, "f16")
    cases = [
        (_corrupt(good, tmp_path / "magic.bin", 0, b"GGUF"), "not a ggml file"),
        (_corrupt(good, tmp_path / "cut.bin", 0, cut=good.stat().st_size - 100), "runs past the end"),
        (_corrupt(good, tmp_path / "head.bin", 0, cut=20), "truncated while reading the hyperparameters"),
        (_corrupt(good, tmp_path / "ftype.bin", 4 + 40, struct.pack("<i", 5)), "hyperparameters"),
        (tmp_path / "missing.bin", "not found"),
    ]
    for path, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            read_ggml(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    without = {k: v for k, v in tensors.items() if k != "decoder.ln.bias"}
    with pytest.raises(ModelError, match="missing"):
        write_ggml(tmp_path / "x.bin", dims, without, VOCAB, "f16")


def test_untied_projection_is_refused():
    dims = openai_dims(CONFIG)
    state = _state()
    state["proj_out.weight"] = state["proj_out.weight"] + 1
    with pytest.raises(ModelError, match="proj_out.weight differs"):
        to_openai(state, dims, "ckpt")


def test_mel_filters_equal_openai_whispers_shipped_ones():
    whisper = pytest.importorskip("whisper", reason="openai-whisper ships mel_filters.npz: pip install 'asrperf[openai-whisper]'")
    with np.load(Path(whisper.__file__).parent / "assets" / "mel_filters.npz") as f:
        for n_mels in (80, 128):
            np.testing.assert_allclose(mel_filters(n_mels), f[f"mel_{n_mels}"], atol=2e-7)


def _ggml_quantize_chunk():
    """whisper.cpp's own quantizer (ggml_quantize_chunk) from the library pywhispercpp loaded."""
    pw = pytest.importorskip("_pywhispercpp", reason="engine whispercpp needs pip install 'asrperf[whispercpp]'")
    here = Path(pw.__file__).parent
    libs = sorted(here.glob("libggml-base*.so*")) + sorted(here.glob("pywhispercpp.libs/libggml-base*.so*"))
    if not libs:
        pytest.fail(f"no libggml-base next to {pw.__file__}: pywhispercpp's layout changed; update this test")
    fn = ctypes.CDLL(str(libs[0])).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]
    return fn


@pytest.mark.parametrize("wtype", ["q8_0", "q5_0", "q5_1"])
def test_quantized_blocks_are_bit_identical_to_ggmls_own(small, tmp_path, wtype):
    quantize = _ggml_quantize_chunk()
    dims, tensors = small
    path = tmp_path / f"{wtype}.bin"
    write_ggml(path, dims, tensors, VOCAB, wtype)
    weight = np.ascontiguousarray(tensors["decoder.blocks.0.mlp.0.weight"])  # (256, 64)
    name = b"decoder.blocks.0.mlp.0.weight"
    raw = path.read_bytes()
    at = raw.index(name) + len(name)
    n_bytes = 256 * 64 // 32 * GGML_TYPES[wtype][2]
    expected = ctypes.create_string_buffer(n_bytes)
    assert quantize(GGML_TYPES[wtype][0], weight.ctypes.data, expected, 0, 256, 64, None) == n_bytes
    assert raw[at:at + n_bytes] == expected.raw
