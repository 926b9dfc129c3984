"""FLOP counting: hand-checked modules, attention on the CPU SDPA kernel, whisper-tiny against the analytic count."""

import inspect

import pytest

torch = pytest.importorskip("torch")

from asrperf.measure.flops import (
    ATTENTION_OP_NAMES,
    analytic_wav2vec2_flops,
    analytic_whisper_decoder_token_flops,
    analytic_whisper_encoder_flops,
    count_flops,
    per_unit,
    sdpa_flops,
)

D, LAYERS, HEADS, FFN = 384, 4, 6, 1536  # whisper-tiny
STUDY_ENCODER_GFLOPS_WITHOUT_ATTENTION = 23.2


# --- literal cases, computed by hand (2 FLOPs per multiply-add) -------------------------------

@pytest.mark.parametrize(
    "make, shape, expected",
    [
        # Linear(4, 3) on a batch of 2: 2 rows x 3 outputs x 4 multiply-adds x 2 = 48
        (lambda: torch.nn.Linear(4, 3), (2, 4), 2 * 2 * 4 * 3),
        # same without bias (aten.mm instead of aten.addmm): bias adds are not counted either way
        (lambda: torch.nn.Linear(4, 3, bias=False), (2, 4), 48),
        # Conv1d(2 -> 5, k=3, pad=1) on length 7: 7 positions x 5 outputs x 2*3 MACs x 2 = 420
        (lambda: torch.nn.Conv1d(2, 5, 3, padding=1), (1, 2, 7), 2 * 7 * 5 * 2 * 3),
        # stride 2, no padding, length 9: (9-3)//2+1 = 4 positions: 2 * 4 * 5 * 2*3 = 240
        (lambda: torch.nn.Conv1d(2, 5, 3, stride=2), (1, 2, 9), 240),
    ],
    ids=["linear", "linear-nobias", "conv1d", "conv1d-stride2"],
)
def test_small_modules_match_hand_count_exactly(make, shape, expected):
    mod = make()
    fc = count_flops(mod, torch.randn(*shape))
    assert fc.total_flops == expected


def test_sdpa_on_cpu_is_counted_with_the_formula():
    # stock FlopCounterMode counts 0 for aten._scaled_dot_product_flash_attention_for_cpu
    b, h, lq, lk, d = 2, 3, 5, 7, 8
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    fc = count_flops(torch.nn.functional.scaled_dot_product_attention, q, k, v)
    assert fc.total_flops == 4 * b * h * lq * lk * d == sdpa_flops((b, h, lq, d), (b, h, lk, d), (b, h, lk, d))
    assert fc.attention_flops == fc.total_flops
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in fc.by_op


def test_eager_attention_counts_the_same_as_sdpa():
    b, h, l, d = 1, 2, 6, 4
    q, k, v = (torch.randn(b, h, l, d) for _ in range(3))
    eager = count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    fused = count_flops(torch.nn.functional.scaled_dot_product_attention, q, k, v)
    assert eager.total_flops == fused.total_flops == 4 * b * h * l * l * d


def test_per_unit_splits_windows_prefills_and_token_steps():
    from asrperf.measure.flops import FlopCount, ModuleCall

    # two groups of windows, as the fixed-token path runs a 45 s clip: encode, prefill, steps
    calls = (ModuleCall("Enc", 100, 2), ModuleCall("Dec", 30, 2), ModuleCall("Dec", 4, 2), ModuleCall("Dec", 6, 2),
             ModuleCall("Enc", 50, 1), ModuleCall("Dec", 15, 1), ModuleCall("Dec", 5, 1))
    fc = FlopCount(total_flops=212, calls=calls, by_module={"Dec.proj_out": {"aten.mm": 7}})
    units = per_unit(fc, {"Enc": "encoder", "Dec": "decoder"}, audio_s=40.0)
    assert units == {
        "flops_per_audio_s": 212 / 40.0,
        "flops_encoder_per_window": 150 / 3, "flops_encoder_windows": 3,
        "flops_decoder_per_token": (4 + 6 + 5) / 5, "flops_decoder_tokens": 5,
        "flops_decoder_prefill_per_window": 45 / 3,
    }
    # stages: roots by class name over every call (not the tracker's path, which renames a module
    # seen once as a child), plus the tracker's direct children
    assert fc.by_stage() == {"Enc": 150, "Dec": 60, "Dec.proj_out": 7}
    with pytest.raises(ValueError, match="audio_s=0"):
        per_unit(fc, {}, 0.0)


