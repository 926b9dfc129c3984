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
class ModuleCall:
    """One call of a top-level module (one not called from inside another module's forward)."""

    module: str  # its class name ("WhisperEncoder")
    flops: int  # FLOPs counted between its entry and its exit, children included
    rows: int  # leading dimension of its first output tensor: batch rows (windows, sequences, clips)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call: total, per aten op, and per module (a module's count includes its children)."""

    total_flops: int
    by_op: dict[str, int] = field(default_factory=dict)  # "aten.mm" -> FLOPs
    # module path as torch's ModuleTracker names it ("WhisperEncoder.layers.0.self_attn") -> op -> FLOPs
    by_module: dict[str, dict[str, int]] = field(default_factory=dict)
    calls: tuple[ModuleCall, ...] = ()  # every top-level module call, in order

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
        Roots come from `calls` where recorded: the tracker renames a module it has once seen as
        a child (a second 30 s window's encoder would land under "WhisperForConditionalGeneration.
        model.encoder" and drop out of the roots), the class name of a top-level call does not.
        """
        stages = {path: sum(ops.values()) for path, ops in self.by_module.items() if path.count(".") == 1}
        if not self.calls:
            stages.update({path: sum(ops.values()) for path, ops in self.by_module.items() if "." not in path})
        for call in self.calls:
            stages[call.module] = stages.get(call.module, 0) + call.flops
        return stages

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
    wrap `fn` in `torch.no_grad()` for inference; a forward's count does not depend on it. Under
    `torch.inference_mode()` the parameters must not require grad (`model.requires_grad_(False)`):
    torch's module tracker hooks every module input that does, and a weight-norm parametrisation
    (wav2vec2's positional conv) passes its parameters as inputs, which fails in that mode.
    Every top-level module call is recorded in `calls` (FLOPs and batch rows), for `per_unit`.
    """
    import torch
    from torch.nn.modules import module as nn_module
    from torch.utils.flop_counter import FlopCounterMode

    calls: list[ModuleCall] = []
    depth = [0]
    entry_flops: list[int] = []

    with FlopCounterMode(display=False, custom_mapping=attention_mapping()) as counter:
        def enter(mod: Any, inputs: Any) -> None:
            if depth[0] == 0:
                entry_flops.append(counter.get_total_flops())
            depth[0] += 1

        def leave(mod: Any, inputs: Any, output: Any) -> None:
            depth[0] -= 1
            if depth[0] == 0:
                calls.append(ModuleCall(type(mod).__name__, int(counter.get_total_flops() - entry_flops.pop()),
                                        _leading_dim(output, torch.Tensor)))

        handles = [nn_module.register_module_forward_pre_hook(enter), nn_module.register_module_forward_hook(leave)]
        try:
            fn(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    by_module = {mod: {str(op): int(n) for op, n in ops.items()} for mod, ops in counts.items() if mod != "Global"}
    return FlopCount(total_flops=int(counter.get_total_flops()), by_op=by_op, by_module=by_module, calls=tuple(calls))


def _leading_dim(output: Any, tensor_type: type) -> int:
    """Leading dimension of the first tensor in a module's output (tensor, tuple, or ModelOutput dict)."""
    if isinstance(output, tensor_type):
        return int(output.shape[0]) if output.dim() else 1
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for v in values:
        rows = _leading_dim(v, tensor_type)
        if rows:
            return rows
    return 0


def per_unit(fc: FlopCount, roles: dict[str, str], audio_s: float) -> dict[str, Any]:
    """FLOPs per unit of work from one counted call, as row fields (a None comes with its reason).

    `roles` maps a top-level module class to "encoder" or "decoder" (Engine.flop_stages()).

        flops_per_audio_s          all FLOPs of the call / seconds of audio it transcribed
        flops_encoder_per_window   encoder FLOPs / windows encoded (rows over encoder calls; each
                                   row is one 30 s window, padded when the clip is shorter)
        flops_decoder_per_token    FLOPs of the decoder steps / tokens they emitted, where a step
                                   is a decoder call that is not the first after an encoder call,
                                   and emits one token per row. The first call after each encoder
                                   call ("prefill") reads the whole prompt and computes the cross-
                                   attention keys and values of the new encoder output, which the
                                   cache keeps for every later step (transformers' EncoderDecoder-
                                   Cache); it is reported apart, per window, as it is paid once.
    Each step's cost grows with the tokens before it (self-attention over the cache), so the per-
    token figure is the mean over the positions this call decoded.
    """
    if audio_s <= 0:
        raise ValueError(f"per_unit: audio_s={audio_s}; pass the seconds of audio the counted call transcribed")
    out: dict[str, Any] = {"flops_per_audio_s": fc.total_flops / audio_s}
    enc_flops = enc_rows = step_flops = step_rows = prefill_flops = prefill_rows = 0
    previous = ""
    for call in fc.calls:
        role = roles.get(call.module, "")
        if role == "encoder":
            enc_flops, enc_rows = enc_flops + call.flops, enc_rows + call.rows
        elif role == "decoder" and previous == "encoder":
            prefill_flops, prefill_rows = prefill_flops + call.flops, prefill_rows + call.rows
        elif role == "decoder":
            step_flops, step_rows = step_flops + call.flops, step_rows + call.rows
        previous = role or previous
    if enc_rows:
        out.update(flops_encoder_per_window=enc_flops / enc_rows, flops_encoder_windows=enc_rows)
    else:
        out.update(flops_encoder_per_window=None, flops_encoder_missing_reason=(
            "no fixed-window encoder in this model" if "encoder" not in roles.values()
            else "the counted call ran no encoder"))
    if step_rows:
        out.update(flops_decoder_per_token=step_flops / step_rows, flops_decoder_tokens=step_rows,
                   flops_decoder_prefill_per_window=prefill_flops / prefill_rows if prefill_rows else None)
    else:
        out.update(flops_decoder_per_token=None, flops_decoder_missing_reason=(
            "no autoregressive decoder in this model (one forward per clip)" if "decoder" not in roles.values()
            else "the counted call decoded no token after the first step"))
    return out


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


def analytic_wav2vec2_flops(
    n_samples: int,
    hidden: int = 768,
    layers: int = 12,
    ffn_dim: int | None = None,
    conv_dim: tuple[int, ...] = (512,) * 7,
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    pos_kernel: int = 128,
    pos_groups: int = 16,
    vocab: int = 32,
) -> int:
    """wav2vec2 CTC FLOPs for one clip of `n_samples` (16 kHz), 2 FLOPs per multiply-add.

    Defaults are wav2vec2-base. Left out, as FlopCounterMode leaves them: norms, GELU, softmax,
    adds, the weight-norm of the positional conv.

    feature encoder, conv i: c_in -> c_out, kernel k, stride s   2 * L_i * c_out * c_in * k
                             L_i = (L_{i-1} - k) // s + 1, L_0 = n_samples, c_in of the first = 1
    feature projection c_last -> d over T = L_7 frames           2 * T * c_last * d
    positional conv d -> d, kernel K, groups G, padding K/2      2 * (T + 1) * d * (d / G) * K
                             (even K gives T + 1 outputs; the model drops the last one)
    per layer: Q, K, V, out projections                          4 * (2 * T * d^2)
               attention scores and weighted sum                 2 * (2 * T^2 * d)
               FFN d -> ffn -> d                                 2 * (2 * T * d * ffn)
    CTC head d -> vocab                                          2 * T * d * vocab
    """
    ffn = 4 * hidden if ffn_dim is None else ffn_dim
    flops, length, c_in = 0, n_samples, 1
    for c_out, k, stride in zip(conv_dim, conv_kernel, conv_stride, strict=True):
        length = (length - k) // stride + 1
        flops += 2 * length * c_out * c_in * k
        c_in = c_out
    t, d = length, hidden
    flops += 2 * t * c_in * d
    pos_len = t + 2 * (pos_kernel // 2) - pos_kernel + 1
    flops += 2 * pos_len * d * (d // pos_groups) * pos_kernel
    per_layer = 4 * (2 * t * d * d) + 2 * (2 * t * t * d) + 2 * (2 * t * d * ffn)
    return flops + layers * per_layer + 2 * t * d * vocab


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


def analytic_whisper_decoder_token_bytes(
    d_model: int,
    layers: int,
    weight_bytes: float,
    cache_bytes: float,
    n_frames: int = WHISPER_N_FRAMES,
    vocab: int = WHISPER_VOCAB,
    ffn_dim: int | None = None,
) -> float:
    """Bytes one decoding step cannot avoid reading: a lower bound, analytic (cf. measure.roofline).

    weights, `weight_bytes` each (4 fp32, 1 int8, 34/32 ggml q8_0, ...):
      per layer: self-attn Q, K, V, out   4 * d^2
                 cross-attn Q, out        2 * d^2   (its K, V projections ran once per window)
                 FFN                      2 * d * ffn
      LM head, tied to the token embedding: d * vocab
    cross-attention keys and values of the window, `cache_bytes` each: 2 * layers * n_frames * d
    The self-attention cache and activations are left out (they grow from zero and stay small).
    """
    ffn = 4 * d_model if ffn_dim is None else ffn_dim
    d = d_model
    weights = layers * (6 * d * d + 2 * d * ffn) + d * vocab
    return weights * weight_bytes + 2 * layers * n_frames * d * cache_bytes
