"""openai-whisper, the semantic reference: real tiny.en scores what the transformers engine scores."""

import pytest

pytest.importorskip("whisper", reason="engine openai-whisper needs pip install 'asrperf[openai-whisper]'")

from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.registry import create
from asrperf.errors import ModelError
from asrperf.measure.wer import error_rates

# Both run OpenAI's tiny.en weights with greedy, temperature-0, no-fallback decoding and the same
# long-form algorithm; they differ in float summation order (two torch implementations of the same
# graph) and in how each slides its window at a boundary. Over the ~180 words of these clips one
# word is ~0.6 points: 1.5 points allows two words to differ.
WER_TOLERANCE_POINTS = 1.5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(builtin_clips):
    return builtin_clips(5.0, 2) + builtin_clips(60.0)


def _wer(engine_name: str, cache_dir, clips) -> tuple[float, list[str], dict]:
    engine = create(engine_name, cache_dir)
    engine.load(resolve("whisper-tiny.en"), "auto", "fp32", "cpu")
    texts = [engine.transcribe([c.audio], SAMPLE_RATE).texts[0] for c in clips]
    return error_rates([c.text for c in clips], texts).wer, texts, engine.info()


def test_openai_whisper_scores_what_transformers_scores(cache_dir, clips):
    ours, texts, info = _wer("openai-whisper", cache_dir, clips)
    theirs, hf_texts, _ = _wer("transformers", cache_dir, clips)
    assert ours < 0.15, texts
    assert abs(ours - theirs) * 100 <= WER_TOLERANCE_POINTS, (ours, theirs, texts, hf_texts)
    assert info["weights"] == "real" and info["timestamps"] is True  # the 60 s clip ran last, long-form
    assert "condition_on_previous_text=False" in info["decoding"]
    assert info["openai_checkpoint"].endswith("model.pt")


def test_reference_refuses_what_it_cannot_be_a_reference_for(cache_dir):
    engine = create("openai-whisper", cache_dir)
    with pytest.raises(ModelError, match="real weights only"):
        engine.load(resolve("whisper-tiny"), "random", "fp32", "cpu")
    with pytest.raises(ModelError, match="fp16 on CUDA"):
        engine.load(resolve("whisper-tiny.en"), "auto", "fp16", "cpu")
    with pytest.raises(ModelError, match="no local checkpoint"):
        engine.load(resolve("whisper-small"), "auto", "fp32", "cpu")
