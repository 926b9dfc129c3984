"""What each engine can do, declared in one place and importing no heavy library.

An engine is two things: this light declaration (families, dtypes, options, whether its fp32
baseline is the accuracy reference, what `optimize` should try on a device) and its heavy module,
imported only when a cell loads it (`EngineDecl.target`). The config validation, `optimize`, the
accuracy gate (through the row's `accuracy_reference` field), `doctor` and the registry all ask
`declaration(name)`; nothing else lists engines. A new engine registers one `EngineDecl`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asrperf.errors import ConfigError

# Every optimisation option an engine may implement (fields of options.VariantOptions).
ALL_OPTIONS = ("quant", "attn", "compile", "cuda_graphs", "longform")
# The streaming policies an engine can declare per model family (scenarios/stream_policies.py):
# LocalAgreement-n over a growing buffer on word-timestamped decodes (Whisper), and chunks with left
# and right context whose frame labels are merged at the seams (CTC; transducers without a native
# cache-aware mode).
STREAMING_POLICIES = ("local_agreement", "chunked")
# asrperf dtype -> CTranslate2 compute type. The int8 types quantize the weights at load time
# (int8 matmuls, activations in the named float type); they exist only for engine ct2.
CT2_COMPUTE_TYPES = {
    "fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8",
    "int8_float32": "int8_float32", "int8_float16": "int8_float16", "int8_bfloat16": "int8_bfloat16",
}


@dataclass(frozen=True)
class CandidateContext:
    """What `optimize` asks an engine's candidates for."""

    device: str  # "cpu", "cuda" or "cuda:N"
    family: str  # the model's family ("whisper", "ctc", "transducer"; "" when unknown)
    compile: bool  # torch.compile variants allowed (slow to build)
    cpu_bf16: bool  # the CPU has native bf16 matmuls (AVX-512 BF16 or AMX)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


Candidates = Callable[[CandidateContext], list[dict[str, Any]]]


def _no_candidates(ctx: CandidateContext) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True)
class EngineDecl:
    """One engine's capabilities; `target` is "module:Class", imported only when the engine is used."""

    name: str
    target: str
    extra: str  # the pip extra that installs it: pip install 'asrperf[<extra>]'
    requires: tuple[str, ...]  # import names that must be installed for it to run
    families: tuple[str, ...]  # model families it runs ("whisper", "ctc", "transducer", "nemo")
    dtypes: tuple[str, ...]  # the dtypes it accepts, baseline "fp32" first
    options: frozenset[str] = frozenset()  # the VariantOptions fields it implements beyond the baseline
    longform_families: tuple[str, ...] = ("whisper",)  # families whose long-form algorithm it can change
    # its fp32 baseline with no options is the semantic reference of the accuracy gate (recorded on
    # every row as `accuracy_reference`; the gate prefers such a row, then the row's own engine)
    accuracy_reference: bool = False
    # the variants `optimize` tries on a device, as ModelConfig fields beyond name/engine/weights
    # (the fp32 reference itself is added by optimize); an engine that cannot run there returns []
    candidates: Candidates = field(default=_no_candidates, compare=False)
    describe: str = ""  # one line for doctor: what it runs
    # model family -> the streaming policy it runs for that family (STREAMING_POLICIES); a family
    # not listed cannot stream on this engine
    streaming_policies: dict[str, str] = field(default_factory=dict, compare=False)
    streaming_note: str = ""  # why a family it runs has no streaming policy here (shown in the error)
    # the module that registers it, when outside asrperf: a cell's process imports it (run/worker.py)
    plugin_module: str = ""
    default_dtype: str = "fp32"  # what `asrperf run -e ENGINE` runs when no --dtype is given

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def runs(self, family: str) -> bool:
        """Whether it runs models of `family`; an unknown family ("", a Hub id not yet read) may run."""
        return not family or family in self.families


def _transformers_candidates(ctx: CandidateContext) -> list[dict[str, Any]]:
    if ctx.cuda:
        out = [{"dtype": "fp16"}, {"dtype": "bf16"}]
        if ctx.compile:
            out += [{"dtype": "fp16", "compile": True}, {"dtype": "fp16", "compile": True, "cuda_graphs": True}]
        return out
    out = [{"attn": "eager"}, {"quant": "int8_dynamic"}]
    if ctx.cpu_bf16:
        out.append({"dtype": "bf16"})
    if ctx.compile:
        out.append({"compile": True})
    return out


def _ct2_candidates(ctx: CandidateContext) -> list[dict[str, Any]]:
    if ctx.family not in ("", "whisper") or not ENGINES["ct2"].installed():
        return []
    import ctranslate2

    try:
        supported = set(ctranslate2.get_supported_compute_types("cuda" if ctx.cuda else "cpu"))
    except RuntimeError:  # a CUDA device this ctranslate2 build or driver cannot use: no ct2 candidates
        return []
    order = ("fp16", "int8_float16", "int8") if ctx.cuda else ("fp32", "int8", "int8_float32", "int8_bfloat16")
    return [{"dtype": d} for d in order if CT2_COMPUTE_TYPES[d] in supported]


