"""Dataset readers: annotation files -> a list of (path, label) items and the class names.

Readers only parse files and build paths; nothing is decoded here, and a listed video that is
missing on disk stays in the list (the Dataset skips and reports it; ``dynapp check-data``
lists it).  Labels are 0-based class indices into ``Annotations.classes``.

Supported layouts (``root`` is the ``--root`` directory; annotation files may sit in ``root``
or in the sub-folder named; when the named video folder does not exist, videos are looked up
directly under ``root``; and a video may also be a frame folder with the same name minus the
extension):

* ``ucf101``: ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt`` (N = 1..3) in
  ``root/ucfTrainTestlist/``; videos ``root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi``.
  classInd's 1-based indices become 0-based labels; test-list labels come from the folder.
* ``hmdb51``: ``<class>_test_split<N>.txt`` in ``root/testTrainMulti_7030_splits/``, lines
  ``<video>.avi <flag>`` (1 = train, 2 = test, 0 = unused); videos
  ``root/hmdb51_org/<class>/<video>.avi``.  Classes sorted by name.
* ``kinetics``: Kinetics-400 CSVs ``label,youtube_id,time_start,time_end,split`` named
  ``train.csv`` / ``validate.csv`` (or ``val.csv``) in ``root/annotations/``; videos
  ``root/<train|val>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`` (the ActivityNet crawler
  layout; a label folder with underscores for spaces, or no label folder, also works; the
  video folder may also be called ``validate`` or ``val_256``/``train_256``).  Classes: the
  sorted labels of the training CSV.
* ``minikinetics``: the Mini-Kinetics-200 subset (Xie et al., S3D) of that Kinetics layout,
  selected by the user's id lists ``train_ytid_list.txt`` / ``val_ytid_list.txt`` (one YouTube
  id per line) in ``root/minikinetics/`` or ``root``.  An optional ``classes.txt`` there (one
  label per line) fixes the class list; otherwise it is the sorted labels of the selected
  training videos.
* ``ssv1``: Something-Something V1: ``something-something-v1-labels.csv`` (one label per line,
  the line order is the class index), ``something-something-v1-train.csv`` and
  ``something-something-v1-validation.csv`` (``id;label``), frame folders
  ``root/20bn-something-something-v1/<id>/00001.jpg``.  Testing reads the validation set.
* ``list``: ``root/train.txt`` and ``root/val.txt`` (or ``test.txt``); ``--root`` may also be
  one list file.  Lines ``path label`` or ``path num_frames label`` (the format of TSN/TSM
  style toolboxes; the frame count is kept as a hint), paths relative to the list's folder.
  Class names come from ``classes.txt`` or ``classInd.txt`` beside the list if present.
* ``folder``: ``root/<class>/<video or frame folder>``; with ``root/train`` and ``root/val``
  (or ``test``) present, those are the two splits, otherwise train and test both read ``root``.

The table of datasets (:data:`dynapp.data.catalog.DATASETS`) names these readers with their
defaults; ``folder_has_validation`` and ``list_has_validation`` tell whether such a folder has a
validation part of its own (training holds out part of the training videos where it has none,
:mod:`dynapp.data.holdout`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

from dynapp.data.decode import VIDEO_EXTENSIONS

__all__ = [
    "Annotation",
    "Annotations",
    "read_ucf101",
    "read_hmdb51",
    "read_kinetics",
    "read_minikinetics",
    "read_ssv1",
    "read_list",
    "read_folder",
    "folder_has_validation",
    "list_has_validation",
]


class Annotation(NamedTuple):
    """One video: its path (file or frame folder), 0-based label, and an optional frame count."""

    path: Path
    label: int
    num_frames: int | None = None


class Annotations(NamedTuple):
    """The items of one split and the class names (``classes[label]``)."""

    items: list[Annotation]
    classes: list[str]


def _lines(path: Path) -> list[str]:
    """Non-empty stripped lines (tolerates CRLF and a UTF-8 BOM, as in the official files)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _find(root: Path, names: list[str], subdirs: list[str], what: str) -> Path:
    for sub in subdirs:
        for name in names:
            p = root / sub / name if sub else root / name
            if p.is_file():
                return p
    where = ", ".join(str(root / s) if s else str(root) for s in subdirs)
    raise FileNotFoundError(f"{what}: none of {', '.join(names)} found in {where}")


def _media(path: Path) -> Path:
    """The video file, or the frame folder of the same name without extension if only that exists."""
    if path.exists():
        return path
    folder = path.with_suffix("")
    return folder if folder.is_dir() else path


def _first_dir(root: Path, names: list[str]) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def _check_split(split: int, allowed: range, dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset} has splits {allowed.start}..{allowed.stop - 1}, got --split {split}")


