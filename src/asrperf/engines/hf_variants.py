"""The optimisation options of the transformers engine, applied to a loaded model.

Each option is one function, called by `TransformersEngine.load` in this order: attention
implementation, int8 quantization, torch.compile (with CUDA graphs when asked). The combinations
that cannot work are rejected before any load by `config.check_variant`; what is left to check
here is what only the machine knows (an installed library, a model that lacks a kernel).
torch, torchao and transformers are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from asrperf.options import VariantOptions
from asrperf.errors import ConfigError, require

# The dynamo counters read to count compiled graphs, and the timer read for compile time (seconds
# spent in torch.compile's frame compiler: dynamo tracing + AOT + inductor codegen, per graph).
_GRAPHS_COUNTER = ("stats", "unique_graphs")
_COMPILE_TIMER = "_compile.compile_inner"


def set_attention(model: Any, attn: str) -> str:
    """Switch `model` to attention implementation `attn`; returns the one the model now runs."""
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("attn = 'flash_attention_2' needs the flash-attn package (CUDA only): "
                          "pip install flash-attn --no-build-isolation; or use attn 'sdpa'")
    try:
        model.set_attn_implementation(attn)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"attn = '{attn}' is not available for {type(model).__name__}: "
                          f"{str(exc).splitlines()[0]}; use attn 'sdpa' or 'eager'") from exc
    used = model.config._attn_implementation
    if used != attn:  # a model that cannot switch keeps its own: never label a run with what did not run
        raise ConfigError(f"attn = '{attn}': {type(model).__name__} kept attention '{used}'; use attn '{used}'")
    return used


def quantize(model: Any, quant: str, device_type: str, compiled: bool) -> tuple[Any, str]:
    """Quantize every Linear of `model` in place; returns the model and which library did it.

    int8_dynamic on CPU without compile uses torch's own dynamic quantization (fbgemm/x86 int8
    GEMM kernels, activations quantized per call): for whisper tiny.en on 2 cores it was ~2x faster
    than fp32, where torchao's Int8DynamicActivationInt8WeightConfig ran ~2x slower than fp32 in
    eager mode. Under torch.compile the roles swap: torch's quantized Linear breaks the graph at
    every layer (25 graphs, recompile limit hit), while torchao's tensor subclass compiles into
    the same 2 graphs as fp32. So everything else (compile, CUDA, int8_weight_only) uses torchao.
    """
    torch = require("torch", f"quant = '{quant}'", "hf")
    if quant == "int8_dynamic" and device_type == "cpu" and not compiled:
        with warnings.catch_warnings():  # deprecated in favour of torchao, still shipped and working in 2.13
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        return model, (f"torch.ao.quantization.quantize_dynamic (torch {torch.__version__}, "
                       f"quantized engine {torch.backends.quantized.engine})")
    torchao = require("torchao", f"quant = '{quant}'", "quant")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    config = Int8DynamicActivationInt8WeightConfig() if quant == "int8_dynamic" else Int8WeightOnlyConfig()
    quantize_(model, config)
    return model, f"torchao {torchao.__version__} {type(config).__name__}"


def compile_mode(options: VariantOptions) -> str:
    """torch.compile mode: "reduce-overhead" captures CUDA graphs; "default" does not."""
    return "reduce-overhead" if options.cuda_graphs else "default"


def compile_whisper(model: Any, tf: Any, mode: str) -> None:
    """Compile the encoder, and make generate() decode with a static KV cache through a compiled
    forward (transformers' own auto-compile: generation_config.compile_config).

    The static cache gives every decoding step the same shapes, so the decoder compiles once per
    batch size instead of once per step. `_compile_all_devices` is transformers' switch to let
    that auto-compile run on CPU too (it is on by default on CUDA only).
    """
    import torch

    encoder = model.get_encoder()
    encoder.forward = torch.compile(encoder.forward, mode=mode, dynamic=False)
    config = tf.CompileConfig(mode=mode, dynamic=False, fullgraph=False)
    config._compile_all_devices = True
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config


def compile_forward(model: Any, mode: str) -> None:
    """Compile the whole forward (CTC models: one call per batch, shapes fixed within a cell)."""
    import torch

    model.forward = torch.compile(model.forward, mode=mode, dynamic=False)


def compile_counters() -> tuple[int, int, float]:
    """(graphs compiled, graph breaks met, seconds spent compiling) so far in this process, from
    dynamo's own counters and timer."""
    from torch._dynamo.utils import compilation_time_metrics, counters

    group, key = _GRAPHS_COUNTER
    return (int(counters[group][key]), int(sum(counters["graph_break"].values())),
            float(sum(compilation_time_metrics.get(_COMPILE_TIMER, []))))
