"""FLOPs counted on the real forward, per stage, with attention included.

`count_flops` runs a callable under `torch.utils.flop_counter.FlopCounterMode`, which sees every
aten op the forward dispatches and applies a per-op formula (2 FLOPs per multiply-add). Ops with
no formula count zero: norms, activations, softmax and adds are left out by design (~1% of
whisper-tiny's encoder, less for larger sizes; see `analytic_whisper_encoder_flops`).

Attention. torch ships formulas for the CUDA SDPA kernels (`_scaled_dot_product_flash_attention`,
`_scaled_dot_product_efficient_attention`, `_scaled_dot_product_cudnn_attention`) but not for the
CPU kernel `_scaled_dot_product_flash_attention_for_cpu` (checked on torch 2.13: a 1x6x150x64
self-attention counts 0). transformers' default attention on CPU is "sdpa", which lands on that
kernel, so an uncorrected count of Whisper drops every attention score and weighted sum (tiny's
encoder reads 23.1 GFLOPs instead of 36.9). We register the formula below for every SDPA kernel
torch has no formula for; where torch has one, torch's is used. Eager attention (`torch.matmul`)
dispatches to `bmm`, which torch already counts, so both implementations give the same total.

    SDPA FLOPs = 2*B*H*Lq*Lk*D   (scores  Q @ K^T: B*H*Lq*Lk dot products of length D)
               + 2*B*H*Lq*Lk*Dv  (output  P @ V:   B*H*Lq*Dv dot products of length Lk)
               = 4*B*H*Lq*Lk*D   when Dv = D

The count is dense, as torch's own SDPA formulas are: a causal mask is not discounted. Grouped
K/V heads (GQA) are broadcast to the query heads, so H is the number of query heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Fused attention kernels. The CPU one has no formula in torch; the others do (we only fill gaps).
ATTENTION_OPS: tuple[str, ...] = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)
ATTENTION_OP_NAMES = frozenset(f"aten.{name}" for name in ATTENTION_OPS)

WHISPER_N_FRAMES = 1500  # encoder positions per 30 s window: 3000 mel frames (10 ms hop), conv2 stride 2
WHISPER_N_MELS = 80  # large-v3 uses 128
WHISPER_VOCAB = 51865  # multilingual; .en models have 51864


def sdpa_flops(query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...]) -> int:
    """2*B*H*Lq*Lk*D for Q @ K^T plus 2*B*H*Lq*Lk*Dv for P @ V (shapes are (B, H, L, D))."""
    *batch_q, lq, d = query_shape
    *_, lk, dv = value_shape
    if key_shape[-1] != d or key_shape[-2] != lk:
        raise ValueError(f"sdpa_flops: key shape {tuple(key_shape)} does not match query {tuple(query_shape)} "
                         f"and value {tuple(value_shape)}; expected (..., {lk}, {d})")
    bh = 1
    for n in batch_q:  # leading dims of the query: batch and query heads
        bh *= n
    return 2 * bh * lq * lk * d + 2 * bh * lq * lk * dv


def _sdpa_formula(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flops(query_shape, key_shape, value_shape)


def attention_mapping() -> dict[Any, Callable[..., int]]:
    """`custom_mapping` for FlopCounterMode: our SDPA formula for the kernels torch leaves at zero."""
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    # _flash/_efficient_attention_forward take (B, L, H, D) layouts and have torch formulas; the
    # _scaled_dot_product_* ones take (B, H, L, D) and are the ones we may need to fill in.
    for name in ATTENTION_OPS:
        op = getattr(aten, name, None)
        if op is not None and name.startswith("_scaled_dot_product") and op not in flop_counter.flop_registry:
            mapping[op] = _sdpa_formula
    return mapping


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call: total, per aten op, and per module (a module's count includes its children)."""

    total_flops: int
    by_op: dict[str, int] = field(default_factory=dict)  # "aten.mm" -> FLOPs
    # module path as torch's ModuleTracker names it ("WhisperEncoder.layers.0.self_attn") -> op -> FLOPs
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total_flops / 1e9

    @property
    def attention_flops(self) -> int:
        """FLOPs in fused attention kernels. Eager attention shows up as `aten.bmm` instead."""
        return sum(v for k, v in self.by_op.items() if k in ATTENTION_OP_NAMES)

    def by_stage(self) -> dict[str, int]:
        """FLOPs per entry-point module and per direct child of it.

        The module tracker roots a tree at each module the code calls from outside any module:
        `generate` calls `WhisperEncoder` once and `WhisperForConditionalGeneration` per decoding
        step, so the roots are the stages (encoder vs decoder steps + head); their direct
        children ("WhisperForConditionalGeneration.proj_out") split them one level further.
        The roots sum to the total less the few ops run outside any module (generate's loop).
        """
        return {path: sum(ops.values()) for path, ops in self.by_module.items() if path.count(".") <= 1}

    def module_flops(self, suffix: str) -> int:
        """Sum over modules whose path ends with `suffix` (e.g. "self_attn"), children included."""
        hits = [m for m in self.by_module if m == suffix or m.endswith("." + suffix)]
        if not hits:
            known = ", ".join(sorted(self.by_module)[:8])
            raise KeyError(f"no module path ends with '{suffix}'; some known: {known}")
        return sum(sum(self.by_module[m].values()) for m in hits)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FlopCount:
    """Run `fn(*args, **kwargs)` once under FlopCounterMode (attention formulas added) and count.

    The call really runs, on whatever device its tensors live (meta tensors work and cost nothing,
    but take the math attention path, not the kernel a real run uses). Grad mode is the caller's:
    wrap `fn` in `torch.no_grad()` for inference; a forward's count does not depend on it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=attention_mapping()) as counter:
        fn(*args, **kwargs)
    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    by_module = {mod: {str(op): int(n) for op, n in ops.items()} for mod, ops in counts.items() if mod != "Global"}
    return FlopCount(total_flops=int(counter.get_total_flops()), by_op=by_op, by_module=by_module)


def analytic_whisper_encoder_flops(
    d_model: int,
    layers: int,
    n_frames: int = WHISPER_N_FRAMES,
    n_mels: int = WHISPER_N_MELS,
    ffn_dim: int | None = None,
    attention: bool = True,
) -> int:
    """Whisper encoder FLOPs for one window of `n_frames` positions, 2 FLOPs per multiply-add.

    conv1: n_mels -> d, kernel 3, over 2*n_frames mel frames    2 * 2T * n_mels * d * 3
    conv2: d -> d, kernel 3, stride 2 -> n_frames positions     2 * T * d * d * 3
    per layer: Q, K, V and output projections                   4 * (2 * T * d^2)
               attention scores and weighted sum                2 * (2 * T^2 * d)   (`attention`)
               FFN d -> ffn -> d                                2 * (2 * T * d * ffn)
    Left out (FlopCounterMode has no formula for them either): biases, layer norms, GELU,
    softmax, residual and positional adds. At ~5 FLOPs per softmax score and ~8 per GELU or norm
    element, tiny (d=384, H=6, T=1500) has ~0.27 GFLOPs of softmax (T^2*H per layer) and ~0.13 of
    the rest: ~1% of its 36.9 GFLOPs. Softmax is ~2% of the attention term at any size (5*H vs
    4*d with d = 64*H), and attention's share falls as d grows, so larger sizes are below 1%.
    `ffn_dim` defaults to 4*d_model, as in every Whisper size.
    """
    ffn = 4 * d_model if ffn_dim is None else ffn_dim
    t, d = n_frames, d_model
    conv = 2 * (2 * t) * n_mels * d * 3 + 2 * t * d * d * 3
    per_layer = 4 * (2 * t * d * d) + 2 * (2 * t * d * ffn)
    if attention:
        per_layer += 2 * (2 * t * t * d)
    return conv + layers * per_layer


def analytic_whisper_decoder_token_flops(
    d_model: int,
    layers: int,
    cache_len: int,
    n_frames: int = WHISPER_N_FRAMES,
    vocab: int = WHISPER_VOCAB,
    ffn_dim: int | None = None,
) -> int:
    """FLOPs of one decoding step (one new token, KV cache of `cache_len` earlier tokens).

    per layer: self-attn Q, K, V, out projections   4 * (2 * d^2)
               self-attn over cache_len + 1 keys    4 * (cache_len + 1) * d
               cross-attn Q and out projections     2 * (2 * d^2)   (encoder K, V are cached)
               cross-attn over n_frames keys        4 * n_frames * d
               FFN                                  2 * (2 * d * ffn)
    LM head (tied to the token embedding):          2 * d * vocab
    Only the self-attention term grows with the cache.
    """
    ffn = 4 * d_model if ffn_dim is None else ffn_dim
    d = d_model
    per_layer = 4 * 2 * d * d + 4 * (cache_len + 1) * d + 2 * 2 * d * d + 4 * n_frames * d + 2 * 2 * d * ffn
    return layers * per_layer + 2 * d * vocab
