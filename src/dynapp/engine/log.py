"""Training logs: a CSV per process, TensorBoard and console progress on process 0.

Console progress reads well in a cluster log file: when stdout is a terminal, a tqdm bar per
epoch; otherwise (a file, a pipe, SLURM's ``slurm-%j.out``) no carriage returns at all, but one
line every ``every_steps`` optimiser steps and one line per epoch, each with loss, accuracy,
learning rate, alpha, samples/s, the share of the step spent waiting for data and the estimated
time left.  A value that does not apply
(alpha and ENoPR of an input without a learnt representation, e.g. RGB) is an empty CSV cell
and is left out of the console line, never ``nan`` or ``0.0``.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dynapp.joint_diagnostics import DIAGNOSTICS

__all__ = ["TrainLogger", "format_duration"]


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (days as ``Dd H:MM:SS``)."""
    s = max(int(round(seconds)), 0)
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def _cell(value: Any) -> Any:
    """A CSV cell: None and non-finite numbers (a column that does not apply) are empty."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _applies(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class TrainLogger:
    FIELDS = ["step", "epoch", "lr", "loss", "rec_loss", "enopr", "alpha", "acc", "grad_norm", "samples_per_s", "data_wait",
              *DIAGNOSTICS]  # the last: PWTP's training diagnostics (dynapp.joint_diagnostics), empty without PWTP

    def __init__(self, out_dir: Path, *, rank: int, csv_log: bool, tensorboard: bool, start_step: int = 0,
                 progress: bool = False, every_steps: int = 20, total_steps: int = 0, steps_per_epoch: int = 0,
                 checkpoint_dir: Path | None = None, stream: TextIO | None = None):
        """``start_step``: the step a run resumes from; rows logged after it by the interrupted
        run are dropped (CSV rewritten, TensorBoard events purged), so no step appears twice.

        ``progress``: console output on rank 0: where the files are, then a bar on a terminal
        or else a line every ``every_steps`` steps, and a line per epoch (False: none of it;
        :meth:`print` still prints).  ``stream``: where it goes (default ``sys.stdout``).
        """
        self.rank = rank
        self.out_dir = Path(out_dir)
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.progress, self.every_steps = progress and rank == 0, max(int(every_steps), 1)
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self._csv = self._writer = self._tb = None
        self._bar = None
        self._t0: float | None = None  # time and step of the first row logged by this process (ETA)
        self._step0 = 0
        self._epoch_rows: list[dict] = []
        self._epoch_t0 = time.perf_counter()  # start of the current epoch (of this process's part of it)
        files = []
        if csv_log:
            name = "train_log.csv" if rank == 0 else f"train_log.rank{rank}.csv"
            path = self.out_dir / name
            kept: list[dict] = []
            if start_step > 0 and path.exists():
                with open(path, newline="") as f:
                    kept = [r for r in csv.DictReader(f)
                            if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
            self._csv = open(path, "w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=self.FIELDS)
            self._writer.writeheader()
            for r in kept:
                self._writer.writerow({k: r.get(k, "") for k in self.FIELDS})
            self._csv.flush()
            files.append(f"log {path.resolve()}")
        if checkpoint_dir is not None:
            files.append(f"checkpoints {Path(checkpoint_dir).resolve()}")
        if tensorboard and rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = self.out_dir / "tensorboard"
            self._tb = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if start_step else None)
            files.append(f"tensorboard {tb_dir.resolve()} (tensorboard --logdir {tb_dir.resolve()})")
        if files and self.progress:
            self.print("run files: " + "; ".join(files))

    # ------------------------------------------------------------------------------------------

    def print(self, message: str) -> None:
        """One line on rank 0's console (above the bar when there is one)."""
        if self.rank != 0:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def _eta(self, step: int, now: float) -> float | None:
        if self._t0 is None or step <= self._step0 or not self.total_steps:
            return None
        return (now - self._t0) / (step - self._step0) * max(self.total_steps - step, 0)

    def _line(self, row: dict, eta: float | None) -> str:
        parts = [f"loss {row['loss']:.4f}" if _applies(row.get("loss")) else "",
                 f"acc {row['acc']:.1f}" if _applies(row.get("acc")) else "",
                 f"lr {row['lr']:.4g}" if _applies(row.get("lr")) else "",
                 f"alpha {row['alpha']:.3f}" if _applies(row.get("alpha")) else "",
                 f"enopr {row['enopr']:.4g}" if _applies(row.get("enopr")) else "",
                 f"samples/s {row['samples_per_s']:.1f}" if _applies(row.get("samples_per_s")) else "",
                 f"data wait {100 * row['data_wait']:.0f}%" if _applies(row.get("data_wait")) else "",
                 f"eta {format_duration(eta)}" if eta is not None else ""]
        return " ".join(p for p in parts if p)

    def log(self, row: dict) -> None:
        """One optimiser step: a CSV row, TensorBoard scalars, console progress (rank 0)."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._step0 = now, row["step"]
        if self._writer is not None:
            self._writer.writerow({k: _cell(row.get(k)) for k in self.FIELDS})
            self._csv.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and _applies(v):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])
        if not self.progress:  # rank 0 only
            return
        step, spe = row["step"], self.steps_per_epoch
        self._epoch_rows.append(row)
        eta = self._eta(step, now)
        if self.interactive:
            self._update_bar(row, eta)
        elif step % self.every_steps == 0 or step == 1:
            self.print(f"epoch {row['epoch'] + 1} step {step}/{self.total_steps} " + self._line(row, eta))
        if spe and step % spe == 0:
            self._end_epoch(row, now, eta)

    def _update_bar(self, row: dict, eta: float | None) -> None:
        spe = self.steps_per_epoch
        if self._bar is None:
            from tqdm import tqdm

            done = (row["step"] - 1) % spe if spe else 0
            self._bar = tqdm(total=spe or None, initial=done, desc=f"epoch {row['epoch'] + 1}", file=self.stream,
                             dynamic_ncols=True, leave=False)
        post = {"loss": row.get("loss"), "acc": row.get("acc"), "alpha": row.get("alpha")}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in post.items() if _applies(v)}, refresh=False)
        self._bar.update(1)

    def _end_epoch(self, row: dict, now: float, eta: float | None) -> None:
        rows, self._epoch_rows = self._epoch_rows, []
        t0, self._epoch_t0 = self._epoch_t0, now
        if self._bar is not None:
            self._bar.close()
            self._bar = None

        def mean(key: str) -> float | None:
            vals = [r[key] for r in rows if _applies(r.get(key))]
            return sum(vals) / len(vals) if vals else None

        summary = {"loss": mean("loss"), "acc": mean("acc"), "lr": row.get("lr"), "alpha": mean("alpha"),
                   "enopr": mean("enopr"), "samples_per_s": mean("samples_per_s"), "data_wait": mean("data_wait")}
        epochs = self.total_steps // self.steps_per_epoch if self.steps_per_epoch else 0
        self.print(f"epoch {row['epoch'] + 1}/{epochs} done at step {row['step']} ({len(rows)} steps in "
                   f"{format_duration(now - t0)}, means): " + self._line(summary, eta))

    def log_eval(self, result: dict, step: int) -> None:
        if self._tb is not None:
            for level in ("clip", "video"):
                for k in ("top1", "top5", "mean_class"):
                    if k in result[level]:  # no top-5 with 5 classes or fewer
                        self._tb.add_scalar(f"eval/{level}_{k}", result[level][k], step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._csv is not None:
            self._csv.close()
        if self._tb is not None:
            self._tb.close()
