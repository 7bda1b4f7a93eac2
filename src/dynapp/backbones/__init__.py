"""Backbones: a plain dict from names to builders, and :func:`build_backbone`.

Every backbone takes ``(N, C, S, H, W)`` and returns per-segment features ``(N, S', F)`` with
``F = backbone.num_features``: S' = S for 2D backbones (``tsm_resnet50``, ``vit_b16``,
``small2d``, ``small_tsm``) and S' = 1 for 3D backbones that pool over time (``x3d_xs``, ``x3d_m``,
``small3d``).  For a 3D backbone, ``num_segments`` is the number of frames it receives.
"""

from __future__ import annotations

import functools

from torch import nn

from dynapp.backbones.small import build_small2d, build_small3d, build_small_tsm
from dynapp.backbones.tsm import build_tsm_resnet, temporal_shift
from dynapp.backbones.vit import build_vit
from dynapp.backbones.weights import inflate_input_kernel, read_state_dict
from dynapp.backbones.x3d import build_x3d, convert_x3d_checkpoint

__all__ = [
    "BACKBONES",
    "BACKBONES_3D",
    "build_backbone",
    "convert_x3d_checkpoint",
    "inflate_input_kernel",
    "read_state_dict",
    "temporal_shift",
]

BACKBONES = {
    "tsm_resnet50": build_tsm_resnet,
    # X3D-XS (4 x 160) and X3D-M (16 x 224) are the same network; only the clip differs.
    "x3d_xs": functools.partial(build_x3d, name="x3d_xs"),
    "x3d_m": functools.partial(build_x3d, name="x3d_m"),
    "vit_b16": build_vit,
    "small2d": build_small2d,
    "small_tsm": build_small_tsm,
    "small3d": build_small3d,
}

# Backbones that take all frames of a clip as a 3D volume and return one feature vector (S' = 1).
BACKBONES_3D = frozenset({"x3d_xs", "x3d_m", "small3d"})


def build_backbone(name: str, *, in_channels: int = 3, num_segments: int, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build backbone ``name`` (a key of :data:`BACKBONES`).

    ``pretrained`` is a local weights file (read with ``weights_only=True``) or, online only, a
    name: ``"imagenet"`` for TSM (torchvision), ``"timm"`` or a timm tag for ViT.  ``kwargs`` go to
    the builder (e.g. ``arch="resnet18"`` for TSM, ``embed_dim=64, depth=2`` for ViT).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, num_segments=num_segments, pretrained=pretrained, **kwargs)
