"""Small CPU-sized backbones for tests and demos (about 0.2M parameters each).

``Small2D`` is a 2D CNN applied to every segment (like TSN, one feature vector per segment);
``small_tsm`` is the same CNN with TSM's temporal shift (Lin, Gan and Han, ICCV 2019) before every
convolution but the first, so the segments of a clip exchange features (like TSM-R50, the paper's
backbone); ``Small3D`` is a 3D CNN that pools over time (like X3D, one feature vector per clip).
"""

from __future__ import annotations

import torch
from torch import nn

from dynapp.backbones.entry import Backbone
from dynapp.backbones.shapes import check_video_input
from dynapp.backbones.tsm import ShiftConv2d
from dynapp.backbones.weights import load_backbone_weights, read_state_dict

__all__ = ["Small2D", "Small3D", "build_small2d", "build_small3d", "build_small_tsm", "ENTRIES"]


def _conv_bn_relu(conv: nn.Module, channels: int, bn: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(conv, bn(channels), nn.ReLU(inplace=True))


class Small2D(nn.Module):
    """Four 3x3 conv-BN-ReLU layers with stride 2; ``forward((N, C, S, H, W)) -> (N, S, F)``.

    ``shift_div > 0`` makes it ``small_tsm``: every convolution but the first shifts 1/shift_div
    of its input channels one segment back and 1/shift_div one forward (:func:`dynapp.backbones.
    tsm.temporal_shift`, zeros at the clip's ends).  The CNN has no identity path, so the shift is
    TSM's in-place variant; the other channels keep each segment's own features.  The shift has
    no parameters: ``small_tsm`` and ``small2d`` have the same parameters (and names), and differ
    only in whether the segments see each other.  The first convolution is not shifted, so a
    single-segment representation (RGB, DA) is first turned into features of its own frame.
    """

    def __init__(self, *, num_segments: int, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 128),
                 shift_div: int = 0) -> None:
        super().__init__()
        if shift_div < 0:
            raise ValueError(f"shift_div must be >= 0 (0: no shift), got {shift_div}")
        self.in_channels, self.num_segments, self.num_features = in_channels, num_segments, widths[-1]
        self.shift_div, self.name = shift_div, "small_tsm" if shift_div else "small2d"
        layers, dim = [], in_channels
        for i, width in enumerate(widths):
            if shift_div and i > 0:
                conv = ShiftConv2d(dim, width, 3, stride=2, padding=1, bias=False, num_segments=num_segments,
                                   shift_div=shift_div)
            else:
                conv = nn.Conv2d(dim, width, 3, stride=2, padding=1, bias=False)
            layers.append(_conv_bn_relu(conv, width, nn.BatchNorm2d))
            dim = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, self.name, self.in_channels, self.num_segments)
        n, c, s, h, w = x.shape
        y = self.features(x.transpose(1, 2).reshape(n * s, c, h, w))  # (N*S, F, h, w)
        return y.mean(dim=(2, 3)).view(n, s, -1)


class Small3D(nn.Module):
    """Four 3x3x3 conv-BN-ReLU layers (stride 2 in space only); ``forward((N, C, T, H, W)) -> (N, 1, F)``."""

    def __init__(self, *, num_segments: int, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 96)) -> None:
        super().__init__()
        self.in_channels, self.num_segments, self.num_features = in_channels, num_segments, widths[-1]
        layers, dim = [], in_channels
        for width in widths:
            conv = nn.Conv3d(dim, width, 3, stride=(1, 2, 2), padding=1, bias=False)
            layers.append(_conv_bn_relu(conv, width, nn.BatchNorm3d))
            dim = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, "small3d", self.in_channels, self.num_segments)
        return self.features(x).mean(dim=(2, 3, 4)).unsqueeze(1)  # (N, 1, F)


def _load(model: nn.Module, pretrained: str | None) -> nn.Module:
    if pretrained:
        load_backbone_weights(model, read_state_dict(pretrained), first_conv="features.0.0.weight")
    return model


def build_small2d(*, in_channels: int = 3, num_segments: int, pretrained: str | None = None, **kwargs) -> Small2D:
    """A small 2D CNN (about 0.24M parameters); ``pretrained``: a local state-dict file."""
    return _load(Small2D(num_segments=num_segments, in_channels=in_channels, **kwargs), pretrained)


def build_small_tsm(*, in_channels: int = 3, num_segments: int, pretrained: str | None = None, shift_div: int = 8,
                    **kwargs) -> Small2D:
    """``small2d`` with TSM's temporal shift (1/8 of the channels each way) before every conv but the first."""
    if shift_div < 1:
        raise ValueError(f"small_tsm needs shift_div >= 1, got {shift_div} (use small2d for no shift)")
    return _load(Small2D(num_segments=num_segments, in_channels=in_channels, shift_div=shift_div, **kwargs), pretrained)


def build_small3d(*, in_channels: int = 3, num_segments: int, pretrained: str | None = None, **kwargs) -> Small3D:
    """A small 3D CNN (about 0.24M parameters); ``pretrained``: a local state-dict file."""
    return _load(Small3D(num_segments=num_segments, in_channels=in_channels, **kwargs), pretrained)


# This file's entries of dynapp.backbones.BACKBONES.
ENTRIES = {
    "small2d": Backbone(build_small2d, dims=2),
    "small_tsm": Backbone(build_small_tsm, dims=2),
    "small3d": Backbone(build_small3d, dims=3),
}