@pytest.mark.parametrize(
    "kw, expected",
    [
        # tiny, by hand: conv 0.553 + 1.327 G; per layer 1.769 (proj) + 3.456 (attn) + 3.539 (FFN) G
        ({"d_model": 384, "layers": 4}, 36_937_728_000),
        ({"d_model": 384, "layers": 4, "attention": False}, 23_113_728_000),
        ({"d_model": 2, "layers": 1, "n_frames": 3, "n_mels": 1, "ffn_dim": 4},
         2 * 6 * 1 * 2 * 3 + 2 * 3 * 2 * 2 * 3 + 4 * 2 * 3 * 4 + 2 * 2 * 9 * 2 + 2 * 2 * 3 * 2 * 4),
    ],
)
def test_analytic_encoder_literal(kw, expected):
    assert analytic_whisper_encoder_flops(**kw) == expected


# --- whisper-tiny architecture, random weights (counting needs shapes, not trained values) ----

@pytest.fixture(scope="module")
def tiny_model():
    pytest.importorskip("transformers")
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    # the default transformers picks on CPU: this is what makes the stock counter miss attention
    assert model.config._attn_implementation == "sdpa"
    return model


def _encoder_flops(model, device: str = "cpu"):
    features = torch.zeros(1, 80, 3000, device=device)  # one 30 s window: 3000 mel frames
    with torch.no_grad():
        return count_flops(model.model.encoder, features)


def test_whisper_tiny_encoder_matches_analytic_with_attention(tiny_model, device):
    # on CUDA the attention runs in torch's own fused kernels (flash / memory-efficient), whose
    # formulas torch ships: the count must be the same
    try:
        fc = _encoder_flops(tiny_model.to(device), device)
    finally:
        tiny_model.to("cpu")
    analytic = analytic_whisper_encoder_flops(D, LAYERS)
    analytic_no_attn = analytic_whisper_encoder_flops(D, LAYERS, attention=False)
    print(f"\nwhisper-tiny encoder, 30 s window: counted {fc.gflops:.3f} GFLOPs "
          f"(attention {fc.attention_flops / 1e9:.3f}); analytic {analytic / 1e9:.3f} with attention, "
          f"{analytic_no_attn / 1e9:.3f} without; study {STUDY_ENCODER_GFLOPS_WITHOUT_ATTENTION}")
    assert fc.total_flops == pytest.approx(analytic, rel=0.02)
    assert fc.attention_flops == LAYERS * 2 * (2 * 1500 * 1500 * D) > 0
    assert fc.module_flops("self_attn") > fc.attention_flops  # projections + fused kernel, per module
    assert fc.gflops > 1.5 * STUDY_ENCODER_GFLOPS_WITHOUT_ATTENTION
    assert fc.total_flops - fc.attention_flops == pytest.approx(analytic_no_attn, rel=0.02)


def test_whisper_tiny_encoder_eager_and_meta_agree_with_sdpa(tiny_model):
    sdpa = _encoder_flops(tiny_model).total_flops
    tiny_model.config._attn_implementation = "eager"
    try:
        eager = _encoder_flops(tiny_model).total_flops
    finally:
        tiny_model.config._attn_implementation = "sdpa"
    # meta tensors: shapes only, no compute; SDPA takes the math path (bmm) there
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        meta_model = WhisperForConditionalGeneration(tiny_model.config).eval()
    meta = _encoder_flops(meta_model, "meta").total_flops
    assert eager == sdpa == meta


