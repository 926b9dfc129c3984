"""The result row as typed sections: what every stored cell holds, with a unit in each name.

A row is stored as one flat JSON object (the exports keep those names); in memory it is a `Row`
of frozen section dataclasses. Each field is declared once here with its type and one line of
doc. Facts that reports need are typed fields (booleans, enums), never prose to parse; every
"*_missing_reason" is the human sentence beside a missing figure.

`Row.from_flat` validates a flat row against the schema: unknown keys and wrong types are errors
when writing (`strict`); when reading, keys this version does not know (a newer asrperf, a plugin
not loaded here) are kept aside in `Row.extra` and exported unchanged. Engines may report facts
the schema does not list: those go to `Provenance.engine_details`, kept and exported, never read
by the report.

A scenario plugin declares its own section (`register_section`); `Row` reads like a mapping from
flat field name to value (`row["latency_s_p50"]`, `row.get("wer")`), so a misspelt key fails
loudly instead of reading None.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = 2  # 1: untyped rows (asrperf <= this change); 2: typed sections, see results/migrate.py

TOKEN_POLICIES = ("real", "fixed", "n/a")  # decoder tokens: the model's own, a fixed count (random weights), none
WEIGHTS_BYTES_KINDS = ("in_memory", "file_size")
STATUSES = ("ok", "failed")


class SchemaError(ValueError):
    """A row does not match the schema: an unknown key or a value of the wrong type."""


def doc(text: str, default: Any = None) -> Any:
    """A field with one line of documentation (shown by `describe()`)."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Section:
    """Base of every row section: fields are optional unless a section says otherwise."""

    name: ClassVar[str] = ""
    enums: ClassVar[dict[str, tuple[str, ...]]] = {}  # field -> allowed values


@dataclass(frozen=True)
class Identity(Section):
    name: ClassVar[str] = "identity"
    enums: ClassVar[dict[str, tuple[str, ...]]] = {"status": STATUSES}

    run_id: str | None = doc("the run's id: the config's identity hash")
    cell_key: str | None = doc("the cell's key within its run: engine|model|weights|variant|device|threads|length|batch|scenario[|chunk]")
    status: str | None = doc("ok or failed")
    error: str | None = doc("why a failed cell failed, one line")
    engine: str | None = doc("engine name")
    model: str | None = doc("column label: the model's label or name")
    model_name: str | None = doc("catalog name, Hub id or local directory as configured")
    weights_requested: str | None = doc("auto, real or random, as configured")
    dtype: str | None = doc("the dtype asked for")
    variant: str | None = doc("dtype plus every non-baseline option, e.g. fp32+quant=int8_dynamic")
    device: str | None = doc("cpu, cuda or cuda:N")
    threads: int | None = doc("CPU threads the cell ran with")
    clip_length_s: float | None = doc("exact clip length in seconds")
    batch_size: int | None = doc("clips per call (0: the max-throughput search chose)")
    scenario: str | None = doc("the scenario that produced the row")
    isolated: bool | None = doc("the cell ran in its own process")
    chunk_ms: int | None = doc("streaming: audio per chunk fed to the model, ms (absent for other scenarios)")


