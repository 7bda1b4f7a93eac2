"""The dataset table: one entry per ``data.dataset`` name, with everything that differs between datasets.

A dataset either reads annotation files (``read``: a reader of :mod:`dynapp.data.annotations`,
whose videos :class:`dynapp.data.dataset.VideoDataset` decodes) or generates its clips
(``generate``: ``synthetic``, ``random``; no files, ``data.root`` unused).  Its entry also holds
its defaults: the training flip (off where labels depend on direction, as in Something-Something)
and the frame sampling, whether ``data.split`` chooses among official splits, and how to tell
whether it has a validation part of its own.

Adding a dataset is one entry in :data:`DATASETS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dynapp.data.annotations import (
    Annotations,
    folder_has_validation,
    list_has_validation,
    read_folder,
    read_hmdb51,
    read_kinetics,
    read_list,
    read_minikinetics,
    read_ssv1,
    read_ucf101,
)
from dynapp.data.noise import build_random
from dynapp.data.synthetic import build_synthetic

__all__ = ["DatasetEntry", "DATASETS", "dataset_entry", "read_annotations", "has_validation"]


def _always(root: Path, split: int) -> bool:
    return True


@dataclass(frozen=True)
class DatasetEntry:
    """What a dataset is: how its clips are obtained, and its defaults.

    read: ``reader(root, *, split, train) -> Annotations`` (video files), or None.
    generate: ``builder(root, *, split, train, segments, frames, crop_size, **kwargs) -> Dataset``
        (generated clips), or None.  Exactly one of ``read`` and ``generate`` is set.
    flip: the training flip when ``data.flip`` is null.
    sampling: the frame sampling when none is given (``tsn`` or ``dense``).
    splits: whether ``data.split`` chooses among the dataset's official splits.
    has_validation: ``(root, split) -> bool``: whether it has a validation part of its own
        (generated datasets always do: their test clips).
    """

    read: Callable[..., Annotations] | None = None
    generate: Callable | None = None
    flip: bool = True
    sampling: str = "tsn"
    splits: bool = False
    has_validation: Callable[[Path, int], bool] = _always

    @property
    def generated(self) -> bool:
        return self.generate is not None


DATASETS: dict[str, DatasetEntry] = {
    "ucf101": DatasetEntry(read=read_ucf101, splits=True),
    "hmdb51": DatasetEntry(read=read_hmdb51, splits=True),
    "kinetics": DatasetEntry(read=read_kinetics),
    "minikinetics": DatasetEntry(read=read_minikinetics),
    # Something-Something: labels depend on direction ("pushing left to right"); the paper trains without flipping
    "ssv1": DatasetEntry(read=read_ssv1, flip=False),
    "list": DatasetEntry(read=read_list, has_validation=list_has_validation),
    "folder": DatasetEntry(read=read_folder, has_validation=folder_has_validation),
    "synthetic": DatasetEntry(generate=build_synthetic),  # same-scene actions (dynapp.data.synthetic)
    "random": DatasetEntry(generate=build_random),  # noise clips with a learnable moving square (dynapp.data.noise)
}


def dataset_entry(name: str) -> DatasetEntry:
    """``DATASETS[name]`` with a clear error for unknown names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def read_annotations(name: str, root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """The annotations of dataset ``name`` at ``root`` (its reader), with a clear error for unknown names."""
    entry = dataset_entry(name)
    if entry.read is None:
        raise ValueError(f"dataset {name!r} is generated: it has no annotation files")
    return entry.read(root, split=split, train=train)


def has_validation(name: str, root: str | os.PathLike, *, split: int = 1) -> bool:
    """Whether dataset ``name`` at ``root`` has a validation (or test) part of its own.

    The official datasets and the generated ones always do; ``folder`` when ``root`` holds
    ``train/`` and ``val/`` (or ``validation/``, ``test/``); ``list`` when ``root`` is a folder
    with a validation list (``val.txt`` or ``test.txt``, with the split's suffix).
    """
    return dataset_entry(name).has_validation(Path(root), split)
