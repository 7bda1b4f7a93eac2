"""What every representation shares: its output type, shape bookkeeping and declared capabilities."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from dynapp.segments import split_segments

__all__ = ["Representation", "RepresentationOutput"]


class RepresentationOutput(NamedTuple):
    """What every representation returns.

    frames:   (N, C_out, S_out, H, W) the input of the backbone.
    aux_loss: a scalar auxiliary loss (ENoPR averaged over all segments for ``pwtp``, Eq. 8),
              or None.
    hyperplanes: ``pwtp``: the hyperplanes z (N*S, T*D, h, w) its MLP outputs (the last tensor
              that depends on its parameters; ``dynapp.PWTPOutput.hyperplanes``), else None.
    """

    frames: torch.Tensor
    aux_loss: torch.Tensor | None = None
    hyperplanes: torch.Tensor | None = None


class Representation(nn.Module):
    """A clip (N, C, S*T, H, W) -> :class:`RepresentationOutput` with frames (N, C_out, S_out, H, W).

    Instances carry ``segments`` (S), ``frames`` (T), ``in_channels`` (C), ``out_channels``
    (C_out) and ``out_frames`` (S_out).  Each subclass declares its capabilities as class
    attributes, so that callers (FLOP counting, build_representation) read them from the
    class without building one:

    * ``differentiable``: the frames are a differentiable function of the clip (and of the
      representation's parameters, if any).
    * ``countable``: its cost is multiply-adds that ``torch.utils.flop_counter`` sees (OpenCV
      flow runs outside PyTorch; TVNet is all element-wise work, which would count as 0).
    * ``has_aux_loss``: it returns an auxiliary loss (ENoPR), i.e. it has the shared parameters
      Theta1 of the joint training.
    * ``min_frames``: the T it needs per segment.
    * ``channels_per_frame(in_channels, frames)``: C_out.
    * ``frames_consumed(frames)``: the input frames each output frame is computed from (1 for
      ``rgb``, which then can pass all S*T frames to a 3-D backbone; T for the others).
    """

    differentiable: ClassVar[bool] = True
    countable: ClassVar[bool] = True
    has_aux_loss: ClassVar[bool] = False
    min_frames: ClassVar[int] = 2
    name: ClassVar[str] = "representation"  # for messages

    @classmethod
    def channels_per_frame(cls, in_channels: int, frames: int) -> int:
        return in_channels

    @classmethod
    def frames_consumed(cls, frames: int) -> int:
        return frames

    def __init__(self, segments: int, frames: int, in_channels: int, out_frames: int | None = None):
        super().__init__()
        if segments < 1 or frames < 1:
            raise ValueError(f"segments and frames must be positive, got segments={segments}, frames={frames}")
        if frames < self.min_frames:
            raise ValueError(f"{self.name} needs at least {self.min_frames} frames per segment, got frames={frames}")
        self.segments, self.frames, self.in_channels = segments, frames, in_channels
        self.out_channels = self.channels_per_frame(in_channels, frames)
        self.out_frames = segments if out_frames is None else out_frames

    def _split(self, clip: torch.Tensor) -> torch.Tensor:
        """The clip as (N, C, S, T, H, W), a view; the shape is checked (the forward's one check)."""
        return split_segments(clip, self.segments, self.frames, self.in_channels)

    def extra_repr(self) -> str:
        return (
            f"segments={self.segments}, frames={self.frames}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, out_frames={self.out_frames}"
        )