@dataclass(frozen=True)
class Provenance(Section):
    name: ClassVar[str] = "provenance"
    enums: ClassVar[dict[str, tuple[str, ...]]] = {"weights": ("real", "random"), "token_policy": TOKEN_POLICIES}

    weights: str | None = doc("real or random: what the model actually ran with")
    weights_source: str | None = doc("where the weights came from (a path), or how random ones were drawn")
    weights_note: str | None = doc("why the weights are not the ones asked for")
    accuracy_reference: bool | None = doc("the engine's fp32 baseline is the semantic reference of the WER gate")
    runs_torch: bool | None = doc("the model runs as torch ops in the cell's process (FLOPs, torch memory)")
    engine_version: str | None = doc("the engine library's version")
    torch_version: str | None = doc("torch's version, where torch runs the model")
    ctranslate2_version: str | None = doc("CTranslate2's version (engine ct2)")
    n_params: int | None = doc("parameters of the model")
    model_class: str | None = doc("the model's class, where the engine names it")
    compute_type: str | None = doc("the compute type the runtime actually runs (CTranslate2)")
    cpu_threads: int | None = doc("threads of the engine's own pool")
    torch_threads: int | None = doc("torch's intra-op threads in the cell")
    device_name: str | None = doc("CPU model or GPU name")
    cuda_version: str | None = doc("CUDA version torch was built with")
    decoding: str | None = doc("the decoding settings, in one wording for all engines")
    longform: str | None = doc("how clips over 30 s were decoded")
    windows: str | None = doc("batched long-form windows: count and lengths")
    token_policy: str | None = doc("real (the model's own end), fixed (a set count: random weights) or n/a (CTC)")
    tokens_policy: str | None = doc("the token policy in words, with its numbers")
    decoder_steps: int | None = doc("decoder steps of the last call (transducers)")
    quant: str | None = doc("quantization option")
    quant_library: str | None = doc("library that quantized the weights")
    attn: str | None = doc("attention option")
    attn_implementation: str | None = doc("attention implementation the model ran")
    compile: bool | None = doc("torch.compile on")
    compile_mode: str | None = doc("torch.compile mode")
    cuda_graphs: bool | None = doc("CUDA graphs on")
    kv_cache: str | None = doc("dynamic, static or n/a")
    compiled_graphs_per_call: list | None = doc("graphs torch.compile built in each call, warm-up first")
    compiled_graphs: int | None = doc("graphs torch.compile built in the cell")
    compile_graph_breaks: int | None = doc("graph breaks torch.compile met")
    compile_s: float | None = doc("seconds spent compiling")
    recompilations_timed: int | None = doc("graphs compiled during the timed calls (should be 0)")
    providers: list | None = doc("ONNX Runtime execution providers in use")
    onnx_file: str | None = doc("the ONNX graph run (the decoder step for Whisper)")
    onnx_files: list | None = doc("every ONNX graph run")
    export_method: str | None = doc("how the ONNX graphs were exported and quantized")
    ort_thread_spinning: bool | None = doc("ONNX Runtime threads spin-wait between runs")
    timed_region: list | None = doc("what the timer covers, in order")
    timing_policy: dict | None = doc("warm-up and repeat policy of the timed calls")
    n_clips: int | None = doc("clips of the cell")
    clip_ids: list | None = doc("ids of the cell's clips")
    speech_s_mean: float | None = doc("mean seconds of speech per clip")
    load_s: float | None = doc("seconds to load the model (cold start)")
    executor: str | None = doc("what ran the cell: local (a process on the driver's machine) or ray (a Ray task)")
    node_hostname: str | None = doc("hostname of the machine that ran the cell")
    node_id: str | None = doc("the Ray node id of that machine (executor ray)")
    node_cpu_model: str | None = doc("that machine's CPU model, from its environment captured once per node")
    node_gpu_name: str | None = doc("that machine's GPU name(s) as nvidia-smi lists them (none: no GPU)")
    node_gpu_driver: str | None = doc("that machine's NVIDIA driver version")
    clips_sha256: str | None = doc("content hash of the clip files the cell measured (shipped to its node, verified there)")
    engine_details: dict | None = doc("facts an engine reported that this schema does not list")


@dataclass(frozen=True)
class Latency(Section):
    name: ClassVar[str] = "latency"

    n_calls: int | None = doc("timed calls")
    latency_s_mean: float | None = doc("mean seconds per call")
    latency_s_std: float | None = doc("standard deviation, seconds")
    latency_s_min: float | None = doc("fastest call, seconds")
    latency_s_p50: float | None = doc("median seconds per call")
    latency_s_p90: float | None = doc("90th percentile, seconds")
    latency_s_p99: float | None = doc("99th percentile, seconds")
    latency_s_max: float | None = doc("slowest call, seconds")
    latency_s_p50_ci_low: float | None = doc("bootstrap 95% CI of the median, low end, seconds")
    latency_s_p50_ci_high: float | None = doc("bootstrap 95% CI of the median, high end, seconds")
    first_call_s: float | None = doc("the first (cold) call, seconds")
    warmup_calls: int | None = doc("warm-up calls discarded")
    audio_s_per_call: float | None = doc("audio seconds per call (batch x clip length)")
    throughput_samples_per_s: float | None = doc("batch size x calls / timed seconds")
    rtfx: float | None = doc("audio seconds / compute seconds")
    tokens_per_call_mean: float | None = doc("decoder tokens per call")
    tokens_per_audio_s: float | None = doc("decoder tokens per audio second")