def read_ucf101(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """UCF101 (Soomro et al.) official split files; see the module docstring for the layout."""
    root = Path(root)
    _check_split(split, range(1, 4), "ucf101")
    subdirs = ["ucfTrainTestlist", ""]
    class_ind = _find(root, ["classInd.txt"], subdirs, "UCF101 class index")
    classes: list[str] = []
    for ln in _lines(class_ind):
        idx, name = ln.split(maxsplit=1)
        if int(idx) != len(classes) + 1:
            raise ValueError(f"{class_ind}: expected class index {len(classes) + 1}, got {idx}")
        classes.append(name.strip())
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    list_file = _find(root, [f"{'trainlist' if train else 'testlist'}0{split}.txt"], subdirs, "UCF101 split list")
    videos = _first_dir(root, ["UCF-101", "UCF101", "videos"])
    items = []
    for ln in _lines(list_file):
        parts = ln.split()
        rel = parts[0]
        folder = rel.replace("\\", "/").split("/")[0]
        if folder.lower() not in by_name:
            raise ValueError(f"{list_file}: class folder {folder!r} of {rel!r} is not in {class_ind.name}")
        label = by_name[folder.lower()]
        if len(parts) > 1 and int(parts[1]) - 1 != label:
            raise ValueError(f"{list_file}: {rel} has label {parts[1]} but its folder is class {label + 1}")
        items.append(Annotation(_media(videos / rel), label))
    return Annotations(items, classes)


def read_hmdb51(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """HMDB51 (Kuehne et al.) ``<class>_test_split<N>.txt`` files: flag 1 train, 2 test, 0 unused."""
    root = Path(root)
    _check_split(split, range(1, 4), "hmdb51")
    split_dir = _first_dir(root, ["testTrainMulti_7030_splits", "splits"])
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in split_dir.glob(f"*{suffix}") if p.is_file())
    if not files:
        raise FileNotFoundError(f"HMDB51 split files *{suffix} not found in {split_dir}")
    classes = [p.name[: -len(suffix)] for p in files]
    videos = _first_dir(root, ["hmdb51_org", "HMDB51", "videos"])
    want = "1" if train else "2"
    items = []
    for label, p in enumerate(files):
        for ln in _lines(p):
            parts = ln.split()
            if len(parts) < 2 or parts[-1] not in ("0", "1", "2"):
                raise ValueError(f"{p}: expected '<video> <0|1|2>', got {ln!r}")
            if parts[-1] == want:
                name = " ".join(parts[:-1])
                items.append(Annotation(_media(videos / classes[label] / name), label))
    return Annotations(items, classes)


def _kinetics_rows(root: Path, train: bool) -> tuple[list[dict], Path]:
    names = ["train.csv", "kinetics_train.csv", "kinetics-400_train.csv"] if train else [
        "validate.csv", "val.csv", "kinetics_val.csv", "kinetics-400_val.csv"]
    path = _find(root, names, ["annotations", ""], "Kinetics annotation CSV")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: expected columns label,youtube_id,time_start,time_end,split; got {list(rows[0])}")
    return rows, path


def _kinetics_items(root: Path, rows: list[dict], classes: list[str], train: bool, source: Path) -> list[Annotation]:
    by_name = {c: i for i, c in enumerate(classes)}
    split_dir = _first_dir(root, ["train", "train_256"] if train else ["val", "validate", "val_256", "validation"])
    items = []
    for r in rows:
        label = r["label"].strip()
        if label not in by_name:
            raise ValueError(f"{source}: label {label!r} of {r['youtube_id']} is not a training class")
        name = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}.mp4"
        candidates = [split_dir / label / name, split_dir / label.replace(" ", "_") / name, split_dir / name]
        path = next((_media(c) for c in candidates if _media(c).exists()), candidates[0])
        items.append(Annotation(path, by_name[label]))
    return items


