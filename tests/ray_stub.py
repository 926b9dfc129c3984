"""A stub engine for the Ray executor tests and benchmark: a fixed service time per call, no model.

Cells then cost a known amount of work (the scenario's timing decides how many calls), so tests
can run many cells fast and keep one running long enough to kill its node. Ray workers import it
by name (`plugin_module`), so the folder holding it must be on their PYTHONPATH.
"""

import time

import numpy as np

from asrperf.engines.base import Engine, ModelSpec, Transcription
from asrperf.engines.capabilities import EngineDecl, register

SERVICE_S = 0.02  # seconds per call, whatever the batch


class SleepEngine(Engine):
    """Answers each clip with its length in words after SERVICE_S seconds."""

    name = "toy_sleep"

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        self._info.update(weights="random", weights_source="none: a stub that sleeps", dtype=dtype, device=device,
                          engine_version="0", decoding="none", toy_service_s=SERVICE_S)

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        time.sleep(SERVICE_S)
        return Transcription([f"{len(a) / sample_rate:.0f} seconds" for a in audios], [2] * len(audios))


register(EngineDecl(
    name="toy_sleep", target=f"{__name__}:SleepEngine", extra="none", requires=(), families=("whisper",),
    dtypes=("fp32",), describe="a stub engine that sleeps a fixed time per call", plugin_module=__name__,
))