def _decode_step_flops(model, cache_len: int):
    from transformers.modeling_outputs import BaseModelOutput

    enc = BaseModelOutput(last_hidden_state=torch.randn(1, 1500, D))
    start = model.config.decoder_start_token_id
    with torch.no_grad():
        # the prefix fills the self-attention cache and computes the cross-attention K, V once
        out = model(encoder_outputs=enc, decoder_input_ids=torch.full((1, cache_len), start), use_cache=True)
        # recent transformers 5.x call the cache `cache`; earlier 5.x releases `past_key_values`
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        cache = getattr(out, cache_kw)
        assert cache.get_seq_length() == cache_len
        return count_flops(model, encoder_outputs=enc, decoder_input_ids=torch.full((1, 1), start),
                           use_cache=True, **{cache_kw: cache})


def test_whisper_tiny_decoder_token_flops_grow_only_through_attention(tiny_model):
    short, long = _decode_step_flops(tiny_model, 4), _decode_step_flops(tiny_model, 100)
    print(f"\nwhisper-tiny decoder, one token: {short.total_flops / 1e6:.3f} MFLOPs at cache 4, "
          f"{long.total_flops / 1e6:.3f} at cache 100 (attention {short.attention_flops / 1e6:.3f} / "
          f"{long.attention_flops / 1e6:.3f}); LM head {short.module_flops('proj_out') / 1e6:.3f}")
    assert 0 < short.total_flops < long.total_flops
    assert short.total_flops == analytic_whisper_decoder_token_flops(D, LAYERS, cache_len=4)
    assert long.total_flops == analytic_whisper_decoder_token_flops(D, LAYERS, cache_len=100)
    # everything but attention is the same; self-attention adds 4*d FLOPs per cached key per layer
    non_attn = {k: v for k, v in short.by_op.items() if k not in ATTENTION_OP_NAMES}
    assert non_attn == {k: v for k, v in long.by_op.items() if k not in ATTENTION_OP_NAMES}
    assert long.attention_flops - short.attention_flops == LAYERS * 4 * D * (100 - 4)


# --- through the engine: wav2vec2 under inference_mode, FLOPs per unit of work ----------------

def _engine(name: str, cache_dir, device: str = "cpu"):
    pytest.importorskip("transformers")
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine

    engine = TransformersEngine(cache_dir)
    engine.load(resolve(name), "random", "fp32", device)
    return engine


