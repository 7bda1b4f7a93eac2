"""Training logs: a CSV per process, TensorBoard and the progress bar on process 0."""

from __future__ import annotations

import csv
import math
from pathlib import Path


class TrainLogger:
    FIELDS = ["step", "epoch", "lr", "loss", "rec_loss", "enopr", "alpha", "acc", "grad_norm", "samples_per_s"]

    def __init__(self, out_dir: Path, *, rank: int, csv_log: bool, tensorboard: bool, start_step: int = 0):
        """``start_step``: the step a run resumes from; rows logged after it by the interrupted
        run are dropped (CSV rewritten, TensorBoard events purged), so no step appears twice."""
        self.rank = rank
        self._csv = self._writer = self._tb = None
        if csv_log:
            name = "train_log.csv" if rank == 0 else f"train_log.rank{rank}.csv"
            path = out_dir / name
            kept: list[dict] = []
            if start_step > 0 and path.exists():
                with open(path, newline="") as f:
                    kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
            self._csv = open(path, "w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=self.FIELDS)
            self._writer.writeheader()
            for r in kept:
                self._writer.writerow({k: r.get(k, "") for k in self.FIELDS})
            self._csv.flush()
        if tensorboard and rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, row: dict) -> None:
        if self._writer is not None:
            self._writer.writerow({k: row.get(k, "") for k in self.FIELDS})
            self._csv.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def log_eval(self, result: dict, step: int) -> None:
        if self._tb is not None:
            for level in ("clip", "video"):
                for k in ("top1", "top5", "mean_class"):
                    self._tb.add_scalar(f"eval/{level}_{k}", result[level][k], step)

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._tb is not None:
            self._tb.close()