def _ort_candidates(ctx: CandidateContext) -> list[dict[str, Any]]:
    return [{"dtype": d} for d in ("fp32", "int8")] if ENGINES["ort"].installed() else []


def _whispercpp_candidates(ctx: CandidateContext) -> list[dict[str, Any]]:
    # whisper.cpp's weight types: f16 (what its own converter writes) and the int8 / 5-bit blocks;
    # its CPU build is the one asrperf runs (f32 is refused: whisper.cpp 1.8's CPU convolution needs f16)
    if ctx.cuda or ctx.family not in ("", "whisper") or not ENGINES["whispercpp"].installed():
        return []
    return [{"dtype": d} for d in ("fp16", "q8_0", "q5_1", "q5_0")]


ENGINES: dict[str, EngineDecl] = {}


def register(decl: EngineDecl) -> EngineDecl:
    """Add (or replace) an engine declaration; returns it."""
    ENGINES[decl.name] = decl
    return decl


def plugin_modules() -> tuple[str, ...]:
    """Modules outside asrperf that register engines: a cell's process imports them."""
    return tuple(sorted({d.plugin_module for d in ENGINES.values() if d.plugin_module}))


def declaration(name: str) -> EngineDecl:
    """The declaration of engine `name`, or a one-line error listing the known engines."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine '{name}'; known: {', '.join(ENGINES)}") from None


def streaming_policy(engine: str, family: str) -> str:
    """The streaming policy engine `engine` declares for `family`, or a ConfigError saying where it can stream."""
    decl = declaration(engine)
    if family in decl.streaming_policies:
        return decl.streaming_policies[family]
    able = [e.name for e in ENGINES.values() if family in e.streaming_policies]
    note = f" ({decl.streaming_note})" if decl.streaming_note else ""
    where = f"; engines that stream {family} models: {', '.join(able)}" if able else ""
    raise ConfigError(f"scenario streaming: engine {engine} has no streaming policy for {family or 'its'} "
                      f"models{note}{where}")


def all_dtypes() -> tuple[str, ...]:
    """Every dtype some registered engine accepts, in declaration order."""
    out: list[str] = []
    for decl in ENGINES.values():
        out += [d for d in decl.dtypes if d not in out]
    return tuple(out)


register(EngineDecl(
    name="transformers", target="asrperf.engines.hf:TransformersEngine", extra="hf",
    requires=("torch", "transformers"), families=("whisper", "ctc", "transducer"), dtypes=("fp32", "fp16", "bf16"),
    options=frozenset(ALL_OPTIONS), accuracy_reference=True, candidates=_transformers_candidates,
    describe="Whisper, CTC and transducer models on torch",
    streaming_policies={"whisper": "local_agreement", "ctc": "chunked", "transducer": "chunked"},
    streaming_note="transducers stream as plain chunks: transformers has no cache-aware streaming mode",
))
register(EngineDecl(
    name="ct2", target="asrperf.engines.ct2:CTranslate2Engine", extra="ct2",
    requires=("ctranslate2", "faster_whisper"), families=("whisper",), dtypes=tuple(CT2_COMPUTE_TYPES),
    options=frozenset({"longform"}), candidates=_ct2_candidates,
    describe="Whisper through CTranslate2 (faster-whisper)",
    streaming_policies={"whisper": "local_agreement"},
))
register(EngineDecl(
    name="ort", target="asrperf.engines.ort:OnnxRuntimeEngine", extra="ort",
    requires=("onnxruntime", "onnx", "torch", "transformers"), families=("whisper", "ctc"), dtypes=("fp32", "int8"),
    candidates=_ort_candidates, describe="CTC and Whisper models exported to ONNX",
    streaming_note="its exported graphs give no word timestamps or frame labels yet; stream with engine transformers",
))
register(EngineDecl(
    name="nemo", target="asrperf.engines.nemo:NemoEngine", extra="nemo", requires=("nemo", "torch"),
    families=("nemo",), dtypes=("fp32",), describe=".nemo checkpoints (CTC, RNN-T, TDT, hybrids)",
    streaming_note="NeMo's cache-aware streaming is not wired in (nemo is not installed where asrperf is tested)",
))
register(EngineDecl(
    name="whispercpp", target="asrperf.engines.whispercpp:WhisperCppEngine", extra="whispercpp",
    requires=("_pywhispercpp", "gguf"), families=("whisper",), dtypes=("fp16", "q8_0", "q5_0", "q5_1"),
    options=frozenset({"longform"}), candidates=_whispercpp_candidates, default_dtype="fp16",
    describe="Whisper through whisper.cpp (pywhispercpp; ggml f16/q8_0/q5_*)",
))
register(EngineDecl(
    name="openai-whisper", target="asrperf.engines.openai_whisper:OpenAIWhisperEngine", extra="openai-whisper",
    requires=("whisper", "torch"), families=("whisper",), dtypes=("fp32", "fp16"),
    describe="OpenAI's own Whisper implementation: the semantic reference, slow on purpose",
))
