"""Every preset in configs/ builds its model and runs one training step on tiny generated clips."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from dynapp.config import JointConfig, load_config
from dynapp.engine.run import run_from_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Appendix A: (lr, global batch, epochs, weight decay, dropout) per backbone and dataset, and the
# Table 1-3 clip layouts (segments S, frames per segment T), backbone and sampling.
PAPER = {
    "ssv1_da_tsm_r50": (0.12, 256, 50, 8e-4, 0.8, 8, 4, "tsm_resnet50", "tsn"),
    "ssv1_da_x3d_xs": (0.12, 256, 50, 4e-4, 0.8, 4, 8, "x3d_xs", "tsn"),
    "ssv1_da_x3d_xs_eq12": (0.12, 256, 50, 4e-4, 0.8, 4, 8, "x3d_xs", "tsn"),  # Table 5: Eq. 12 as printed
    "ssv1_da_x3d_m": (0.12, 256, 50, 4e-4, 0.8, 16, 3, "x3d_m", "tsn"),
    "ssv1_da_vit_b16": (0.004, 64, 15, 1e-4, 0.0, 8, 4, "vit_b16", "tsn"),
    "k400_da_tsm_r50": (0.08, 512, 100, 2e-4, 0.5, 16, 8, "tsm_resnet50", "dense"),
    "k400_da_x3d_m": (0.4, 256, 256, 5e-5, 0.5, 16, 8, "x3d_m", "dense"),
    "k400_da_vit_b16": (0.004, 64, 15, 1e-4, 0.0, 8, 8, "vit_b16", "dense"),
    "ucf101_da_tsm_r50": (0.001, 64, 10, 1e-4, 0.8, 8, 16, "tsm_resnet50", "tsn"),
    "hmdb51_da_tsm_r50": (0.001, 64, 10, 1e-4, 0.8, 8, 16, "tsm_resnet50", "tsn"),
}


def test_every_preset_is_listed():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_matches_appendix_a_and_runs_one_step(name, tmp_path, monkeypatch):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path)
    lr, batch, epochs, wd, dropout, segments, frames, backbone, sampling = PAPER[name]
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (lr, batch, epochs)
    assert cfg.optim.weight_decay == pytest.approx(wd) and cfg.model.dropout == dropout
    assert (cfg.data.segments, cfg.data.frames, cfg.model.backbone, cfg.data.sampling) == (segments, frames, backbone, sampling)
    assert cfg.model.representation == "pwtp"
    # the paper's Eq. 12 as printed in the Table 5 preset, dynapp's default strategy (docs/joint.md) in the others
    joint = (cfg.joint.strategy, cfg.joint.alpha, cfg.joint.normalize, cfg.joint.backbone_grad)
    default = JointConfig()
    assert joint == (("mgda", default.alpha, "none", default.backbone_grad) if name.endswith("_eq12") else
                     (default.strategy, default.alpha, default.normalize, default.backbone_grad))
    assert cfg.model.representation_kwargs["kernel_size"] == 9 and cfg.model.representation_kwargs["stride"] == 8
    assert cfg.optim.momentum == 0.9 and cfg.optim.classifier_lr_mult == 5 and cfg.optim.classifier_wd_mult == 5
    vit = backbone == "vit_b16"
    assert (cfg.optim.label_smoothing, cfg.optim.clip_grad_norm) == ((0.0, 0.0) if vit else (0.1, 20.0))
    assert cfg.optim.representation_lr_mult == (5 if vit else 1)
    assert cfg.optim.freeze_bn == name.startswith(("ucf101", "hmdb51"))
    assert cfg.optim.warmup_epochs == (7 if backbone == "tsm_resnet50" and epochs >= 50 else 0)

    tiny = ["data.dataset=random", "data.num_samples=1", "data.crop_size=32", "data.num_workers=0",
            "model.pretrained=null", "model.init_from=null", "optim.batch_size=1", "max_steps=1",
            "eval.clips=1", "eval.crops=1", "eval.crop_size=0", "eval.every_epochs=0", "device=cpu",
            f"log.out_dir={tmp_path}", "log.tensorboard=false", "log.progress=false",
            "checkpoint.enabled=false"]  # a TSM-R50 checkpoint is 190 MB: the step is checked in the log
    if vit:  # a narrow, shallow ViT on a 32 px grid (the full ViT-B checkpoint would be 1 GB)
        tiny += ["model.backbone_kwargs.img_size=32", "model.backbone_kwargs.embed_dim=32",
                 "model.backbone_kwargs.depth=1", "model.backbone_kwargs.num_heads=2"]
    import dynapp.engine.run as train_module

    seen = {}
    real_train = train_module.train

    def spy(**kwargs):  # keep the model the run trains, to check it after the step
        seen["model"] = kwargs["model"]
        return real_train(**kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    run_from_config(load_config(path, tiny))
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv", newline="")))
    assert [int(r["step"]) for r in rows] == [1]
    assert float(rows[0]["lr"]) > 0 and math.isfinite(float(rows[0]["rec_loss"])) and float(rows[0]["enopr"]) > 0
    assert 0.0 <= float(rows[0]["alpha"]) <= 1.0
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    model = seen["model"]
    assert model.head.out_features == cfg.data.num_classes
    assert hasattr(model.representation, "pwtp")
    assert all(torch.isfinite(p).all() for p in model.parameters())
