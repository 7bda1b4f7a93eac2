"""Messages a person can act on: unreadable videos as one line each (path and reason), counted at
the end of a run and in eval.json, each readable video's views counted once; damaged and
code-running checkpoints refused in dynapp's own words."""

from __future__ import annotations

import json
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cluster_util import ENV, cli, write_clips
from dynapp.cli import app


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def with_bad_videos(tmp_path_factory):
    """train/ and val/ clips with one junk .mp4 in each: val has 3 readable videos and 1 unreadable."""
    root = write_clips(tmp_path_factory.mktemp("bad"), val_per_class=(2, 1))
    (root / "train" / "class0" / "v1b.mp4").write_bytes(b"\x00" * 64)  # sorted between v1 and v2
    (root / "val" / "class0" / "v0b.mp4").write_bytes(b"not a video\n" * 8)  # between v0 and v1
    return root


def test_bad_videos_are_one_line_each_counted_at_the_end_and_in_eval_json(with_bad_videos, tmp_path):
    out = tmp_path / "run"
    args = ["data.dataset=folder", f"data.root={with_bad_videos}", "data.segments=2", "data.frames=4",
            "data.crop_size=32", "model.backbone=small2d", "model.backbone_kwargs.widths=[8,8,8,8]",
            "optim.batch_size=2", "optim.epochs=1", "eval.clips=2", "data.num_workers=2", "log.tensorboard=false",
            "log.progress=false", "device=cpu", f"log.out_dir={out}"]
    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warned) == 2, done.stderr  # one line per bad video, nothing else
    assert all(line.startswith("warning: skipping unreadable video ") for line in warned)
    assert sorted(line.split()[4].rstrip(":") for line in warned) == [
        str(with_bad_videos / "train" / "class0" / "v1b.mp4"), str(with_bad_videos / "val" / "class0" / "v0b.mp4")]
    assert "fetch.py" not in done.stderr and "BadVideoWarning" not in done.stderr
    assert "skipped videos: 2 unreadable" in done.stdout
    result = json.loads((out / "eval.json").read_text())
    assert [v["path"] for v in result["skipped_videos"]] == [str(with_bad_videos / "val" / "class0" / "v0b.mp4")]
    # 3 readable videos x 2 clips: the junk video's views (answered with its neighbour's) are not counted
    assert result["video"]["count"] == 3 and result["clip"]["count"] == 6

    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--views", "3x1",
                                   "--out", str(tmp_path / "e.json"), "data.num_workers=0"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["video"]["count"] == 3 and again["clip"]["count"] == 9 and len(again["skipped_videos"]) == 1


def _checkpoints(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"x": 1}, "payload": _Evil()}, evil)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil(), protocol=2))
    return {"junk": junk, "evil": evil, "raw": raw}


@pytest.mark.parametrize("command", ["eval", "predict", "train-init", "extract"])
def test_junk_and_untrusted_checkpoints_are_refused_in_dynapps_words(tmp_path, clips, command):
    video = next((clips / "val" / "class0").iterdir())
    for kind, path in _checkpoints(tmp_path).items():
        args = {"eval": ["eval", "--checkpoint", str(path)],
                "predict": ["predict", str(video), "--checkpoint", str(path)],
                "train-init": ["train", "data.dataset=folder", f"data.root={clips}", f"model.init_from={path}",
                               "model.backbone=small2d", f"log.out_dir={tmp_path / 'run'}"],
                "extract": ["extract", str(video), "--out", str(tmp_path / "x"), "--checkpoint", str(path)]}[command]
        res = CliRunner().invoke(app, args)
        text = res.output
        assert res.exit_code == 1 and "Traceback" not in text, (kind, text)
        assert "weights_only" not in text and "torch.load" not in text, text
        errors = [line for line in text.strip().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and text.strip().endswith(errors[0]), text  # (train first says what it trains on)
        expected = "cannot read checkpoint" if kind == "junk" else "refused to load"
        assert errors[0].startswith(f"error: {expected} {path}"), text
        if kind == "evil":
            assert "posix.system" in text and "would run code" in text
