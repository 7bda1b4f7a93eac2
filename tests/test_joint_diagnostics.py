"""Diagnostics of joint training: ENoPR's constant-A floor, DA's direction, the freeze warning, the log."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dynapp.joint_diagnostics import DIAGNOSTICS, FROZEN_STEPS, FreezeWatch, enopr_floor, filter_direction
from dynapp.pwtp import dynamic_appearance

TINY = [
    "data.dataset=random", "data.segments=2", "data.frames=4", "data.crop_size=32", "data.num_samples=8",
    "data.num_workers=0", "model.backbone=small2d", "model.backbone_kwargs.widths=[8,8,8,8]",
    "optim.batch_size=2", "log.tensorboard=false", "log.progress=false", "eval.every_epochs=0",
    "checkpoint.enabled=false",
]


def test_floor_is_the_enopr_of_a_constant_hyperplane():
    x = torch.randn(3, 2, 6, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, enopr, _ = dynamic_appearance(x, torch.ones(3, 6, 1, 5, 4, dtype=torch.float64))
    assert torch.allclose(enopr_floor(x).double(), enopr, rtol=1e-6)
    # any non-constant A explains some series better, but the floor is not a bound from below:
    # a random A is usually worse (the start of training), so ENoPR above the floor is possible
    _, random_enopr, _ = dynamic_appearance(x, torch.randn(3, 6, 1, 5, 4, dtype=torch.float64))
    assert not torch.allclose(random_enopr, enopr)


def _weights(profile, n=2, h=3, w=3):
    """Temporal weights (N, T, H, W) with the same profile at every pixel."""
    return torch.tensor(profile, dtype=torch.float64).view(1, -1, 1, 1).expand(n, -1, h, w).clone()


def test_filter_direction_of_known_filters():
    x = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    forward, backward, even = [-1.0, -0.5, 0.5, 1.0], [1.0, 0.5, -0.5, -1.0], [1.0, -1.0, -1.0, 1.0]
    assert filter_direction(_weights(forward), x) == pytest.approx((1.0, 1.0))
    assert filter_direction(_weights(backward), x) == pytest.approx((0.0, 1.0))
    assert filter_direction(_weights(even), x) == pytest.approx((0.0, 0.0))  # no direction at all
    # a constant offset (the static part of the weights) changes nothing: the weights are centred
    assert filter_direction(_weights([v + 0.3 for v in forward]), x) == pytest.approx((1.0, 1.0))
    # half of the (equally moving) segments forward, half backward: an arbitrary direction
    mixed = torch.cat([_weights(forward, n=1), _weights(backward, n=1)])
    x_same = x[:1].expand(2, -1, -1, -1, -1)
    assert filter_direction(mixed, x_same) == pytest.approx((0.5, 1.0))
    # the pixels that move count: the backward pixels here are static, so the direction is forward
    x_moving_first = x_same.clone()
    x_moving_first[1] = x_moving_first[1].mean(1, keepdim=True)
    assert filter_direction(mixed, x_moving_first)[0] == pytest.approx(1.0)
    # a constant A (all weights zero): no direction
    assert all(math.isnan(v) for v in filter_direction(torch.zeros(2, 4, 3, 3), x))


def test_freeze_watch_needs_both_conditions_for_a_window_and_warns_once():
    frozen = FreezeWatch(window=3)
    lines = [frozen.update(0.999, 0.619, 0.625) for _ in range(5)]
    assert lines[:2] == [None, None] and lines[3:] == [None, None]
    assert "joint.strategy" in lines[2] and "constant-A floor" in lines[2]
    for alpha, enopr in ((0.999, 0.5), (0.5, 0.625), (0.999, 1.0), (float("nan"), 0.625)):
        healthy = FreezeWatch(window=3)
        assert [healthy.update(alpha, enopr, 0.625) for _ in range(10)] == [None] * 10
    interrupted = FreezeWatch(window=3)
    seq = [(1.0, 0.625), (1.0, 0.625), (0.2, 0.625), (1.0, 0.625), (1.0, 0.625)]
    assert [interrupted.update(a, e, 0.625) for a, e in seq] == [None] * 5


def _train(tmp_path, extra):
    from typer.testing import CliRunner

    from dynapp.cli import app

    res = CliRunner().invoke(app, ["train", *TINY, f"log.out_dir={tmp_path}", *extra])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "train_log.csv", newline="") as f:
        return res.output, list(csv.DictReader(f))


def test_diagnostics_are_in_train_log_and_a_healthy_run_gives_no_warning(tmp_path):
    epochs = FROZEN_STEPS // 4 + 1  # 4 steps an epoch: more steps than the warning's window
    output, rows = _train(tmp_path, [f"optim.epochs={epochs}", "joint.strategy=constant", "joint.alpha=0.5",
                                     "joint.backbone_grad=full"])
    assert len(rows) == 4 * epochs > FROZEN_STEPS
    for r in rows:
        values = {k: float(r[k]) for k in DIAGNOSTICS}
        assert all(math.isfinite(v) for v in values.values()), r
        assert values["g1_norm"] > 0 and values["g2_norm"] > 0 and -1 <= values["g_cos"] <= 1
        assert values["enopr_floor"] > 0 and 0 <= values["da_forward"] <= 1 and 0 <= values["da_antisym"] <= 1
        assert 0 <= values["static_share"] <= 1
    assert "stopped learning" not in output


def _constant_a_init(path):
    """A model whose PWTP starts at a constant A (the MLP's last layer outputs 1 everywhere)."""
    from dynapp.model import build_model

    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone="small2d", num_classes=4, segments=2, frames=4,
                        backbone_kwargs={"widths": [8, 8, 8, 8]})
    with torch.no_grad():
        model.representation.pwtp.head.weight.zero_()
        model.representation.pwtp.head.bias.fill_(1.0)
    torch.save(model.state_dict(), path)
    return path


