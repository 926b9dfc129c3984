"""The NeMo engine: one-line errors without nemo, doctor's row, a real `.nemo` round trip where nemo is installed."""

import sys

import numpy as np
import pytest

from asrperf.engines.catalog import resolve
from asrperf.engines.nemo import NemoEngine
from asrperf.engines.registry import create, supports
from asrperf.errors import ConfigError, MissingExtraError, ModelError


@pytest.fixture
def nemo_file(tmp_path):
    path = tmp_path / "model.nemo"
    path.write_bytes(b"not opened: the checks before restore_from fail first")
    return path


def test_a_nemo_file_resolves_to_the_nemo_family(nemo_file):
    spec = resolve(str(nemo_file))
    assert spec.family == "nemo" and spec.source == str(nemo_file)
    assert supports("nemo", "nemo") and not supports("transformers", "nemo") and not supports("nemo", "whisper")
    assert isinstance(create("nemo", nemo_file.parent), NemoEngine)


def test_missing_nemo_is_one_line_naming_the_extra(monkeypatch, nemo_file, tmp_path):
    for module in ("nemo", "nemo.collections", "nemo.collections.asr"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if nemo were not installed
    with pytest.raises(MissingExtraError) as err:
        NemoEngine(tmp_path).load(resolve(str(nemo_file)), "real", "fp32", "cpu")
    assert str(err.value) == "`nemo-toolkit` is needed for engine nemo: pip install 'asrperf[nemo]'"


def test_what_engine_nemo_cannot_run_is_refused_with_the_fix(nemo_file, tmp_path):
    with pytest.raises(ModelError, match=r"engine nemo loads \.nemo checkpoint files; 'whisper-tiny\.en' is not one"):
        NemoEngine(tmp_path).load(resolve("whisper-tiny.en"), "real", "fp32", "cpu")
    with pytest.raises(ConfigError, match="use weights 'real' or 'auto'"):
        NemoEngine(tmp_path).load(resolve(str(nemo_file)), "random", "fp32", "cpu")
    with pytest.raises(ConfigError, match="dtype 'int8' is not supported by engine nemo; use fp32"):
        NemoEngine(tmp_path).load(resolve(str(nemo_file)), "real", "int8", "cpu")


@pytest.mark.parametrize("blank, y_sequence, length, expected", [
    (None, [5, 5, 7], 0, 3),  # RNNT / AED: every token counts, repeats included
    (4, [4, 1, 1, 4, 1, 2, 2, 4], 0, 3),  # CTC frames: 1 | 1 (split by a blank) | 2
    (4, [1, 1, 4, 2, 3, 3], 3, 1),  # only the first `length` frames are the clip's
    (1, [[0.0, -9.0], [-9.0, 0.0], [0.0, -9.0]], 0, 2),  # per-frame log-probs: argmax 0, blank, 0
])
def test_emitted_labels_table(tmp_path, blank, y_sequence, length, expected):
    from types import SimpleNamespace

    engine = NemoEngine(tmp_path)
    engine._ctc_blank = blank
    assert engine._emitted(SimpleNamespace(y_sequence=np.array(y_sequence), length=length)) == expected


def test_doctor_lists_nemo(monkeypatch):
    from asrperf import doctor

    rows = {name: (ok, detail) for name, ok, detail in doctor.checks()}
    ok, detail = rows["engine nemo"]
    assert detail.startswith("nemo-toolkit ") if ok else detail == "pip install 'asrperf[nemo]'"
    monkeypatch.setattr(doctor, "_have", lambda module: module != "nemo")
    rows = {name: (ok, detail) for name, ok, detail in doctor.checks()}
    assert rows["engine nemo"] == (False, "pip install 'asrperf[nemo]'")


def _tiny_ctc_checkpoint(path):
    """A two-layer FastConformer CTC model over characters, random weights, saved as a .nemo file."""
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    labels = [" ", *"abcdefghijklmnopqrstuvwxyz'"]
    cfg = OmegaConf.create({
        "sample_rate": 16000,
        "labels": labels,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "features": 80, "window_size": 0.025, "window_stride": 0.01,
                         "normalize": "per_feature", "n_fft": 512, "dither": 0.0, "pad_to": 0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "n_layers": 2,
                    "d_model": 64, "n_heads": 4, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "ff_expansion_factor": 4, "conv_kernel_size": 9},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 64,
                    "num_classes": len(labels), "vocabulary": labels},
    })
    EncDecCTCModel(cfg=cfg).save_to(str(path))


def test_a_nemo_checkpoint_is_restored_and_transcribed(tmp_path):
    pytest.importorskip("nemo.collections.asr", reason="nemo-toolkit not installed (pip install 'asrperf[nemo]')")
    path = tmp_path / "tiny-ctc.nemo"
    _tiny_ctc_checkpoint(path)
    engine = NemoEngine(tmp_path)
    engine.load(resolve(str(path)), "auto", "fp32", "cpu")
    rng = np.random.default_rng(0)
    audios = [rng.normal(0, 0.1, 3 * 16000).astype(np.float32), rng.normal(0, 0.1, 2 * 16000).astype(np.float32)]
    out = engine.transcribe(audios, 16000)
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    # a character vocabulary: each emitted label is one character of NeMo's own (unstripped) text
    hyps = engine.model.transcribe(audios, batch_size=2, return_hypotheses=True, verbose=False)
    assert out.tokens == [len(h.text) for h in hyps]
    assert out.texts == [h.text.strip() for h in hyps]
    info = engine.info()
    assert info["weights"] == "real" and info["model_class"] == "EncDecCTCModel" and info["weights_source"] == str(path)
    assert info["n_params"] == sum(p.numel() for p in engine.model.parameters()) > 0
    assert "decoding" in info and engine.loaded_weights().module is engine.model
