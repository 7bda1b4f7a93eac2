"""Honest splits: a dataset without a validation part holds out a seeded, stratified share of each
class (written to the run folder, never trained on); an empty or missing data.root is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dynapp.cli import app
from dynapp.data.annotations import Annotation
from dynapp.data.catalog import has_validation
from dynapp.data.encode import write_video
from dynapp.data.holdout import holdout_split
from dynapp.engine.checkpoint import load_checkpoint, save_checkpoint
from dynapp.engine.run import eval_from_checkpoint

TINY = ["data.segments=2", "data.frames=4", "data.crop_size=32", "model.backbone=small2d",
        "model.backbone_kwargs.widths=[8,8,8,8]", "optim.batch_size=2", "optim.epochs=1", "log.tensorboard=false",
        "log.progress=false", "device=cpu"]


def write_flat(root: Path, per_class: tuple[int, ...] = (5, 5), seed: int = 0) -> list[Path]:
    """``root/<class>/vN.mp4`` without train/val sub-folders: textures moving left or right."""
    rng = np.random.default_rng(seed)
    paths = []
    for label, count in enumerate(per_class):
        for i in range(count):
            texture = rng.integers(0, 256, (40, 96, 3), dtype=np.uint8)
            step = 2 if label % 2 == 0 else -2
            frames = np.stack([np.roll(texture, step * t, axis=1)[:, :48] for t in range(16)])
            (root / f"class{label}").mkdir(parents=True, exist_ok=True)
            paths.append(write_video(root / f"class{label}" / f"v{i}.mp4", frames))
    return paths


def _read_list(path: Path) -> list[tuple[str, int]]:
    return [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in path.read_text().splitlines()]


def test_holdout_is_stratified_disjoint_and_seeded():
    items = [Annotation(Path(f"/v/{c}/{i}.mp4"), c) for c in range(3) for i in range(10)] + [
        Annotation(Path("/v/3/only.mp4"), 3)]
    train, val = holdout_split(items, 0.2, seed=0)
    assert sorted(a.label for a in val) == [0, 0, 1, 1, 2, 2]  # 2 of each class of 10, none of the lone video
    assert not {a.path for a in train} & {a.path for a in val} and len(train) + len(val) == len(items)
    assert holdout_split(list(reversed(items)), 0.2, seed=0)[1] == list(reversed(val))  # the order does not matter
    assert holdout_split(items, 0.2, seed=1)[1] != val
    assert [len(part) for part in holdout_split(items[:2], 0.9)] == [1, 1]  # a class keeps one video for training
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(items, 1.0)


def test_has_validation(tmp_path):
    write_flat(tmp_path / "flat", (1,))
    assert not has_validation("folder", tmp_path / "flat")
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    (tmp_path / "split" / "val" / "a").mkdir(parents=True)
    assert has_validation("folder", tmp_path / "split")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("a.mp4 0\n")
    assert not has_validation("list", tmp_path / "lists") and not has_validation("list", tmp_path / "lists/train.txt")
    (tmp_path / "lists" / "val.txt").write_text("b.mp4 0\n")
    assert has_validation("list", tmp_path / "lists") and has_validation("ucf101", tmp_path)


def test_folder_without_val_holds_out_and_eval_uses_the_same_videos(tmp_path):
    root = tmp_path / "videos"
    videos = write_flat(root)
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "data.dataset=folder", f"data.root={root}", "data.num_workers=2",
                              f"log.out_dir={out}", *TINY])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("validation:")]
    assert len(lines) == 1 and "2 of its 10 videos" in lines[0] and str(out / "split") in lines[0]
    train, val = _read_list(out / "split" / "train.txt"), _read_list(out / "split" / "val.txt")
    assert sorted(lbl for _, lbl in val) == [0, 1]  # one of each class of 5 (0.2 x 5)
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert sorted(p for p, _ in train + val) == sorted(str(v.resolve()) for v in videos)
    assert (out / "split" / "classes.txt").read_text().split() == ["class0", "class1"]
    assert json.loads((out / "eval.json").read_text())["video"]["count"] == 2
    # dynapp eval reads the same hold-out from the saved config
    res = runner.invoke(app, ["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--out",
                              str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["video"]["count"] == 2
    # a checkpoint of a run from before the hold-out (no data.val_fraction in its config) trained on every video
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    del ck["config"]["data"]["val_fraction"]
    old = save_checkpoint(ck, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="trained on every video"):
        eval_from_checkpoint(old, out=tmp_path / "old.json")
    # the written lists are a `list` dataset with its own validation part: nothing held out again
    res = runner.invoke(app, ["train", "data.dataset=list", f"data.root={out / 'split'}", "data.num_workers=0",
                              f"log.out_dir={tmp_path / 'again'}", *TINY])
    assert res.exit_code == 0, res.output
    assert "validation:" not in res.output
    assert json.loads((tmp_path / "again" / "eval.json").read_text())["video"]["count"] == 2


def test_list_file_without_val_list_and_no_validation(tmp_path):
    videos = write_flat(tmp_path / "videos", (4, 4))
    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{v} {0 if v.parent.name == 'class0' else 1}\n" for v in videos))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "data.dataset=list", f"data.root={listing}", "data.num_workers=0",
                              f"log.out_dir={tmp_path / 'run'}", *TINY])
    assert res.exit_code == 0, res.output
    assert "2 of its 8 videos" in res.output
    assert len(_read_list(tmp_path / "run" / "split" / "val.txt")) == 2
    res = runner.invoke(app, ["train", "data.dataset=list", f"data.root={listing}", "data.val_fraction=0",
                              "data.num_workers=0", f"log.out_dir={tmp_path / 'none'}", *TINY])
    assert res.exit_code == 0, res.output
    assert "validation: none" in res.output and not (tmp_path / "none" / "eval.json").exists()


@pytest.mark.parametrize("root,message", [(None, "data.root: empty"), ("", "data.root: empty"),
                                          ("/no/such/folder", "data.root: /no/such/folder does not exist")])
def test_empty_or_missing_root_is_one_line_error(tmp_path, monkeypatch, root, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # a folder that would become a class
    given = [] if root is None else [f"data.root={root}"]
    res = CliRunner().invoke(app, ["train", "data.dataset=folder", *given, *TINY])
    assert res.exit_code == 1 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "runs" / "default").exists()
