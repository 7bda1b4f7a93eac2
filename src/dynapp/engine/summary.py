"""The start and the end of a run: what it trains on and how; a confusion-matrix PNG, a curves PNG
and one block of text naming everything.

:func:`opening_summary` is the short block ``dynapp train`` prints first: the dataset (classes,
training and validation videos, listed files that are missing), the model and the recipe, and
where the full resolved configuration is saved.

:func:`plot_confusion` draws a confusion matrix (rows: true class) with its counts;
:func:`plot_curves` draws the training curves of ``train_log.csv`` (loss, accuracy with the
validation top-1 of ``eval_log.csv``, and for a learnt representation such as PWTP its weight
alpha and ENoPR); :func:`closing_summary` writes both into the run folder and returns the block
``dynapp train`` prints last: best and last accuracy, per-class accuracy, skipped videos and the
paths of the run's files.  Figures use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from dynapp.engine.eval_log import read_eval_log

__all__ = ["opening_summary", "plot_confusion", "plot_curves", "closing_summary", "format_per_class"]


def _names(classes: Sequence[str], shown: int = 8) -> str:
    return ", ".join(list(classes)[:shown]) + (f", ... ({len(classes) - shown} more)" if len(classes) > shown else "")


def _videos(dataset) -> tuple[int, int]:
    """(videos, listed files missing on disk) of a dataset with ``items``; (len, 0) otherwise."""
    items = getattr(dataset, "items", None)
    if items is None:
        return len(dataset), 0
    return len(items), sum(1 for a in items if not Path(a.path).exists())


def opening_summary(cfg, train_set, val_set, num_classes: int, *, device, config_file: str | os.PathLike) -> str:
    """The first lines of a run: dataset, model and recipe, and where the resolved config is."""
    d, m, o = cfg.data, cfg.model, cfg.optim
    classes = getattr(train_set, "classes", None)
    n_train, missing_train = _videos(train_set)
    where = f" {d.root}" if d.root else ""
    data = f"data: {d.dataset}{where}: {num_classes} classes" + (f" ({_names(classes)})" if classes else "")
    data += f", {n_train} training videos"
    missing = missing_train
    if val_set is not None:
        n_val, missing_val = _videos(val_set)
        missing += missing_val
        data += f", {n_val} validation videos" + (" (held out)" if getattr(train_set, "held_out", False) else "")
    else:
        data += ", no validation videos"
    if missing:
        data += f"; {missing} listed files missing (skipped)"
    flip = getattr(train_set, "flip", None)
    model = (f"model: {m.representation} + {m.backbone}, {d.segments} segments x {d.frames} frames, crop {d.crop_size}"
             + (f", flip {'on' if flip else 'off'}" if flip is not None else "")
             + (f" (pairs swapped: {len(d.flip_pairs)})" if flip and d.flip_pairs else ""))
    recipe = (f"recipe: {o.epochs} epochs, batch {o.batch_size}, lr {o.lr:g}, joint {cfg.joint.strategy}, "
              f"seed {cfg.seed}, device {device}")
    return "\n".join([data, model, recipe, f"config: {config_file} (every key and its meaning: dynapp config)"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike,
                   *, title: str = "confusion matrix (videos)") -> Path:
    """PNG of a confusion matrix: rows the true classes, columns the predicted ones, counts in the cells."""
    plt = _pyplot()
    k = len(matrix)
    size = min(max(3.0, 0.45 * k + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    tilt = k * max((len(c) for c in classes), default=0) > 24  # labels that would overlap
    ax.set_xticks(range(k), list(classes), rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(k), list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 30:
        peak = max((max(row) for row in matrix), default=0) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center",
                            color="white" if count > peak / 2 else "black", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _column(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        if r.get(key) not in (None, ""):
            steps.append(int(r["step"]))
            values.append(float(r[key]))
    return steps, values


def plot_curves(train_log: str | os.PathLike, eval_log: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """PNG of the training curves (None when the training log has no rows): loss; training
    accuracy with the validation video top-1; alpha and ENoPR when the log has them."""
    train_log = Path(train_log)
    if not train_log.is_file():
        return None
    with open(train_log, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    evals = read_eval_log(eval_log)
    panels = [("loss", "training loss"), ("acc", "accuracy (%)")]
    panels += [(k, t) for k, t in (("alpha", "alpha (weight of ENoPR)"), ("enopr", "ENoPR")) if _column(rows, k)[0]]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        steps, values = _column(rows, key)
        if steps:
            ax.plot(steps, values, lw=1, label="training" if key == "acc" else None)
        if key == "acc" and evals:
            ax.plot([r["step"] for r in evals], [r["video_top1"] for r in evals], "o-", label="validation (videos)")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_per_class(per_class: dict[str, float | None], *, width: int = 100) -> list[str]:
    """``name accuracy`` pairs wrapped to lines of at most ``width`` characters (``-``: no video)."""
    cells = [f"{name} {'-' if acc is None else f'{acc:.1f}'}" for name, acc in per_class.items()]
    lines, line = [], ""
    for cell in cells:
        if line and len(line) + 3 + len(cell) > width:
            lines.append(line)
            line = ""
        line = f"{line}   {cell}" if line else cell
    return lines + ([line] if line else [])


def _files(out: Path) -> list[tuple[str, str]]:
    """(path, what it is) of the files a run writes, those that exist."""
    known = [("config.yaml", "the resolved configuration"),
             ("split", "the hold-out: train.txt, val.txt, classes.txt"),
             ("checkpoints/best.pt", "the weights of the best validation accuracy"),
             ("checkpoints/last.pt", "the weights at the end (resume with --resume)"),
             ("train_log.csv", "one row per step"), ("eval_log.csv", "one row per evaluation"),
             ("eval.json", "the last evaluation"), ("confusion.png", "confusion matrix of the last evaluation"),
             ("curves.png", "the training curves"), ("tensorboard", "TensorBoard events")]
    return [(str(out / name), what) for name, what in known if (out / name).exists()]


def closing_summary(out_dir: str | os.PathLike, result: dict, *, classes: Sequence[str] | None = None,
                    bad_videos: Sequence | None = None) -> str:
    """Write ``confusion.png`` and ``curves.png`` into ``out_dir`` and return the closing block:
    best and last validation accuracy, per-class accuracy, skipped videos (``bad_videos``:
    items with ``path`` and ``reason``, the first 10 shown), the run's files."""
    out = Path(out_dir)
    lines = [f"run finished: {out}"]
    evals = read_eval_log(out / "eval_log.csv")
    if evals:
        best = max(evals, key=lambda r: r["video_top1"])
        where = out / "checkpoints" / "best.pt"
        lines.append(f"  best  video top-1 {best['video_top1']:6.2f}  at epoch {best['epoch']} (step {best['step']})"
                     + (f": {where}" if where.is_file() else ""))
    if result:
        last = result["video"]
        lines.append(f"  last  video top-1 {last['top1']:6.2f}  at epoch {result.get('epoch', '?')} (step "
                     f"{result.get('step', '?')}), clip top-1 {result['clip']['top1']:.2f}, mean class "
                     f"{last['mean_class']:.2f}, {last['count']} videos")
        if last.get("per_class"):
            lines.append("  per class (last, videos):")
            lines += [f"    {line}" for line in format_per_class(last["per_class"])]
        if result.get("confusion"):
            names = list(classes) if classes and len(classes) == len(result["confusion"]) else [
                str(i) for i in range(len(result["confusion"]))]
            plot_confusion(result["confusion"], names, out / "confusion.png")
    else:
        lines.append("  no validation set: no accuracy measured")
    plot_curves(out / "train_log.csv", out / "eval_log.csv", out / "curves.png")
    bad = list(bad_videos or [])
    if bad:
        lines.append(f"  skipped videos: {len(bad)} unreadable (run dynapp check-data to list every one)")
        lines += [f"    {b.path}: {b.reason}" for b in bad[:10]] + (["    ..."] if len(bad) > 10 else [])
    lines.append("  files:")
    width = max(len(p) for p, _ in _files(out)) if _files(out) else 0
    lines += [f"    {p:<{width}}  {what}" for p, what in _files(out)]
    return "\n".join(lines)