def test_no_freeze_warning_under_separate_training(tmp_path):
    # separate trains PWTP on ENoPR alone by design: the same frozen start gives no warning
    init = _constant_a_init(tmp_path / "constant_a.pt")
    epochs = FROZEN_STEPS // 4 + 2
    output, rows = _train(tmp_path / "run", [f"optim.epochs={epochs}", "joint.strategy=separate",
                                             f"joint.separate_epochs={epochs - 1}", "optim.lr=1e-7",
                                             "optim.warmup_epochs=0", f"model.init_from={init}"])
    assert "stopped learning" not in output
    assert [float(r["alpha"]) for r in rows[:FROZEN_STEPS + 1]] == [1.0] * (FROZEN_STEPS + 1)
    last_pwtp_step = rows[4 * (epochs - 1) - 1]
    assert float(last_pwtp_step["enopr"]) == pytest.approx(float(last_pwtp_step["enopr_floor"]), rel=0.02)


def test_freeze_warning_fires_on_a_frozen_pwtp(tmp_path):
    # PWTP starts at a constant A, trains on ENoPR alone (alpha 1) at a learning rate too small
    # to leave it: frozen at the floor by construction
    init = _constant_a_init(tmp_path / "constant_a.pt")
    epochs = FROZEN_STEPS // 4 + 1
    output, rows = _train(tmp_path / "run", [f"optim.epochs={epochs}", "joint.strategy=constant", "joint.alpha=1.0",
                                             "optim.lr=1e-7", "optim.warmup_epochs=0", f"model.init_from={init}"])
    assert output.count("warning: PWTP has stopped learning from the recognition loss") == 1
    assert "joint.strategy=constant joint.alpha=0.5 joint.backbone_grad=full" in output  # the default
    assert "joint.strategy=mgda joint.normalize=loss+" in output
    last = rows[-1]
    assert float(last["alpha"]) == 1.0
    assert float(last["enopr"]) == pytest.approx(float(last["enopr_floor"]), rel=0.02)
