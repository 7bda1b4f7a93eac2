"""TSM-ResNet: torchvision's ResNet with the Temporal Shift Module (Lin, Gan and Han, ICCV 2019).

The shift is the "residual shift" of TSM: inside every residual block, before its first
convolution, 1/8 of the channels are shifted one segment back in time and 1/8 one segment
forward (``shift_div=8``), with zeros where a neighbour is missing; the identity path is not
shifted.  The network stays a 2D CNN applied to every segment, so it returns one feature vector
per segment; the classifier and the average consensus live in :class:`dynapp.model.VideoClassifier`.

The module keeps torchvision's parameter names (``conv1.weight``, ``layer1.0.conv1.weight``, ...,
without ``fc``), so torchvision's ImageNet weights load directly.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from dynapp.backbones.entry import Backbone
from dynapp.backbones.shapes import check_video_input
from dynapp.backbones.weights import load_backbone_weights, read_state_dict, torchvision_state_dict

__all__ = ["temporal_shift", "ShiftConv2d", "TSMResNet", "build_tsm_resnet", "ENTRIES"]

# torchvision builder, its ImageNet weights and its feature width.  TSM used ImageNet-1k V1 weights.
_ARCHS = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", 512),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", 2048),
    "resnet101": (torchvision.models.resnet101, "ResNet101_Weights", 2048),
}


def temporal_shift(x: torch.Tensor, num_segments: int, shift_div: int = 8) -> torch.Tensor:
    """Shift channels along time (TSM).  ``x`` is (N*S, C, H, W) with S = ``num_segments``.

    With ``fold = C // shift_div``: channels ``[0, fold)`` of segment t take the values of
    segment t+1, channels ``[fold, 2 fold)`` take those of segment t-1, the rest are unchanged;
    the missing neighbours at the clip's ends are zeros.
    """
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise ValueError(f"temporal_shift: batch {nt} is not a multiple of num_segments={num_segments}")
    fold = c // shift_div
    x = x.reshape(nt // num_segments, num_segments, c, h, w)  # (N, S, C, H, W)
    zeros = x.new_zeros(x.shape[0], 1, fold, h, w)
    back = torch.cat([x[:, 1:, :fold], zeros], dim=1)  # segment t sees t+1
    forward = torch.cat([zeros, x[:, :-1, fold : 2 * fold]], dim=1)  # segment t sees t-1
    out = torch.cat([back, forward, x[:, :, 2 * fold :]], dim=2)
    return out.view(nt, c, h, w)


class ShiftConv2d(nn.Conv2d):
    """A Conv2d that applies :func:`temporal_shift` to its input first.

    Being a Conv2d subclass, it keeps the parameter names of the convolution it replaces.
    """

    def __init__(self, *args, num_segments: int, shift_div: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_segments = num_segments
        self.shift_div = shift_div

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_segments: int, shift_div: int = 8) -> ShiftConv2d:
        """A shifting copy of ``conv`` (same configuration and weights)."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            num_segments=num_segments,
            shift_div=shift_div,
        )
        new.load_state_dict(conv.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*S, C, H, W)
        return super().forward(temporal_shift(x, self.num_segments, self.shift_div))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_segments={self.num_segments}, shift_div={self.shift_div}"


class TSMResNet(nn.Module):
    """TSM on a torchvision ResNet; ``forward((N, C, S, H, W)) -> (N, S, num_features)``.

    ``shift_div=0`` disables the shift (a TSN ResNet).
    """

    def __init__(
        self,
        *,
        num_segments: int,
        in_channels: int = 3,
        arch: str = "resnet50",
        shift_div: int = 8,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown TSM arch {arch!r}; choose from {sorted(_ARCHS)}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be positive, got {num_segments}")
        builder, self._weights_enum, self.num_features = _ARCHS[arch]
        self.arch, self.in_channels, self.num_segments, self.shift_div = arch, in_channels, num_segments, shift_div
        net = builder(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if shift_div:
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in layer:
                    block.conv1 = ShiftConv2d.from_conv(block.conv1, num_segments, shift_div)
        # Keep torchvision's names (no wrapper prefix) so its checkpoints load as they are.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, f"tsm_{self.arch}", self.in_channels, self.num_segments)
        n, c, s, h, w = x.shape
        x = x.transpose(1, 2).reshape(n * s, c, h, w)  # (N*S, C, H, W), segments of a clip adjacent
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)  # (N*S, F)
        return x.view(n, s, -1)

    def load_pretrained(self, pretrained: str) -> None:
        """Load a local file, or ``"imagenet"``/``"torchvision"`` (torchvision's ImageNet V1 weights, from
        torch's hub cache or downloaded: :func:`~dynapp.backbones.weights.torchvision_state_dict`)."""
        if pretrained in ("imagenet", "torchvision"):
            sd = torchvision_state_dict(getattr(torchvision.models, self._weights_enum).IMAGENET1K_V1)
        else:
            sd = read_state_dict(pretrained)
        load_backbone_weights(self, sd, first_conv="conv1.weight", ignore=("fc.",))


def build_tsm_resnet(
    *, in_channels: int = 3, num_segments: int, pretrained: str | None = None, arch: str = "resnet50", shift_div: int = 8
) -> TSMResNet:
    """TSM-ResNet (default ResNet-50, shift 1/8 each way); ``pretrained``: a file or ``"imagenet"``."""
    model = TSMResNet(num_segments=num_segments, in_channels=in_channels, arch=arch, shift_div=shift_div)
    if pretrained:
        model.load_pretrained(pretrained)
    return model


# This file's entries of dynapp.backbones.BACKBONES.
ENTRIES = {"tsm_resnet50": Backbone(build_tsm_resnet, dims=2)}
