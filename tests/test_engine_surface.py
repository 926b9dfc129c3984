"""Scenarios reach an engine only through what the engine base declares, and the transformers
engine's family adapters answer those calls (decoder step, forced-length decode, device)."""

import ast
from pathlib import Path

import numpy as np
import pytest

import asrperf.scenarios
from asrperf.config import TimingConfig
from asrperf.data.audio import SAMPLE_RATE
from asrperf.data.clips import Clip
from asrperf.engines import base
from asrperf.engines.base import ModelSpec
from asrperf.engines.catalog import _fastconformer, _parakeet_transducer, _w2v2, _whisper
from asrperf.engines.hf import TransformersEngine
from asrperf.errors import ModelError
from asrperf.scenarios.decode import run_decode

SCENARIO_DIR = Path(asrperf.scenarios.__file__).parent


# -- the static check -------------------------------------------------------------------------------

def _declared() -> set[str]:
    """Public names the base declares: class attributes, methods and what __init__ assigns to self."""
    names = {n for n in dir(base.Engine) if not n.startswith("_")}
    init = next(f for f in ast.walk(ast.parse(Path(base.__file__).read_text()))
                if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    names |= {t.attr for node in ast.walk(init) if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
              and not t.attr.startswith("_")}
    return names


def engine_reads(source: str) -> list[tuple[int, str]]:
    """(line, attribute) of every engine attribute `source` reads: `engine.x`, or getattr/hasattr
    (engine, "x"), on a name that is `engine` or a parameter annotated `Engine`. A getattr whose
    name is not a literal reads "<dynamic>"."""
    tree = ast.parse(source)
    names = {"engine"} | {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)
                          and isinstance(a.annotation, ast.Name) and a.annotation.id == "Engine"}
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            reads.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in names):
            name = node.args[1] if len(node.args) > 1 else None
            literal = isinstance(name, ast.Constant) and isinstance(name.value, str)
            reads.append((node.lineno, name.value if literal else "<dynamic>"))
    return sorted(reads)


def test_the_check_catches_undeclared_reads():
    source = ("def f(engine, other: Engine, x):\n"
              "    engine.synchronize()\n"
              "    return engine.model, getattr(other, 'device', None), getattr(engine, x), x.model\n")
    reads = engine_reads(source)
    assert reads == [(2, "synchronize"), (3, "<dynamic>"), (3, "device"), (3, "model")]
    assert [attr for _, attr in reads if attr not in _declared()] == ["<dynamic>", "device", "model"]


def test_no_scenario_reads_an_engine_attribute_the_base_does_not_declare():
    declared = _declared()
    assert {"decoder", "forced_decode", "device_type", "stages", "flop_stages", "synchronize"} <= declared
    undeclared = [f"{path.name}:{line}: engine.{attr}" for path in sorted(SCENARIO_DIR.glob("*.py"))
                  for line, attr in engine_reads(path.read_text()) if attr not in declared]
    assert undeclared == []


# -- the base defaults --------------------------------------------------------------------------------

class _OutsideTorch(base.Engine):
    name = "toy"

    def load(self, spec, weights, dtype, device):
        self._info["device"] = device

    def transcribe(self, audios, sample_rate):
        return base.Transcription([""] * len(audios), [0] * len(audios))


def test_an_engine_outside_torch_says_why_its_decoder_is_out_of_reach():
    engine = _OutsideTorch()
    engine.load(ModelSpec("m", "whisper", ""), "random", "fp32", "cuda:1")
    assert engine.device_type() == "cuda"
    access = engine.decoder()
    assert access.step_module is None and access.autoregressive is None
    assert access.missing_reason == "engine toy runs its model outside torch: its decoder steps cannot be hooked"
    with pytest.raises(ModelError, match="engine toy cannot decode a forced token count: engine toy runs"):
        engine.forced_decode([np.zeros(SAMPLE_RATE, np.float32)], SAMPLE_RATE)
    row = run_decode(engine, [_clip(1.0)], 1, TimingConfig(), curve_tokens=4)
    assert row == {"autoregressive_decoder": None, "decode_missing_reason": access.missing_reason}


