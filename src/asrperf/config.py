"""Run configuration: TOML and/or flags, validated in one place.

Every key is checked: an unknown key or an impossible value is a ConfigError that names
the key and the fix. Cross-field checks live in `RunConfig.validate` and, per model, in
`check_variant`, which asks each engine's declaration (engines/capabilities.py) what it runs;
scenario names come from the scenario registry (asrperf.scenarios). Defaults live here only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from asrperf.engines.capabilities import ENGINES, all_dtypes, declaration
from asrperf.errors import ConfigError, check_keys
from asrperf.options import ATTN_CHOICES, LONGFORM_CHOICES, QUANT_CHOICES, VariantOptions

WEIGHTS_CHOICES = ("auto", "real", "random")
CLIP_MODES = ("exact", "continuous", "loop")  # data/clips.py BUILDERS
DEFAULT_MAX_BATCH = 64  # max_throughput: the largest batch the search tries unless told
MAX_DECODE_TOKENS = 440  # Whisper decodes at most 448 positions, prompt included
STREAM_CLOCKS = ("simulated", "realtime")  # scenarios/stream_clock.py
ENCODER_WINDOWS = ("full", "buffer")  # streaming.encoder_window: Whisper's 30 s, or the buffer's length
STREAM_ENDPOINTS = ("vad", "none")  # scenarios/stream_endpoint.py: silero VAD endpoints, or pure LocalAgreement
CAPACITY_WORKERS = ("threads", "processes")
MAX_CHUNK_MS = 30_000  # one Whisper window
EXECUTORS = ("local", "ray")  # run/executor.py: a process per cell here, or a Ray task per cell on a cluster
SERVER_MODES = ("search", "sweep", "single")  # load/session.py MODES ("probe" is read as "single")
# asrperf load's flags, as its checks name them, and the [server] keys that set them
_SERVER_FLAG_KEYS = {"--rate": "rate", "--slo": "slo", "--requests": "probe_requests", "--duration": "probe_duration_s",
                     "--timeout": "timeout_s", "--warmup-s": "warmup_s", "--max-in-flight": "max_in_flight",
                     "--precision": "precision", "--max-probes": "max_probes",
                     "--saturation-clients": "saturation_clients", "--sweep-rates": "sweep_rates_rps",
                     "--mode": "mode"}


@dataclass(frozen=True)
class ModelConfig:
    """One model to benchmark, as named in the catalog or by Hub id / local directory."""

    name: str  # catalog name ("whisper-tiny.en"), Hub id ("openai/whisper-base") or a local directory
    engine: str = "transformers"
    weights: str = "auto"  # auto: real if available offline, else random; real: must load real; random: never
    dtype: str = "fp32"  # one of the engine's declared dtypes (engines/capabilities.py)
    label: str = ""  # column name in reports; defaults to `name`
    quant: str = "none"  # options.QUANT_CHOICES; engines that quantize through dtype do not take it
    attn: str = "sdpa"  # options.ATTN_CHOICES: the attention implementation the model runs
    compile: bool = False  # torch.compile the model; Whisper then decodes with a static KV cache
    cuda_graphs: bool = False  # CUDA only, with compile: torch.compile mode "reduce-overhead"
    longform: str = "sequential"  # options.LONGFORM_CHOICES: how Whisper decodes clips over 30 s

    @property
    def display(self) -> str:
        return self.label or self.name

    @property
    def options(self) -> VariantOptions:
        return VariantOptions(self.quant, self.attn, self.compile, self.cuda_graphs, self.longform)

    @property
    def variant(self) -> str:
        """Short label of how the model runs: "fp32" for the baseline, else e.g. "fp32+quant=int8_dynamic"."""
        return self.options.label(self.dtype)


def default_dtype(engine: str) -> str:
    """The dtype engine `engine` runs when none is given (its declaration's; fp32 for most)."""
    return declaration(engine).default_dtype


def check_variant(m: ModelConfig, device: str | None = None) -> None:
    """Reject a model's impossible dtype and option combinations, naming both; with `device`, those
    that depend on it too. What each engine accepts is its declaration (engines/capabilities.py);
    whether a library is installed is checked when the engine loads."""
    decl = declaration(m.engine)
    _choice("models.dtype", m.dtype, all_dtypes())
    _choice("models.quant", m.quant, QUANT_CHOICES)
    _choice("models.attn", m.attn, ATTN_CHOICES)
    _choice("models.longform", m.longform, LONGFORM_CHOICES)
    for key in ("compile", "cuda_graphs"):
        if not isinstance(getattr(m, key), bool):
            raise ConfigError(f"models.{key}: {getattr(m, key)!r} is not true or false")
    for key in m.options.changed():
        if key not in decl.options:
            able = [e.name for e in ENGINES.values() if key in e.options]
            via = [d for d in decl.dtypes if d.startswith("int8")] if key == "quant" else []
            hint = f" (engine {m.engine} quantizes through dtype, e.g. dtype = '{via[0]}')" if via else ""
            raise ConfigError(f"{m.name}: {key} = {getattr(m, key)!r} with engine = '{m.engine}': engine {m.engine} "
                              f"does not implement {key}{hint}; remove {key} or use engine {'/'.join(able)}")
    if m.quant != "none" and m.dtype.startswith("int8"):
        raise ConfigError(f"{m.name}: quant = '{m.quant}' with dtype = '{m.dtype}': int8 dtypes are the "
                          f"engines' own quantization; use dtype fp32/fp16/bf16 with quant")
    if m.dtype not in decl.dtypes:
        raise ConfigError(f"{m.name}: dtype = '{m.dtype}' with engine = '{m.engine}': engine {m.engine} runs "
                          f"{', '.join(decl.dtypes)}; choose one of them or another engine")
    if m.cuda_graphs and not m.compile:
        raise ConfigError(f"{m.name}: cuda_graphs = true needs compile = true (torch.compile captures the CUDA "
                          "graphs, mode 'reduce-overhead'); set compile = true")
    if m.attn == "flash_attention_2" and m.dtype not in ("fp16", "bf16"):
        raise ConfigError(f"{m.name}: attn = 'flash_attention_2' with dtype = '{m.dtype}': flash-attn runs "
                          "fp16/bf16 only; set dtype fp16 or bf16")
    if device is None or device.startswith("cuda"):
        return
    if m.cuda_graphs:
        raise ConfigError(f"{m.name}: cuda_graphs = true with device '{device}': CUDA graphs need a CUDA device")
    if m.attn == "flash_attention_2":
        raise ConfigError(f"{m.name}: attn = 'flash_attention_2' with device '{device}': flash-attn is CUDA "
                          "only; use attn 'sdpa' or 'eager' on CPU")
    if m.quant == "int8_dynamic" and m.dtype != "fp32":
        raise ConfigError(f"{m.name}: quant = 'int8_dynamic' with dtype = '{m.dtype}' on device '{device}': the "
                          "CPU int8 kernels (torch.ao quantize_dynamic) take fp32 activations; set dtype fp32")


@dataclass(frozen=True)
class TimingConfig:
    """How many calls are timed: warm-up discarded, then repeat until both minimums are reached."""

    warmup_calls: int = 1
    warmup_min_s: float = 0.0
    min_calls: int = 3
    min_time_s: float = 1.0
    max_calls: int = 50  # stop early on very fast cells once this many samples exist
    max_time_s: float = 60.0  # ... or once this much timed wall time is spent (after min_calls)


@dataclass(frozen=True)
class StreamingConfig:
    """The streaming scenario's settings, the `[streaming]` table; its chunk sizes are the run's
    sweep axis `chunk_ms`. Read only when `scenarios` includes "streaming"."""

    clock: str = "simulated"  # STREAM_CLOCKS: compute-aware simulation (no sleeping) or the wall clock
    agreement: int = 2  # LocalAgreement-n: consecutive hypotheses that must agree to commit a word
    trim_s: float = 15.0  # LocalAgreement: trim the buffer at a committed sentence end once longer than this
    prompt_chars: int = 200  # LocalAgreement: committed text from before the buffer given as the prompt
    # LocalAgreement: "vad" commits what was said up to where speech stopped for `endpoint_silence_ms`
    # without waiting for agreement (silero VAD, the ct2 extra); "none": pure LocalAgreement-n. The
    # default is "none": measured on tiny.en ct2 int8 (benchmarks/README.md, session of 2026-12-02 (fifth)),
    # "vad" cut p90 finalization from 2.89 s to 1.85 s (built-in corpus) and 1.59 s to 1.11 s (LibriVox)
    # at +1.37 and +1.75 WER points against offline (none: -0.46, +0.00)
    endpoint: str = "none"
    # the pause that ends speech. 100 ms: silero's own default; the pauses between the built-in corpus's
    # sentences are 160-190 ms to the detector, so 200 ms or more would never fire on it. A pause
    # inside a sentence that fires only commits earlier: the words before it come from a decode that
    # heard what follows, and the buffer restarts in silence, so no word is cut.
    endpoint_silence_ms: int = 100
    # LocalAgreement: "full" encodes Whisper's zero-padded 30 s window on every update; "buffer" only the
    # buffer plus 1 s (engine ct2; faster and cheaper, at a WER cost the streamed rows show)
    encoder_window: str = "full"
    left_context_ms: int = 1000  # chunked: audio before each chunk that the model reads again
    right_context_ms: int = 200  # chunked: audio after each chunk that it waits for (adds to latency)
    capacity: bool = True  # search the most concurrent real-time streams (the shortest clip length's cells)
    capacity_workers: str = "threads"  # threads: streams share the cell's engine, one call at a time;
    # processes: one engine per stream, each in its own process with `capacity_threads` threads
    capacity_threads: int = 1
    max_streams: int = 16  # the capacity search's upper bound
    max_miss_share: float = 0.01  # capacity: streams keep up while at most this share of chunks miss their deadline
    max_finalization_p90_s: float = 3.0  # capacity: ... and the p90 finalization latency stays within this

    def validate(self) -> "StreamingConfig":
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            kinds = (int, float) if type(default) is float else (type(default),)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
                raise ConfigError(f"streaming.{f.name}: {value!r} is not a {type(default).__name__} "
                                  f"(default {default!r})")
        _choice("streaming.clock", self.clock, STREAM_CLOCKS)
        _choice("streaming.capacity_workers", self.capacity_workers, CAPACITY_WORKERS)
        _choice("streaming.endpoint", self.endpoint, STREAM_ENDPOINTS)
        _choice("streaming.encoder_window", self.encoder_window, ENCODER_WINDOWS)
        checks = (("agreement", self.agreement >= 2, "an integer >= 2 (LocalAgreement-2 commits what two updates agree on)"),
                  ("trim_s", 0 < self.trim_s <= 30, "seconds in (0, 30]: Whisper reads at most 30 s"),
                  ("prompt_chars", self.prompt_chars >= 0, "characters >= 0"),
                  ("endpoint_silence_ms", 32 <= self.endpoint_silence_ms <= 5000,
                   "milliseconds in [32, 5000] (the detector reads 32 ms frames)"),
                  ("left_context_ms", self.left_context_ms >= 0, "milliseconds >= 0"),
                  ("right_context_ms", self.right_context_ms >= 0, "milliseconds >= 0"),
                  ("capacity", isinstance(self.capacity, bool), "true or false"),
                  ("capacity_threads", self.capacity_threads >= 1, "threads >= 1"),
                  ("max_streams", self.max_streams >= 1, "streams >= 1"),
                  ("max_miss_share", 0 <= self.max_miss_share < 1, "a share in [0, 1), e.g. 0.01"),
                  ("max_finalization_p90_s", self.max_finalization_p90_s > 0, "seconds > 0"))
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"streaming.{key}: {getattr(self, key)!r} must be {what}")
        return self


