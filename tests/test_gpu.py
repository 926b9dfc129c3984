"""CUDA paths; skipped cleanly where no CUDA device is present."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_cell_measures_with_synchronisation(cache_dir):
    from asrperf.engines.catalog import resolve
    from asrperf.engines.hf import TransformersEngine

    engine = TransformersEngine(cache_dir)
    engine.load(resolve("whisper-tiny.en"), "real", "fp16", "cuda")
    audio = np.zeros(16000 * 5, dtype=np.float32)
    out = engine.transcribe([audio, audio], 16000)
    engine.synchronize()
    assert len(out.texts) == 2 and engine.info()["device"].startswith("cuda")
