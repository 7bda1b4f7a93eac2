"""A run ends with a summary: best.pt chosen by validation accuracy, per-class accuracy, a
confusion-matrix PNG, a curves PNG and the paths of every file; `dynapp eval` adds per-class
accuracy and the confusion matrix and leaves out top-5 with 5 classes or fewer."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from cluster_util import read_csv, train_args
from dynapp.cli import app
from dynapp.engine.checkpoint import load_checkpoint
from dynapp.engine.eval_log import EvalLog, read_eval_log
from dynapp.engine.evaluate import classification_metrics, confusion_matrix, per_class_accuracy


def _result(top1: float) -> dict:
    return {"video": {"top1": top1, "mean_class": top1}, "clip": {"top1": top1}}


def test_best_pt_is_the_last_pt_of_the_best_evaluation(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    log = EvalLog(tmp_path, last=last)
    for epoch, top1 in enumerate([50.0, 80.0, 80.0, 60.0], start=1):
        last.write_bytes(f"epoch {epoch}".encode())
        assert log.add(_result(top1), epoch=epoch, step=10 * epoch) == (epoch in (1, 2))
    assert (last.parent / "best.pt").read_bytes() == b"epoch 2"  # the first of equals
    assert log.best["epoch"] == 2 and [r["step"] for r in read_eval_log(tmp_path / "eval_log.csv")] == [10, 20, 30, 40]
    resumed = EvalLog(tmp_path, last=last, start_step=25)  # resuming from step 25 keeps the rows up to it
    assert [r["step"] for r in resumed.rows] == [10, 20] and resumed.best["epoch"] == 2
    assert not resumed.add(_result(70.0), epoch=3, step=30) and (last.parent / "best.pt").read_bytes() == b"epoch 2"


def test_metrics_per_class_confusion_and_no_top5_for_few_classes():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 1, 1, 2])
    assert confusion_matrix(scores, labels).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert per_class_accuracy(scores, labels, ["a", "b", "c"]) == {"a": 100.0, "b": 50.0, "c": 100.0}
    assert per_class_accuracy(scores[:2], labels[:2], ["a", "b", "c"])["c"] is None
    assert "top5" not in classification_metrics(scores, labels)
    assert "top5" in classification_metrics(torch.rand(4, 6), torch.tensor([0, 1, 2, 5]))


def test_run_ends_with_best_pt_summary_and_figures_and_eval_adds_per_class(clips, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", *train_args(clips, out, "data.num_workers=2", "checkpoint.every_steps=0")])
    assert res.exit_code == 0, res.output
    evals = read_eval_log(out / "eval_log.csv")
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    best = max(evals, key=lambda r: r["video_top1"])
    assert load_checkpoint(out / "checkpoints" / "best.pt")["step"] == best["step"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == evals[-1]["step"] == int(
        read_csv(out / "train_log.csv")[-1]["step"])
    for name in ("confusion.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    block = res.output[res.output.index("run finished"):]
    assert f"best  video top-1 {best['video_top1']:6.2f}  at epoch {best['epoch']}" in block
    assert "per class (last, videos):" in block and "class0 " in block and "class1 " in block
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "eval.json", "confusion.png", "curves.png",
                 "train_log.csv", "eval_log.csv"):
        assert str(out / name) in block, name
    saved = json.loads((out / "eval.json").read_text())
    assert "top5" not in saved["video"] and sum(map(sum, saved["confusion"])) == saved["video"]["count"] == 3

    res = runner.invoke(app, ["eval", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--out",
                              str(tmp_path / "best.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "best.json").read_text())
    assert result["video"]["top1"] == best["video_top1"]
    assert set(result["video"]["per_class"]) == {"class0", "class1"} and "top5" not in result["video"]
    assert "split" not in result and (tmp_path / "best.confusion.png").is_file()
    assert result["confusion_png"] == str(tmp_path / "best.confusion.png")