@dataclass(frozen=True)
class ServerConfig:
    """The server scenario's settings, the `[server]` table: asrperf's own server for each cell, and
    the load plan run against it (asrperf load's options). `max_batch_size` is the scenario's cell
    axis (one cell per size; 1 = batching off). Read only when `scenarios` includes "server".

    The defaults bound a cell to a few minutes: a search runs 2 anchor probes and at most
    `max_probes` bisection probes of at most `probe_duration_s` + `timeout_s` each."""

    mode: str = "search"  # search (max rate under the SLO) | sweep (latency vs offered load) | single ("probe": one at `rate`)
    slo: str = "p99<=2s"  # asrperf.load.slo syntax
    rate: str = "poisson:1"  # the arrival pattern; search and sweep vary its rate, keep its kind and burstiness
    max_batch_size: tuple[int, ...] = (8,)  # the server's batcher: one cell per size
    max_wait_ms: float = 10.0  # how long a batch's first request waits for more
    max_queue: int = 64  # waiting requests before 429
    probe_duration_s: float = 20.0  # seconds of sending per probe
    probe_requests: int = 400  # most requests per probe (381 resolve a 99th percentile)
    timeout_s: float = 30.0  # per request; a probe never outlasts probe_duration_s + timeout_s
    warmup_s: float = 0.0  # requests scheduled in a probe's first seconds are sent, not measured
    max_in_flight: int = 0  # open loop: at most this many requests at once (0: no limit)
    precision: float = 0.1  # search: stop when the bracket is within this share of its upper end
    max_probes: int = 4  # search: bisection probes after the synchronous and saturation ones
    saturation_clients: int = 0  # closed-loop clients of the saturation probe (0: 2 x max_batch_size)
    sweep_rates_rps: tuple[float, ...] = ()  # sweep: these rates; empty: fractions of the saturation rate
    seed: int = 0  # the arrival schedule's seed, the same for every probe
    startup_timeout_s: float = 600.0  # loading the model in the server process

    @property
    def plan_mode(self) -> str:
        return "single" if self.mode == "probe" else self.mode

    def worst_case_s(self) -> float:
        """The longest the load plan may take after the server listens: every probe runs to its
        duration, its last request to its timeout, and the wait for an idle server to its timeout."""
        if self.plan_mode == "single":
            probes = 1
        elif self.plan_mode == "search":
            probes = 2 + self.max_probes
        else:
            from asrperf.load.search import SWEEP_FRACTIONS

            probes = len(self.sweep_rates_rps) or 1 + len(SWEEP_FRACTIONS)
        return probes * (self.probe_duration_s + 2 * self.timeout_s)

    def validate(self) -> "ServerConfig":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("max_batch_size", "sweep_rates_rps"):
                if not isinstance(value, tuple) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                       for v in value):
                    raise ConfigError(f"server.{f.name}: {value!r} is not a list of numbers")
                continue
            default = f.default
            kinds = (int, float) if type(default) is float else (type(default),)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
                raise ConfigError(f"server.{f.name}: {value!r} is not a {type(default).__name__} (default {default!r})")
        if self.mode not in (*SERVER_MODES, "probe"):
            raise ConfigError(f"server.mode: '{self.mode}' is not one of search, sweep, single (or probe)")
        if not self.max_batch_size or any(not float(b).is_integer() or b < 1 for b in self.max_batch_size):
            raise ConfigError(f"server.max_batch_size: {list(self.max_batch_size)} must be whole numbers >= 1 "
                              "(one cell each; 1 turns batching off)")
        try:
            self.load_plan()
        except ConfigError as exc:  # the load plan's messages name asrperf load's flags: name the table's keys
            text = str(exc)
            for flag, key in _SERVER_FLAG_KEYS.items():
                text = text.replace(flag, f"server.{key}")
            raise ConfigError(text) from None
        from asrperf.load.arrivals import OPEN_LOOP, parse_arrivals

        if self.plan_mode != "single" and parse_arrivals(self.rate).kind not in OPEN_LOOP:
            raise ConfigError(f"server.rate: '{self.rate}': mode '{self.mode}' varies an open-loop rate; use "
                              f"{', '.join(OPEN_LOOP)} (e.g. poisson:1: only its kind and burstiness are kept)")
        checks = (("max_wait_ms", self.max_wait_ms >= 0, "milliseconds >= 0"),
                  ("max_queue", self.max_queue >= 1, "requests >= 1"),
                  ("startup_timeout_s", self.startup_timeout_s > 0, "seconds > 0"))
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"server.{key}: {getattr(self, key)!r} must be {what}")
        return self

    def load_plan(self):
        """The asrperf.load.session.LoadPlan these settings describe (validated)."""
        from asrperf.load.arrivals import parse_arrivals
        from asrperf.load.generator import Bounds
        from asrperf.load.session import LoadPlan
        from asrperf.load.slo import parse_slo

        bounds = Bounds(self.probe_requests, self.probe_duration_s, self.timeout_s, self.warmup_s, self.max_in_flight)
        return LoadPlan(mode=self.plan_mode, arrivals=parse_arrivals(self.rate),
                        slo=parse_slo(self.slo) if self.slo else None, bounds=bounds, seed=self.seed,
                        precision=self.precision, max_probes=self.max_probes,
                        saturation_clients=self.saturation_clients,
                        sweep_rates_rps=tuple(float(r) for r in self.sweep_rates_rps)).validate()


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides which cells run and how; hashed to identify a run for resume."""

    models: tuple[ModelConfig, ...]
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "builtin"})
    clip_lengths_s: tuple[float, ...] = (5.0, 15.0, 30.0, 60.0)
    n_clips: int = 3  # clips per length; latency calls cycle over them, WER is over all of them
    clip_mode: str = "exact"
    batch_sizes: tuple[int, ...] = (1,)
    devices: tuple[str, ...] = ("cpu",)
    threads: tuple[int, ...] = (0,)  # 0: all cores of this machine (resolved at plan time)
    scenarios: tuple[str, ...] = ("latency",)
    accuracy: bool = True  # transcribe every clip once per cell and score WER (real weights only)
    energy: bool = True  # joules over the timed calls: RAPL/NVML counters, else a labelled estimate
    energy_idle_s: float = 1.0  # idle power measured this long before each window (measured readers only)
    flops: bool = False  # count FLOPs of one call per cell and measure the device's peak (MFU); ~1 call more
    max_batch: int = DEFAULT_MAX_BATCH  # max_throughput scenario: largest batch the search may try
    memory_budget_gib: float = 0.0  # max_throughput scenario: stop before this much device memory (0: none)
    decode_tokens: int = 50  # decode scenario: tokens in the per-token curve (covers positions 1, 10, 50); 0: no curve
    chunk_ms: tuple[int, ...] = (1000,)  # streaming scenario: the chunk sizes it sweeps (audio per chunk, ms)
    streaming: StreamingConfig = StreamingConfig()  # streaming scenario: policies, clock, capacity search
    server: ServerConfig = ServerConfig()  # server scenario: batcher settings and the load plan per cell
    timing: TimingConfig = TimingConfig()
    isolate: bool = True  # each cell in its own process
    cell_timeout_s: float = 1800.0
    store: str = "asrperf-results/results.sqlite"
    cache_dir: str = ".asrperf-cache"
    # exact clips: each must hold at least this share of speech (the rest is silence padding);
    # a clip below it is an error naming the source. 0 allows any clip
    min_speech_share: float = 0.9
    executor: str = "local"  # EXECUTORS; how cells are run, never what they measure (not in the identity)
    ray_address: str = ""  # executor ray: "" starts a Ray for the run, "auto" or HOST:PORT joins a cluster

    def validate(self) -> "RunConfig":
        if not self.models:
            raise ConfigError("no models to run; add a [[models]] table or pass --model NAME")
        for m in self.models:
            _choice("models.weights", m.weights, WEIGHTS_CHOICES)
            for d in self.devices:
                check_variant(m, d)
        _choice("clip_mode", self.clip_mode, CLIP_MODES)
        self._validate_executor()
        from asrperf.scenarios import SCENARIOS

        for s in self.scenarios:
            _choice("scenarios", s, tuple(SCENARIOS))
        if "streaming" in self.scenarios:
            self._validate_streaming()
        if "server" in self.scenarios:
            self._validate_server()
        for length in self.clip_lengths_s:
            if not 0 < length <= 3600:
                raise ConfigError(f"clip_lengths_s: {length} is not a length in seconds in (0, 3600]")
        for b in self.batch_sizes:
            if b < 1:
                raise ConfigError(f"batch_sizes: {b} must be >= 1")
        for t in self.threads:
            if t < 0:
                raise ConfigError(f"threads: {t} must be >= 0 (0 means all cores)")
        for d in self.devices:
            if not (d == "cpu" or d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
                raise ConfigError(f"devices: '{d}' is not a device; use 'cpu', 'cuda' or 'cuda:N'")
        if not 0 <= self.decode_tokens <= MAX_DECODE_TOKENS:
            raise ConfigError(f"decode_tokens: {self.decode_tokens} must be in [0, {MAX_DECODE_TOKENS}] (0: no per-token curve)")
        if self.n_clips < 1:
            raise ConfigError(f"n_clips: {self.n_clips} must be >= 1")
        for key, ok, what in (("cell_timeout_s (--timeout)", self.cell_timeout_s > 0, "> 0 seconds"),
                              ("energy_idle_s", self.energy_idle_s >= 0, ">= 0 seconds"),
                              ("max_batch", self.max_batch >= 1, ">= 1"),
                              ("memory_budget_gib", self.memory_budget_gib >= 0, ">= 0 GiB (0: no budget)"),
                              ("min_speech_share", 0 <= self.min_speech_share <= 1, "a share in [0, 1], e.g. 0.9")):
            if not ok:
                raise ConfigError(f"{key}: {getattr(self, key.split(' ')[0])!r} must be {what}")
        t = self.timing
        if t.warmup_calls < 0 or t.min_calls < 1 or t.max_calls < t.min_calls:
            raise ConfigError("timing: need warmup_calls >= 0, min_calls >= 1 and max_calls >= min_calls")
        return self

    def _validate_executor(self) -> None:
        _choice("executor (--executor)", self.executor, EXECUTORS)
        if self.executor != "ray":
            if self.ray_address:
                raise ConfigError(f"ray_address (--ray-address) = '{self.ray_address}' needs executor = 'ray'; "
                                  "add --executor ray or remove the address")
            return
        if not self.isolate:
            raise ConfigError("isolate = false with executor = 'ray': each Ray cell runs in its own worker "
                              "process; remove isolate = false (--no-isolate) or use executor 'local'")
        for d in self.devices:
            if d.startswith("cuda:") and d != "cuda:0":
                raise ConfigError(f"devices: '{d}' with executor = 'ray': Ray gives each CUDA cell one GPU of its "
                                  "choice (seen as cuda:0 in the cell); use 'cuda'")

    def _validate_streaming(self) -> None:
        from asrperf.engines.capabilities import streaming_policy
        from asrperf.engines.catalog import CATALOG

        if not self.chunk_ms:
            raise ConfigError("chunk_ms: give at least one chunk size, e.g. [500, 1000]")
        for c in self.chunk_ms:
            if isinstance(c, bool) or not isinstance(c, int) or not 10 <= c <= MAX_CHUNK_MS:
                raise ConfigError(f"chunk_ms: {c!r} must be whole milliseconds in [10, {MAX_CHUNK_MS}]")
        if not isinstance(self.streaming, StreamingConfig):
            raise ConfigError("streaming: must be a [streaming] table")
        self.streaming.validate()
        for m in self.models:
            family = CATALOG[m.name].family if m.name in CATALOG else ""
            if family:
                if streaming_policy(m.engine, family) == "local_agreement" and self.streaming.endpoint == "vad":
                    _check_vad()
            elif not declaration(m.engine).streaming_policies:
                streaming_policy(m.engine, "")  # the engine streams nothing: its one-line reason

    def _validate_server(self) -> None:
        if not isinstance(self.server, ServerConfig):
            raise ConfigError("server: must be a [server] table")
        self.server.validate()
        if self.server.worst_case_s() >= self.cell_timeout_s:
            raise ConfigError(f"[server]: the load plan may take {self.server.worst_case_s():g} s per cell "
                              f"((probes) x (probe_duration_s + 2 x timeout_s)), not below cell_timeout_s "
                              f"({self.cell_timeout_s:g} s); shorten the probes or raise cell_timeout_s (--timeout)")
        for m in self.models:
            if m.cuda_graphs:
                raise ConfigError(f"{m.name}: cuda_graphs = true with scenario 'server': asrperf serve does not "
                                  "take --cuda-graphs; drop it for the server cells")

    @property
    def scores_accuracy(self) -> bool:
        """Loop-mode clips repeat audio to fill the length: they have no exact reference to score."""
        return self.accuracy and self.clip_mode in ("exact", "continuous")

    def identity(self) -> str:
        """Short hash of everything that changes results, asrperf's version included (an upgrade
        measures afresh instead of resuming); the store/cache paths do not count."""
        from asrperf import __version__

        d = dataclasses.asdict(self)
        d.pop("store"), d.pop("cache_dir"), d.pop("isolate"), d.pop("cell_timeout_s")
        d.pop("min_speech_share")  # a check on the clips, not a change to them
        d.pop("executor"), d.pop("ray_address")  # where cells run: a run started locally finishes on Ray
        if "decode" not in self.scenarios:  # only the decode scenario reads it: other runs keep their ids
            d.pop("decode_tokens")
        if "streaming" not in self.scenarios:  # only the streaming scenario reads these
            d.pop("chunk_ms"), d.pop("streaming")
        if "server" not in self.scenarios:  # only the server scenario reads it: other runs keep their ids
            d.pop("server")
        for m in d["models"]:  # baseline options are left out: runs from before they existed keep their ids
            for key, base in dataclasses.asdict(VariantOptions()).items():
                if m[key] == base:
                    m.pop(key)
        d["asrperf_version"] = __version__
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_vad() -> None:
    """streaming.endpoint = 'vad' runs faster-whisper's silero VAD: found without importing it."""
    import importlib.util

    if importlib.util.find_spec("faster_whisper") is None:
        raise ConfigError("streaming.endpoint = 'vad': `faster-whisper` (silero VAD) is needed: "
                          "pip install 'asrperf[ct2]', or set streaming.endpoint = \"none\"")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}")


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
               dict: "a table"}


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` checked against a field's type (bool is not a number, 1.5 is not an int); a scalar
    given for a tuple field becomes a one-element tuple."""
    if typing.get_origin(hint) is tuple:
        kind = typing.get_args(hint)[0]
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_typed(v, kind, where) for v in values)
    kind = typing.get_origin(hint) or hint
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in _KIND_NAMES and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: {value!r} is not {_KIND_NAMES[kind]}")
    return value


def _check_types(table: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """The table's values checked against the dataclass `cls`'s field types, naming the key."""
    hints = typing.get_type_hints(cls)
    return {k: _typed(v, hints[k], f"{where} {k}") if k in hints else v for k, v in table.items()}


def config_from_dict(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a validated RunConfig from a TOML-shaped dict: [run], [source], [timing], [[models]]."""
    check_keys(data, {"run", "source", "timing", "models", "streaming", "server"}, where)
    for section in ("run", "source", "timing", "streaming", "server"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{where}: '{section}' must be a table ([{section}])")
    if not isinstance(data.get("models", []), list):
        raise ConfigError(f"{where}: 'models' must be a list of tables ([[models]])")
    run = dict(data.get("run", {}))
    check_keys(run, _fields(RunConfig) - {"models", "source", "timing", "streaming", "server"}, f"{where} [run]")
    run = _check_types(run, RunConfig, f"{where} [run]")
    timing = data.get("timing", {})
    check_keys(timing, _fields(TimingConfig), f"{where} [timing]")
    timing = _check_types(timing, TimingConfig, f"{where} [timing]")
    models = []
    for i, m in enumerate(data.get("models", [])):
        if isinstance(m, str):
            m = {"name": m}
        if not isinstance(m, dict):
            raise ConfigError(f"{where} [[models]] #{i + 1}: {m!r} is not a table or a model name")
        check_keys(m, _fields(ModelConfig), f"{where} [[models]] #{i + 1}")
        if "name" not in m:
            raise ConfigError(f"{where} [[models]] #{i + 1}: 'name' is required")
        models.append(ModelConfig(**_check_types(m, ModelConfig, f"{where} [[models]] #{i + 1}")))
    source = dict(data.get("source", {"kind": "builtin"}))
    streaming = data.get("streaming", {})
    check_keys(streaming, _fields(StreamingConfig), f"{where} [streaming]")
    streaming = _check_types(streaming, StreamingConfig, f"{where} [streaming]")
    server = data.get("server", {})
    check_keys(server, _fields(ServerConfig), f"{where} [server]")
    server = _check_types(server, ServerConfig, f"{where} [server]")
    try:
        cfg = RunConfig(models=tuple(models), source=source, timing=TimingConfig(**timing),
                        streaming=StreamingConfig(**streaming), server=ServerConfig(**server), **run)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return cfg.validate()


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML run description."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    return config_from_dict(data, where=str(path))


def default_config_dict() -> dict[str, Any]:
    """The embedded default: real tiny.en plus random-weight architectures, built-in TTS corpus, CPU."""
    return {
        "source": {"kind": "builtin"},
        "models": [
            {"name": "whisper-tiny.en", "weights": "real"},
            {"name": "whisper-tiny", "weights": "random"},
            {"name": "whisper-base", "weights": "random"},
            {"name": "whisper-small", "weights": "random"},
            {"name": "wav2vec2-base", "weights": "random"},
        ],
    }


def dump_config(cfg: RunConfig) -> str:
    """TOML text that `load_config` reads back to an equal RunConfig."""
    import tomli_w

    d = cfg.to_dict()
    models = d.pop("models")
    source = d.pop("source")
    timing = d.pop("timing")
    streaming = d.pop("streaming")
    server = d.pop("server")
    return tomli_w.dumps({"run": d, "source": source, "timing": timing, "streaming": streaming, "server": server,
                          "models": models})
