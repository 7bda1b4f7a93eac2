"""``dynapp features``: pooled backbone features to .npy + index.csv, DA frames, resume, bad videos."""

from __future__ import annotations

import csv

import numpy as np
import torch
from typer.testing import CliRunner

from dynapp.apps.features import dataset_videos, extract_features, feature_name
from dynapp.apps.inference import load
from dynapp.cli import app

# the generated colour videos and the checkpoints of small models of the sibling test files
from test_export import MODELS, make_checkpoint  # noqa: I001
from test_predict import COLOURS, write_colour_videos


def _index(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_features_of_a_dataset_with_da_frames_and_resume(tmp_path):
    root = tmp_path / "data"
    videos = write_colour_videos(root / "train", 1, seed=0) + write_colour_videos(root / "val", 1, seed=50)
    ck = make_checkpoint(tmp_path / "m.pt", **MODELS["small2d"], classes=sorted(COLOURS))
    out = tmp_path / "feats"
    args = ["features", "--checkpoint", str(ck), "--dataset", "folder", "--root", str(root), "--out", str(out),
            "--save-frames", "--views", "1x3", "--workers", "1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 videos done, 0 already done, 0 failed" in result.stdout
    feats = np.load(out / "features.npy")
    rows = _index(out / "index.csv")
    rec = load(ck)
    assert feats.shape == (6, rec.model.backbone.num_features) and len(rows) == 6
    assert {(r["class"], r["label"]) for r in rows} == {(c, str(i)) for i, c in enumerate(sorted(COLOURS))}
    by_video = {r["video"]: int(r["row"]) for r in rows}
    path = videos[0][0]
    with torch.no_grad():  # the mean over the views of the pooled features, before the classifier
        expected = rec.features(rec.load_views(path, "1x3")).mean(0).numpy()
    np.testing.assert_allclose(feats[by_video[str(path)]], expected, rtol=1e-5, atol=1e-6)
    frames = np.load(out / rows[0]["frames_file"])
    assert frames.dtype == np.float16 and frames.shape == (3, 3, 2, 32, 32)  # (V, C, S, H, W) DA frames
    assert rows[0]["file"] == f"videos/{feature_name(rows[0]['video'])}.npy"

    (out / rows[2]["file"]).unlink()  # resume: only the missing video is computed again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "1 videos done, 5 already done" in again.stdout
    np.testing.assert_array_equal(np.load(out / "features.npy"), feats)


def test_features_of_files_report_bad_videos(tmp_path):
    videos = write_colour_videos(tmp_path / "v", 1, seed=3)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    ck = make_checkpoint(tmp_path / "m.pt", **MODELS["small2d"])
    result = extract_features(load(ck), [bad] + [p for p, _ in videos], tmp_path / "out", progress=False)
    assert result["done"] == 3 and [p for p, _ in result["failed"]] == [str(bad)]
    rows = _index(tmp_path / "out" / "index.csv")
    assert [r["video"] for r in rows] == [str(p) for p, _ in videos] and rows[0]["label"] == ""
    cli = CliRunner().invoke(app, ["features", str(bad), "--checkpoint", str(ck), "--out", str(tmp_path / "o2"),
                                   "--no-progress"])
    assert cli.exit_code == 1 and "bad.mp4" in cli.stderr
    usage = CliRunner().invoke(app, ["features", "--checkpoint", str(ck), "--out", str(tmp_path / "o3")])
    assert usage.exit_code == 1 and "either videos or --dataset" in usage.stderr


def test_dataset_videos_subsets(tmp_path):
    write_colour_videos(tmp_path / "train", 2, seed=0)
    write_colour_videos(tmp_path / "val", 1, seed=9)
    paths, labels, classes = dataset_videos("folder", tmp_path, subset="test")
    assert len(paths) == 3 and classes == sorted(COLOURS) and labels == [0, 1, 2]
    assert len(dataset_videos("folder", tmp_path)[0]) == 9