@dataclass(frozen=True)
class Accuracy(Section):
    name: ClassVar[str] = "accuracy"

    wer: float | None = doc("corpus WER (fraction) after Whisper's English normaliser")
    wer_ci_low: float | None = doc("bootstrap 95% CI over clips, low")
    wer_ci_high: float | None = doc("bootstrap 95% CI over clips, high")
    wer_missing_reason: str | None = doc("why there is no WER")
    cer: float | None = doc("corpus CER (fraction)")
    cer_ci_low: float | None = doc("bootstrap 95% CI, low")
    cer_ci_high: float | None = doc("bootstrap 95% CI, high")
    ref_words: int | None = doc("reference words scored")
    n_scored: int | None = doc("clips scored")
    transcripts: list | None = doc("[{clip, ref, hyp}] per clip")


@dataclass(frozen=True)
class Energy(Section):
    name: ClassVar[str] = "energy"

    energy_j: float | None = doc("joules over the timed calls")
    energy_missing_reason: str | None = doc("why energy is missing")
    energy_window_s: float | None = doc("seconds the energy window spanned")
    energy_method: str | None = doc("how energy was read: the counters, or the estimate's formula")
    energy_measured: bool | None = doc("true for real counters (RAPL, NVML), false for an estimate")
    energy_note: str | None = doc("the reading's details")
    energy_window_ok: bool | None = doc("the window was at least as long as each counter's update period")
    energy_domains_j: dict | None = doc("joules per counter domain")
    energy_j_per_sample: float | None = doc("joules per clip")
    energy_j_per_audio_s: float | None = doc("joules per audio second")
    idle_power_w: float | None = doc("idle watts measured just before the window (real counters)")
    energy_net_j_per_sample: float | None = doc("joules per clip above idle")
    energy_net_j_per_audio_s: float | None = doc("joules per audio second above idle")


@dataclass(frozen=True)
class Memory(Section):
    name: ClassVar[str] = "memory"
    enums: ClassVar[dict[str, tuple[str, ...]]] = {"weights_bytes_kind": WEIGHTS_BYTES_KINDS}

    peak_rss_bytes: int | None = doc("peak RSS of the cell's process")
    peak_rss_method: str | None = doc("how the peak RSS was read")
    rss_after_load_bytes: int | None = doc("peak RSS right after loading")
    rss_peak_timed_bytes: int | None = doc("peak RSS over the timed calls")
    rss_peak_timed_method: str | None = doc("how it was read")
    rss_peak_timed_missing_reason: str | None = doc("why it is missing")
    memory_window_s: float | None = doc("seconds the memory window spanned")
    weights_bytes: int | None = doc("bytes of the weights")
    weights_bytes_kind: str | None = doc("in_memory (parameters + buffers) or file_size (a runtime's model files)")
    weights_bytes_by_dtype: dict | None = doc("weight bytes per dtype")
    weights_bytes_method: str | None = doc("how the weights were sized")
    weights_missing_reason: str | None = doc("why weights could not be sized")
    cuda_peak_allocated_bytes: int | None = doc("peak CUDA memory torch allocated in the cell")
    cuda_peak_reserved_bytes: int | None = doc("peak CUDA memory torch reserved in the cell")
    cuda_peak_allocated_timed_bytes: int | None = doc("peak CUDA memory allocated over the timed calls")
    cuda_peak_reserved_timed_bytes: int | None = doc("peak CUDA memory reserved over the timed calls")
    cuda_memory_missing_reason: str | None = doc("why CUDA memory is missing")
    nvml_process_peak_bytes: int | None = doc("GPU memory NVML saw for the process over the timed calls")
    nvml_process_samples: int | None = doc("NVML samples taken")
    nvml_process_missing_reason: str | None = doc("why NVML memory is missing")


