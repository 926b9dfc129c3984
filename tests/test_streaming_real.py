"""The streaming scenario on real models: real tiny.en on the built-in corpus through the runner
(streamed WER against offline, finalization latency), transformers' Whisper word timestamps, and a
random-weight CTC model streamed in chunks with a real-time capacity search."""

import numpy as np
import pytest

from asrperf.config import StreamingConfig, TimingConfig
from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import ClipCache
from asrperf.engines.base import ModelSpec, StreamingUnsupported
from asrperf.engines.catalog import _w2v2, resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.run.runner import prepare
from asrperf.scenarios.base import CellContext, Meters, ScenarioSettings
from asrperf.scenarios.stream_endpoint import Endpointer, SileroVad
from asrperf.scenarios.streaming import StreamingScenario


def _clips(cache_dir, tiny_source, length_s: float, n: int) -> list:
    """The clips the runner measures for `length_s` (the same config, so the same cache entry)."""
    from asrperf.config import config_from_dict

    cfg = config_from_dict({"source": tiny_source, "models": ["whisper-tiny.en"],
                            "run": {"clip_lengths_s": [length_s], "n_clips": n, "cache_dir": str(cache_dir)}})
    return ClipCache(cache_dir).load(prepare(cfg)[float(length_s)], n)


@pytest.mark.parametrize("endpoint, window", [("none", "full"), ("vad", "full"), ("none", "buffer")])
def test_real_tiny_en_streams_within_3_wer_points_of_offline_with_bounded_finalization(run_rows, cache_dir,
                                                                                      tiny_source, endpoint, window):
    chunk_s = 1.0
    extra = {} if endpoint == "none" else {"endpoint": endpoint}  # "none" is the default
    if window != "full":  # the encoder reads the buffer + 1 s, not 30 s
        extra["encoder_window"] = window
    (row,) = run_rows([{"name": "whisper-tiny.en", "engine": "ct2", "dtype": "int8"}], lengths=[15], n_clips=2,
                      scenarios=["streaming"], chunk_ms=[1000], streaming={"capacity": False, **extra})
    assert row["scenario"] == "streaming" and row["chunk_ms"] == 1000 and row["cell_key"].endswith("|chunk=1000ms")
    assert row["stream_policy"] == "local_agreement" and row["stream_clock"] == "simulated"
    assert row["wer"] is not None and row["offline_wer"] is not None
    assert row["stream_wer_delta"] == pytest.approx(row["wer"] - row["offline_wer"])
    assert abs(row["stream_wer_delta"]) <= 0.03, (row["transcripts"], row["offline_transcripts"])
    assert row["stream_wer_delta_paired"] is True
    assert row["finalization_method"] == "aligned" and row["finalization_missing"] == 0
    assert row["emission_delay_reference"].startswith("offline word timestamps of engine ct2")
    assert row["emission_delay_n"] > 0.8 * row["ref_words"]
    utterances = {c.id: c.utterance_bounds for c in _clips(cache_dir, tiny_source, 15, 2)}
    for sample in row["stream_samples"]:
        fields = sample["update_fields"]
        compute = max(u[fields.index("compute_s")] for u in sample["updates"])
        # the utterance's last chunk arrives within a chunk of its end, waits at most for the update before
        # it, is computed, and one more update (a chunk or a compute later, whichever is longer) agrees on it
        bound = chunk_s + compute + compute + max(chunk_s, compute) + compute
        fin = sample["finalization_s"]
        assert len(fin) == len(utterances[sample["clip"]]) and min(fin) > 0, fin
        assert float(np.median(fin)) <= bound, (fin, bound)
    assert row["capacity_missing_reason"] == "streaming.capacity = false"
    assert row["stream_endpoint"] == endpoint
    assert row["stream_policy_settings"]["encoder_window"] == window
    assert ("encoder window: the buffer + 1 s" in row["stream_policy_label"]) == (window == "buffer")
    if endpoint == "none":
        assert "no endpoint" in row["stream_policy_label"] and "stream_n_endpoints" not in row
        return
    # silero VAD, fired at the pauses between sentences
    assert row["stream_policy_settings"]["endpoint_silence_ms"] == 100
    assert row["stream_policy_label"].endswith("silero VAD endpoint after 100 ms of silence")
    assert row["stream_n_endpoints"] >= len(utterances["15s-000"]) // 2, row["stream_n_endpoints"]


@pytest.fixture(scope="module")
def clips_5s(cache_dir, tiny_source):
    return _clips(cache_dir, tiny_source, 5, 1)


