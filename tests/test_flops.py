"""FLOPs (multiply-adds) and parameters per view, checked against the published figures."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dynapp import PWTP
from dynapp.cli import app
from dynapp.representations import REPRESENTATIONS
from dynapp.apps.flops import PAPER_MODELS, FlopsReport, count_macs, count_params, format_table, model_flops


def _close(value, published, tol=0.05):
    return abs(value - published) / published < tol


def test_count_macs_is_exact_for_conv_and_linear():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(1, 3, 10, 10)) == 8 * 3 * 9 * 100
    lin = torch.nn.Linear(20, 7)
    assert count_macs(lin, torch.randn(4, 20)) == 4 * 20 * 7
    dw = torch.nn.Conv3d(6, 6, 3, padding=1, groups=6, bias=False)  # depthwise: one input channel per output
    assert count_macs(dw, torch.randn(1, 6, 2, 4, 4)) == 6 * 27 * 2 * 16
    assert count_params(lin) == 20 * 7 + 7


def test_x3d_xs_and_da_x3d_xs_per_view():
    rgb = model_flops(representation="rgb", backbone="x3d_xs", num_classes=174, segments=4, frames=1, crop=160)
    assert _close(rgb.gflops, 0.6) and rgb.representation_gflops == 0 and rgb.representation_params == 0
    assert _close(rgb.params, 3.33e6)
    da = model_flops(representation="pwtp", backbone="x3d_xs", num_classes=174, segments=4, frames=8, crop=160)
    # The paper's DA X3D-XS costs 0.8G; ours is below it (see README, "Models and FLOPs").
    assert rgb.gflops < da.gflops <= 0.8
    assert da.backbone_gflops == rgb.backbone_gflops  # the backbone sees 4 frames either way
    assert _close(da.params, 3.34e6) and da.representation_params == count_params(PWTP(frames=8))


def test_tsm_r50_per_view():
    at224 = model_flops(representation="rgb", backbone="tsm_resnet50", num_classes=174, segments=8, frames=1, crop=224)
    assert _close(at224.gflops, 33.0) and _close(at224.params, 23.8e6)
    at256 = model_flops(representation="rgb", backbone="tsm_resnet50", num_classes=174, segments=8, frames=1, crop=256)
    assert _close(at256.gflops, 42.9)
    da = model_flops(representation="pwtp", backbone="tsm_resnet50", num_classes=174, segments=8, frames=6, crop=256)
    assert _close(da.gflops, 43.1) and da.backbone_gflops == at256.backbone_gflops


@pytest.mark.parametrize("frames,published", [(6, 7.13e3), (8, 9.7e3)])
def test_pwtp_parameters(frames, published):
    report = model_flops(representation="pwtp", backbone="small2d", num_classes=10, segments=1, frames=frames, crop=32)
    assert _close(report.representation_params, published)


def test_counts_scale_with_the_view():
    a = model_flops(representation="rgb", backbone="small2d", num_classes=10, segments=2, frames=1, crop=32)
    b = model_flops(representation="rgb", backbone="small2d", num_classes=10, segments=4, frames=1, crop=64)
    assert b.backbone_gflops == pytest.approx(8 * a.backbone_gflops, rel=1e-3)  # 2x segments, 4x pixels
    flow = model_flops(representation="flow_farneback", backbone="small2d", num_classes=10, segments=2, frames=3, crop=32)
    assert flow.representation_gflops is None  # OpenCV: not counted
    assert "n/a" in format_table([dict(representation="flow_farneback", backbone="small2d", segments=2, frames=3, crop=32, num_classes=10, report=flow)])
    # what is counted follows the classes' declarations, not the names: TVNet's work is all
    # element-wise (no multiply-adds in the counter's sense), so it is not countable either
    tvnet = model_flops(representation="flow_tvnet", backbone="small2d", num_classes=10, segments=1, frames=2, crop=16,
                        representation_kwargs={"iterations": 2})
    assert tvnet.representation_gflops is None and tvnet.representation_params > 0


def test_paper_table_lists_the_papers_models():
    names = {row["model"] for row in PAPER_MODELS}
    assert {"X3D-XS", "DA X3D-XS", "TSM R50", "DA TSM R50", "X3D-M", "ViT-B/16"} <= names
    row = dict(PAPER_MODELS[0], report=FlopsReport(0.0, 0.61, 0, 3_794_322))
    table = format_table([row])
    assert "| X3D-XS | rgb | 4 x 1 | 160 | 400 | 0.000 | 0.61 | 0.61 | 0.6 | 0 | 3.79M | 3.79M |" in table


def test_cli_flops():
    runner = CliRunner()
    res = runner.invoke(app, ["flops", "--representation", "pwtp", "--backbone", "small3d", "--segments", "2", "--frames", "4", "--crop", "32", "--num-classes", "7"])
    assert res.exit_code == 0, res.output
    assert "| small3d | pwtp | 2 x 4 | 32 | 7 |" in res.output
    helped = runner.invoke(app, ["flops", "--help"])
    assert all(name in helped.output for name in REPRESENTATIONS), helped.output  # from the dict
    bad = runner.invoke(app, ["flops", "--backbone", "resnet9000"])
    assert bad.exit_code != 0 and "unknown backbone" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("representation", list(REPRESENTATIONS))
def test_cli_defaults_are_valid_for_every_representation(representation):
    res = CliRunner().invoke(app, ["flops", "--representation", representation, "--backbone", "small2d",
                                   "--crop", "32"])
    assert res.exit_code == 0, res.output
    frames = 1 if representation == "rgb" else 8
    assert f"| small2d | {representation} | 8 x {frames} | 32 | 174 |" in res.output


def test_cli_flops_of_a_checkpoint_and_of_a_config(clips, tmp_path):
    from cluster_util import train_args
    from dynapp.apps.inference import load

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", *train_args(clips, out, "data.num_workers=0", "optim.epochs=1",
                                                        "eval.crop_size=40")])
    assert res.exit_code == 0, res.output
    ck = out / "checkpoints" / "last.pt"
    res = CliRunner().invoke(app, ["flops", "--checkpoint", str(ck)])
    assert res.exit_code == 0, res.output
    row = res.output.strip().splitlines()[-1]
    assert row.startswith("| small2d | pwtp | 2 x 4 | 40 | 2 |")  # the test view, the run's 2 classes
    assert row.split("|")[-2].strip() == f"{count_params(load(ck).model) / 1e3:.2f}K"  # the checkpoint's model
    res = CliRunner().invoke(app, ["flops", "--config", str(out / "config.yaml"), "--crop", "64"])
    assert res.exit_code == 0, res.output
    assert "| small2d | pwtp | 2 x 4 | 64 | 174 |" in res.output  # a config without data.num_classes: 174
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk" * 10)
    res = CliRunner().invoke(app, ["flops", "--checkpoint", str(junk)])
    assert res.exit_code == 1 and res.output.startswith(f"error: cannot read checkpoint {junk}") and "Traceback" not in res.output
