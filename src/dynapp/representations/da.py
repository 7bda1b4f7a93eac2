"""Dynamic Appearance (Huang and Bors, AAAI 2023): PWTP on every segment, the ``pwtp`` representation."""

from __future__ import annotations

import torch

from dynapp.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dynapp.pwtp import PWTP
from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.segments import unfold_segments

__all__ = ["DynamicAppearance", "PIXELS"]

PIXELS = ("normalized", "unit")  # what PWTP sees: the normalised clip, or the clip in [0, 1]


class DynamicAppearance(Representation):
    """Dynamic Appearance (Huang and Bors, AAAI 2023): PWTP on every segment at once.

    The S segments are treated as N*S samples (``PWTP(clip, segments=S)``), so one PWTP call (and
    one BatchNorm batch in its MLP) covers all N*S segments.  On the fused CPU path the clip is
    never copied: conv F runs on it as it is and the kernel reads each segment in place; the
    reference path folds (N, C, S*T, H, W) -> (N*S, C, T, H, W), which copies the clip when N and
    S are both > 1 (C sits between N and S).  A 2-D backbone's
    ``frames.transpose(1, 2).reshape(N*S, C, H, W)`` is again a view.
    Output: DA frames (N, C, S, H, W) (a permuted view) and
    ``aux_loss`` = ENoPR averaged over all N*S segments (Eq. 8) and ``hyperplanes`` = the MLP's
    output z (N*S, T*D, h, w).  ``kwargs`` go to
    :class:`dynapp.PWTP` (rank, kernel_size, stride, channels, static, impl, ...); the module is
    ``.pwtp``.  ``pixels``: what PWTP sees, ``"normalized"`` (the ImageNet-normalised clip every
    representation gets; the default) or ``"unit"`` (the clip mapped back to [0, 1] first, the
    scale a dynamic image is computed on; the joint-training study of docs/joint.md compares them).
    """

    name = "pwtp"
    has_aux_loss = True

    def __init__(self, segments: int, frames: int, in_channels: int = 3, pixels: str = "normalized", **kwargs):
        super().__init__(segments, frames, in_channels)
        if pixels not in PIXELS:
            raise ValueError(f"pwtp: pixels must be one of {', '.join(PIXELS)}, got {pixels!r}")
        self.pixels = pixels
        self.pwtp = PWTP(frames=frames, in_channels=in_channels, **kwargs)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        if self.pixels == "unit":  # (x / 255 - mean) / std -> x / 255, per channel
            c = clip.shape[1]
            mean = torch.tensor(IMAGENET_MEAN[:c], dtype=clip.dtype, device=clip.device).view(1, c, 1, 1, 1)
            std = torch.tensor(IMAGENET_STD[:c], dtype=clip.dtype, device=clip.device).view(1, c, 1, 1, 1)
            clip = clip * std + mean
        out = self.pwtp(clip, segments=self.segments)  # checks the clip's shape; (N*S, C, H, W)
        return RepresentationOutput(unfold_segments(out.dynamic, self.segments), out.enopr.mean(), out.hyperplanes)
