"""``dynapp export``: ONNX and TorchScript round trips of small models, PWTP included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dynapp import pwtp as pwtp_module
from dynapp.apps.export import export_and_check, pytorch_path, random_clip
from dynapp.apps.inference import load
from dynapp.cli import app
from dynapp.config import config_to_dict, load_config
from dynapp.engine.checkpoint import save_checkpoint
from dynapp.model import build_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

# Small versions of the paper's backbones; PWTP (2 segments x 4 frames) in front of each.
MODELS = {
    "small2d": dict(backbone="small2d", backbone_kwargs={"widths": [8, 16, 16, 16]}),
    "x3d_xs": dict(backbone="x3d_xs", backbone_kwargs={"stem_width": 8, "widths": [8, 8, 16, 16],
                                                       "depths": [1, 1, 1, 1], "head_width": 32}),
    "tsm_r18": dict(backbone="tsm_resnet50", backbone_kwargs={"arch": "resnet18"}),
}


def make_checkpoint(path: Path, backbone: str, backbone_kwargs: dict, representation: str = "pwtp",
                    classes: list[str] | None = None) -> Path:
    """A checkpoint as ``dynapp train`` writes it (model + config), of a randomly initialised model
    whose classifier is scaled up so that the logits are far from zero."""
    cfg = load_config(None, ["data.dataset=folder", "data.segments=2", "data.frames=4", "data.crop_size=32",
                             f"model.representation={representation}", f"model.backbone={backbone}"])
    cfg.model.backbone_kwargs = dict(backbone_kwargs)
    classes = classes or ["a", "b", "c"]
    torch.manual_seed(0)
    model = build_model(representation=representation, backbone=backbone, num_classes=len(classes), segments=2,
                        frames=4, backbone_kwargs=backbone_kwargs)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    torch.nn.init.normal_(model.head.bias, std=1.0)
    return save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg), "classes": classes, "step": 0},
                           path)


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_round_trip(name, tmp_path):
    rec = load(make_checkpoint(tmp_path / "m.pt", **MODELS[name]))
    result = export_and_check(rec, tmp_path / "m.ts.pt", fmt="torchscript")
    assert result["max_abs_diff"] <= 1e-5, result
    scripted = torch.jit.load(str(tmp_path / "m.ts.pt"))
    for batch in (1, 4):  # the batch axis is free
        clip = random_clip(rec, batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(scripted(clip), rec(clip), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_round_trip(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    rec = load(make_checkpoint(tmp_path / "m.pt", **MODELS[name]))
    result = export_and_check(rec, tmp_path / "m.onnx", fmt="onnx")
    assert result["max_abs_diff"] <= 1e-4, result
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "clip" and inp.type == "tensor(uint8)" and not isinstance(inp.shape[0], int)
    clip = random_clip(rec, 1, seed=7)
    with torch.no_grad():
        expected = rec(clip)
    got = torch.from_numpy(session.run(None, {"clip": clip.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_float_input_and_logits_of_the_model(tmp_path):
    rec = load(make_checkpoint(tmp_path / "m.pt", **MODELS["small2d"]))
    result = export_and_check(rec, tmp_path / "f.ts.pt", fmt="torchscript", input_dtype="float")
    assert result["input"] == "float" and result["max_abs_diff"] <= 1e-5
    clip = random_clip(rec, 2, "float")
    with torch.no_grad():  # the exported function is the model's logits on the normalised clip
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "f.ts.pt"))(clip), rec.model(clip).logits)


def test_pytorch_path_is_exact_and_restores():
    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4,
                        backbone_kwargs={"widths": [8, 16, 16, 16]}).eval()
    pwtp = next(m for m in model.modules() if isinstance(m, pwtp_module.PWTP))
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        with pytorch_path(model):
            inlined = model(clip).logits
            assert pwtp.last_impl == ("reference", "reference") and "apply" in vars(pwtp_module._RankOneDA)
        assert pwtp.impl == "auto" and "apply" not in vars(pwtp_module._RankOneDA)  # all as it was
        pwtp.impl = "reference"
        reference = model(clip).logits
    torch.testing.assert_close(inlined, reference, rtol=0, atol=0)


def test_cli_export(tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt", **MODELS["small2d"])
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(ck), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.ts.pt").is_file()
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("largest difference of the logits from PyTorch on a random clip: ")
    exported, default = (float(x) for x in re.findall(r"(\S+) \(", line))
    assert exported <= 1e-5 and default <= 1e-4
    bad = CliRunner().invoke(app, ["export", "--checkpoint", str(ck), "--format", "tflite"])
    assert bad.exit_code == 1 and "--format must be one of onnx, torchscript" in bad.stderr
    bad = CliRunner().invoke(app, ["export", "--checkpoint", str(tmp_path / "none.pt")])
    assert bad.exit_code == 1 and "checkpoint not found" in bad.stderr
