"""Training logs that read well in a file: lines instead of a bar when stdout is not a terminal,
empty cells for columns that do not apply (alpha, ENoPR of RGB), where the files are."""

from __future__ import annotations

import csv
import io
import re

from dynapp.config import load_config
from dynapp.engine.log import TrainLogger, format_duration
from dynapp.engine.run import run_from_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _rows(steps: int, *, aux: bool, steps_per_epoch: int = 4) -> list[dict]:
    return [{"step": s, "epoch": (s - 1) // steps_per_epoch, "lr": 0.1, "loss": 1.0 / s, "rec_loss": 1.0 / s,
             "enopr": 0.5 if aux else None, "alpha": 0.25 if aux else float("nan"), "acc": 50.0, "grad_norm": 1.0,
             "samples_per_s": 10.0} for s in range(1, steps + 1)]


def _log(tmp_path, stream, rows, **kw) -> str:
    logger = TrainLogger(tmp_path, rank=0, csv_log=True, tensorboard=False, progress=True, every_steps=2,
                         total_steps=len(rows), steps_per_epoch=4, checkpoint_dir=tmp_path / "checkpoints",
                         stream=stream, **kw)
    for row in rows:
        logger.log(row)
    logger.close()
    return stream.getvalue()


def test_a_file_gets_a_line_every_n_steps_and_per_epoch(tmp_path):
    text = _log(tmp_path, io.StringIO(), _rows(8, aux=True))
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == (f"run files: log {(tmp_path / 'train_log.csv').resolve()}; "
                        f"checkpoints {(tmp_path / 'checkpoints').resolve()}")
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"epoch \d+ step (\d+)/8 ", line))]
    assert steps == [1, 2, 4, 6, 8]
    epochs = [line for line in lines if re.match(r"epoch \d/2 done at step \d", line)]
    assert len(epochs) == 2 and "(4 steps in " in epochs[0]
    step4 = next(line for line in lines if line.startswith("epoch 1 step 4/8 "))
    for field in ("loss 0.2500", "acc 50.0", "lr 0.1", "alpha 0.250", "enopr 0.5", "samples/s 10.0", "eta 0:00:0"):
        assert field in step4, field
    assert "eta" not in lines[1]  # step 1: no rate measured yet


def test_columns_that_do_not_apply_are_empty(tmp_path):
    text = _log(tmp_path, io.StringIO(), _rows(4, aux=False))
    assert "alpha" not in text and "enopr" not in text and "nan" not in text
    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["alpha"] == "" and r["enopr"] == "" and r["loss"] != "" for r in rows)
    assert "nan" not in (tmp_path / "train_log.csv").read_text()


def test_a_terminal_gets_a_bar(tmp_path):
    text = _log(tmp_path, _Terminal(), _rows(8, aux=True))
    assert "\r" in text and "epoch 1" in text  # tqdm redraws in place
    assert not re.search(r"^epoch \d+ step \d+/8 ", text, re.M)  # no per-step lines
    assert len(re.findall(r"epoch \d/2 done at step", text)) == 2


def test_format_duration():
    assert format_duration(0) == "0:00:00" and format_duration(3725.4) == "1:02:05"
    assert format_duration(2 * 86400 + 61) == "2d 0:01:01"


def test_an_rgb_run_logs_empty_alpha_and_enopr_and_says_where_its_files_are(tmp_path, capsys):
    out = tmp_path / "rgb"
    cfg = load_config(None, [
        "data.dataset=random", "data.segments=2", "data.frames=4", "data.crop_size=32", "data.num_samples=8",
        "data.num_workers=0", "model.representation=rgb", "model.backbone=small2d",
        "model.backbone_kwargs.widths=[8,8,8,8]", "optim.batch_size=2", "optim.epochs=2", "log.every_steps=3",
        "eval.every_epochs=0", f"log.out_dir={out}"])
    run_from_config(cfg)
    text = capsys.readouterr().out
    assert "\r" not in text
    assert f"run files: log {(out / 'train_log.csv').resolve()}; checkpoints {(out / 'checkpoints').resolve()}; " \
           f"tensorboard {(out / 'tensorboard').resolve()}" in text
    assert [int(s) for s in re.findall(r"^epoch \d step (\d+)/8 ", text, re.M)] == [1, 3, 6]
    assert len(re.findall(r"^epoch \d/2 done", text, re.M)) == 2
    assert "alpha" not in text and "enopr" not in text and "nan" not in text
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["alpha"] == "" and r["enopr"] == "" and float(r["loss"]) > 0 for r in rows)


def test_no_progress_prints_nothing_but_still_logs(tmp_path):
    stream = io.StringIO()
    logger = TrainLogger(tmp_path, rank=0, csv_log=True, tensorboard=False, progress=False, total_steps=8,
                         steps_per_epoch=4, checkpoint_dir=tmp_path, stream=stream)
    for row in _rows(8, aux=True):
        logger.log(row)
    logger.print("preempted (SIGTERM): ...")  # explicit messages still go out
    logger.close()
    assert stream.getvalue() == "preempted (SIGTERM): ...\n"
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 9
