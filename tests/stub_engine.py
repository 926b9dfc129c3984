"""The stub engine the Ray and plugin-engine tests share: a fixed service time per call, no model.

Cells then cost a known amount of work (the scenario's timing decides how many calls). Each test
module subclasses it with its own `name` and registers the subclass in its own declaration; a worker
that imports that module by name (`plugin_module`) finds this one in the same folder.
"""

import time

import numpy as np

from asrperf.engines.base import Engine, ModelSpec, Transcription

SERVICE_S = 0.02  # seconds per call, whatever the batch


class StubEngine(Engine):
    """Answers each clip with its length in words after SERVICE_S seconds."""

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        self._info.update(weights="random", weights_source="none: a stub that sleeps", dtype=dtype, device=device,
                          engine_version="0", decoding="none", toy_service_s=SERVICE_S)

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        time.sleep(SERVICE_S)
        return Transcription([f"{len(a) / sample_rate:.0f} seconds" for a in audios], [2] * len(audios))
