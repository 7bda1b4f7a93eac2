"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

X3D-XS, X3D-S and X3D-M are one network (width factor 2.0, depth factor 2.2, bottleneck factor
2.25); they differ only in the clip they are given: XS 4 frames at 160 px, S 13 x 160, M 16 x 224.
The layout follows the paper (Table 1) and PySlowFast's modules, so that PySlowFast and
PyTorchVideo checkpoints load through :func:`convert_x3d_checkpoint`:

* stem: a 1x3x3 convolution (stride 2 in space) to 24 channels, then a depthwise 5x1x1 temporal
  convolution, BatchNorm, ReLU;
* stages res2..res5 with widths 24/48/96/192, inner widths 54/108/216/432 and 3/5/11/7
  bottleneck blocks; the first block of each stage has stride 2 in space and a 1x1x1 projection
  shortcut.  A block is 1x1x1 conv, BN, ReLU; depthwise 3x3x3 conv, BN, squeeze-excitation
  (ratio 1/16, on the 1st, 3rd, 5th, ... block of a stage), Swish; 1x1x1 conv, BN; then
  ReLU(shortcut + block);
* conv5: 1x1x1, 192 -> 432, BN, ReLU; global average pooling over (T, H, W); a 1x1x1
  "lin5" 432 -> 2048 without BatchNorm, ReLU (PySlowFast's X3DHead with ``bn_lin5_on=False``).

The classifier (2048 -> classes) is the :class:`dynapp.model.VideoClassifier`'s head.  The
temporal stride is 1 throughout; the network pools over time and returns one feature vector:
``forward((N, C, T, H, W)) -> (N, 1, 2048)``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch
from torch import nn

from dynapp.backbones.entry import Backbone
from dynapp.backbones.shapes import check_video_input
from dynapp.backbones.weights import load_backbone_weights, read_state_dict

__all__ = ["round_width", "SqueezeExcite", "X3DBlock", "X3D", "build_x3d", "convert_x3d_checkpoint", "ENTRIES"]

_BN_EPS = 1e-5


def round_width(width: float, multiplier: float, min_width: int = 8, divisor: int = 8) -> int:
    """X3D's channel rounding: ``width * multiplier`` to the nearest multiple of ``divisor``.

    At least ``min_width``, and never more than 10% below the exact product (then one more
    ``divisor``).  For the squeeze-excitation widths of X3D (ratio 1/16): 54 -> 8, 108 -> 8,
    216 -> 16, 432 -> 32.
    """
    exact = width * multiplier
    out = max(min_width, int(exact + divisor / 2) // divisor * divisor)
    if out < 0.9 * exact:
        out += divisor
    return int(out)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) on a 5-D tensor: global mean, 1x1x1 conv, ReLU,
    1x1x1 conv, sigmoid, channel-wise scaling."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        reduced = round_width(channels, ratio)
        self.fc1 = nn.Conv3d(channels, reduced, 1, bias=True)
        self.fc2 = nn.Conv3d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W)
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class X3DBlock(nn.Module):
    """X3D residual bottleneck block (see the module docstring)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, *, stride: int, se_ratio: float) -> None:
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.skip_conv = nn.Conv3d(dim_in, dim_out, 1, stride=(1, stride, stride), bias=False)
            self.skip_bn = nn.BatchNorm3d(dim_out, eps=_BN_EPS)
        else:
            self.skip_conv = self.skip_bn = None
        self.conv_a = nn.Conv3d(dim_in, dim_inner, 1, bias=False)
        self.bn_a = nn.BatchNorm3d(dim_inner, eps=_BN_EPS)
        self.conv_b = nn.Conv3d(
            dim_inner, dim_inner, 3, stride=(1, stride, stride), padding=1, groups=dim_inner, bias=False
        )
        self.bn_b = nn.BatchNorm3d(dim_inner, eps=_BN_EPS)
        self.se = SqueezeExcite(dim_inner, se_ratio) if se_ratio > 0 else None
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.bn_c = nn.BatchNorm3d(dim_out, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T, H, W)
        y = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        if self.se is not None:
            y = self.se(y)
        y = nn.functional.silu(y)  # Swish
        y = self.bn_c(self.conv_c(y))
        shortcut = x if self.skip_conv is None else self.skip_bn(self.skip_conv(x))
        return torch.relu(shortcut + y)


class X3D(nn.Module):
    """The X3D-XS/S/M network without its classifier; ``forward((N, C, T, H, W)) -> (N, 1, 2048)``.

    ``num_frames`` is the clip length the model is built for (4 for XS, 16 for M); the network
    itself accepts any length, but the input is checked against it so that a representation
    giving the wrong number of frames fails loudly.
    """

    def __init__(
        self,
        *,
        num_frames: int,
        in_channels: int = 3,
        stem_width: int = 24,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depths: tuple[int, ...] = (3, 5, 11, 7),
        bottleneck_factor: float = 2.25,
        se_ratio: float = 0.0625,
        head_width: int = 2048,
        name: str = "x3d",
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths {widths} and depths {depths} must have the same length")
        self.name, self.in_channels, self.num_frames = name, in_channels, num_frames
        self.num_features = head_width
        # Stem: spatial 1x3x3 then depthwise temporal 5x1x1 (X3D's "conv1").
        self.stem = nn.Module()
        self.stem.conv_xy = nn.Conv3d(in_channels, stem_width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.stem.conv_t = nn.Conv3d(stem_width, stem_width, (5, 1, 1), padding=(2, 0, 0), groups=stem_width, bias=False)
        self.stem.bn = nn.BatchNorm3d(stem_width, eps=_BN_EPS)
        self.stages = nn.ModuleList()
        dim_in = stem_width
        for width, depth in zip(widths, depths):
            inner = int(bottleneck_factor * width)
            blocks = [
                X3DBlock(
                    dim_in if i == 0 else width,
                    inner,
                    width,
                    stride=2 if i == 0 else 1,
                    # SE on every other block, starting with the first (PySlowFast's layout).
                    se_ratio=se_ratio if i % 2 == 0 else 0.0,
                )
                for i in range(depth)
            ]
            self.stages.append(nn.Sequential(*blocks))
            dim_in = width
        inner = int(bottleneck_factor * dim_in)
        self.conv5 = nn.Conv3d(dim_in, inner, 1, bias=False)
        self.bn5 = nn.BatchNorm3d(inner, eps=_BN_EPS)
        self.lin5 = nn.Conv3d(inner, head_width, 1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init (fan-out) for convolutions, unit BatchNorm, and zero for the last BN of every
        # residual branch so that each block starts as the identity (PySlowFast's X3D recipe).
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.stages:
            for block in stage:
                nn.init.zeros_(block.bn_c.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, self.name, self.in_channels, self.num_frames)
        x = torch.relu(self.stem.bn(self.stem.conv_t(self.stem.conv_xy(x))))  # (N, 24, T, H/2, W/2)
        for stage in self.stages:
            x = stage(x)  # (N, 192, T, H/32, W/32) after res5
        x = torch.relu(self.bn5(self.conv5(x)))
        x = x.mean(dim=(2, 3, 4), keepdim=True)  # (N, 432, 1, 1, 1)
        x = torch.relu(self.lin5(x))
        return x.flatten(1).unsqueeze(1)  # (N, 1, 2048)

    def load_pretrained(self, pretrained: str) -> None:
        """Load a local PySlowFast, PyTorchVideo or dynapp X3D checkpoint (any input channel count)."""
        sd = convert_x3d_checkpoint(read_state_dict(pretrained))
        load_backbone_weights(self, sd, first_conv="stem.conv_xy.weight")


def build_x3d(
    *, in_channels: int = 3, num_segments: int, pretrained: str | None = None, name: str = "x3d", **kwargs
) -> X3D:
    """An X3D-XS/M network for clips of ``num_segments`` frames; ``pretrained``: a local checkpoint."""
    model = X3D(num_frames=num_segments, in_channels=in_channels, name=name, **kwargs)
    if pretrained:
        model.load_pretrained(pretrained)
    return model


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion.  Module names of the two reference implementations, read from
# PySlowFast (slowfast/models/{video_model_builder,resnet_helper,stem_helper,head_helper}.py)
# and PyTorchVideo (pytorchvideo/models/x3d.py, resnet.py, head.py; fvcore's SqueezeExcitation).

_SLOWFAST_BLOCK = {
    "branch1": "skip_conv",
    "branch1_bn": "skip_bn",
    "branch2.a": "conv_a",
    "branch2.a_bn": "bn_a",
    "branch2.b": "conv_b",
    "branch2.b_bn": "bn_b",
    "branch2.se.fc1": "se.fc1",
    "branch2.se.fc2": "se.fc2",
    "branch2.c": "conv_c",
    "branch2.c_bn": "bn_c",
}
_PTV_BLOCK = {
    "branch1_conv": "skip_conv",
    "branch1_norm": "skip_bn",
    "branch2.conv_a": "conv_a",
    "branch2.norm_a": "bn_a",
    "branch2.conv_b": "conv_b",
    "branch2.norm_b.0": "bn_b",
    "branch2.norm_b.1.block.0": "se.fc1",
    "branch2.norm_b.1.block.2": "se.fc2",
    "branch2.conv_c": "conv_c",
    "branch2.norm_c": "bn_c",
}
_SLOWFAST_OTHER = {
    "s1.pathway0_stem.conv_xy": "stem.conv_xy",
    "s1.pathway0_stem.conv": "stem.conv_t",
    "s1.pathway0_stem.bn": "stem.bn",
    "head.conv_5": "conv5",
    "head.conv_5_bn": "bn5",
    "head.lin_5": "lin5",
    "head.projection": None,  # the classifier: not part of the backbone
}
_PTV_OTHER = {
    # PyTorchVideo's Conv2plus1d names the spatial 1x3x3 conv "conv_t" and the temporal 5x1x1
    # depthwise conv "conv_xy" (the reverse of PySlowFast); the shapes tell them apart.
    "blocks.0.conv.conv_t": "stem.conv_xy",
    "blocks.0.conv.conv_xy": "stem.conv_t",
    "blocks.0.norm": "stem.bn",
    "blocks.5.pool.pre_conv": "conv5",
    "blocks.5.pool.pre_norm": "bn5",
    "blocks.5.pool.post_conv": "lin5",
    "blocks.5.proj": None,
}
_SLOWFAST_RE = re.compile(r"^s([2-5])\.pathway0_res(\d+)\.(.+)$")
_PTV_RE = re.compile(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.(.+)$")
_PARAM_RE = re.compile(r"^(.+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _map_key(module: str, other: Mapping[str, str | None], block_re: re.Pattern, block_map: Mapping[str, str], first_stage: int):
    """Module path in a reference layout -> ours; None to drop; KeyError if unknown."""
    if module in other:
        return other[module]
    m = block_re.match(module)
    if m and m.group(3) in block_map:
        return f"stages.{int(m.group(1)) - first_stage}.{int(m.group(2))}.{block_map[m.group(3)]}"
    raise KeyError(module)


def convert_x3d_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a PySlowFast or PyTorchVideo X3D state dict onto :class:`X3D`'s parameter names.

    The classifier (PySlowFast ``head.projection``, PyTorchVideo ``blocks.5.proj``) is dropped:
    the backbone ends at the 2048-d ``lin5`` features.  A ``model_state`` wrapper and a
    ``module.`` prefix are removed.  PyTorchVideo has no BatchNorm on the first block's
    projection shortcut (its input and output widths are equal, only the stride differs); that
    BatchNorm is filled with the identity (weight 1, bias 0, mean 0, variance 1 - eps), which
    reproduces PyTorchVideo's outputs in eval mode.  A state dict already in dynapp's names is
    returned unchanged.  Unknown keys raise a ValueError.
    """
    if "model_state" in state_dict and isinstance(state_dict["model_state"], Mapping):
        state_dict = state_dict["model_state"]
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if any(k.startswith("s1.pathway0_stem.") for k in sd):
        layout = (_SLOWFAST_OTHER, _SLOWFAST_RE, _SLOWFAST_BLOCK, 2)
    elif any(k.startswith("blocks.0.conv.") for k in sd):
        layout = (_PTV_OTHER, _PTV_RE, _PTV_BLOCK, 1)
    elif any(k.startswith("stem.conv_xy.") for k in sd):
        return dict(sd)
    else:
        raise ValueError("not an X3D checkpoint: no PySlowFast (s1.pathway0_stem.*), PyTorchVideo "
                         "(blocks.0.conv.*) or dynapp (stem.conv_xy.*) stem keys found")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        m = _PARAM_RE.match(key)
        try:
            if m is None:
                raise KeyError(key)
            target = _map_key(m.group(1), *layout)
        except KeyError:
            unknown.append(key)
            continue
        if target is not None:
            out[f"{target}.{m.group(2)}"] = value
    if unknown:
        raise ValueError(f"unknown X3D checkpoint keys: {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    # Identity BatchNorm where a projection shortcut has no BN (PyTorchVideo, equal widths).
    for key in [k for k in out if k.endswith(".skip_conv.weight")]:
        bn = key[: -len("skip_conv.weight")] + "skip_bn."
        if bn + "weight" not in out:
            c = out[key].shape[0]
            out[bn + "weight"] = torch.ones(c)
            out[bn + "bias"] = torch.zeros(c)
            out[bn + "running_mean"] = torch.zeros(c)
            out[bn + "running_var"] = torch.full((c,), 1.0 - _BN_EPS)
            out[bn + "num_batches_tracked"] = torch.tensor(0)
    return out


# This file's entries of dynapp.backbones.BACKBONES.  X3D-XS (4 x 160) and X3D-M (16 x 224) are the
# same network; only the clip differs.
ENTRIES = {
    "x3d_xs": Backbone(functools.partial(build_x3d, name="x3d_xs"), dims=3),
    "x3d_m": Backbone(functools.partial(build_x3d, name="x3d_m"), dims=3),
}
