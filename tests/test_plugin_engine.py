"""Adding an engine is one declaration (engines/capabilities.py's `EngineDecl`) and its module:
this file is both (its engine is the tests' stub, tests/stub_engine.py). The config accepts it,
`optimize` proposes its candidates, a run measures it in its own process, and the report shows its
column; nothing else in asrperf was edited for it.
"""

from stub_engine import SERVICE_S, StubEngine

from asrperf.config import config_from_dict
from asrperf.engines.capabilities import EngineDecl, register
from asrperf.report.tables import study_tables, to_markdown
from asrperf.run.optimize import candidates


class EchoEngine(StubEngine):
    name = "toy_echo"


register(EngineDecl(
    name="toy_echo", target=f"{__name__}:EchoEngine", extra="none", requires=(), families=("whisper",),
    dtypes=("fp32", "int4"), candidates=lambda ctx: [{"dtype": "int4"}] if not ctx.cuda else [],
    describe="a test engine", plugin_module=__name__,
))


def test_config_accepts_the_engine_and_refuses_what_it_does_not_declare():
    cfg = config_from_dict({"models": [{"name": "whisper-tiny.en", "engine": "toy_echo", "dtype": "int4"}]})
    assert cfg.models[0].engine == "toy_echo"
    import pytest

    from asrperf.errors import ConfigError

    with pytest.raises(ConfigError, match="quant = 'int8_dynamic' with engine = 'toy_echo'"):
        config_from_dict({"models": [{"name": "whisper-tiny.en", "engine": "toy_echo", "quant": "int8_dynamic"}]})


def test_optimize_proposes_its_candidates():
    models = candidates("whisper-tiny.en", "cpu", engines=("transformers", "toy_echo"), compile=False)
    assert ("toy_echo", "int4") in {(m.engine, m.dtype) for m in models}
    assert models[0].engine == "transformers"  # the accuracy reference stays first
    assert not any(m.engine == "toy_echo" for m in candidates("whisper-tiny.en", "cuda", engines=("toy_echo",)))


def test_a_run_measures_it_and_the_report_shows_its_column(run_rows):
    rows = run_rows([{"name": "whisper-tiny.en", "engine": "toy_echo"}], lengths=[5], isolate=True,
                    timing={"warmup_calls": 1, "min_calls": 3, "min_time_s": 0.0})
    (row,) = rows
    assert row["engine"] == "toy_echo" and row["latency_s_p50"] >= SERVICE_S
    assert row["engine_details"] == {"toy_service_s": SERVICE_S}  # facts the schema does not list, kept
    assert row["wer"] is None and row["accuracy_reference"] is False
    text = to_markdown(study_tables(rows))
    assert "toy_echo" in text and "whisper-tiny.en" in text