@dataclass(frozen=True)
class Flops(Section):
    name: ClassVar[str] = "flops"

    flops_probe_ran: bool | None = doc("flops = true: this cell ran the FLOP count and the device-peak probe")
    flops_per_call: float | None = doc("FLOPs of one call, counted on the real forward")
    flops_missing_reason: str | None = doc("why FLOPs are missing")
    flops_attention_per_call: float | None = doc("attention FLOPs of one call")
    flops_by_stage: dict | None = doc("FLOPs per entry-point module")
    flops_per_audio_s: float | None = doc("FLOPs per audio second")
    flops_encoder_per_window: float | None = doc("encoder FLOPs per 30 s window")
    flops_encoder_windows: int | None = doc("encoder windows in the counted call")
    flops_encoder_missing_reason: str | None = doc("why there is no per-window encoder figure")
    flops_decoder_per_token: float | None = doc("decoder FLOPs per token")
    flops_decoder_tokens: int | None = doc("decoder tokens in the counted call")
    flops_decoder_missing_reason: str | None = doc("why there is no per-token decoder figure")
    flops_decoder_prefill_per_window: float | None = doc("decoder FLOPs of the first step per window")
    achieved_flops_per_s: float | None = doc("FLOPs per call / median latency")
    peak_flops_per_s: float | None = doc("the measured matmul peak MFU divides by")
    mfu: float | None = doc("achieved / peak")
    peak_matmul_flops_per_s: float | None = doc("matmul peak measured on this device, dtype and threads")
    peak_copy_bytes_per_s: float | None = doc("copy bandwidth measured on this device")
    peak_method: str | None = doc("how the peaks were measured")


@dataclass(frozen=True)
class Contention(Section):
    """The busy-machine guard of the timed windows (measure/contention.py)."""

    name: ClassVar[str] = "contention"

    contended: bool | None = doc("others used more than the set share of the cell's cores, or the cell got less than its share of CPU, in a timed window")
    contention_reasons: list | None = doc("which limits were crossed, with the figures")
    contention_windows: int | None = doc("timed windows judged (max throughput: one per probe)")
    contention_windows_contended: int | None = doc("windows judged contended")
    contention_wall_s: float | None = doc("seconds of the judged windows")
    contention_threads: int | None = doc("threads the cell asked for")
    contention_cpus: int | None = doc("CPUs of the machine")
    contention_own_cpu_s: float | None = doc("CPU seconds the cell's process got")
    contention_own_cpu_share: float | None = doc("own CPU seconds / (wall x threads)")
    contention_own_wait_s: float | None = doc("seconds the cell's threads waited for a CPU (schedstat)")
    contention_own_got_share: float | None = doc("the share of the CPU the cell got while it wanted it")
    contention_others_cpu_s: float | None = doc("CPU seconds other processes used in the window (/proc/stat minus own)")
    contention_steal_s: float | None = doc("steal seconds (the hypervisor gave the CPUs to others)")
    contention_others_cores: float | None = doc("other processes' CPU seconds / wall: cores they kept busy")
    contention_others_share: float | None = doc("others' cores / the cores the cell asked for")
    contention_runqueue_max: int | None = doc("most runnable tasks seen")
    contention_cpu_freq_mhz: float | None = doc("mean CPU frequency where readable")
    contention_gpu_other_processes: int | None = doc("other compute processes on the GPU (NVML)")
    contention_gpu_sm_clock_mhz: int | None = doc("the GPU's SM clock during the window")
    contention_gpu_sm_clock_max_mhz: int | None = doc("the GPU's maximum SM clock")
    contention_gpu_clock_reasons: list | None = doc("NVML clock throttle reasons seen")
    contention_max_others_share: float | None = doc("the limit on others_share")
    contention_min_got_share: float | None = doc("the limit on own_got_share")
    contention_method: str | None = doc("how the figures were read")


SECTIONS: dict[str, type[Section]] = {}
_FIELD_SECTION: dict[str, str] = {}


