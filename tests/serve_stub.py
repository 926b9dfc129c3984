"""A stub engine with a known service time behind the real asrperf server, for the calibration tests.

    python tests/serve_stub.py --service-ms 40 [--per-item-ms 0] [--stall-call N --stall-s S]
                               [--max-batch-size 1 --max-wait-ms 0 --max-queue 64] --host H --port 0 --port-file F

It runs the same `run_server` as `asrperf serve`; only the engine differs: each call sleeps
service_ms + per_item_ms x (batch - 1) (plus stall_s on call number stall_call), and answers
"stub <samples>" per input. An input shorter than 0.1 s raises inside the engine, to check that
an engine error fails only its own request. Test-only: a sleeping engine is not ASR, so it is
not registered where `asrperf run` could mistake it for a model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from asrperf.engines.base import Engine, ModelSpec, Transcription

MIN_AUDIO_S = 0.1  # shorter inputs make the stub raise, like a model refusing an input


class SleepEngine(Engine):
    """Sleeps a fixed time per call; the text says how many samples it got."""

    name = "sleep"

    def __init__(self, service_s: float, per_item_s: float = 0.0, stall_call: int = 0, stall_s: float = 0.0) -> None:
        super().__init__()
        self.service_s, self.per_item_s = service_s, per_item_s
        self.stall_call, self.stall_s = stall_call, stall_s
        self.calls = 0

    def load(self, spec: ModelSpec, weights: str, dtype: str, device: str) -> None:
        self._info.update(weights="none (stub)", service_s=self.service_s)

    def transcribe(self, audios: list[np.ndarray], sample_rate: int) -> Transcription:
        self.calls += 1
        start = time.perf_counter()
        if any(len(a) < MIN_AUDIO_S * sample_rate for a in audios):
            raise ValueError(f"the stub refuses inputs under {MIN_AUDIO_S} s")
        duration = self.service_s + self.per_item_s * (len(audios) - 1)
        if self.calls == self.stall_call:
            duration += self.stall_s
        time.sleep(max(0.0, duration - (time.perf_counter() - start)))
        return Transcription([f"stub {len(a)}" for a in audios], [1] * len(audios))


def main() -> None:
    from asrperf.serve.app import ServedModel
    from asrperf.serve.server import engine_transcriber, run_server
    from asrperf.serve.settings import ServerSettings

    ap = argparse.ArgumentParser()
    ap.add_argument("--service-ms", type=float, default=40.0)
    ap.add_argument("--per-item-ms", type=float, default=0.0)
    ap.add_argument("--stall-call", type=int, default=0)
    ap.add_argument("--stall-s", type=float, default=0.0)
    ap.add_argument("--max-batch-size", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=0.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--max-audio-s", type=float, default=30.0)
    ap.add_argument("--api-key-env", default="")
    ap.add_argument("--drain-timeout-s", type=float, default=30.0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", default="")
    a = ap.parse_args()
    engine = SleepEngine(a.service_ms / 1000, a.per_item_ms / 1000, a.stall_call, a.stall_s)
    engine.load(ModelSpec("stub", "stub", ""), "none", "fp32", "cpu")
    settings = ServerSettings(host=a.host, port=a.port, port_file=a.port_file, max_batch_size=a.max_batch_size,
                              max_wait_ms=a.max_wait_ms, max_queue=a.max_queue, max_audio_s=a.max_audio_s,
                              api_key_env=a.api_key_env, drain_timeout_s=a.drain_timeout_s)
    served = ServedModel("stub", "sleep", "fp32", "fp32", "cpu", info=engine.info())
    run_server(engine_transcriber(engine), served, settings, announce=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
