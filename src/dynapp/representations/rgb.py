"""RGB frames: the centre frame of each segment (2-D backbones), or every frame (3-D backbones)."""

from __future__ import annotations

import torch

from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.segments import split_segments

__all__ = ["RGB", "centre_frames"]


def centre_frames(clip: torch.Tensor, segments: int, frames: int) -> torch.Tensor:
    """The centre frame (index ``T // 2``) of each segment: (N, C, S*T, H, W) -> (N, C, S, H, W).

    A strided view of the clip, no copy.  For even T this is the later of the two middle frames.
    """
    split_segments(clip, segments, frames)
    return clip[:, :, frames // 2 :: frames]


class RGB(Representation):
    """The centre frame of each segment (N, C, S, H, W), or with ``all_frames`` the whole clip (N, C, S*T, H, W)."""

    name = "rgb"
    min_frames = 1

    @classmethod
    def frames_consumed(cls, frames: int) -> int:
        return 1

    def __init__(self, segments: int, frames: int, in_channels: int = 3, all_frames: bool = False):
        super().__init__(segments, frames, in_channels, segments * frames if all_frames else segments)
        self.all_frames = all_frames

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        self._split(clip)
        if self.all_frames:
            return RepresentationOutput(clip)
        return RepresentationOutput(clip[:, :, self.frames // 2 :: self.frames])  # (N, C, S, H, W)