def register_section(cls: type[Section]) -> type[Section]:
    """Add a section (a scenario plugin's own fields); its field names must be new."""
    names = [f.name for f in dataclasses.fields(cls)]
    clash = [n for n in names if _FIELD_SECTION.get(n, cls.name) != cls.name]
    if clash:
        raise SchemaError(f"section {cls.name}: field '{clash[0]}' is already declared by section "
                          f"{_FIELD_SECTION[clash[0]]}; give it a name of its own")
    SECTIONS[cls.name] = cls
    _FIELD_SECTION.update((n, cls.name) for n in names)
    return cls


for _cls in (Identity, Provenance, Latency, Accuracy, Energy, Memory, Flops, Contention):
    register_section(_cls)


_ORIGIN_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list, tuple),
                 "dict": (dict,)}


@functools.cache
def _types(cls: type[Section]) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        out[f.name] = tuple(t for a in args if a is not type(None) for t in _ORIGIN_TYPES[getattr(a, "__name__", str(a))])
    return out


def _check(cls: type[Section], key: str, value: Any) -> None:
    if value is None:
        return
    allowed = _types(cls)[key]
    if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
        raise SchemaError(f"row field '{key}' ({cls.name}): {value!r} is a {type(value).__name__}, "
                          f"expected {'/'.join(t.__name__ for t in allowed)}")
    choices = cls.enums.get(key)
    if choices and value not in choices:
        raise SchemaError(f"row field '{key}' ({cls.name}): {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class Row(Mapping[str, Any]):
    """One cell's result: its sections by name, plus keys this version does not know (`extra`)."""

    sections: dict[str, Section]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], strict: bool = True) -> "Row":
        """Split a flat row into sections, checking each value's type; see the module docstring."""
        by_section: dict[str, dict[str, Any]] = {}
        extra: dict[str, Any] = {}
        for key, value in flat.items():
            section = _FIELD_SECTION.get(key)
            if section is None:
                if strict:
                    raise SchemaError(f"row field '{key}' is not in the schema (results/schema.py); declare it in "
                                      "a section, or report engine facts through engine_details")
                extra[key] = value
                continue
            _check(SECTIONS[section], key, value)
            by_section.setdefault(section, {})[key] = value
        return cls({name: SECTIONS[name](**fields) for name, fields in by_section.items()}, extra)

    def flat(self) -> dict[str, Any]:
        """The flat form stored and exported: every field that has a value, then `extra`."""
        out: dict[str, Any] = {}
        for section in self.sections.values():
            out.update((f.name, v) for f in dataclasses.fields(section) if (v := getattr(section, f.name)) is not None)
        out.update(self.extra)
        return out

    def section(self, name: str) -> Section | None:
        return self.sections.get(name)

    def __getitem__(self, key: str) -> Any:
        """A declared field's value (None when the row has none); a key kept in `extra`; else KeyError."""
        section = _FIELD_SECTION.get(key)
        if section is None:
            if key in self.extra:
                return self.extra[key]
            raise KeyError(f"'{key}' is not a row field (results/schema.py)")
        return getattr(self.sections[section], key) if section in self.sections else None

    def get(self, key: str, default: Any = None) -> Any:
        value = self[key]
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.flat())

    def __len__(self) -> int:
        return len(self.flat())

    def __contains__(self, key: object) -> bool:
        """True when the row has a value for `key` (a declared field that is not None, or an extra key)."""
        try:
            return self[key] is not None  # type: ignore[index]
        except KeyError:
            return False


def engine_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """An engine's `info()` as row fields: what the schema declares as is, the rest in engine_details."""
    known = {k: v for k, v in info.items() if k in _FIELD_SECTION}
    details = {k: v for k, v in info.items() if k not in _FIELD_SECTION}
    if details:
        known["engine_details"] = {**known.get("engine_details", {}), **details}
    return known


def describe() -> list[tuple[str, str, str, str]]:
    """(section, field, type, doc) for every declared field: the schema as a table."""
    out = []
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append((name, f.name, str(hints[f.name]).replace("typing.", ""), f.metadata.get("doc", "")))
    return out


# the built-in scenarios' sections register themselves on import
from asrperf.results import sections as _sections  # noqa: E402,F401  (after Section and register_section exist)
