"""The row sections of the built-in scenarios beyond latency: max throughput, profile, decode,
streaming, server (load probes) and dataset (whole-dataset evaluation). Each registers itself with
the schema (results/schema.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from asrperf.results.schema import Section, doc, register_section


@dataclass(frozen=True)
class MaxThroughput(Section):
    name: ClassVar[str] = "max_throughput"

    max_throughput_samples_per_s: float | None = doc("best clips per second over the batch-size search")
    max_throughput_batch_size: int | None = doc("the batch that reached it")
    max_throughput_latency_s_p50: float | None = doc("median seconds per call at that batch")
    max_throughput_peak_memory_bytes: int | None = doc("peak device memory at that batch")
    max_throughput_stop_reason: str | None = doc("why the search stopped: oom, memory_budget, plateau, max_batch")
    max_throughput_probes: list | None = doc("every batch size tried, with its figures")


@dataclass(frozen=True)
class Profile(Section):
    name: ClassVar[str] = "profile"

    op_categories: list | None = doc("[{category, self_ms per call, share}]")
    op_timeline: str | None = doc("device or cpu: the timeline self times come from")
    uncategorised_ops: list | None = doc("[{name, self_ms}] of 'other'")
    stages: list | None = doc("[{stage, ms per call, share, nested}]")
    profiled_calls: int | None = doc("calls recorded by the profiler")
    profiled_latency_s: float | None = doc("mean seconds per profiled call")
    profiled_latencies_s: list | None = doc("seconds of each profiled call")
    trace_path: str | None = doc("gzipped Chrome trace")
    profile_missing_reason: str | None = doc("why there is no profile")
    roofline: list | None = doc("per stage: FLOPs, bytes, achieved vs peaks, bound")
    roofline_missing_reason: str | None = doc("why there is no roofline")
    roofline_calls_s: list | None = doc("seconds of the unprofiled roofline calls")
    roofline_bytes_method: str | None = doc("how bytes were counted")
    roofline_time_method: str | None = doc("how stage times were measured")
    roofline_overhead_factor: float | None = doc("time over the bound above which a stage is overhead-bound")


@dataclass(frozen=True)
class Decode(Section):
    name: ClassVar[str] = "decode"

    autoregressive_decoder: bool | None = doc("the model has an autoregressive decoder (None: unknown)")
    decode_missing_reason: str | None = doc("why the decoder could not be measured")
    decode_share: float | None = doc("decode seconds / call seconds")
    decode_s_per_call: float | None = doc("decode seconds per call")
    call_s_per_call: float | None = doc("call seconds per call")
    tokens_per_s: float | None = doc("decoder steps x batch / decode seconds")
    first_token_ms: float | None = doc("call start to the end of the first decoder step, ms")
    decoder_steps_per_call: float | None = doc("decoder steps per call")
    encoder_forwards_per_call: float | None = doc("encoder forwards per call")
    decode_calls: int | None = doc("calls measured")
    decode_share_method: str | None = doc("how the share was measured")
    decode_curve: list | None = doc("[{position, ms, kv_cache, decoding}]")
    decode_curve_summary: list | None = doc("per setting: tokens, tokens/s, ms per token")
    decode_curve_tokens: int | None = doc("tokens in the curve")
    decode_curve_repeats: int | None = doc("repeats per setting")
    decode_curve_method: str | None = doc("how the curve was measured")
    decode_curve_missing_reason: str | None = doc("why there is no curve")


@dataclass(frozen=True)
class Streaming(Section):
    """A streaming cell: clips fed in chunks of `chunk_ms` (identity) to the engine's streaming policy.
    Definitions in measure/streaming.py and the README's "Streaming metrics"."""

    name: ClassVar[str] = "streaming"
    enums: ClassVar[dict[str, tuple[str, ...]]] = {
        "stream_policy": ("local_agreement", "chunked"), "stream_clock": ("simulated", "realtime"),
        "stream_endpoint": ("vad", "none"),
        "finalization_method": ("frontier", "aligned", "none")}

    stream_policy: str | None = doc("the policy the engine declares for the model: local_agreement or chunked")
    stream_policy_label: str | None = doc("the policy in words, e.g. chunked (transducer frames, not cache-aware)")
    stream_policy_settings: dict | None = doc("the policy's settings (agreement, trim_s, prompt_chars, endpoint; contexts)")
    stream_endpoint: str | None = doc("local_agreement: vad (commit at the end of speech, silero VAD) or none "
                                      "(pure LocalAgreement); absent where it does not apply (chunked)")
    stream_n_endpoints: int | None = doc("endpoint vad: updates that committed at an end of speech, all streams")
    stream_n_skipped_updates: int | None = doc("endpoint vad: updates not decoded (no speech in the buffer), all streams")
    stream_clock: str | None = doc("simulated (compute-aware, no sleeping) or realtime (wall clock)")
    stream_n_streams: int | None = doc("clips streamed, one stream each")
    stream_n_updates: int | None = doc("policy updates over all streams")
    stream_n_chunks: int | None = doc("chunks over all streams")
    first_partial_s_p50: float | None = doc("start of speech to the first shown word, median over streams, s")
    first_partial_s_max: float | None = doc("start of speech to the first shown word, slowest stream, s")
    finalization_s_mean: float | None = doc("end of an utterance to its text final, mean over utterances, s")
    finalization_s_p50: float | None = doc("end of an utterance to its text final, median, s")
    finalization_s_p90: float | None = doc("end of an utterance to its text final, p90, s")
    finalization_s_p99: float | None = doc("end of an utterance to its text final, p99, s")
    finalization_s_max: float | None = doc("end of an utterance to its text final, max, s")
    finalization_n: int | None = doc("utterances with a finalization time")
    finalization_missing: int | None = doc("utterances with no final word aligned to them (all deleted)")
    finalization_method: str | None = doc("frontier (finalised audio passed the end) or aligned (last aligned word committed)")
    finalization_missing_reason: str | None = doc("why there is no finalization latency")
    emission_delay_s_p50: float | None = doc("commit time minus the word's reference end, median over words, s")
    emission_delay_s_p90: float | None = doc("commit time minus the word's reference end, p90, s")
    emission_delay_s_p99: float | None = doc("commit time minus the word's reference end, p99, s")
    emission_delay_n: int | None = doc("words with an emission delay")
    emission_delay_reference: str | None = doc("where the reference word end times come from")
    emission_delay_missing_reason: str | None = doc("why there is no word emission delay")
    chunk_rtf_p50: float | None = doc("compute s of a chunk's update / audio s it took, median over chunks")
    chunk_rtf_p99: float | None = doc("per-chunk compute RTF, p99")
    deadline_miss_share: float | None = doc("share of chunks whose update finished after the next chunk arrived")
    keeps_up: bool | None = doc("deadline_miss_share within streaming.max_miss_share: the stream keeps up in real time")
    revised_word_share: float | None = doc("share of shown (position, word) pairs the final transcript changed")
    shown_words: int | None = doc("distinct (position, word) pairs shown over all updates")
    offline_wer: float | None = doc("WER of the same engine transcribing the same clips whole (offline)")
    stream_wer_delta: float | None = doc("streamed WER minus offline WER (0.01 = one point)")
    stream_wer_delta_ci_low: float | None = doc("paired bootstrap 95% CI of the delta, low")
    stream_wer_delta_ci_high: float | None = doc("paired bootstrap 95% CI of the delta, high")
    stream_wer_delta_paired: bool | None = doc("the delta was paired by clip")
    stream_wer_n_worse: int | None = doc("clips whose streamed transcript has more word errors than offline")
    offline_transcripts: list | None = doc("[{clip, ref, hyp}] of the offline pass")
    stream_samples: list | None = doc("per stream: clip, first partial, finalization and emission samples, every update")
    capacity_streams: int | None = doc("most concurrent real-time streams that kept up (0: not even one)")
    capacity_finalization_s_p90: float | None = doc("p90 finalization latency at capacity_streams, s")
    capacity_deadline_miss_share: float | None = doc("deadline-miss share at capacity_streams")
    capacity_chunk_rtf_p50: float | None = doc("median per-chunk compute RTF at capacity_streams")
    capacity_workers: str | None = doc("threads (streams share one engine) or processes (one engine per stream)")
    capacity_threads: int | None = doc("CPU threads per stream's engine (processes) or of the shared engine (threads)")
    capacity_stop_reason: str | None = doc("why the search stopped: a probe missed the bounds, or max_streams")
    capacity_max_miss_share: float | None = doc("bound: a stream count keeps up while at most this share of chunks miss")
    capacity_max_finalization_p90_s: float | None = doc("bound: ... and its p90 finalization is within this, s")
    capacity_probes: list | None = doc("every stream count tried: its miss share, p90 finalization, verdict")
    capacity_missing_reason: str | None = doc("why the capacity was not searched in this cell")