# -- the transformers engine's adapters ----------------------------------------------------------------

def _clip(seconds: float) -> Clip:
    audio = np.random.default_rng(0).normal(0, 0.1, int(seconds * SAMPLE_RATE)).astype(np.float32)
    return Clip("noise", seconds, audio, SAMPLE_RATE, "", (), seconds)


def _load(spec: ModelSpec, cache_dir) -> TransformersEngine:
    engine = TransformersEngine(cache_dir)
    engine.load(spec, "random", "fp32", "cpu")
    return engine


# <|startoftranscript|> (<|en|> <|transcribe|>) <|notimestamps|> in tiny.en's tokenizer, which random
# Whisper models detokenise with; a one-layer Whisper of width 64, multilingual or English-only
@pytest.mark.parametrize("english_only, prompt", [(False, [50257, 50258, 50358, 50362]), (True, [50257, 50362])])
def test_whisper_forced_decode_runs_the_prompt_and_exactly_n_tokens(cache_dir, english_only, prompt):
    engine = _load(ModelSpec("mini-whisper", "whisper", "", _whisper(64, 1, 2), english_only), cache_dir)
    assert engine.device_type() == "cpu"
    access = engine.decoder()
    assert access.step_module is engine.model and access.autoregressive is True
    assert access.forced_missing_reason is None
    # a 35 s clip: only its first 30 s window is decoded, batched with a 2 s one
    run = engine.forced_decode([_clip(35.0).audio, _clip(2.0).audio], SAMPLE_RATE)
    for use_cache, beams in ((True, 1), (False, 1), (True, 2)):
        out = run(3, use_cache, beams)
        assert out.shape == (2, len(prompt) + 3), (use_cache, beams)
        assert out[:, : len(prompt)].tolist() == [prompt, prompt]
    # the engine's own random-weight decoding starts from the same prompt: 2 s = 6 tokens after it
    assert engine.transcribe([_clip(2.0).audio], SAMPLE_RATE).tokens == [6]


def test_ctc_has_no_decoder_and_no_forced_decode(cache_dir):
    engine = _load(ModelSpec("mini-wav2vec2", "ctc", "", _w2v2(32, 1, 2, large=False)), cache_dir)
    access = engine.decoder()
    assert access.step_module is None and access.autoregressive is False
    assert access.missing_reason.startswith("no autoregressive decoder")
    with pytest.raises(ModelError, match=r"'mini-wav2vec2' \(ctc\) cannot decode a forced token count"):
        engine.forced_decode([_clip(1.0).audio], SAMPLE_RATE)


def test_transducer_decode_measures_its_steps_and_says_why_the_curve_is_missing(cache_dir):
    arch = _parakeet_transducer("parakeet_rnnt", 2, 65)
    arch["encoder_config"] = _fastconformer(2, hidden=64, heads=2)
    engine = _load(ModelSpec("mini-rnnt", "transducer", "", arch), cache_dir)
    row = run_decode(engine, [_clip(2.0)], 1, TimingConfig(warmup_calls=0, min_calls=1, min_time_s=0.0), 4)
    # random transducers emit blank at every encoder frame: one decoder step per frame
    assert row["autoregressive_decoder"] is True
    assert row["decoder_steps_per_call"] == engine.info()["decoder_steps"] > 0
    assert row["decode_curve"] is None and "walks the encoder frames" in row["decode_curve_missing_reason"]


def test_release_frees_the_model_and_keeps_what_the_row_reads(cache_dir):
    import gc
    import weakref

    engine = _load(ModelSpec("mini-whisper", "whisper", "", _whisper(64, 1, 2), True), cache_dir)
    engine.transcribe([_clip(2.0).audio], SAMPLE_RATE)
    info, model = engine.info(), weakref.ref(engine.model)
    engine.release()
    gc.collect()
    assert model() is None  # nothing holds the weights any more: the server scenario's copy is the only one
    assert engine.info() == info and engine.loaded_weights() is None
    with pytest.raises(AttributeError):
        engine.transcribe([_clip(2.0).audio], SAMPLE_RATE)
