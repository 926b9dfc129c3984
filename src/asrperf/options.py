"""How a model runs beyond its weights and dtype: the optimisation options of a [[models]] entry.

A neutral module: the config validates these, engines receive them (ModelSpec.options), and the
row records their label. Which engine accepts which option is each engine's declaration
(engines/capabilities.py), never a list here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The first choice of each option is the baseline.
# int8_dynamic: int8 weights and per-token int8 activations in every Linear; int8_weight_only: int8
# weights dequantised to the activation dtype inside the matmul (both quantize at load time)
QUANT_CHOICES = ("none", "int8_dynamic", "int8_weight_only")
ATTN_CHOICES = ("sdpa", "eager", "flash_attention_2")
# Whisper clips over 30 s: "sequential" is OpenAI's algorithm (one window after another, sliding by
# the last timestamp); "batched" cuts the clip at pauses into <= 30 s windows decoded together
# without timestamps (engines/windows.py)
LONGFORM_CHOICES = ("sequential", "batched")


@dataclass(frozen=True)
class VariantOptions:
    """The optimisation options of a model, as the engine receives them."""

    quant: str = "none"  # QUANT_CHOICES
    attn: str = "sdpa"  # ATTN_CHOICES: the attention implementation the model runs
    compile: bool = False  # torch.compile the model; Whisper then decodes with a static KV cache
    cuda_graphs: bool = False  # CUDA only, with compile: torch.compile mode "reduce-overhead"
    longform: str = "sequential"  # LONGFORM_CHOICES: how Whisper decodes clips over 30 s

    def label(self, dtype: str) -> str:
        """dtype, then each option that is not the baseline: "fp16+compile+cuda_graphs"."""
        opts = dataclasses.asdict(self).items()  # field order: quant, attn, compile, cuda_graphs, longform
        base = dataclasses.asdict(VariantOptions())
        return "+".join([dtype] + [k if v is True else f"{k}={v}" for k, v in opts if v != base[k]])

    def changed(self) -> tuple[str, ...]:
        """The names of the options that differ from the baseline."""
        base = VariantOptions()
        return tuple(f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(base, f.name))

    @property
    def is_baseline(self) -> bool:
        return self == VariantOptions()
