"""A trained model ready for use: ``dynapp.load(checkpoint)`` -> :class:`Recognizer`.

A checkpoint of ``dynapp train`` carries everything inference needs: the weights (``model``),
the full run config (``config``: representation, backbone and their sizes, S, T, sampling,
crops, test views) and, from newer runs, the class names (``classes``).  Older checkpoints
without names get numbered classes ``class_0, class_1, ...``; the class count always comes from
the classifier's weight, so it cannot disagree with the model.

A :class:`Recognizer` is the ``VideoClassifier`` in eval mode with its test-time preprocessing:
a video file is decoded at the run's test views (``num_clips`` temporal clips x ``num_crops``
spatial crops, the sampling, crop and scale of ``dynapp eval``) and the softmax scores of the
views are averaged (the multi-view protocol of ``dynapp.engine.evaluate``).

Clips: uint8 clips (as decoded, values 0-255) are normalised by the model itself
(:class:`dynapp.model.Normalize`, ImageNet mean and std); float clips are taken as already
normalised.  The same holds for the features and for the exported graph.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dynapp.config import config_from_dict
from dynapp.data.decode import VideoDecodeError, check_backend, open_video
from dynapp.data.sampling import sample_indices
from dynapp.data.transforms import center_crop, three_crop
from dynapp.engine.checkpoint import CheckpointError, load_checkpoint, strip_module_prefix
from dynapp.model import VideoClassifier, build_model

__all__ = ["Recognizer", "load", "preprocessing_from_config", "class_names", "parse_views", "read_views", "ViewsDataset",
           "first_item"]


def parse_views(views: str | None) -> tuple[int, int] | None:
    """``"CLIPSxCROPS"`` (e.g. ``"2x3"``) -> ``(2, 3)``; None stays None.  Crops are 1 or 3."""
    if views is None:
        return None
    parts = str(views).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"views must be CLIPSxCROPS with positive integers, e.g. 2x3; got {views!r}")
    clips, crops = int(parts[0]), int(parts[1])
    if crops not in (1, 3):
        raise ValueError(f"views: the crops must be 1 or 3, got {views!r}")
    return clips, crops


def preprocessing_from_config(config: dict) -> dict[str, Any]:
    """The test-time preprocessing of a run, as a plain dict (the rules of ``VideoDataset``).

    Keys: segments, frames, sampling, stride, crop_size, scale_size (None: the dataset's default
    rule), num_clips, num_crops, in_channels, backend.

    ``backend`` is the run's (``data.backend``); where torchcodec is not installed it is ``pyav``
    with a warning (the same frames).  Decoding is on the CPU whatever the run's
    ``data.decode_device`` (views are decoded in DataLoader workers, on any machine).
    """
    from dynapp.engine.run import dataset_options

    cfg = config_from_dict(config)
    d, e = cfg.data, cfg.eval
    kw = dataset_options(d.dataset_kwargs, backend=d.backend)
    backend = kw["backend"]
    try:
        check_backend(backend)
    except ValueError as err:
        warnings.warn(f"{err}; decoding with pyav instead (the same frames)", stacklevel=2)
        backend = "pyav"
    return {
        "segments": d.segments, "frames": d.frames, "sampling": d.sampling, "stride": int(kw.get("stride", 1)),
        "crop_size": e.crop_size or d.crop_size, "scale_size": kw.get("scale_size"), "num_clips": e.clips,
        "num_crops": e.crops, "in_channels": cfg.model.in_channels, "backend": backend,
    }


def class_names(checkpoint: dict, num_classes: int) -> list[str]:
    """The checkpoint's class names, or ``class_0 ... class_{K-1}`` when it has none (older runs)."""
    names = checkpoint.get("classes")
    if names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise CheckpointError(f"the checkpoint names {len(names)} classes but its classifier has {num_classes} outputs")
    return names


def read_views(video, pre: dict, views: tuple[int, int] | None = None, *, start: int = 0,
               num_frames: int | None = None) -> torch.Tensor:
    """The test views of an open video: ``(clips * crops, C, S*T, crop, crop)`` uint8.

    ``start`` and ``num_frames`` restrict the sampling to frames ``[start, start + num_frames)``
    (a window of a long video); only the sampled frames are decoded.
    """
    clips, crops = views or (pre["num_clips"], pre["num_crops"])
    n = video.num_frames - start if num_frames is None else num_frames
    idx = [start + sample_indices(pre["sampling"], n, pre["segments"], pre["frames"], train=False,
                                  stride=pre["stride"], clip=k, num_clips=clips) for k in range(clips)]
    size = pre["crop_size"]
    scale = pre["scale_size"] or (size if crops == 3 else int(round(size * 256 / 224)))
    frame_size = video.frame_size
    shrink = frame_size is None or min(frame_size) > 2 * scale  # as VideoDataset: the decoder shrinks big frames
    length = len(idx[0])
    frames = video.read(np.concatenate(idx), short_side=scale if shrink else None)  # (C, V*S*T, H, W)
    out = []
    for k in range(clips):
        clip = frames[:, k * length:(k + 1) * length]  # (C, S*T, H, W)
        out.extend(three_crop(clip, size, scale) if crops == 3 else [center_crop(clip, size, scale)])
    return torch.stack(out)


