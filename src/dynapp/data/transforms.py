"""Spatial transforms of ``(C, T, H, W)`` uint8 clips: every frame of a clip gets the same crop.

Training: :func:`multiscale_crop` (TSN's corner/centre multi-scale crop, used by TSM) or
:func:`random_resized_crop` (Inception-style, used for ViT/X3D recipes), then an optional
:func:`horizontal_flip` (off for Something-Something, whose labels say "left" and "right").
Testing: :func:`center_crop` or :func:`three_crop`.  The TSN recipe "resize the short side
to 256, then crop" is done in one resampling: the crop functions take ``scale_size`` and map
the crop box back to the original frame (cheaper and sharper than resizing twice).
Clips stay uint8 (4x less memory and copying than float32); :func:`normalize` (to float with
the ImageNet mean and std) runs on the model's device, in :class:`dynapp.model.Normalize`.

The geometric work is torchvision's ``transforms.v2.functional`` on tensors (antialiased
bilinear resizing); the random choices are drawn from a numpy ``Generator`` passed in, so a
seeded generator gives the same crops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms import InterpolationMode

from dynapp.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "resize_short_side",
    "center_crop",
    "three_crop",
    "multiscale_crop",
    "random_resized_crop",
    "horizontal_flip",
    "to_contiguous",
    "normalize",
    "normalize_affine",
    "denormalize",
]

_BILINEAR = InterpolationMode.BILINEAR


def _resize(clip: torch.Tensor, size: list[int]) -> torch.Tensor:
    # Resampling a (T, C=3, H, W) view takes torch's fast 3-channel uint8 path: about 2x
    # faster than treating the (C, T, H, W) clip as T-channel images.
    return TF.resize(clip.transpose(0, 1), size, interpolation=_BILINEAR, antialias=True).transpose(0, 1)


def _resized_crop(clip: torch.Tensor, y: int, x: int, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    out = TF.resized_crop(clip.transpose(0, 1), y, x, h, w, list(size), interpolation=_BILINEAR, antialias=True)
    return out.transpose(0, 1)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(C, T, H, W)`` so that ``min(H, W) == size``, keeping the aspect ratio."""
    h, w = clip.shape[-2:]
    if min(h, w) == size:
        return clip
    if h <= w:
        new = (size, max(1, int(round(w * size / h))))
    else:
        new = (max(1, int(round(h * size / w))), size)
    return _resize(clip, list(new))


def _frame_scale(clip: torch.Tensor, scale_size: int | None, size: tuple[int, int]) -> float:
    """f such that the clip "resized" by 1/f has short side ``scale_size`` and holds a ``size`` crop."""
    h, w = clip.shape[-2:]
    f = min(h, w) / scale_size if scale_size else 1.0
    return min(f, h / size[0], w / size[1])  # tiny frames: enlarge so that the crop fits


def _crop(clip: torch.Tensor, y: float, x: float, ch: float, cw: float, size: tuple[int, int], f: float) -> torch.Tensor:
    """Crop a box given in resized coordinates (native = resized * f), resampled to ``size``."""
    h, w = clip.shape[-2:]
    ny, nx = min(max(int(round(y * f)), 0), h - 1), min(max(int(round(x * f)), 0), w - 1)
    nh, nw = min(max(int(round(ch * f)), 1), h - ny), min(max(int(round(cw * f)), 1), w - nx)
    if (nh, nw) == size:
        return TF.crop(clip, ny, nx, nh, nw)  # no resampling needed
    return _resized_crop(clip, ny, nx, nh, nw, size)


def center_crop(clip: torch.Tensor, size: int | tuple[int, int], scale_size: int | None = None) -> torch.Tensor:
    """The centre ``size`` crop of every frame, as if the short side were resized to ``scale_size``
    first (one resampling does both; a clip smaller than the crop is enlarged)."""
    size = _size2(size)
    f = _frame_scale(clip, scale_size, size)
    hv, wv = clip.shape[-2] / f, clip.shape[-1] / f
    return _crop(clip, (hv - size[0]) / 2, (wv - size[1]) / 2, size[0], size[1], size, f)


def three_crop(clip: torch.Tensor, size: int | tuple[int, int], scale_size: int | None = None) -> list[torch.Tensor]:
    """Three crops along the long side (left/centre/right, or top/centre/bottom), as in TSM
    testing, after a (virtual) resize of the short side to ``scale_size``."""
    size = _size2(size)
    f = _frame_scale(clip, scale_size, size)
    hv, wv = clip.shape[-2] / f, clip.shape[-1] / f
    if wv - size[1] >= hv - size[0]:
        boxes = [((hv - size[0]) / 2, x) for x in (0, (wv - size[1]) / 2, wv - size[1])]
    else:
        boxes = [(y, (wv - size[1]) / 2) for y in (0, (hv - size[0]) / 2, hv - size[0])]
    return [_crop(clip, y, x, size[0], size[1], size, f) for y, x in boxes]