def test_silero_hears_the_end_of_the_first_sentence_in_the_recent_audio_only(clips_5s):
    clip = clips_5s[0]
    (_, first_end), (second_start, _) = clip.utterance_bounds_s[:2]
    endpointer = Endpointer(SileroVad(), 0.1)
    endpointer.seen_s = first_end - 1.0  # the previous update's audio end
    heard = endpointer.look(clip.audio[: int((first_end + 0.5) * SAMPLE_RATE)], SAMPLE_RATE, 0.0)
    assert heard.from_s == pytest.approx(first_end - 1.6)  # a second of new audio and 0.6 s before it
    # the speech ends within the 0.15 s of trailing silence the corpus keeps (less one 32 ms frame)
    assert heard.speech and first_end - 0.2 < heard.speech_end_s < first_end, (heard, first_end)
    # mid-sentence there is no end to report
    endpointer.seen_s = 0.5
    mid = endpointer.look(clip.audio[: int(1.5 * SAMPLE_RATE)], SAMPLE_RATE, 0.0)
    assert mid.speech and mid.speech_end_s is None, mid


def test_transformers_whisper_gives_word_timestamps_on_its_own_decode(cache_dir, clips_5s):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    clip = clips_5s[0]
    words = engine.transcribe_words(clip.audio, SAMPLE_RATE)
    assert " ".join(w.text for w in words) == engine.transcribe([clip.audio], SAMPLE_RATE).texts[0]
    starts, ends = [w.start_s for w in words], [w.end_s for w in words]
    assert starts == sorted(starts) and all(s <= e for s, e in zip(starts, ends))
    # the second utterance's last word ends within 0.3 s of where its audio ends (DTW on 20 ms frames)
    assert abs(ends[-1] - clip.utterance_bounds_s[1][1]) < 0.3, words
    assert not getattr(engine.model.generation_config, "return_token_timestamps", False)  # not left switched on
    # the prompt is text before the buffer: the decode continues after it
    second = clip.utterance_bounds[1][0]
    first, then = clip.utterance_texts[0], clip.utterance_texts[1].split()
    after = engine.transcribe_words(clip.audio[second:], SAMPLE_RATE, prompt=first)
    assert after and after[0].text.lower().startswith(then[0].lower()), (after, then)
    assert first.split()[1] not in [w.text for w in after], after  # the prompt's words are not decoded again


def test_random_ctc_model_streams_in_chunks_with_a_realtime_capacity_search(cache_dir, clips_5s):
    engine = TransformersEngine(cache_dir)
    engine.load(ModelSpec("mini-wav2vec2", "ctc", "", _w2v2(32, 1, 2, large=False)), "random", "fp32", "cpu")
    with pytest.raises(StreamingUnsupported, match="gives no word timestamps"):
        engine.transcribe_words(clips_5s[0].audio, SAMPLE_RATE)
    for chunk_ms in (160, 1000):
        # the capacity search (one wall-clock probe: max_streams 1) in the 1000 ms cell only
        streaming = StreamingConfig(left_context_ms=500, right_context_ms=100, capacity=chunk_ms == 1000, max_streams=1)
        settings = ScenarioSettings(energy=False, energy_idle_s=0.0, flops=False, max_batch=1, memory_budget_bytes=None,
                                    trace_dir="", decode_tokens=0, decode_curve_length_s=5.0, streaming=streaming,
                                    capacity_length_s=5.0)
        ctx = CellContext(engine=engine, clips=clips_5s, device="cpu", dtype="fp32", clip_length_s=5.0, batch_size=1,
                          timing=TimingConfig(), score=False, score_missing_reason="random weights",
                          settings=settings, trace_name="t", meters=Meters(), chunk_ms=chunk_ms)
        row = StreamingScenario().run(ctx)
        assert row["stream_policy"] == "chunked" and row["stream_policy_label"].startswith("chunked (CTC frames")
        assert row["stream_policy_settings"]["frame_s"] == 0.02
        assert row["finalization_method"] == "frontier" and row["finalization_n"] == 2
        # text is final once the chunk holding the utterance's end and the right context are processed
        sample = row["stream_samples"][0]
        compute = max(u[4] for u in sample["updates"])
        assert all(0 < f <= chunk_ms / 1000 + 0.1 + 2 * compute + 0.02 for f in sample["finalization_s"]), sample
        assert row["revised_word_share"] == 0.0  # chunked CTC only appends
        assert "wer" not in row and row["emission_delay_missing_reason"] == "no reference timing: random weights"
        if chunk_ms == 160:
            assert row["capacity_missing_reason"] == "streaming.capacity = false"
            continue
        assert row["capacity_workers"] == "threads" and [p["streams"] for p in row["capacity_probes"]] == [1]
        probe = row["capacity_probes"][0]
        assert row["capacity_streams"] == int(probe["kept_up"])
        assert ("max_streams (1) kept up" in row["capacity_stop_reason"]) == probe["kept_up"]
