"""The evaluations of a run: ``eval_log.csv`` (one row per evaluation) and ``checkpoints/best.pt``.

After each evaluation the run adds a row (epoch, step, video and clip top-1, mean class
accuracy).  When the video top-1 beats every earlier row, ``last.pt`` (written at that epoch's
end, just before the evaluation, so it holds the evaluated model) is copied to ``best.pt``
(atomically).  A resumed run keeps the rows up to the step it resumes from, so the best is the
best of the whole run.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

__all__ = ["EvalLog", "read_eval_log"]

FIELDS = ["epoch", "step", "video_top1", "clip_top1", "video_mean_class"]


def read_eval_log(path: str | os.PathLike) -> list[dict]:
    """The rows of an ``eval_log.csv`` as numbers (``[]`` when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{"epoch": int(r["epoch"]), "step": int(r["step"]),
             **{k: float(r[k]) for k in FIELDS[2:] if r.get(k) not in (None, "")}} for r in rows]


class EvalLog:
    """``out_dir/eval_log.csv`` and ``best.pt`` beside ``last`` (the run's ``last.pt``; None: no checkpoints).

    Only process 0 writes (other processes pass ``rank != 0`` and nothing happens).
    """

    def __init__(self, out_dir: str | os.PathLike, *, rank: int = 0, start_step: int = 0, last: Path | None = None):
        self.path = Path(out_dir) / "eval_log.csv"
        self.rank, self.last = rank, Path(last) if last is not None else None
        self.best_path = self.last.with_name("best.pt") if self.last is not None else None
        self.rows = [r for r in read_eval_log(self.path) if r["step"] <= start_step] if start_step else []
        if rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows(self.rows)

    @property
    def best(self) -> dict | None:
        """The row of the best video top-1 so far (the earliest of equals), or None."""
        return max(self.rows, key=lambda r: r["video_top1"], default=None)

    def add(self, result: dict, *, epoch: int, step: int) -> bool:
        """Record an evaluation result; True if it is the best so far (then ``best.pt`` is written)."""
        if self.rank != 0:
            return False
        previous = self.best
        row = {"epoch": epoch, "step": step, "video_top1": result["video"]["top1"],
               "clip_top1": result["clip"]["top1"], "video_mean_class": result["video"]["mean_class"]}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
        is_best = previous is None or row["video_top1"] > previous["video_top1"]
        if is_best and self.last is not None and self.last.is_file():
            tmp = self.best_path.with_name(f".{self.best_path.name}.tmp-{os.getpid()}")
            shutil.copyfile(self.last, tmp)
            os.replace(tmp, self.best_path)
        return is_best