def read_kinetics(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """Kinetics-400 (Kay et al.) CSVs and the crawler's folder layout (module docstring)."""
    root = Path(root)
    _check_split(split, range(1, 2), "kinetics")
    train_rows, train_csv = _kinetics_rows(root, True)
    classes = sorted({r["label"].strip() for r in train_rows})
    rows, source = (train_rows, train_csv) if train else _kinetics_rows(root, False)
    return Annotations(_kinetics_items(root, rows, classes, train, source), classes)


def read_minikinetics(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """Mini-Kinetics-200: the Kinetics-400 videos listed in the user's id files (module docstring)."""
    root = Path(root)
    _check_split(split, range(1, 2), "minikinetics")

    def ids(is_train: bool) -> set[str]:
        name = "train_ytid_list.txt" if is_train else "val_ytid_list.txt"
        return set(_lines(_find(root, [name], ["minikinetics", "mini-kinetics", ""], "Mini-Kinetics id list")))

    train_ids = ids(True)
    train_rows = [r for r in _kinetics_rows(root, True)[0] if r["youtube_id"] in train_ids]
    try:
        classes = _lines(_find(root, ["classes.txt"], ["minikinetics", "mini-kinetics"], "class list"))
    except FileNotFoundError:
        classes = sorted({r["label"].strip() for r in train_rows})
    if train:
        rows, source = train_rows, root
    else:
        val_ids = ids(False)
        all_rows, source = _kinetics_rows(root, False)
        rows = [r for r in all_rows if r["youtube_id"] in val_ids]
    return Annotations(_kinetics_items(root, rows, classes, train, source), classes)


def read_ssv1(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """Something-Something V1 (Goyal et al.): frame folders and ``;``-separated CSVs."""
    root = Path(root)
    _check_split(split, range(1, 2), "ssv1")
    classes = _lines(_find(root, ["something-something-v1-labels.csv"], ["", "annotations"], "SS V1 labels"))
    by_name = {c: i for i, c in enumerate(classes)}
    name = "something-something-v1-train.csv" if train else "something-something-v1-validation.csv"
    list_file = _find(root, [name], ["", "annotations"], "SS V1 split")
    frames = _first_dir(root, ["20bn-something-something-v1", "frames"])
    items = []
    for ln in _lines(list_file):
        vid, sep, label = ln.partition(";")
        if not sep or label.strip() not in by_name:
            raise ValueError(f"{list_file}: expected 'id;label' with a label of the labels file, got {ln!r}")
        items.append(Annotation(frames / vid.strip(), by_name[label.strip()]))
    return Annotations(items, classes)


def _parse_list(list_file: Path) -> list[Annotation]:
    base = list_file.parent
    items = []
    for ln in _lines(list_file):
        if ln.startswith("#"):
            continue
        tokens = ln.split()
        try:
            if len(tokens) >= 3 and tokens[-2].isdigit():
                path, num_frames, label = " ".join(tokens[:-2]), int(tokens[-2]), int(tokens[-1])
            elif len(tokens) >= 2:
                path, num_frames, label = " ".join(tokens[:-1]), None, int(tokens[-1])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{list_file}: expected 'path label' or 'path num_frames label', got {ln!r}") from None
        if label < 0:
            raise ValueError(f"{list_file}: negative label in {ln!r}")
        p = Path(path)
        items.append(Annotation(_media(p if p.is_absolute() else base / p), label, num_frames))
    return items


def read_list(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """A generic ``path label`` / ``path num_frames label`` list (module docstring)."""
    root = Path(root)
    if root.is_file():
        list_file = root
    else:
        list_file = _find(root, _list_names(train, split), [""], "list file")
    items = _parse_list(list_file)
    try:
        names_file = _find(list_file.parent, ["classes.txt", "classInd.txt"], [""], "class names")
        classes = [ln.split(maxsplit=1)[-1] if names_file.name == "classInd.txt" else ln for ln in _lines(names_file)]
    except FileNotFoundError:
        classes = [str(i) for i in range(max((a.label for a in items), default=-1) + 1)]
    if any(a.label >= len(classes) for a in items):
        raise ValueError(f"{list_file}: a label exceeds the {len(classes)} class names")
    return Annotations(items, classes)


def _list_names(train: bool, split: int) -> list[str]:
    names = ["train.txt"] if train else ["val.txt", "test.txt"]
    if split != 1:
        names = [n.replace(".txt", f"{split}.txt") for n in names] + [
            n.replace(".txt", f"_split{split}.txt") for n in names]
    return names


def _folder_split_root(root: Path) -> bool:
    return (root / "train").is_dir() and any((root / n).is_dir() for n in ("val", "validation", "test"))


def read_folder(root: str | os.PathLike, *, split: int = 1, train: bool = True) -> Annotations:
    """One folder per class, holding videos (by extension) or frame folders (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    names = ["train"] if train else ["val", "validation", "test"]
    if _folder_split_root(root):
        root = _first_dir(root, names)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class folders")
    items = []
    for label, c in enumerate(classes):
        for e in sorted((root / c).iterdir()):
            if e.name.startswith("."):
                continue
            if e.is_dir() or e.suffix.lower() in VIDEO_EXTENSIONS:
                items.append(Annotation(e, label))
    return Annotations(items, classes)


def folder_has_validation(root: Path, split: int = 1) -> bool:
    """A ``folder`` dataset has a validation part when ``root`` holds ``train/`` and ``val/`` (or ``validation/``, ``test/``)."""
    return _folder_split_root(Path(root))


def list_has_validation(root: Path, split: int = 1) -> bool:
    """A ``list`` dataset has a validation part when ``root`` is a folder with a validation list
    (``val.txt`` or ``test.txt``, with the split's suffix)."""
    root = Path(root)
    return root.is_dir() and any((root / n).is_file() for n in _list_names(False, split))
