"""What a backbone is: its builder and the frames it takes (one entry of :data:`dynapp.backbones.BACKBONES`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

__all__ = ["Backbone"]


@dataclass(frozen=True)
class Backbone:
    """One backbone, declared beside its builder in the file that defines it.

    build: ``build(*, in_channels, num_segments, pretrained, **kwargs) -> nn.Module``.
    dims: 2 -- a 2D backbone takes one image per segment (the representation's S frames) and
        returns features (N, S, F); 3 -- a 3D backbone takes every frame of the clip as one volume
        (``num_segments`` is the number of frames it receives; the ``rgb`` representation passes
        all S*T frames) and pools over time to (N, 1, F).
    """

    build: Callable[..., nn.Module]
    dims: int = 2

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"Backbone.dims: expected 2 or 3, got {self.dims!r}")

    @property
    def all_frames(self) -> bool:
        """Whether it takes every frame of a clip (3D) rather than one image per segment (2D)."""
        return self.dims == 3
