"""Backbones: a plain dict from names to :class:`Backbone` entries, and :func:`build_backbone`.

Every backbone takes ``(N, C, S, H, W)`` and returns per-segment features ``(N, S', F)`` with
``F = backbone.num_features``: S' = S for 2D backbones (``tsm_resnet50``, ``vit_b16``,
``small2d``, ``small_tsm``) and S' = 1 for 3D backbones that pool over time (``x3d_xs``, ``x3d_m``,
``small3d``).  For a 3D backbone, ``num_segments`` is the number of frames it receives.

Each file declares its backbones in its ``ENTRIES`` (builder and 2D / 3D); adding a backbone to a
file is one entry there (and its name in :mod:`dynapp.names`, which the CLI's help reads without
importing torch; ``tests/test_backbones.py`` checks the two agree).  A new file adds its
``ENTRIES`` to :data:`BACKBONES` below.
"""

from __future__ import annotations

from torch import nn

from dynapp.backbones import small, tsm, vit, x3d
from dynapp.backbones.entry import Backbone
from dynapp.backbones.tsm import temporal_shift
from dynapp.backbones.weights import inflate_input_kernel, read_state_dict
from dynapp.backbones.x3d import convert_x3d_checkpoint

__all__ = [
    "Backbone",
    "BACKBONES",
    "BACKBONES_3D",
    "build_backbone",
    "convert_x3d_checkpoint",
    "inflate_input_kernel",
    "read_state_dict",
    "temporal_shift",
]

BACKBONES: dict[str, Backbone] = {**tsm.ENTRIES, **x3d.ENTRIES, **vit.ENTRIES, **small.ENTRIES}

# The 3D backbones, read from the entries: they take all frames of a clip as one volume and return
# one feature vector (S' = 1).
BACKBONES_3D = frozenset(name for name, entry in BACKBONES.items() if entry.all_frames)


def build_backbone(name: str, *, in_channels: int = 3, num_segments: int, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build backbone ``name`` (a key of :data:`BACKBONES`).

    ``pretrained`` is a local weights file (read with ``weights_only=True``) or, online only, a
    name: ``"imagenet"`` for TSM (torchvision), ``"timm"`` or a timm tag for ViT.  ``kwargs`` go to
    the builder (e.g. ``arch="resnet18"`` for TSM, ``embed_dim=64, depth=2`` for ViT).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name].build(in_channels=in_channels, num_segments=num_segments, pretrained=pretrained, **kwargs)
