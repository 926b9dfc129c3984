"""Scenarios by name: a plain dict of scenario objects (scenarios/base.py gives their shape).

Adding a scenario is one module with a `Scenario` subclass and one `register` call.
"""

from __future__ import annotations

from asrperf.scenarios.base import Scenario
from asrperf.scenarios.dataset import DatasetScenario
from asrperf.scenarios.decode import DecodeScenario
from asrperf.scenarios.latency import LatencyScenario
from asrperf.scenarios.max_throughput import MaxThroughputScenario
from asrperf.scenarios.profile import ProfileScenario
from asrperf.scenarios.server import ServerScenario
from asrperf.scenarios.streaming import StreamingScenario

SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add (or replace) a scenario under its name; returns it. A scenario defined outside asrperf
    is re-registered in each cell's process by importing its module (run/worker.py)."""
    SCENARIOS[scenario.name] = scenario
    return scenario


def plugin_modules() -> tuple[str, ...]:
    """Modules outside asrperf that define registered scenarios: a cell's process imports them."""
    modules = {type(s).__module__ for s in SCENARIOS.values()}
    return tuple(sorted(m for m in modules if not m.startswith("asrperf.") and m != "__main__"))


for _s in (LatencyScenario(), MaxThroughputScenario(), ProfileScenario(), DecodeScenario(), StreamingScenario(),
           DatasetScenario(), ServerScenario()):
    register(_s)
