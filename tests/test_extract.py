"""`dynapp extract`: PNGs of frame average | dynamic appearance for a generated video."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from dynapp import PWTP
from dynapp.cli import app
from dynapp.data.encode import write_video
from dynapp.apps.extract import extract, load_pwtp


def _moving_square(path, n=24, h=24, w=32):
    frames = np.full((n, h, w, 3), 60, np.uint8)
    for t in range(n):
        x = t % (w - 6)
        frames[t, 8:14, x:x + 6] = 230
    return write_video(path, frames)


def test_extract_fits_pwtp_and_writes_one_png_per_segment(tmp_path):
    video = _moving_square(tmp_path / "v.mp4")
    paths = extract(video, tmp_path / "out", segments=3, frames=4, steps=20, short_side=16, progress=False)
    assert [p.name for p in paths] == ["segment_00.png", "segment_01.png", "segment_02.png"]
    img = np.asarray(Image.open(paths[1]))
    assert img.shape == (16, 2 * 21 + 4, 3)  # 16 x 21 frames, average | gap | DA
    deviation = np.abs(img[:, 25:].astype(int) - 128).mean(axis=2)  # DA panel, 128 = zero
    # After fitting (minimising ENoPR), the static background is close to zero DA and the
    # square moving through rows 5-9 (at 16 px) stands out.  Unfitted (steps=0) both are ~65.
    background, square = np.median(deviation[:4]), deviation[5:10].max()
    assert background < 30 and square > 3 * background + 20


def test_extract_with_checkpoints_bare_and_model_prefixed(tmp_path):
    video = _moving_square(tmp_path / "v.mp4")
    torch.manual_seed(0)
    pwtp = PWTP(frames=4, channels=8)
    bare = tmp_path / "bare.pt"
    torch.save(pwtp.state_dict(), bare)
    full = tmp_path / "model.pt"
    torch.save({"model": {f"representation.pwtp.{k}": v for k, v in pwtp.state_dict().items()}
                | {"head.weight": torch.zeros(2, 2)}, "epoch": 3}, full)
    loaded = load_pwtp(full)
    assert loaded.frames == 4
    for k, v in pwtp.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    a = extract(video, tmp_path / "a", segments=2, frames=4, checkpoint=bare, short_side=16, progress=False)
    b = extract(video, tmp_path / "b", segments=2, frames=4, checkpoint=full, short_side=16, progress=False)
    assert np.array_equal(np.asarray(Image.open(a[0])), np.asarray(Image.open(b[0])))


def test_extract_reads_the_pwtp_of_a_training_checkpoint(tmp_path):
    from dynapp.engine.checkpoint import save_checkpoint
    from dynapp.model import build_model

    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4)
    ckpt = save_checkpoint({"model": model.state_dict(), "epoch": 1}, tmp_path / "run.pt")
    pwtp = load_pwtp(ckpt)
    assert pwtp.frames == 4
    for k, v in model.representation.pwtp.state_dict().items():
        assert torch.equal(pwtp.state_dict()[k], v)
    # what the weights do not show (the leak-free option, the stride) comes from the run config
    config = {"model": {"representation": "pwtp", "representation_kwargs": {"static": "remove", "stride": 4}}}
    leak_free = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4,
                            representation_kwargs=config["model"]["representation_kwargs"])
    ckpt = save_checkpoint({"model": leak_free.state_dict(), "epoch": 1, "config": config}, tmp_path / "leak_free.pt")
    pwtp = load_pwtp(ckpt)
    assert pwtp.static == "remove" and pwtp.conv.stride == (1, 4, 4)


def test_cli_extract_and_its_one_line_errors(tmp_path):
    runner = CliRunner()
    video = _moving_square(tmp_path / "v.mp4")
    res = runner.invoke(app, ["extract", str(video), "--out", str(tmp_path / "o"), "--segments", "2",
                              "--frames", "4", "--steps", "1", "--size", "16"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["segment_00.png", "segment_01.png"]
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    res = runner.invoke(app, ["extract", str(junk), "--out", str(tmp_path / "j"), "--steps", "1"])
    assert res.exit_code == 1 and "junk.mp4" in res.output and "Traceback" not in res.output
    bad_ckpt = tmp_path / "bad.pt"
    torch.save({"model": {"backbone.fc.weight": torch.zeros(1)}}, bad_ckpt)
    res = runner.invoke(app, ["extract", str(video), "--out", str(tmp_path / "k"), "--checkpoint", str(bad_ckpt)])
    assert res.exit_code == 1 and "no PWTP weights" in res.output
