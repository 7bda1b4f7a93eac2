"""Video representations: a clip of S segments x T frames -> the frames a backbone classifies.

Every representation takes a normalised clip ``(N, C, S*T, H, W)`` (torchvision's video layout,
ImageNet mean/std, S segments of T consecutive frames each, :mod:`dynapp.segments`) and returns a
:class:`RepresentationOutput` whose ``frames`` are ``(N, C_out, S_out, H, W)``; ``aux_loss`` is
a scalar where the representation has its own objective (ENoPR for DA) and None otherwise.
Each module carries ``out_channels`` (C_out) and ``out_frames`` (S_out).

=================  ====================  ========  =============================================
name               C_out                 S_out     what
=================  ====================  ========  =============================================
``rgb``            C                     S         centre frame of each segment (index T // 2)
``rgb`` all_frames C                     S*T       the clip itself, for 3-D backbones
``rgb_diff``       C*(T-1)               S         TSN: stacked consecutive differences
``dynamic_image``  C                     S         approximate rank pooling (Bilen et al.)
``flow_tvl1``      2*(T-1)               S         OpenCV TV-L1 optical flow, stacked x/y
``flow_farneback`` 2*(T-1)               S         OpenCV Farneback optical flow, stacked x/y
``flow_tvnet``     2*(T-1)               S         TVNet (learnable unrolled TV-L1), stacked x/y
``pwtp``           C                     S         Dynamic Appearance (Huang and Bors), + ENoPR
=================  ====================  ========  =============================================

``frames`` may be a strided view of the clip (e.g. ``rgb`` and ``pwtp`` return
``permute``/slice views rather than copies): backbones should use ``reshape`` (not ``view``).

:data:`REPRESENTATIONS` maps each name to its class (the builder); each class declares its
capabilities (``differentiable``, ``countable``, ``has_aux_loss``, ``min_frames``,
``channels_per_frame``, ``frames_consumed``: see :class:`Representation`), which FLOP counting
and :func:`build_representation` read instead of guessing from names.
:func:`build_representation` is the one entry point.  To add a
representation: one file here with a :class:`Representation` subclass, one entry in the dict
(and its name in :mod:`dynapp.names`, which the CLI's help reads without importing torch).
"""

from __future__ import annotations

from torch import nn

from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.representations.da import DynamicAppearance
from dynapp.representations.difference import RGBDifference, rgb_difference
from dynapp.representations.dynamic_image import DynamicImage, dynamic_image, rank_pool_weights
from dynapp.representations.flow import FarnebackFlow, OpticalFlow, TVL1Flow
from dynapp.representations.rgb import RGB, centre_frames
from dynapp.representations.tvnet import TVNetFlow
from dynapp.segments import split_segments

__all__ = [
    "REPRESENTATIONS",
    "RGB",
    "DynamicAppearance",
    "DynamicImage",
    "FarnebackFlow",
    "OpticalFlow",
    "RGBDifference",
    "Representation",
    "RepresentationOutput",
    "TVL1Flow",
    "TVNetFlow",
    "build_representation",
    "centre_frames",
    "dynamic_image",
    "rank_pool_weights",
    "rgb_difference",
    "split_segments",
]

REPRESENTATIONS: dict[str, type[Representation]] = {
    "rgb": RGB,
    "rgb_diff": RGBDifference,
    "dynamic_image": DynamicImage,
    "flow_tvl1": TVL1Flow,
    "flow_farneback": FarnebackFlow,
    "flow_tvnet": TVNetFlow,
    "pwtp": DynamicAppearance,
}


def build_representation(
    name: str, *, segments: int, frames: int, in_channels: int = 3, all_frames: bool = False, **kwargs
) -> nn.Module:
    """Build the representation ``name`` (a key of :data:`REPRESENTATIONS`).

    ``segments`` (S) and ``frames`` (T) fix the clip length S*T; ``kwargs`` go to the
    representation (e.g. ``rank`` or ``static`` for ``pwtp``, ``bound`` for the flows).
    ``all_frames`` (for 3-D backbones) passes every frame to the backbone where the
    representation computes each output frame from one input frame (``frames_consumed`` 1:
    ``rgb``); the others summarise each segment and ignore it.
    """
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {name!r}; choose from {', '.join(REPRESENTATIONS)}")
    cls = REPRESENTATIONS[name]
    if all_frames and cls.frames_consumed(frames) == 1:
        kwargs["all_frames"] = True
    return cls(segments=segments, frames=frames, in_channels=in_channels, **kwargs)
