"""TSN's RGB difference (Wang et al., ECCV 2016): stacked differences of consecutive frames."""

from __future__ import annotations

import torch

from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.segments import split_segments

__all__ = ["RGBDifference", "rgb_difference"]


def rgb_difference(clip: torch.Tensor, segments: int, frames: int) -> torch.Tensor:
    """TSN's RGB difference (Wang et al., ECCV 2016): stacked consecutive frame differences.

    (N, C, S*T, H, W) -> (N, (T-1)*C, S, H, W); channel ``t*C + c`` is ``x[t+1, c] - x[t, c]``
    within each segment (time-major, as TSN stacks them).  On a normalised clip this is the
    difference of raw frames divided by the per-channel std (the mean cancels).
    """
    if frames < 2:
        raise ValueError(f"rgb_diff needs at least 2 frames per segment, got frames={frames}")
    x = split_segments(clip, segments, frames)  # (N, C, S, T, H, W)
    return _difference(x)


def _difference(x: torch.Tensor) -> torch.Tensor:
    N, C, S, T, H, W = x.shape
    d = x[:, :, :, 1:] - x[:, :, :, :-1]  # (N, C, S, T-1, H, W)
    return d.permute(0, 3, 1, 2, 4, 5).reshape(N, (T - 1) * C, S, H, W)


class RGBDifference(Representation):
    """TSN's stacked RGB differences, (N, C*(T-1), S, H, W); see :func:`rgb_difference`."""

    name = "rgb_diff"

    @classmethod
    def channels_per_frame(cls, in_channels: int, frames: int) -> int:
        return in_channels * (frames - 1)

    def __init__(self, segments: int, frames: int, in_channels: int = 3):
        super().__init__(segments, frames, in_channels)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        return RepresentationOutput(_difference(self._split(clip)))
