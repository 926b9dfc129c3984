"""Optimisation variants of the transformers engine: each one runs real tiny.en on a real clip,
impossible combinations are refused naming both options, and the label reaches rows and reports."""

import dataclasses
import subprocess
import sys

import pytest

from asrperf.config import ModelConfig, config_from_dict, dump_config, load_config
from asrperf.data.audio import SAMPLE_RATE
from asrperf.engines.catalog import resolve
from asrperf.engines.hf import TransformersEngine
from asrperf.errors import ConfigError
from asrperf.measure.wer import error_rates
from asrperf.report.tables import column_label, study_tables
from asrperf.results.store import Store
from asrperf.run.plan import Cell
from asrperf.run.runner import run

# real tiny.en on the first 5 s clip (two Harvard sentences, 16 words): 4 word errors
# ("birch canoe slid" -> "birch can use lid", "parked" -> "park"); more means a broken pipeline
SHORT_CLIP_MAX_WER = 0.3

TINY = "whisper-tiny.en"
FAST_TIMING = {"warmup_calls": 1, "min_calls": 1, "min_time_s": 0.0, "max_calls": 1}
# Word error rate a variant may add over the fp32 transcript of the same clip. int8 and bf16 change
# the numbers enough to flip a word now and then: one word in the ~17 of a 5 s Harvard clip is 6%.
MAX_WER_VS_FP32 = 0.13


@pytest.fixture(scope="module")
def clip(builtin_clips):
    return builtin_clips(5.0)[0]


def _load(cache_dir, dtype: str = "fp32", **options) -> TransformersEngine:
    model = ModelConfig(TINY, weights="real", dtype=dtype, **options)
    engine = TransformersEngine(cache_dir)
    engine.load(dataclasses.replace(resolve(TINY), options=model.options), "real", dtype, "cpu")
    return engine


@pytest.fixture(scope="module")
def fp32_text(cache_dir, clip):
    return _load(cache_dir).transcribe([clip.audio], SAMPLE_RATE).texts[0]


# -- labels and identity ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, label", [
    ({}, "fp32"),
    ({"dtype": "bf16"}, "bf16"),
    ({"quant": "int8_dynamic"}, "fp32+quant=int8_dynamic"),
    ({"attn": "eager"}, "fp32+attn=eager"),
    ({"dtype": "bf16", "compile": True}, "bf16+compile"),
    ({"dtype": "fp16", "compile": True, "cuda_graphs": True}, "fp16+compile+cuda_graphs"),
    ({"dtype": "fp16", "quant": "int8_weight_only", "attn": "flash_attention_2"},
     "fp16+quant=int8_weight_only+attn=flash_attention_2"),
])
def test_variant_label(kwargs, label):
    assert ModelConfig(TINY, **kwargs).variant == label


def test_a_variant_changes_the_run_identity_and_the_cell_key_but_the_baseline_keeps_its_own():
    def cfg(**model):
        return config_from_dict({"models": [{"name": TINY, **model}]})

    base = cfg()
    assert cfg(compile=True).identity() != base.identity()
    assert cfg(attn="eager").identity() != cfg(quant="int8_dynamic").identity() != base.identity()
    assert cfg(quant="none", attn="sdpa", compile=False).identity() == base.identity()
    key = Cell(base.models[0], "cpu", 2, 5.0, 1, "latency").key
    assert key == "transformers|whisper-tiny.en|weights=auto|fp32|cpu|threads=2|5s|batch=1|latency"
    assert "fp32+compile" in Cell(cfg(compile=True).models[0], "cpu", 2, 5.0, 1, "latency").key


def test_options_round_trip_through_toml(tmp_path):
    cfg = config_from_dict({"models": [{"name": TINY, "quant": "int8_dynamic", "attn": "eager", "compile": True}]})
    path = tmp_path / "run.toml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and again.identity() == cfg.identity()
    assert again.models[0].variant == "fp32+quant=int8_dynamic+attn=eager+compile"


# -- impossible combinations --------------------------------------------------------------------

@pytest.mark.parametrize("model, device, both", [
    ({"compile": True, "cuda_graphs": True}, "cpu", ("cuda_graphs", "cpu")),
    ({"dtype": "fp16", "attn": "flash_attention_2"}, "cpu", ("flash_attention_2", "cpu")),
    ({"dtype": "fp16", "quant": "int8_dynamic"}, "cpu", ("int8_dynamic", "fp16")),
    ({"dtype": "bf16", "quant": "int8_dynamic"}, "cpu", ("int8_dynamic", "bf16")),
    ({"engine": "ct2", "dtype": "int8", "quant": "int8_dynamic"}, "cpu", ("quant", "ct2")),
    ({"engine": "ort", "quant": "int8_weight_only"}, "cpu", ("quant", "ort")),
    ({"engine": "ct2", "compile": True}, "cpu", ("compile", "ct2")),
    ({"engine": "ct2", "attn": "eager"}, "cpu", ("attn", "ct2")),
    ({"dtype": "int8", "quant": "int8_dynamic"}, "cpu", ("quant", "int8")),
    ({"dtype": "fp16", "cuda_graphs": True}, "cuda", ("cuda_graphs", "compile")),
    ({"attn": "flash_attention_2"}, "cuda", ("flash_attention_2", "fp32")),
])
def test_impossible_combination_names_both_options(model, device, both):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"models": [{"name": TINY, **model}], "run": {"devices": [device]}})
    message = str(exc.value)
    assert all(word in message for word in both), message
    assert "\n" not in message


