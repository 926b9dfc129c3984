"""FLOP counting: hand-checked modules, attention on the CPU SDPA kernel, whisper-tiny against the analytic count."""

import inspect

import pytest

torch = pytest.importorskip("torch")

from asrperf.measure.flops import (
    ATTENTION_OP_NAMES,
    analytic_whisper_decoder_token_flops,
    analytic_whisper_encoder_flops,
    count_flops,
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


def test_whisper_tiny_encoder_matches_analytic_with_attention(tiny_model):
    fc = _encoder_flops(tiny_model)
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
