"""A validation part for datasets that have none: a seeded, stratified hold-out of the training videos.

A ``folder`` dataset without ``train/`` and ``val/`` (or ``test/``) sub-folders, or a ``list``
dataset without a validation list, would otherwise train and evaluate on the same videos.
:func:`holdout_split` sets aside ``fraction`` of each class instead (at least one video of every
class that has two or more, never a class's last one), the same way every time for the same
files and seed: within a class the videos are sorted by path, then shuffled by
``numpy.random.default_rng([seed, label])``.  :func:`write_split` writes the two parts as
``list`` files (``train.txt``, ``val.txt``, ``classes.txt``), so the split can be read back
with ``data.dataset=list``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from dynapp.data.annotations import Annotation

__all__ = ["holdout_split", "write_split"]


def _val_count(n: int, fraction: float) -> int:
    """Videos of a class of ``n`` held out: ``round(fraction * n)``, at least 1 and at most n - 1."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(int(round(fraction * n)), 1), n - 1)


def holdout_split(items: Sequence[Annotation], fraction: float, *, seed: int = 0) -> tuple[list[Annotation], list[Annotation]]:
    """``(train, val)``: ``fraction`` of the videos of each class in ``val``, the rest in ``train``.

    Deterministic for the same items and ``seed`` whatever their order; both parts keep the
    items' order.  A class with a single video keeps it for training.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction: must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, a in enumerate(items):
        by_class.setdefault(a.label, []).append(i)
    chosen: set[int] = set()
    for label, idx in sorted(by_class.items()):
        idx = sorted(idx, key=lambda i: str(items[i].path))
        order = np.random.default_rng([seed, label]).permutation(len(idx))
        chosen.update(idx[j] for j in order[:_val_count(len(idx), fraction)])
    train = [a for i, a in enumerate(items) if i not in chosen]
    val = [a for i, a in enumerate(items) if i in chosen]
    return train, val


def write_split(folder: str | os.PathLike, train: Sequence[Annotation], val: Sequence[Annotation],
                classes: Sequence[str]) -> list[Path]:
    """``folder/train.txt``, ``folder/val.txt`` (lines ``<absolute path> <label>``) and
    ``folder/classes.txt``: a ``list`` dataset (``data.dataset=list data.root=folder``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train.txt", train), ("val.txt", val)):
        path = folder / name
        path.write_text("".join(f"{Path(a.path).resolve()} {a.label}\n" for a in part))
        paths.append(path)
    names = folder / "classes.txt"
    names.write_text("".join(f"{c}\n" for c in classes))
    return paths + [names]
