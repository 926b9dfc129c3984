import pytest

from asrperf.config import config_from_dict, default_config_dict, dump_config, load_config
from asrperf.errors import ConfigError


def test_default_config_is_valid_and_round_trips(tmp_path):
    cfg = config_from_dict(default_config_dict())
    assert [m.name for m in cfg.models][:2] == ["whisper-tiny.en", "whisper-tiny"]
    assert cfg.clip_lengths_s == (5.0, 15.0, 30.0, 60.0)
    path = tmp_path / "c.toml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and again.identity() == cfg.identity()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"run": {"clip_lengths": [5]}, "models": ["whisper-tiny"]}, "unknown key 'clip_lengths' in config \\[run\\]"),
        ({"modles": []}, "unknown key 'modles'"),
        ({"models": [{"name": "x", "dtyp": "fp16"}]}, "unknown key 'dtyp'"),
        ({"models": [{"name": "x", "dtype": "fp8"}]}, "models.dtype: 'fp8' is not one of"),
        ({"models": [{"name": "x", "weights": "fake"}]}, "models.weights"),
        ({"models": ["x"], "run": {"batch_sizes": [0]}}, "batch_sizes: 0 must be >= 1"),
        ({"models": ["x"], "run": {"clip_lengths_s": [-5]}}, "clip_lengths_s: -5.0 is not a length"),
        ({"models": ["x"], "run": {"devices": ["gpu"]}}, "devices: 'gpu' is not a device"),
        ({"models": ["x"], "run": {"batch_sizes": ["big"]}}, "batch_sizes: .* is not a whole number"),
        ({"models": ["x"], "timing": {"min_calls": 0}}, "timing: need"),
        ({"run": {}}, "no models to run"),
    ],
)
def test_unknown_keys_and_impossible_values_are_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_identity_ignores_paths_but_not_measurement(tmp_path):
    a = config_from_dict({"models": ["whisper-tiny"]})
    b = config_from_dict({"models": ["whisper-tiny"], "run": {"store": str(tmp_path / "x.sqlite")}})
    c = config_from_dict({"models": ["whisper-tiny"], "run": {"batch_sizes": [2]}})
    assert a.identity() == b.identity() != c.identity()


def test_loop_mode_disables_scoring():
    cfg = config_from_dict({"models": ["x"], "run": {"clip_mode": "loop"}})
    assert not cfg.scores_accuracy
