"""Configuration you can see: `dynapp config` lists every key with its value and meaning, a run prints
what it trains on and saves its resolved config.yaml, data.flip and data.flip_pairs are keys."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from cluster_util import train_args
from dynapp.cli import app
from dynapp.config import all_keys, config_to_dict, describe_keys, load_config
from dynapp.data import build_dataset
from dynapp.data.transforms import horizontal_flip


def test_dynapp_config_lists_every_key_with_default_and_meaning():
    res = CliRunner().invoke(app, ["config"])
    assert res.exit_code == 0, res.output
    rows = describe_keys()
    assert [k for k, _, _ in rows] == all_keys()
    assert not [k for k, _, meaning in rows if not meaning]  # every key says what it means
    for key, _, meaning in rows:
        assert f"{key.rpartition('.')[2]}: " in res.output and meaning in res.output
    assert "  val_fraction: 0.2  # " in res.output and "  flip: null  # " in res.output
    res = CliRunner().invoke(app, ["config", "optim.lr=0.3", "data.flip=false"])
    assert "  lr: 0.3  # " in res.output and "  flip: false  # " in res.output
    res = CliRunner().invoke(app, ["config", "optim.lrr=0.3"])
    assert res.exit_code == 1 and "did you mean 'optim.lr'" in res.output


def test_a_run_prints_its_data_and_saves_config_yaml(clips, tmp_path):
    out = tmp_path / "run"
    args = train_args(clips / "train", out, "data.num_workers=2", "optim.epochs=1", "data.flip=false")
    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[:4]
    assert first[0] == f"data: folder {clips / 'train'}: 2 classes (class0, class1), 6 training videos, " \
                       "2 validation videos (held out)"
    assert first[1].startswith("model: pwtp + small2d, 2 segments x 4 frames, crop 32, flip off")
    assert first[3].startswith(f"config: {out / 'config.yaml'}")
    saved = load_config(out / "config.yaml")  # the saved file is a config dynapp train reads back
    assert config_to_dict(saved) == config_to_dict(load_config(None, args))
    assert "# " in (out / "config.yaml").read_text()  # with each key's meaning


def test_flip_pairs_swap_the_labels_of_flipped_clips(clips):
    kw = dict(train=True, segments=2, frames=4, crop_size=32, seed=0)
    plain = build_dataset("folder", clips / "train", flip=False, **kw)
    paired = build_dataset("folder", clips / "train", flip_pairs=[["class0", "class1"]], **kw)
    flips = 0
    for i in range(len(plain)):
        x, label, _ = plain[i]
        y, mapped, _ = paired[i]
        flipped = torch.equal(y, horizontal_flip(x)) and not torch.equal(x, y)
        assert torch.equal(y, x) or flipped
        assert mapped == (1 - label if flipped else label)
        flips += flipped
    assert 0 < flips < len(plain)  # both cases seen


def test_bad_flip_pairs_are_one_line_errors(clips, tmp_path):
    res = CliRunner().invoke(app, ["train", *train_args(clips, tmp_path / "r", "data.flip_pairs=[[class0,nope]]")])
    assert res.exit_code == 1 and "data.flip_pairs: 'nope' is not a class of the dataset (class0, class1)" in res.output
    assert len(res.output.strip().splitlines()) == 1
