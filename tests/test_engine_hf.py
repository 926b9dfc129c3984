"""The transformers engine on real audio: real tiny.en weights (offline), random architectures."""

import numpy as np
import pytest

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.errors import ModelError
from asrperf.measure.wer import error_rates, normalize

# real tiny.en on the first 5 s clip (two Harvard sentences, 16 words): 4 word errors
# ("birch canoe slid" -> "birch can use lid", "parked" -> "park"); more means a broken pipeline
SHORT_CLIP_MAX_WER = 0.3


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return {length: builtin_clips(length) for length in (5.0, 60.0)}


@pytest.fixture(scope="module")
def tiny_en(cache_dir, device):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "auto", "fp32", device)
    return engine


def test_real_weights_are_found_offline(tiny_en):
    info = tiny_en.info()
    assert info["weights"] == "real"
    assert info["n_params"] == 37_760_256  # published whisper-tiny.en parameter count (tied output)


def test_short_clip_is_transcribed(tiny_en, clips):
    clip = clips[5.0][0]
    out = tiny_en.transcribe([clip.audio], SAMPLE_RATE)
    assert error_rates([clip.text], out.texts).wer <= SHORT_CLIP_MAX_WER, (clip.text, out.texts)
    assert out.tokens[0] > 5


def test_60_s_clip_is_fully_transcribed_not_truncated_at_30_s(tiny_en, clips):
    clip = clips[60.0][0]
    assert clip.speech_s > 50
    out = tiny_en.transcribe([clip.audio], SAMPLE_RATE)
    er = error_rates([clip.text], out.texts)
    # a 30 s truncation would delete about half the words: WER ~50%
    assert er.wer < 0.15, out.texts[0]
    last_words = normalize(clip.text).split()[-6:]
    assert " ".join(last_words[-3:]) in normalize(out.texts[0]), "the end of the clip is missing"
    assert "sequential" in tiny_en.info()["longform"]


def test_local_checkpoint_directory_loads_real_weights(tiny_en, clips, device):
    path = tiny_en.info()["weights_source"]
    spec = resolve(path)
    assert spec.family == "whisper"
    engine = TransformersEngine(tiny_en.cache_dir)
    engine.load(spec, "real", "fp32", device)
    assert engine.info()["weights"] == "real"
    clip = clips[5.0][0]
    assert engine.transcribe([clip.audio], SAMPLE_RATE).texts == tiny_en.transcribe([clip.audio], SAMPLE_RATE).texts


def test_random_whisper_decodes_a_fixed_token_count_per_window(cache_dir, device):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny"), "random", "fp32", device)
    audio = np.random.default_rng(0).normal(0, 0.1, 45 * SAMPLE_RATE).astype(np.float32)
    out = engine.transcribe([audio, audio], SAMPLE_RATE)
    # 45 s = a full 30 s window (90 tokens) + 15 s (45 tokens), for each of the two clips
    assert out.tokens == [135, 135]
    info = engine.info()
    assert info["weights"] == "random" and "fixed 3/audio-s" in info["tokens_policy"]


def test_random_ctc_model_runs_the_full_path(cache_dir, device):
    engine = TransformersEngine(cache_dir)
    engine.load(resolve("wav2vec2-base"), "random", "fp32", device)
    audio = np.random.default_rng(0).normal(0, 0.1, 2 * SAMPLE_RATE).astype(np.float32)
    out = engine.transcribe([audio], SAMPLE_RATE)
    assert len(out.texts) == 1 and isinstance(out.texts[0], str)
    assert engine.info()["n_params"] == 94_396_320  # wav2vec2-base-960h


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelError, match="unknown model 'whisper-tyni'; known: whisper-tiny.en"):
        resolve("whisper-tyni")


def test_random_weights_need_a_catalog_architecture(cache_dir, tmp_path):
    engine = TransformersEngine(cache_dir)
    with pytest.raises(ModelError, match="no catalog architecture"):
        engine.load(resolve("someone/some-model"), "random", "fp32", "cpu")


def test_random_whisper_ties_its_lm_head_like_the_real_checkpoint(cache_dir, tiny_en):
    """Random weights must cost the memory real ones do: the LM head is the token embedding."""
    random = TransformersEngine(cache_dir)
    random.load(resolve("whisper-tiny"), "random", "fp32", "cpu")
    m = random.model
    assert m.proj_out.weight.data_ptr() == m.model.decoder.embed_tokens.weight.data_ptr()
    n_random = sum(p.numel() for p in m.parameters())
    n_real = sum(p.numel() for p in tiny_en.model.parameters())
    assert abs(n_random - n_real) == 384  # one vocabulary row: tiny has 51,865 tokens, tiny.en 51,864
