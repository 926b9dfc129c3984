"""The stub engine for the Ray executor tests and benchmark, registered as `toy_sleep`.

Cells cost a known amount of work (tests/stub_engine.py), so tests can run many cells fast and keep
one running long enough to kill its node. Ray workers import it by name (`plugin_module`), so the
folder holding it must be on their PYTHONPATH.
"""

from stub_engine import SERVICE_S, StubEngine

from asrperf.engines.capabilities import EngineDecl, register


class SleepEngine(StubEngine):
    name = "toy_sleep"


register(EngineDecl(
    name="toy_sleep", target=f"{__name__}:SleepEngine", extra="none", requires=(), families=("whisper",),
    dtypes=("fp32",), describe="a stub engine that sleeps a fixed time per call", plugin_module=__name__,
))

__all__ = ["SERVICE_S", "SleepEngine"]