@dataclass(frozen=True)
class Server(Section):
    """A load probe against a server (asrperf load: one row per probe, one per result), or a server
    scenario cell (asrperf run: one row per cell, its answer probe's figures, every probe inside)."""

    name: ClassVar[str] = "server"

    target_url: str | None = doc("the endpoint measured")
    mode: str | None = doc("single, search or sweep")
    server: str | None = doc("asrperf (its own server, facts from /health) or external")
    server_model: str | None = doc("the model the server reports")
    max_batch_size: int | None = doc("the server's dynamic batcher: largest batch")
    max_wait_ms: float | None = doc("the batcher's longest wait for a fuller batch, ms")
    max_queue: int | None = doc("the server's bounded queue (429 past it)")
    engine_info: dict | None = doc("the server engine's provenance (from /health)")
    source: dict | None = doc("where the clips came from")
    clip_key: str | None = doc("the clip cache key of the clips sent")
    clip_mode: str | None = doc("exact or loop clips")
    source_kind: str | None = doc("the clip source kind")
    probe_role: str | None = doc("synchronous, saturation, probe, sweep or result")
    probe_index: int | None = doc("the probe's order in its search or sweep")
    arrival: str | None = doc("the arrival pattern as given, e.g. poisson:2")
    arrival_kind: str | None = doc("constant, poisson, gamma, concurrency or streams")
    open_loop: bool | None = doc("arrivals follow a schedule (true) or wait for answers (closed loop)")
    burstiness: float | None = doc("gamma shape: 1 is Poisson, below 1 burstier")
    clients: int | None = doc("closed-loop clients or live streams")
    seed: int | None = doc("the arrival schedule's seed")
    max_requests: int | None = doc("bound on requests sent")
    duration_limit_s: float | None = doc("bound on the probe's duration")
    timeout_s: float | None = doc("per-request timeout")
    warmup_s: float | None = doc("requests scheduled in this first window are not measured")
    max_in_flight: int | None = doc("bound on requests in flight")
    started_at: float | None = doc("wall-clock start of the probe (unix seconds)")
    n_requests: int | None = doc("measured requests")
    n_warmup_requests: int | None = doc("warm-up requests, not measured")
    n_ok: int | None = doc("answered with a transcript")
    n_errors: int | None = doc("every measured request that failed")
    n_rejected: int | None = doc("answered 429 (queue full)")
    n_client_errors: int | None = doc("answered 4xx other than 429")
    n_server_errors: int | None = doc("answered 5xx")
    n_timeouts: int | None = doc("no answer within timeout_s")
    n_connection_errors: int | None = doc("connection failed")
    first_error: str | None = doc("the first failure, one line")
    window_s: float | None = doc("first scheduled send to the last answer, seconds")
    offered_rate_rps: float | None = doc("requests per second the pattern offered")
    scheduled_rate_rps: float | None = doc("requests per second actually scheduled in the window")
    achieved_rate_rps: float | None = doc("answered requests per second")
    completion_rate_rps: float | None = doc("steady-state answers per second, between the first and last answer of the loaded window")
    audio_s_per_s: float | None = doc("audio seconds answered per second (RTFx under load)")
    audio_s_mean: float | None = doc("mean audio seconds per request")
    latency_per_audio_s_mean: float | None = doc("end-to-end seconds per audio second, mean")
    latency_per_audio_s_p50: float | None = doc("end-to-end seconds per audio second, median")
    latency_per_audio_s_p90: float | None = doc("end-to-end seconds per audio second, p90")
    latency_per_audio_s_p99: float | None = doc("end-to-end seconds per audio second, p99")
    latency_per_audio_s_max: float | None = doc("end-to-end seconds per audio second, max")
    latency_from_sent_s_p50: float | None = doc("latency from the actual send (coordinated omission shows here), p50")
    latency_from_sent_s_p99: float | None = doc("latency from the actual send, p99")
    latency_from_sent_s_max: float | None = doc("latency from the actual send, max")
    queue_s_mean: float | None = doc("server queue seconds (its header), mean")
    queue_s_p50: float | None = doc("server queue seconds, median")
    queue_s_p90: float | None = doc("server queue seconds, p90")
    queue_s_p99: float | None = doc("server queue seconds, p99")
    queue_s_max: float | None = doc("server queue seconds, max")
    dispatch_s_mean: float | None = doc("server scheduling delay, mean")
    dispatch_s_p50: float | None = doc("server scheduling delay, median")
    dispatch_s_p99: float | None = doc("server scheduling delay, p99")
    compute_s_mean: float | None = doc("server compute seconds of the request's batch, mean")
    compute_s_p50: float | None = doc("server compute seconds, median")
    compute_s_p90: float | None = doc("server compute seconds, p90")
    compute_s_p99: float | None = doc("server compute seconds, p99")
    compute_s_max: float | None = doc("server compute seconds, max")
    decode_s_mean: float | None = doc("server audio decoding seconds, mean")
    decode_s_p50: float | None = doc("server audio decoding seconds, median")
    decode_s_p99: float | None = doc("server audio decoding seconds, p99")
    overhead_s_p50: float | None = doc("median end-to-end minus queue and compute: HTTP and client overhead")
    server_timing_headers: bool | None = doc("the server returned queue and compute headers")
    lateness_s_p50: float | None = doc("the generator's send lateness against its schedule, median")
    lateness_s_p99: float | None = doc("the generator's send lateness, p99")
    lateness_s_max: float | None = doc("the generator's send lateness, max")
    slot_wait_s_p99: float | None = doc("waits for an in-flight slot, p99")
    slot_wait_s_max: float | None = doc("waits for an in-flight slot, max")
    lateness_bound_s: float | None = doc("the lateness the generator is held to")
    lateness_ok: bool | None = doc("p99 lateness within lateness_bound_s")
    generator_policy: str | None = doc("the generator's scheduling priority: fifo (real-time, where permitted) or normal")
    server_nice: int | None = doc("the asrperf server's niceness (10 when asrperf started it beside its generator)")
    batch_size_mean: float | None = doc("batch sizes the server formed, mean")
    batch_size_p50: float | None = doc("batch sizes formed, median")
    batch_size_max: int | None = doc("largest batch formed")
    batch_size_counts: dict | None = doc("how many requests ran in each batch size")
    goodput_fraction: float | None = doc("share of requests meeting every SLO term")
    goodput_ci_low: float | None = doc("Wilson 95% CI, low")
    goodput_ci_high: float | None = doc("Wilson 95% CI, high")
    goodput_rps: float | None = doc("requests per second meeting every SLO term")
    slo: str | None = doc("the SLO as given")
    slo_verdict: str | None = doc("pass, fail or unresolved")
    slo_met: bool | None = doc("the SLO held (pass)")
    slo_terms: list | None = doc("each SLO term's value and verdict")
    wer_note: str | None = doc("how WER under load was scored")
    transcripts_consistent: bool | None = doc("the same clip got the same transcript every time")
    requests: list | None = doc("every request's record (times, outcome, transcript)")
    search_status: str | None = doc("how the search ended")
    max_sustainable_rate_rps: float | None = doc("the highest offered rate meeting the SLO")
    upper_rate_rps: float | None = doc("the lowest rate shown to miss it")
    resolved: bool | None = doc("the search reached its precision with resolved probes")
    precision_reached: bool | None = doc("the bracket is within the stated precision")
    precision: float | None = doc("the search's relative precision")
    sync_rate_rps: float | None = doc("the synchronous rate (one request at a time)")
    saturation_rate_rps: float | None = doc("the saturation throughput (closed loop)")
    n_probes: int | None = doc("probes run")
    note: str | None = doc("a sentence on the result")
    knee_rate_rps: float | None = doc("the sweep's knee: where latency starts to climb")
    server_setup: str | None = doc("server cell: batcher settings, load plan and SLO in one line (compare matches on it)")
    server_probes: list | None = doc("server cell: every probe's row (metrics and request records), in order")
    answer_probe_index: int | None = doc("server cell: the probe whose figures the row carries (max rate, knee or the probe)")
    # offline_wer / offline_transcripts (streaming section): server cells score the offline transcripts on the same requests as wer
    served_offline_match_share: float | None = doc("share of answered requests whose transcript equals the same engine's offline one")
    server_startup_s: float | None = doc("server cell: seconds from starting the server to it accepting requests (model load)")
    server_exit_code: int | None = doc("server cell: the server's exit code after SIGTERM (0: drained and stopped)")
    server_threads: int | None = doc("server cell: CPU threads the server's engine ran with")


