"""``dynapp features``: pooled backbone features of videos, before the classifier, as ``.npy``.

For every video (of a dataset, ``--dataset NAME --root ROOT``, or listed files) the model's
representation and backbone run on the run's test views; the backbone's per-segment features are
averaged over the segments and then over the views: one ``(F,)`` float32 vector per video (what
the classifier would see, without dropout).

Output folder::

    features.npy   (N, F) float32, row i = row i of index.csv
    index.csv      row, video, label, class, file[, frames_file]
    videos/        one <name>-<hash>.npy per video (F,): the resume cache
    frames/        with --save-frames: the representation's frames of every view,
                   (V, C', S', H, W) float16 -- the DA frames for a pwtp model

Resumable: a video whose ``videos/`` file exists is not decoded again (files are written to a
temporary name and renamed, so a killed run leaves no half file).  A video that cannot be read is
reported and left out of the index.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynapp.apps.inference import Recognizer, ViewsDataset, first_item
from dynapp.data.catalog import dataset_entry, read_annotations
from dynapp.data.dataset import worker_start_method

__all__ = ["dataset_videos", "feature_name", "extract_features"]


def dataset_videos(dataset: str, root: str | os.PathLike, *, split: int = 1,
                   subset: str = "all") -> tuple[list[Path], list[int], list[str]]:
    """(paths, labels, class names) of a dataset's ``train``, ``test`` or ``all`` videos."""
    if subset not in ("all", "train", "test"):
        raise ValueError(f"subset must be all, train or test, got {subset!r}")
    if dataset_entry(dataset).generated:
        raise ValueError(f"dataset {dataset!r} has no video files: write them first "
                         "(dynapp.data.synthetic.write_synthetic_videos) and use --dataset folder")
    paths, labels, classes, seen = [], [], None, set()
    for train in ((True, False) if subset == "all" else (subset == "train",)):
        ann = read_annotations(dataset, root, split=split, train=train)
        classes = classes or list(ann.classes)
        for item in ann.items:
            if item.path not in seen:
                seen.add(item.path)
                paths.append(Path(item.path))
                labels.append(int(item.label))
    return paths, labels, classes or []


def feature_name(path: str | os.PathLike) -> str:
    """A file name unique to a video path and stable across runs: ``<stem>-<8 hex of its path>``."""
    path = Path(path)
    return f"{path.stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def extract_features(recognizer: Recognizer, paths: list[Path], out_dir: str | os.PathLike, *,
                     labels: list[int] | None = None, classes: list[str] | None = None,
                     views: tuple[int, int] | None = None, save_frames: bool = False, workers: int = 0,
                     batch_size: int = 8, progress: bool = True,
                     on_error: Callable[[str], None] | None = None) -> dict:
    """Write the features of ``paths`` to ``out_dir`` (module docstring); skip videos already done.

    Returns ``{"done", "skipped", "failed": [(path, reason)], "features", "index"}``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    if save_frames:
        (out / "frames").mkdir(exist_ok=True)
    names = [feature_name(p) for p in paths]

    def finished(i: int) -> bool:
        return (out / "videos" / f"{names[i]}.npy").is_file() and (
            not save_frames or (out / "frames" / f"{names[i]}.npy").is_file())

    todo = [i for i in range(len(paths)) if not finished(i)]
    views_set = ViewsDataset([paths[i] for i in todo], recognizer.preprocessing, views)
    loader = DataLoader(views_set, batch_size=1, collate_fn=first_item, num_workers=workers,
                        multiprocessing_context=worker_start_method(views_set, workers))
    failed: dict[int, str] = {}
    with torch.no_grad():
        for j, clips, error in tqdm(loader, total=len(todo), desc="features", unit="video", disable=not progress):
            i = todo[j]
            if error is not None:
                failed[i] = error
                if on_error is not None:
                    on_error(f"{paths[i]}: {error}")
                continue
            feats, frames = [], []
            for chunk in clips.split(batch_size):
                f, rep = recognizer.features(chunk.to(recognizer.device), return_frames=True)
                feats.append(f.float().cpu())
                if save_frames:
                    frames.append(rep.float().cpu().half())
            if save_frames:  # the frames first: a video counts as done once its feature file exists
                _save_atomic(out / "frames" / f"{names[i]}.npy", torch.cat(frames).numpy())
            _save_atomic(out / "videos" / f"{names[i]}.npy", torch.cat(feats).mean(0).numpy())
    rows, vectors = [], []
    for i, path in enumerate(paths):
        if i in failed or not finished(i):
            continue
        vectors.append(np.load(out / "videos" / f"{names[i]}.npy"))
        label = labels[i] if labels is not None else ""
        row = {"row": len(rows), "video": str(path), "label": label,
               "class": classes[label] if classes and label != "" else "", "file": f"videos/{names[i]}.npy"}
        if save_frames:
            row["frames_file"] = f"frames/{names[i]}.npy"
        rows.append(row)
    features = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    _save_atomic(out / "features.npy", features.astype(np.float32))
    index = out / "index.csv"
    with open(index, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["row", "video", "label", "class", "file"])
        writer.writeheader()
        writer.writerows(rows)
    return {"done": len(todo) - len(failed), "skipped": len(paths) - len(todo),
            "failed": [(str(paths[i]), r) for i, r in failed.items()], "features": str(out / "features.npy"),
            "index": str(index), "shape": list(features.shape)}