@pytest.mark.parametrize("model, key", [
    ({"quant": "int4"}, "quant"), ({"attn": "flash"}, "attn"), ({"compile": "yes"}, "compile"),
])
def test_unknown_option_values_are_refused(model, key):
    with pytest.raises(ConfigError, match=key):
        config_from_dict({"models": [{"name": TINY, **model}]})


def test_possible_combinations_pass():
    config_from_dict({"models": [{"name": TINY, "dtype": "fp16", "compile": True, "cuda_graphs": True,
                                  "attn": "flash_attention_2", "quant": "int8_dynamic"}],
                      "run": {"devices": ["cuda"]}})
    config_from_dict({"models": [{"name": TINY, "quant": "int8_dynamic", "attn": "eager", "compile": True}]})


# -- each variant runs real tiny.en on a real clip ------------------------------------------------

@pytest.mark.parametrize("dtype, options, library", [
    ("fp32", {"quant": "int8_dynamic"}, "torch.ao.quantization.quantize_dynamic"),
    ("fp32", {"quant": "int8_weight_only"}, "torchao"),
    ("fp32", {"attn": "eager"}, None),
    ("bf16", {}, None),
])
def test_variant_transcribes_a_real_clip(cache_dir, clip, fp32_text, dtype, options, library):
    engine = _load(cache_dir, dtype, **options)
    text = engine.transcribe([clip.audio], SAMPLE_RATE).texts[0]
    info = engine.info()
    assert info["variant"] == ModelConfig(TINY, dtype=dtype, **options).variant
    assert info["attn_implementation"] == options.get("attn", "sdpa")
    assert (info["quant_library"] is None) == (library is None)
    assert (info["quant_library"] or "").startswith(library or "")
    assert info["n_params"] == 37_760_256  # counted before quantization packs the Linears
    assert error_rates([fp32_text], [text]).wer <= MAX_WER_VS_FP32, (fp32_text, text)
    assert error_rates([clip.text], [text]).wer <= SHORT_CLIP_MAX_WER, (clip.text, text)
    if options == {"attn": "eager"}:  # the same math in another kernel: the same greedy transcript
        assert text == fp32_text
    if library == "torch.ao.quantization.quantize_dynamic":
        import torch

        assert isinstance(engine.model.model.encoder.layers[0].fc1, torch.ao.nn.quantized.dynamic.Linear)


@pytest.mark.slow
def test_compile_with_static_cache_transcribes_like_fp32_and_compiles_once(cache_dir, clip, fp32_text):
    engine = _load(cache_dir, compile=True)
    first = engine.transcribe([clip.audio], SAMPLE_RATE).texts[0]
    again = engine.transcribe([clip.audio], SAMPLE_RATE).texts[0]
    info = engine.info()
    assert first == again == fp32_text
    assert info["variant"] == "fp32+compile" and info["kv_cache"] == "static" and info["compile_mode"] == "default"
    # the first call compiles the encoder and the one-token decoder step; the same shapes again compile nothing
    assert info["compiled_graphs_per_call"][0] >= 2 and info["compiled_graphs_per_call"][1] == 0
    assert info["compile_graph_breaks"] == 0  # encoder and decoder step each compile whole
    assert info["compile_s"] > 0


# -- the label reaches the rows, the report and the CLI -------------------------------------------

def test_variant_and_baseline_are_separate_columns(tmp_path, cache_dir, tiny_source):
    cfg = config_from_dict({
        "source": tiny_source, "timing": FAST_TIMING,
        "models": [{"name": TINY, "weights": "real"}, {"name": TINY, "weights": "real", "attn": "eager"}],
        "run": {"clip_lengths_s": [5], "n_clips": 1, "store": str(tmp_path / "r.sqlite"), "cache_dir": str(cache_dir),
                "isolate": False, "energy": False, "threads": [1]},
    })
    summary = run(cfg)
    assert summary.failed == 0, summary
    with Store(cfg.store) as s:
        rows = s.rows()
    assert sorted(r["variant"] for r in rows) == ["fp32", "fp32+attn=eager"]
    assert {r["attn_implementation"] for r in rows} == {"sdpa", "eager"}
    table = study_tables(rows)[0]
    assert table.columns == [f"{TINY} (transformers, fp32)", f"{TINY} (transformers, fp32+attn=eager)"]
    assert column_label({"model": "m", "engine": "ct2", "dtype": "int8"}) == "m (ct2, int8)"  # rows from before variants


def test_cli_flags_apply_to_every_model_and_refuse_impossible_engines(tmp_path):
    result = subprocess.run([sys.executable, "-m", "asrperf", "run", "--model", TINY, "--engine", "ct2",
                             "--quant", "int8_dynamic", "--store", str(tmp_path / "r.sqlite")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "quant" in result.stderr and "ct2" in result.stderr and "Traceback" not in result.stderr
    from asrperf import cli

    cfg = cli._build_config(None, [TINY, "wav2vec2-base"], None, None, [], None, None, None, None, None, None, None,
                            None, None, None, None, None, None, quant="int8_dynamic", attn="eager", compile_=True)
    assert {m.variant for m in cfg.models} == {"fp32+quant=int8_dynamic+attn=eager+compile"}
