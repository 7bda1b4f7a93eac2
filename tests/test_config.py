"""Run configuration: YAML, overrides, validation errors."""

from __future__ import annotations

import pytest

from dynapp.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config


def test_defaults_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.12\n  weight_decay: 8e-4\njoint:\n  strategy: constant\n  alpha: 0.9\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 0.12
    assert cfg.optim.weight_decay == pytest.approx(8e-4)  # YAML 1.1 reads 8e-4 as a string
    assert cfg.joint.strategy == "constant" and cfg.joint.alpha == 0.9
    assert cfg.optim.momentum == 0.9  # default kept


def test_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.12\n")
    cfg = load_config(path, ["optim.lr=0.5", "data.segments=8", "model.representation_kwargs.rank=2",
                             "model.pretrained=null", "log.tensorboard=false"])
    assert cfg.optim.lr == 0.5
    assert cfg.data.segments == 8
    assert cfg.model.representation_kwargs == {"rank": 2}
    assert cfg.model.pretrained is None
    assert cfg.log.tensorboard is False


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*'optim.lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'joint.strategy'"):
        config_from_dict({"joint": {"stratgy": "mgda"}})


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=abc", "optim.lr: expected a number"),
        ("data.segments=1.5", "data.segments: expected an integer"),
        ("joint.strategy=magic", "joint.strategy"),
        ("joint.alpha=1.5", "joint.alpha"),
        ("optim.amp=maybe", "optim.amp: expected true/false"),
        ("data.split=4", "data.split"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_values(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip():
    cfg = load_config(None, ["optim.epochs=3", "joint.gamma=0.5"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_apply_overrides_does_not_mutate_input():
    data = {"optim": {"lr": 0.1}}
    apply_overrides(data, ["optim.lr=0.2"])
    assert data["optim"]["lr"] == 0.1


def test_the_debug_section_of_older_configs_is_ignored(tmp_path):
    # configs and checkpoints written before the tests' fault injection left the config carry it
    path = tmp_path / "config.yaml"
    path.write_text("optim:\n  lr: 0.2\ndebug:\n  nan_at_step: 0\n  sleep_per_step: 0.0\n")
    assert load_config(path).optim.lr == 0.2
    assert "debug" not in config_to_dict(config_from_dict({"debug": {"nan_at_step": 3}}))
    with pytest.raises(ConfigError, match="unknown config key 'debug.sleep_per_step'"):
        load_config(None, ["debug.sleep_per_step=1"])
