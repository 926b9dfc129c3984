"""Where the time goes by op: one table from aten / kernel names to categories.

Shares are of SELF time (an op's time minus the ops it calls), so every microsecond is counted
once and the shares sum to 100% of the profiled self time. Nothing is hidden: ops no rule matches
are "other", and the biggest of them are listed by name.

Softmax is counted as elementwise even inside eager attention: the profiler's self time does not
say which module an op ran in. Only fused attention kernels (SDPA and its flash / efficient /
math-for-CPU variants) count as "attention"; the matmuls of eager attention count as "matmul".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

OTHER = "other"

# (rule, category), first match wins. A rule is an exact name ("aten::mm"), a prefix ending in
# "*" ("aten::_scaled_dot_product*"), or a substring between "*" ("*gemm*") for device kernels,
# whose names vary by library version. Exact names go first, so a specific name beats a broad
# substring ("aten::index_select" is indexing, not memory's "*select*" -- which does not exist).
OP_RULES: tuple[tuple[str, str], ...] = (
    # matmul / linear
    ("aten::addmm", "matmul"), ("aten::mm", "matmul"), ("aten::bmm", "matmul"),
    ("aten::baddbmm", "matmul"), ("aten::addbmm", "matmul"), ("aten::matmul", "matmul"),
    ("aten::linear", "matmul"), ("aten::einsum", "matmul"), ("aten::dot", "matmul"),
    ("aten::mv", "matmul"), ("aten::_addmm_activation", "matmul"),
    ("aten::mkldnn_linear", "matmul"), ("aten::_mkldnn_linear", "matmul"),
    ("onednn::linear", "matmul"), ("aten::_int_mm", "matmul"), ("aten::_scaled_mm", "matmul"),
    # attention
    ("aten::scaled_dot_product_attention", "attention"),
    ("aten::_scaled_dot_product*", "attention"),  # flash / efficient / cudnn / math / _for_cpu
    ("aten::_flash_attention*", "attention"), ("aten::_efficient_attention*", "attention"),
    ("aten::_fused_sdp_choice", "attention"),
    # convolution
    ("aten::convolution", "convolution"), ("aten::_convolution", "convolution"),
    ("aten::mkldnn_convolution", "convolution"), ("aten::conv1d", "convolution"),
    ("aten::conv2d", "convolution"), ("aten::conv3d", "convolution"),
    ("aten::cudnn_convolution*", "convolution"), ("aten::_slow_conv2d*", "convolution"),
    ("aten::slow_conv*", "convolution"), ("aten::_nnpack_spatial_convolution", "convolution"),
    ("aten::conv_depthwise*", "convolution"), ("aten::_conv_depthwise*", "convolution"),
    # normalisation
    ("aten::layer_norm", "normalisation"), ("aten::native_layer_norm", "normalisation"),
    ("aten::group_norm", "normalisation"), ("aten::native_group_norm", "normalisation"),
    ("aten::batch_norm", "normalisation"), ("aten::_batch_norm_impl_index", "normalisation"),
    ("aten::native_batch_norm", "normalisation"), ("aten::_native_batch_norm_legit*", "normalisation"),
    ("aten::rms_norm", "normalisation"), ("aten::_fused_rms_norm", "normalisation"),
    ("aten::cudnn_batch_norm", "normalisation"), ("aten::instance_norm", "normalisation"),
    # embedding / indexing (lookups, selections, reductions to an index)
    ("aten::embedding", "embedding/indexing"), ("aten::index", "embedding/indexing"),
    ("aten::index_select", "embedding/indexing"), ("aten::gather", "embedding/indexing"),
    ("aten::scatter", "embedding/indexing"), ("aten::scatter_", "embedding/indexing"),
    ("aten::index_put_", "embedding/indexing"), ("aten::_index_put_impl_", "embedding/indexing"),
    ("aten::masked_fill", "embedding/indexing"), ("aten::masked_fill_", "embedding/indexing"),
    ("aten::masked_select", "embedding/indexing"), ("aten::nonzero", "embedding/indexing"),
    ("aten::slice", "embedding/indexing"), ("aten::select", "embedding/indexing"),
    ("aten::narrow", "embedding/indexing"), ("aten::argmax", "embedding/indexing"),
    ("aten::argmin", "embedding/indexing"), ("aten::topk", "embedding/indexing"),
    ("aten::sort", "embedding/indexing"), ("aten::max", "embedding/indexing"),
    ("aten::arange", "embedding/indexing"),
    # memory: allocation, copies, layout, host<->device transfers
    ("aten::empty", "memory"), ("aten::empty_strided", "memory"), ("aten::empty_like", "memory"),
    ("aten::zeros", "memory"), ("aten::zeros_like", "memory"), ("aten::ones", "memory"),
    ("aten::ones_like", "memory"), ("aten::full", "memory"), ("aten::full_like", "memory"),
    ("aten::new_empty", "memory"), ("aten::new_zeros", "memory"), ("aten::new_ones", "memory"),
    ("aten::copy_", "memory"), ("aten::to", "memory"), ("aten::_to_copy", "memory"),
    ("aten::clone", "memory"), ("aten::contiguous", "memory"), ("aten::cat", "memory"),
    ("aten::stack", "memory"), ("aten::fill_", "memory"), ("aten::zero_", "memory"),
    ("aten::resize_", "memory"), ("aten::pad", "memory"), ("aten::constant_pad_nd", "memory"),
    ("aten::repeat", "memory"), ("aten::lift_fresh", "memory"), ("aten::detach", "memory"),
    ("aten::view", "memory"), ("aten::reshape", "memory"), ("aten::_reshape_alias", "memory"),
    ("aten::transpose", "memory"), ("aten::permute", "memory"), ("aten::t", "memory"),
    ("aten::expand", "memory"), ("aten::unsqueeze", "memory"), ("aten::squeeze", "memory"),
    ("aten::flatten", "memory"), ("aten::split", "memory"), ("aten::chunk", "memory"),
    ("aten::unbind", "memory"), ("aten::as_strided", "memory"), ("aten::_unsafe_view", "memory"),
    ("aten::alias", "memory"), ("aten::item", "memory"), ("aten::_local_scalar_dense", "memory"),
    ("aten::is_nonzero", "memory"), ("aten::tensor", "memory"), ("aten::scalar_tensor", "memory"),
    ("aten::_pin_memory", "memory"), ("aten::pin_memory", "memory"),
    ("*Memcpy*", "memory"), ("*Memset*", "memory"), ("cudaMemcpy*", "memory"),
    # elementwise / activation (and reductions over values, which are memory-bound the same way)
    ("aten::add", "elementwise"), ("aten::add_", "elementwise"), ("aten::sub", "elementwise"),
    ("aten::rsub", "elementwise"), ("aten::mul", "elementwise"), ("aten::mul_", "elementwise"),
    ("aten::div", "elementwise"), ("aten::div_", "elementwise"), ("aten::neg", "elementwise"),
    ("aten::gelu", "elementwise"), ("aten::silu", "elementwise"), ("aten::relu", "elementwise"),
    ("aten::relu_", "elementwise"), ("aten::sigmoid", "elementwise"), ("aten::tanh", "elementwise"),
    ("aten::softmax", "elementwise"), ("aten::_softmax", "elementwise"),
    ("aten::log_softmax", "elementwise"), ("aten::_log_softmax", "elementwise"),
    ("aten::exp", "elementwise"), ("aten::log", "elementwise"), ("aten::pow", "elementwise"),
    ("aten::sqrt", "elementwise"), ("aten::rsqrt", "elementwise"), ("aten::abs", "elementwise"),
    ("aten::where", "elementwise"), ("aten::clamp", "elementwise"), ("aten::clamp_min", "elementwise"),
    ("aten::dropout", "elementwise"), ("aten::eq", "elementwise"), ("aten::ne", "elementwise"),
    ("aten::lt", "elementwise"), ("aten::le", "elementwise"), ("aten::gt", "elementwise"),
    ("aten::ge", "elementwise"), ("aten::bitwise_and", "elementwise"), ("aten::bitwise_or", "elementwise"),
    ("aten::bitwise_not", "elementwise"), ("aten::logical_and", "elementwise"),
    ("aten::logical_or", "elementwise"), ("aten::logical_not", "elementwise"),
    ("aten::isin", "elementwise"), ("aten::any", "elementwise"), ("aten::all", "elementwise"),
    ("aten::sum", "elementwise"), ("aten::mean", "elementwise"), ("aten::cumsum", "elementwise"),
    ("aten::glu", "elementwise"), ("aten::erf", "elementwise"),
    ("*elementwise*", "elementwise"), ("*reduce_kernel*", "elementwise"),
    # device kernels: GEMM libraries, flash attention, cuDNN convolution and norms
    ("*gemm*", "matmul"), ("*Gemm*", "matmul"), ("*cutlass*", "matmul"), ("*sm80_xmma*", "matmul"),
    ("*sm90_xmma*", "matmul"), ("*ampere_sgemm*", "matmul"), ("*cublas*", "matmul"),
    ("*flash*", "attention"), ("*fmha*", "attention"), ("*attention*", "attention"),
    ("*conv*", "convolution"), ("*layer_norm*", "normalisation"), ("*batch_norm*", "normalisation"),
    ("*softmax*", "elementwise"),
    # the self time of a stage mark is host code that runs no op: Python glue, numpy feature
    # extraction, tokenizer decoding
    ("asrperf::*", "host (no op)"),
)
CATEGORIES = ("matmul", "attention", "convolution", "normalisation", "elementwise", "memory",
              "embedding/indexing", "host (no op)", OTHER)
_EXACT = {}
for _rule, _cat in OP_RULES:
    if "*" not in _rule:
        _EXACT.setdefault(_rule, _cat)


def _matches(rule: str, name: str) -> bool:
    if rule.startswith("*") and rule.endswith("*"):
        return rule[1:-1] in name
    if rule.endswith("*"):
        return name.startswith(rule[:-1])
    return rule == name


def categorize(name: str) -> str:
    """The category of an aten op or device kernel name; "other" when no rule matches."""
    if name in _EXACT:
        return _EXACT[name]
    for rule, category in OP_RULES:
        if "*" in rule and _matches(rule, name):
            return category
    return OTHER


def _self_s(event: Any, timeline: str) -> float:
    if timeline == "cpu":
        return event.self_cpu_time_total / 1e6
    # torch >= 2.4 names device time "device"; older releases "cuda"
    us = getattr(event, "self_device_time_total", None)
    return (us if us is not None else event.self_cuda_time_total) / 1e6


def category_table(events: Iterable[Any], timeline: str = "cpu", top_other: int = 10,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Self time per category over torch.profiler `key_averages()` events.

    Returns (rows, uncategorised): rows are {category, self_s, share} for every category with
    time, largest first, shares summing to 1; uncategorised are the `top_other` largest ops that
    fell in "other", as {name, self_s}. "ProfilerStep*" ranges are left out: their self time is
    the harness between calls, not the call. `timeline` is "cpu" (host self time) or "device" (kernel self time).
    """
    if timeline not in ("cpu", "device"):
        raise ValueError(f"unknown timeline '{timeline}'; use 'cpu' or 'device'")
    by_cat: dict[str, float] = {}
    other: dict[str, float] = {}
    for ev in events:
        if ev.key.startswith("ProfilerStep"):
            continue
        s = _self_s(ev, timeline)
        if s <= 0:
            continue
        cat = categorize(ev.key)
        by_cat[cat] = by_cat.get(cat, 0.0) + s
        if cat == OTHER:
            other[ev.key] = other.get(ev.key, 0.0) + s
    total = sum(by_cat.values())
    rows = [{"category": c, "self_s": s, "share": s / total if total else 0.0}
            for c, s in sorted(by_cat.items(), key=lambda kv: -kv[1])]
    top = sorted(other.items(), key=lambda kv: -kv[1])[:top_other]
    return rows, [{"name": n, "self_s": s} for n, s in top]