def multiscale_crop(
    clip: torch.Tensor,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    scale_size: int | None = None,
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66),
    max_distort: int = 1,
    fix_crop: bool = True,
) -> torch.Tensor:
    """TSN multi-scale crop: width and height from ``scales`` x the short side (their scale
    indices differ by at most ``max_distort``), placed at one of 13 fixed positions (corners,
    centre, edge midpoints and quarter points; ``fix_crop=False``: anywhere), resized to ``size``.
    With ``scale_size`` the crop is chosen as if the short side had been resized to it first
    (TSN resizes to 256, then crops for 224); the resize and the crop are one resampling.
    """
    size = _size2(size)
    f = min(clip.shape[-2:]) / scale_size if scale_size else 1.0
    h, w = int(round(clip.shape[-2] / f)), int(round(clip.shape[-1] / f))
    base = min(h, w)
    sizes = [max(1, int(base * s)) for s in scales]
    crop_h = [size[0] if abs(c - size[0]) < 3 else c for c in sizes]
    crop_w = [size[1] if abs(c - size[1]) < 3 else c for c in sizes]
    pairs = [(crop_h[i], crop_w[j]) for i in range(len(sizes)) for j in range(len(sizes)) if abs(i - j) <= max_distort]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    ch, cw = min(ch, h), min(cw, w)
    if fix_crop:
        dy, dx = (h - ch) // 4, (w - cw) // 4
        offsets = [(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx),
                   (0, 2 * dx), (4 * dy, 2 * dx), (2 * dy, 0), (2 * dy, 4 * dx),
                   (dy, dx), (dy, 3 * dx), (3 * dy, dx), (3 * dy, 3 * dx)]
        y, x = offsets[int(rng.integers(len(offsets)))]
    else:
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return _crop(clip, y, x, ch, cw, size, f)


def random_resized_crop(
    clip: torch.Tensor,
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style crop: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``."""
    size = _size2(size)
    h, w = clip.shape[-2:]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            break
    else:  # fall back to the largest centred crop of an allowed aspect ratio
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
        ch, cw = min(ch, h), min(cw, w)
        y, x = (h - ch) // 2, (w - cw) // 2
    return _resized_crop(clip, y, x, ch, cw, size)


def to_contiguous(clip: torch.Tensor) -> torch.Tensor:
    """A contiguous ``(C, T, H, W)`` copy of a crop (a view of channels-last frame memory).

    numpy's transposing copy of uint8 is about twice as fast as torch's here; flipping after
    it (a contiguous last dimension) costs under a millisecond for a 64-frame 224 px clip,
    against ten before it.
    """
    if clip.is_contiguous():
        return clip
    if clip.dtype == torch.uint8 and clip.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(clip.numpy()))
    return clip.contiguous()


def horizontal_flip(clip: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right."""
    return TF.horizontal_flip(clip)


def normalize_affine(
    mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias), float32 per channel, with ``normalize(x) = x * scale + bias``."""
    scale = torch.tensor([1 / (255.0 * s) for s in std], dtype=torch.float32)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32)
    return scale, bias


def normalize(
    clip: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    *,
    channel_dim: int = 0,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 ``(C, T, H, W)`` -> contiguous float32 ``(x / 255 - mean) / std`` per channel.

    Any device, channels at ``channel_dim`` (1 for a batch ``(N, C, T, H, W)``).
    :class:`dynapp.model.Normalize` calls it on the model's device with its ``affine`` buffers,
    so the Dataset's float output (``dtype="float32"``) and the model's uint8 path agree.
    """
    x = clip.contiguous().to(torch.float32)  # transposing uint8 is 4x less traffic than float
    scale, bias = affine if affine is not None else normalize_affine(mean, std)
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return x.mul_(scale.to(x.device).view(shape)).add_(bias.to(x.device).view(shape))


def denormalize(
    clip: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """Inverse of :func:`normalize` (to [0, 1] floats) for any ``(C, ...)`` tensor."""
    shape = (-1,) + (1,) * (clip.dim() - 1)
    m = torch.tensor(mean, dtype=clip.dtype).view(shape)
    s = torch.tensor(std, dtype=clip.dtype).view(shape)
    return clip * s + m
