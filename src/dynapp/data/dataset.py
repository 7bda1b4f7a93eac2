"""The torch Dataset of video clips, and ``build_dataset`` for the ``--dataset`` names.

An item is ``(clip, label, video_index)``: ``clip`` is ``(C=3, S*T, H, W)`` uint8 RGB (S segments
of T consecutive frames; the model normalises it on its device, :class:`dynapp.model.Normalize`;
``dtype="float32"`` gives clips normalised with the ImageNet mean and std here instead),
``label`` the 0-based class,
``video_index`` the position of the video in ``dataset.items``.  In testing every video gives
``num_clips * num_crops`` consecutive items (its views), each carrying the video index, so scores
can be averaged per video: item ``i`` is view ``i % views`` of video ``i // views``.

Bad files never stop a run.  When a video cannot be read (missing, empty, not a video,
truncated, an unreadable frame folder) the Dataset warns once naming it (:class:`BadVideoWarning`),
marks it bad and returns the next readable video in the list instead (video ``j + 1``,
``j + 2``, ...; same view position), with *that* video's label and index; a bad video
therefore gets no items and is never decoded again.  The marks live in a shared-memory tensor,
so the count (:attr:`VideoDataset.num_bad`) and the list (:meth:`VideoDataset.bad_items`)
are complete in the main process after a run, also when DataLoader workers did the decoding.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dynapp.data.annotations import Annotation
from dynapp.data.catalog import dataset_entry, has_validation
from dynapp.data.decode import VideoDecodeError, check_backend, open_video
from dynapp.data.sampling import SAMPLERS, sample_indices
from dynapp.data.transforms import (
    center_crop,
    horizontal_flip,
    multiscale_crop,
    normalize,
    random_resized_crop,
    three_crop,
    to_contiguous,
)

__all__ = ["VideoDataset", "BadItem", "BadVideoWarning", "build_dataset", "flip_label_map", "worker_start_method",
           "TRAIN_CROPS", "DTYPES"]

TRAIN_CROPS = ("multiscale", "random_resized")
DTYPES = ("uint8", "float32")


class BadVideoWarning(UserWarning):
    """A video that could not be read and was replaced by another one."""


class BadItem(NamedTuple):
    """A video the Dataset skipped: its index in ``items``, its path and why."""

    index: int
    path: Path
    reason: str


def _load_clip(
    path: Path,
    *,
    sampling: str,
    segments: int,
    frames: int,
    stride: int,
    train: bool,
    clip: int,
    num_clips: int,
    scale_size: int,
    rng: np.random.Generator | None,
    backend: str,
    threads: int = 1,
    num_frames: int | None = None,
    device: str = "cpu",
) -> tuple[torch.Tensor, int]:
    """Decode the sampled frames of one view: ((3, S*T, H, W) uint8, the video's frame count).

    Frames keep their size unless the short side exceeds twice ``scale_size``; then the decoder
    shrinks them to ``scale_size`` (cheap in swscale).  The crops do the remaining resize.
    """
    with open_video(path, backend, threads=threads, num_frames=num_frames, device=device) as video:
        idx = sample_indices(
            sampling, video.num_frames, segments, frames,
            train=train, stride=stride, rng=rng, clip=clip, num_clips=num_clips,
        )
        size = video.frame_size
        shrink = size is None or min(size) > 2 * scale_size
        return video.read(idx, short_side=scale_size if shrink else None), video.num_frames


class VideoDataset(Dataset):
    """Clips of S segments x T frames from a list of :class:`Annotation` items.

    Args:
        items: the videos (``Annotations.items`` of a reader).
        segments, frames: S and T.  sampling: ``"tsn"`` or ``"dense"`` (``stride`` for dense).
        train: random sampling and augmentation; otherwise deterministic multi-view testing.
        crop_size: output H = W.  scale_size: short side before cropping (default
            ``round(crop_size * 256 / 224)``; with ``num_crops=3`` the default is ``crop_size``,
            TSM's "full resolution" three crops).
        flip: random horizontal flip in training (turn off for Something-Something).
        flip_labels: ``{label: label}`` of the classes a flip turns into each other (e.g. "swipe
            left" and "swipe right", both ways): a flipped clip carries the mapped label.
        train_crop: ``"multiscale"`` (TSN corner crops) or ``"random_resized"``.
        num_clips, num_crops: test views per video (temporal clips x 1 or 3 spatial crops).
        backend: ``"pyav"`` (default) or ``"torchcodec"`` if installed (the same frames).
        decode_device: ``"cpu"`` (default) or ``"cuda"``/``"cuda:N"``: NVDEC decoding with
            torchcodec, frames copied back to the CPU as uint8.  CUDA cannot start in forked
            DataLoader workers: use ``num_workers=0`` (or a ``"spawn"`` multiprocessing context).
        dtype: ``"uint8"`` (default: RGB 0-255, normalised later on the model's device) or
            ``"float32"`` (normalised with the ImageNet mean and std in the worker, 4x the bytes).
        decode_threads: FFmpeg threads per video (1: none, the fastest with one DataLoader
            worker per core; 0: FFmpeg's choice, for few workers on many cores).
        classes: the class names (kept as ``.classes``).
        max_replacements: how many following videos to try before giving up on a bad one.
        seed: the run seed; training item ``i`` of epoch ``e`` draws its offsets, crop, scale and
            flip from ``numpy.random.default_rng([seed, e, i])`` (call :meth:`set_epoch`).
    """

    def __init__(
        self,
        items: Sequence[Annotation],
        *,
        segments: int,
        frames: int,
        train: bool,
        sampling: str = "tsn",
        stride: int = 1,
        crop_size: int = 224,
        scale_size: int | None = None,
        flip: bool = True,
        flip_labels: dict[int, int] | None = None,
        train_crop: str = "multiscale",
        num_clips: int = 1,
        num_crops: int = 1,
        backend: str = "pyav",
        decode_device: str = "cpu",
        dtype: str = "uint8",
        decode_threads: int = 1,
        classes: Sequence[str] | None = None,
        max_replacements: int = 100,
        seed: int = 0,
    ):
        if sampling not in SAMPLERS:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLERS)}")
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"unknown train_crop {train_crop!r}; choose one of {', '.join(TRAIN_CROPS)}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        if num_clips < 1 or segments < 1 or frames < 1:
            raise ValueError("segments, frames and num_clips must be >= 1")
        check_backend(backend, decode_device)  # a clear error now rather than every video marked bad
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        if decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0, got {decode_threads}")
        if not items:
            raise ValueError("the dataset has no videos")
        self.items = [Annotation(Path(a.path), int(a.label), a.num_frames) for a in items]
        self.segments, self.frames, self.train = segments, frames, train
        self.sampling, self.stride = sampling, stride
        self.crop_size, self.flip, self.train_crop = crop_size, flip, train_crop
        self.flip_labels = dict(flip_labels or {})
        self.num_clips, self.num_crops = (1, 1) if train else (num_clips, num_crops)
        if scale_size is None:
            scale_size = crop_size if self.num_crops == 3 else int(round(crop_size * 256 / 224))
        self.scale_size = scale_size
        self.backend, self.dtype, self.decode_threads = backend, dtype, decode_threads
        self.decode_device = str(decode_device)
        self.classes = list(classes) if classes is not None else [
            str(i) for i in range(max(a.label for a in self.items) + 1)]
        self.max_replacements = max_replacements
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed, self.epoch = int(seed), 0  # the per-sample generator's key (see set_epoch)
        # Shared between the main process and DataLoader workers (fork or spawn): 1 = bad.
        self._bad = torch.zeros(len(self.items), dtype=torch.uint8)
        try:
            self._bad.share_memory_()
        except (RuntimeError, OSError):  # no shared memory: counts stay per process
            pass
        self._reasons: dict[int, str] = {}
        self._num_frames: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        """Key the per-sample generators to ``epoch``: call it before creating the epoch's
        DataLoader (its workers copy the dataset when they start)."""
        self.epoch = int(epoch)

    @property
    def views(self) -> int:
        """Items per video: 1 in training, ``num_clips * num_crops`` in testing."""
        return self.num_clips * self.num_crops

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_videos(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items) * self.views

    def video_index(self, item: int) -> int:
        """The video behind item ``item`` (before any replacement of a bad video)."""
        return item // self.views

    def _decode(self, j: int, clip: int, rng: np.random.Generator | None) -> torch.Tensor:
        x, n = _load_clip(
            self.items[j].path, sampling=self.sampling, segments=self.segments, frames=self.frames,
            stride=self.stride, train=self.train, clip=clip, num_clips=self.num_clips,
            scale_size=self.scale_size, rng=rng, backend=self.backend, threads=self.decode_threads,
            num_frames=self._num_frames.get(j), device=self.decode_device,
        )
        self._num_frames[j] = n  # per process: MKV/WebM headers have no count, it is counted once
        return x

    def _transform(self, x: torch.Tensor, crop: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, bool]:
        """The cropped (and in training randomly flipped) clip, and whether it was flipped."""
        flipped = False
        if self.train:
            if self.train_crop == "multiscale":
                x = multiscale_crop(x, self.crop_size, rng, scale_size=self.scale_size)
            else:
                x = random_resized_crop(x, self.crop_size, rng)
            x = to_contiguous(x)  # flipping a contiguous clip is ten times cheaper
            if self.flip and rng.random() < 0.5:
                x, flipped = horizontal_flip(x), True
        elif self.num_crops == 3:
            x = to_contiguous(three_crop(x, self.crop_size, self.scale_size)[crop])
        else:
            x = to_contiguous(center_crop(x, self.crop_size, self.scale_size))
        if self.dtype == "float32":
            return normalize(x), flipped  # (3, S*T, crop, crop) float32, ImageNet mean and std
        return x, flipped  # (3, S*T, crop, crop) uint8

    def _mark_bad(self, j: int, reason: str, replaced: bool) -> None:
        self._bad[j] = 1
        self._reasons[j] = reason
        instead = "; using the next readable video instead" if replaced else ""
        warnings.warn(f"skipping unreadable video {self.items[j].path}: {reason}{instead}", BadVideoWarning, stacklevel=3)

    def __getitem__(self, item: int):
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for {len(self)} items")
        video, view = divmod(item, self.views)
        clip, crop = divmod(view, self.num_crops)
        rng = None
        if self.train:
            # The sample's own generator: a function of (seed, epoch, item) only, never of the
            # worker, the process or where a run was interrupted (exact resume, any world size).
            rng = np.random.default_rng([self.seed, self.epoch, item])
        n = len(self.items)
        tries = min(n, self.max_replacements + 1)
        for step in range(tries):
            j = (video + step) % n
            if self._bad[j]:
                continue
            try:
                x = self._decode(j, clip, rng)
            except Exception as err:  # a bad file must never stop a run (transform bugs still raise)
                reason = err.reason if isinstance(err, VideoDecodeError) else f"{type(err).__name__}: {err}"
                self._mark_bad(j, reason, step + 1 < tries)
                continue
            x, flipped = self._transform(x, crop, rng)
            label = self.items[j].label
            return x, self.flip_labels.get(label, label) if flipped else label, j
        raise RuntimeError(
            f"{tries} videos in a row from {self.items[video].path} are unreadable; "
            "run `dynapp check-data` on this dataset"
        )

    @property
    def num_bad(self) -> int:
        """How many videos were found unreadable so far (in every worker)."""
        return int(self._bad.sum())

    def bad_items(self) -> list[BadItem]:
        """The videos skipped so far, with reasons (re-read in this process when a worker found it)."""
        out = []
        for j in torch.nonzero(self._bad).flatten().tolist():
            reason = self._reasons.get(j)
            if reason is None:
                try:
                    with open_video(self.items[j].path, self.backend, threads=self.decode_threads,
                                    device=self.decode_device) as v:
                        v.read([0, v.num_frames - 1])
                    reason = "unreadable during loading"
                except VideoDecodeError as err:
                    reason = err.reason
                except Exception as err:
                    reason = f"{type(err).__name__}: {err}"
                self._reasons[j] = reason
            out.append(BadItem(j, self.items[j].path, reason))
        return out


def flip_label_map(pairs: Sequence[Sequence[str]], classes: Sequence[str]) -> dict[int, int]:
    """``{label: label}`` both ways for pairs of class names swapped by a horizontal flip."""
    index = {c: i for i, c in enumerate(classes)}
    out: dict[int, int] = {}
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise ValueError(f"data.flip_pairs: expected pairs of class names, got {pair!r}")
        for name in pair:
            if name not in index:
                shown = ", ".join(list(classes)[:10]) + (", ..." if len(classes) > 10 else "")
                raise ValueError(f"data.flip_pairs: {name!r} is not a class of the dataset ({shown})")
        a, b = index[pair[0]], index[pair[1]]
        if a in out or b in out:
            raise ValueError(f"data.flip_pairs: a class is in two pairs ({pair!r})")
        out[a], out[b] = b, a
    return out


def worker_start_method(dataset, num_workers: int) -> str | None:
    """How a DataLoader's workers over ``dataset`` start (``DataLoader(multiprocessing_context=...)``).

    ``"forkserver"`` for the torchcodec backend: a worker forked from a training process that
    has threads (TensorBoard, progress bars, earlier loaders) and has decoded with torchcodec
    could hang in its first decode (a lock held by another thread at the fork is never released
    in the child; seen intermittently in the test suite).  Fork-server workers start from a clean
    single-threaded process.  None (the platform's default, fork on Linux) for PyAV and frame
    folders, and with no workers.
    """
    inner = getattr(dataset, "dataset", dataset)  # through wrappers such as IndexedDataset
    if num_workers > 0 and getattr(inner, "backend", "pyav") == "torchcodec":
        return "forkserver"
    return None


def build_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    split: int = 1,
    train: bool,
    segments: int,
    frames: int,
    sampling: str | None = None,
    crop_size: int = 224,
    flip: bool | None = None,
    flip_pairs: Sequence[Sequence[str]] = (),
    seed: int = 0,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    **kwargs,
):
    """Build the Dataset of ``--dataset name --root root --split split`` (an entry of
    :data:`dynapp.data.catalog.DATASETS`).

    A reader's dataset: its annotations read and decoded by :class:`VideoDataset`.  ``sampling``
    and ``flip`` None mean the dataset's defaults (the table's: tsn; flip on, except for ``ssv1``,
    whose labels depend on direction).  ``flip_pairs``: pairs of class names that a flip turns into
    each other (a flipped clip of one carries the other's label).  Other keyword arguments go to
    :class:`VideoDataset` (``stride``, ``scale_size``, ``train_crop``, ``num_clips``,
    ``num_crops``, ``backend``, ``decode_device``, ``dtype``, ``decode_threads``); ``seed`` keys the per-sample
    augmentation generators (the run seed; see :class:`VideoDataset`).

    A generated dataset (``synthetic``: the same-scene action clips of :mod:`dynapp.data.synthetic`;
    ``random``: :mod:`dynapp.data.noise`): ``root`` unused, the keyword arguments go to its builder
    (``seed`` as ``run_seed``).

    ``val_fraction > 0`` and a dataset without a validation part of its own
    (:func:`dynapp.data.catalog.has_validation`): ``train=True`` gives the training videos
    less a stratified hold-out of that share, ``train=False`` the hold-out
    (:func:`dynapp.data.holdout.holdout_split` with ``val_seed``); ``.held_out`` is then True.
    """
    entry = dataset_entry(name)
    if entry.generated:
        return entry.generate(root, split=split, train=train, segments=segments, frames=frames, crop_size=crop_size,
                              run_seed=seed, **kwargs)
    held_out = val_fraction > 0 and not has_validation(name, root, split=split)
    ann = entry.read(root, split=split, train=train or held_out)
    if held_out:
        from dynapp.data.holdout import holdout_split

        parts = holdout_split(ann.items, val_fraction, seed=val_seed)
        ann = ann._replace(items=parts[0] if train else parts[1])
        if not ann.items:
            raise ValueError(f"{root}: too few videos to hold out a validation part (data.val_fraction="
                             f"{val_fraction} needs 2 or more videos in a class)")
    ds = VideoDataset(
        ann.items, segments=segments, frames=frames, train=train, sampling=sampling or entry.sampling,
        crop_size=crop_size, flip=entry.flip if flip is None else flip,
        flip_labels=flip_label_map(flip_pairs, ann.classes), classes=ann.classes, seed=seed, **kwargs,
    )
    ds.name, ds.held_out = name, held_out
    return ds