class Recognizer(nn.Module):
    """A trained ``VideoClassifier`` with its preprocessing and class names (eval mode).

    ``recognizer(clips)`` -> logits ``(N, K)`` for clips ``(N, C, S*T, H, W)`` (uint8 or
    normalised float); :meth:`predict` takes a video file or clips and returns the top-k class
    names with probabilities; :meth:`features` the pooled backbone features before the classifier.
    """

    def __init__(self, model: VideoClassifier, classes: list[str], preprocessing: dict[str, Any]):
        super().__init__()
        self.model = model
        self.classes = list(classes)
        self.preprocessing = dict(preprocessing)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """(C, S*T, crop, crop): the shape of one clip at the run's test size."""
        p = self.preprocessing
        return p["in_channels"], p["segments"] * p["frames"], p["crop_size"], p["crop_size"]

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips as the model takes them: uint8 as decoded (the model's ``Normalize`` turns them
        into ``(x / 255 - mean) / std`` on its device), any float clip as float32, taken as
        already normalised.  The uint8/float decision itself is the model's, in one place."""
        return clips if clips.dtype == torch.uint8 else clips.float()

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # (N, C, S*T, H, W) -> (N, K)
        return self.model(self.prepare(clips)).logits

    @torch.no_grad()
    def features(self, clips: torch.Tensor, return_frames: bool = False):
        """Pooled backbone features ``(N, F)`` before the classifier (mean over the segments).

        With ``return_frames`` also the representation's frames ``(N, C', S', H, W)`` (the DA
        frames for ``pwtp``).
        """
        rep = self.model.representation(self.prepare(clips))
        feats = self.model.backbone(rep.frames).mean(1)  # (N, S', F) -> (N, F)
        return (feats, rep.frames) if return_frames else feats

    def load_views(self, path: str | os.PathLike, views: tuple[int, int] | str | None = None) -> torch.Tensor:
        """Decode the test views of a video file or frame folder: ``(V, C, S*T, crop, crop)`` uint8."""
        views = parse_views(views) if isinstance(views, str) else views
        with open_video(path, self.preprocessing["backend"]) as video:
            return read_views(video, self.preprocessing, views)

    @torch.no_grad()
    def probabilities(self, clips: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Softmax scores ``(N, K)`` of clips ``(N, C, S*T, H, W)``, ``batch_size`` at a time."""
        out = [self(chunk.to(self.device)).float().softmax(1).cpu() for chunk in clips.split(batch_size)]
        return torch.cat(out)

    def topk(self, probs: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
        """``[(class name, probability), ...]``, best first, of one score vector ``(K,)``."""
        values, indices = probs.topk(min(k, probs.numel()))
        return [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    def predict(self, x: str | os.PathLike | torch.Tensor, topk: int = 5, views: tuple[int, int] | str | None = None):
        """Top-k ``[(class, probability), ...]`` of a video file (its view scores averaged) or a clip.

        ``x``: a path (decoded at the run's test views, or ``views`` ``"CLIPSxCROPS"``); a clip
        ``(C, S*T, H, W)``; or a batch ``(N, C, S*T, H, W)``, which gives one list per clip.
        """
        if isinstance(x, (str, os.PathLike)):
            return self.topk(self.probabilities(self.load_views(x, views)).mean(0), topk)
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise ValueError("predict takes a video path, a clip (C, S*T, H, W) or a batch (N, C, S*T, H, W)")
        probs = self.probabilities(x if x.dim() == 5 else x[None])
        results = [self.topk(p, topk) for p in probs]
        return results if x.dim() == 5 else results[0]


class ViewsDataset(Dataset):
    """Item i: ``(i, views uint8 (V, C, S*T, H, W) or None, error or None)`` of video ``paths[i]``.

    For a DataLoader (``batch_size=1, collate_fn=first_item``): workers decode, a video that
    cannot be read comes back with its reason instead of views, so the caller reports and skips it.
    """

    def __init__(self, paths: list[Path], preprocessing: dict, views: tuple[int, int] | None):
        self.paths, self.pre, self.views = paths, preprocessing, views
        self.backend = preprocessing.get("backend", "pyav")  # read by worker_start_method

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with open_video(self.paths[i], self.pre["backend"]) as video:
                return i, read_views(video, self.pre, self.views), None
        except VideoDecodeError as err:
            return i, None, err.reason
        except Exception as err:  # a bad file must never stop the others
            return i, None, f"{type(err).__name__}: {err}"


def first_item(batch):
    """The collate function of :class:`ViewsDataset` loaders: one video at a time, as it is."""
    return batch[0]


def load(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> Recognizer:
    """The model of a ``dynapp train`` checkpoint, in eval mode, with its preprocessing and classes.

    Read with ``torch.load(weights_only=True)``; raises ``CheckpointError`` (one line) for a file
    that is not a dynapp training checkpoint or does not fit the model its config describes.
    """
    path = Path(checkpoint)
    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as err:  # e.g. struct.error from a file that is not a checkpoint at all
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not ck.get("config"):
        raise CheckpointError(f"{path} is not a dynapp training checkpoint (no model or config)")
    state = strip_module_prefix(ck["model"])
    head = state.get("head.weight")
    if head is None:
        raise CheckpointError(f"{path}: the model has no classifier weight 'head.weight'")
    try:
        cfg = config_from_dict(ck["config"])
    except ValueError as err:
        raise CheckpointError(f"{path}: its config does not load ({err})") from None
    m, d = cfg.model, cfg.data
    model = build_model(representation=m.representation, backbone=m.backbone, num_classes=head.shape[0],
                        segments=d.segments, frames=d.frames, in_channels=m.in_channels, dropout=m.dropout,
                        pretrained=None, representation_kwargs=dict(m.representation_kwargs),
                        backbone_kwargs=dict(m.backbone_kwargs))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit the model of its config "
                              f"({str(err).strip().splitlines()[0]})") from None
    recognizer = Recognizer(model, class_names(ck, head.shape[0]), preprocessing_from_config(ck["config"]))
    return recognizer.to(device).eval()