def _noise(seconds: float):
    import numpy as np

    return (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_wav2vec2_base_is_counted_under_inference_mode_and_matches_analytic(cache_dir, device):
    # the engine's transcribe runs under inference_mode; the weight-norm parametrised positional
    # conv made torch's module tracker fail there while parameters required grad
    engine = _engine("wav2vec2-base", cache_dir, device)
    assert not any(p.requires_grad for p in engine.model.parameters())
    fc = count_flops(lambda: engine.transcribe([_noise(1.0)], 16000))
    # by hand, 16000 samples: conv lengths 3199, 1599, 799, 399, 199, 99, 49 frames (T = 49)
    lengths, c_in, conv = [3199, 1599, 799, 399, 199, 99, 49], 1, 0
    for length, k in zip(lengths, (10, 3, 3, 3, 3, 2, 2)):
        conv += 2 * length * 512 * c_in * k
        c_in = 512
    conv += 2 * (49 + 1) * 768 * (768 // 16) * 128  # positional conv: kernel 128, 16 groups, T + 1 outputs
    assert fc.by_op["aten.convolution"] == conv  # exact: torch's conv formula is the same product
    # the rest, exact too: feature projection, 12 layers (projections, attention, FFN), CTC head
    assert fc.total_flops == analytic_wav2vec2_flops(16000)
    assert fc.attention_flops == 12 * 4 * 49 * 49 * 768
    assert per_unit(fc, engine.flop_stages(), 1.0) == {
        "flops_per_audio_s": fc.total_flops / 1.0,
        "flops_encoder_per_window": None, "flops_encoder_missing_reason": "no fixed-window encoder in this model",
        "flops_decoder_per_token": None,
        "flops_decoder_missing_reason": "no autoregressive decoder in this model (one forward per clip)",
    }


def _decoder_token_by_hand(d: int, layers: int, cache_len: int, frames: int = 1500, vocab: int = 51865) -> int:
    """One decoding step, written out (independent of analytic_whisper_decoder_token_flops)."""
    self_attn_proj = 4 * d * d * 2  # Q, K, V, out of the new token
    self_attn = 2 * (cache_len + 1) * d * 2  # scores and weighted sum over the cache and itself
    cross_proj = 2 * d * d * 2  # Q and out only: the encoder's K, V sit in the cache since the first step
    cross_attn = 2 * frames * d * 2
    mlp = 2 * d * (4 * d) * 2
    return layers * (self_attn_proj + self_attn + cross_proj + cross_attn + mlp) + d * vocab * 2


def test_whisper_tiny_flops_per_window_and_per_token_through_the_engine(cache_dir, device):
    engine = _engine("whisper-tiny", cache_dir, device)
    fc = count_flops(lambda: engine.transcribe([_noise(5.0)], 16000))
    units = per_unit(fc, engine.flop_stages(), 5.0)
    # random weights decode 3 tokens per audio second: 15, after the multilingual prompt of 4
    # (<|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>); the first step reads the
    # prompt (cache 0), step j = 2..15 reads one token with cache 4 + j - 2
    prompt, n_new = 4, 15
    by_hand = [_decoder_token_by_hand(D, LAYERS, prompt + j) for j in range(n_new - 1)]
    print(f"\nwhisper-tiny: decoder {units['flops_decoder_per_token'] / 1e6:.3f} MFLOPs/token counted, "
          f"{sum(by_hand) / len(by_hand) / 1e6:.3f} by hand; prefill "
          f"{units['flops_decoder_prefill_per_window'] / 1e9:.3f} GFLOPs/window")
    assert units["flops_decoder_tokens"] == n_new - 1
    # tolerance: exact up to the float mean (FlopCounterMode counts the same products)
    assert units["flops_decoder_per_token"] == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-9)
    assert by_hand == [analytic_whisper_decoder_token_flops(D, LAYERS, cache_len=prompt + j) for j in range(n_new - 1)]
    # the prefill pays the cross-attention K and V of the window once (2 projections of 1500 frames per layer)
    cross_kv = LAYERS * 2 * (2 * 1500 * D * D)
    assert cross_kv < units["flops_decoder_prefill_per_window"] < cross_kv + prompt * by_hand[0]
    assert units["flops_encoder_windows"] == 1
    assert units["flops_encoder_per_window"] == pytest.approx(analytic_whisper_encoder_flops(D, LAYERS), rel=0.02)
    assert units["flops_per_audio_s"] == fc.total_flops / 5.0
    assert sum(c.flops for c in fc.calls) == pytest.approx(fc.total_flops, rel=0.01)  # all but generate's own ops


def test_decoder_token_bytes_of_tiny_by_hand():
    from asrperf.measure.flops import analytic_whisper_decoder_token_bytes

    # tiny.en: 4 layers x (6 x 384^2 + 2 x 384 x 1536) + 384 x 51864 = 28,173,312 weights;
    # cross K/V: 2 x 4 x 1500 x 384 = 4,608,000 values
    assert analytic_whisper_decoder_token_bytes(384, 4, 4, 4, vocab=51864) == 4 * 28_173_312 + 4 * 4_608_000
    assert analytic_whisper_decoder_token_bytes(384, 4, 1, 2, vocab=51864) == 28_173_312 + 2 * 4_608_000
