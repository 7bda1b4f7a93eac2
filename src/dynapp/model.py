"""The recognition framework of Dynamic Appearance (Huang and Bors, AAAI 2023, Section 3.3, Fig. 2).

A clip of S segments x T frames goes through a representation (RGB frames, RGB difference,
dynamic images, optical flow, or DA from PWTP), then one backbone, dropout, a linear classifier
per segment, and the average of the segment logits (TSN's average consensus).  The
representation's parameters are the shared parameters Theta1 of the joint training; everything
else (backbone and classifier) is Theta2.

Clips arrive as the Dataset makes them, uint8 ``(N, 3, S*T, H, W)``, and are normalised on the
model's device by :class:`Normalize` (ImageNet mean and std) before the representation sees them,
so training, evaluation, checkpoints and prediction share one preprocessing.  A float clip is
taken as already normalised (``VideoDataset(dtype="float32")``, the synthetic and noise clips).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dynapp.backbones import BACKBONES, build_backbone
from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, normalize_affine
from dynapp.representations import REPRESENTATIONS, build_representation

__all__ = ["ModelOutput", "Normalize", "VideoClassifier", "build_model"]


class ModelOutput(NamedTuple):
    """logits: (N, num_classes); aux_loss: scalar (e.g. the ENoPR batch mean, Eq. 8) or None;
    hyperplanes: the representation's ``RepresentationOutput.hyperplanes`` (PWTP's z) or None."""

    logits: torch.Tensor
    aux_loss: torch.Tensor | None
    hyperplanes: torch.Tensor | None = None


class Normalize(nn.Module):
    """uint8 clips ``(N, C, ...)`` -> float32 ``(x / 255 - mean) / std``; float clips pass unchanged.

    The constants are non-persistent buffers: they follow ``model.to(device)`` but are not in
    the state dict, so checkpoints from before this module load as they are.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        scale, bias = normalize_affine(mean, std)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dtype != torch.uint8:
            return clip
        return normalize(clip, channel_dim=1, affine=(self.scale, self.bias))


class VideoClassifier(nn.Module):
    """representation -> backbone -> dropout -> linear head per segment -> mean over segments.

    ``backbone`` returns per-segment features (N, S', F) with ``F = backbone.num_features``
    (S' = 1 for 3D backbones).  The classifier starts as in TSM (normal with std 0.001, zero
    bias), so the initial logits are near uniform.

    ``normalize`` runs as a forward pre-hook of ``representation``: a uint8 clip is normalised
    whether it comes through :meth:`forward` or straight into ``model.representation(clip)``
    (separate PWTP training calls the representation alone).
    """

    def __init__(self, representation: nn.Module, backbone: nn.Module, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.normalize = Normalize()
        self.representation = representation
        self.representation.register_forward_pre_hook(self._normalize_input)
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.num_features, num_classes)
        nn.init.normal_(self.head.weight, std=0.001)
        nn.init.zeros_(self.head.bias)

    def _normalize_input(self, module: nn.Module, args: tuple) -> tuple:
        return (self.normalize(args[0]),) + tuple(args[1:])

    def forward(self, clip: torch.Tensor) -> ModelOutput:  # clip (N, C, S*T, H, W), uint8 or normalised float
        rep = self.representation(clip)  # normalised by the pre-hook; frames (N, C', S_out, H, W)
        features = self.backbone(rep.frames)  # (N, S', F)
        logits = self.head(self.dropout(features))  # (N, S', K)
        return ModelOutput(logits.mean(dim=1), rep.aux_loss, rep.hyperplanes)


def representation_for(
    representation: str,
    backbone: str,
    *,
    segments: int,
    frames: int,
    in_channels: int = 3,
    representation_kwargs: dict | None = None,
) -> nn.Module:
    """The representation module ``build_model`` puts in front of ``backbone`` (names checked).

    With a 3D backbone (X3D, small3d) the ``rgb`` representation passes all S*T frames.
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; choose from {sorted(REPRESENTATIONS)}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    return build_representation(
        representation,
        segments=segments,
        frames=frames,
        in_channels=in_channels,
        all_frames=BACKBONES[backbone].all_frames,
        **(representation_kwargs or {}),
    )


def build_model(
    *,
    representation: str,
    backbone: str,
    num_classes: int,
    segments: int,
    frames: int,
    in_channels: int = 3,
    dropout: float = 0.5,
    pretrained: str | None = None,
    representation_kwargs: dict | None = None,
    backbone_kwargs: dict | None = None,
) -> VideoClassifier:
    """Build a :class:`VideoClassifier` from a representation name and a backbone name.

    With a 3D backbone (X3D, small3d) the ``rgb`` representation passes all S*T frames.  The
    backbone's first layer takes the representation's ``out_channels`` and it is built for the
    representation's ``out_frames``.  ``pretrained`` (a local file, or a name when online) goes
    to :func:`dynapp.backbones.build_backbone`; its first layer is inflated when the channel
    counts differ.
    """
    rep = representation_for(representation, backbone, segments=segments, frames=frames,
                             in_channels=in_channels, representation_kwargs=representation_kwargs)
    net = build_backbone(
        backbone,
        in_channels=rep.out_channels,
        num_segments=rep.out_frames,
        pretrained=pretrained,
        **(backbone_kwargs or {}),
    )
    return VideoClassifier(rep, net, num_classes, dropout=dropout)