@dataclass(frozen=True)
class Dataset(Section):
    """Whole-dataset evaluation (scenario dataset, asrperf eval): every utterance once, in length-sorted
    batches; definitions in scenarios/dataset.py. WER/CER and the transcripts are in the accuracy section."""

    name: ClassVar[str] = "dataset"
    enums: ClassVar[dict[str, tuple[str, ...]]] = {
        "padding_policy": ("fixed_window", "masked", "unmasked", "unknown"),
        "dataset_executor": ("local", "ray"), "dataset_batch_mode": ("given", "searched"),
        "utterance_order": ("length-descending",)}

    dataset_source: dict | None = doc("the source's provenance (kind, path, split, ...)")
    dataset_source_key: str | None = doc("the source's content key")
    n_utterances: int | None = doc("utterances transcribed (no-speech ones are skipped by the source)")
    utterance_order: str | None = doc("how utterances were ordered into batches: length-descending")
    audio_s_total: float | None = doc("seconds of audio over every utterance")
    utterance_s_min: float | None = doc("shortest utterance, s")
    utterance_s_max: float | None = doc("longest utterance, s")
    utterance_s_mean: float | None = doc("mean utterance length, s")
    dataset_n_batches: int | None = doc("batches transcribed")
    dataset_batch_mode: str | None = doc("given (the batch size asked for) or searched (the max-throughput search)")
    dataset_batch_stop_reason: str | None = doc("searched: why the search stopped (oom, memory_budget, plateau, max_batch)")
    dataset_batch_probes: list | None = doc("searched: every batch size tried on the longest utterances")
    transcribe_s_total: float | None = doc("sum of per-batch transcription seconds")
    dataset_rtfx: float | None = doc("sum of audio s / sum of per-batch transcription s (Open ASR Leaderboard)")
    dataset_rtfx_method: str | None = doc("the RTFx definition in words")
    dataset_wall_s: float | None = doc("wall seconds of the transcription (Ray: the whole job, actor start and loads included)")
    wall_rtfx: float | None = doc("sum of audio s / dataset_wall_s")
    padding_policy: str | None = doc("fixed_window, masked, unmasked (outputs depend on batch composition) or unknown")
    padding: str | None = doc("the padding policy in words")
    padding_changes_output: bool | None = doc("the padding check: the shortest utterance's transcript changed when padded")
    padding_check: str | None = doc("the padding check in words")
    worst_utterances: list | None = doc("[{clip, ref, hyp, word_edits, ref_words, wer}] with the most word edits")
    dataset_executor: str | None = doc("local (one process) or ray (Ray Data actor pool)")
    ray_actors: int | None = doc("Ray: actors in the pool (one engine each)")
    ray_address: str | None = doc("Ray: the cluster address given (local: started by the evaluation)")
    ray_resources_per_actor: dict | None = doc("Ray: what each actor asked for (GPU or CPU)")
    dataset_shards: list | None = doc("Ray: per actor: node, pid, batches, utterances, transcription s")


for _cls in (MaxThroughput, Profile, Decode, Streaming, Server, Dataset):
    register_section(_cls)
