"""Computational cost per view: GFLOPs as multiply-adds (as the video papers count) and parameters.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
multiply-add of convolutions and matrix products; the figures here are halved to multiply-adds
(the "FLOPs" of X3D, TSM and the Dynamic Appearance paper).  Element-wise operations, BatchNorm,
activations and pooling are not counted (they are a few per cent at most).  The representation
and the backbone (with its classifier) are counted apart.  A representation whose class is not
``countable`` is shown as "n/a": OpenCV optical flow (computed outside PyTorch) and TVNet (all
its work is element-wise, which the multiply-add count leaves out).  PWTP is counted on its
reference path (``impl="reference"``): the fused CPU kernel is opaque to the counter.

:func:`model_flops` builds the backbone on PyTorch's meta device (shapes only: no memory, no
arithmetic), so full-size models are counted in about a second on a CPU; the representation
runs for real on a random clip (PWTP needs real numbers).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynapp.backbones import build_backbone
from dynapp.model import representation_for
from dynapp.pwtp import PWTP

__all__ = ["FlopsReport", "count_macs", "count_params", "model_flops", "flops_settings", "PAPER_MODELS", "paper_rows",
           "format_table"]


class FlopsReport(NamedTuple):
    """Cost of one view.  ``representation_gflops`` is None when it is not counted (OpenCV flow)."""

    representation_gflops: float | None
    backbone_gflops: float  # backbone + classifier
    representation_params: int
    backbone_params: int  # backbone + classifier

    @property
    def gflops(self) -> float:
        return self.backbone_gflops + (self.representation_gflops or 0.0)

    @property
    def params(self) -> int:
        return self.representation_params + self.backbone_params


def count_macs(fn, *args, **kwargs) -> int:
    """Multiply-adds of one call ``fn(*args, **kwargs)`` (FlopCounterMode's count / 2), under no_grad."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    """Number of parameters (learnable tensors; buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def model_flops(
    *,
    representation: str,
    backbone: str,
    num_classes: int,
    segments: int,
    frames: int,
    crop: int,
    in_channels: int = 3,
    representation_kwargs: dict | None = None,
    backbone_kwargs: dict | None = None,
) -> FlopsReport:
    """GFLOPs (multiply-adds) and parameters of one view (batch 1, S*T frames at crop x crop).

    The configuration is the one :func:`dynapp.model.build_model` builds from the same
    arguments.  The backbone and classifier are built and run on the meta device.
    """
    if crop < 1 or segments < 1 or frames < 1:
        raise ValueError(f"segments, frames and crop must be positive, got {segments}, {frames}, {crop}")
    rep = representation_for(representation, backbone, segments=segments, frames=frames,
                             in_channels=in_channels, representation_kwargs=representation_kwargs).eval()
    out_shape = (1, rep.out_channels, rep.out_frames, crop, crop)  # every representation keeps H x W
    rep_gflops = None
    if rep.countable:
        for m in rep.modules():
            if isinstance(m, PWTP):
                m.impl = "reference"  # count PWTP op by op: the fused CPU kernel is opaque to the counter
        clip = torch.randn(1, in_channels, segments * frames, crop, crop, generator=torch.Generator().manual_seed(0))
        rep_gflops = count_macs(rep, clip) / 1e9
    with torch.device("meta"):
        net = build_backbone(backbone, in_channels=rep.out_channels, num_segments=rep.out_frames, **(backbone_kwargs or {}))
        head = nn.Linear(net.num_features, num_classes)
    net.eval()
    x = torch.empty(out_shape, device="meta")
    backbone_gflops = count_macs(lambda t: head(net(t)).mean(dim=1), x) / 1e9
    return FlopsReport(rep_gflops, backbone_gflops, count_params(rep), count_params(net) + count_params(head))


def _settings_of_config(cfg) -> dict:
    """The model of a ``RunConfig`` and its test view (``eval.crop_size``, else ``data.crop_size``)."""
    d, m = cfg.data, cfg.model
    return dict(representation=m.representation, backbone=m.backbone, segments=d.segments, frames=d.frames,
                crop=cfg.eval.crop_size or d.crop_size, in_channels=m.in_channels,
                representation_kwargs=dict(m.representation_kwargs), backbone_kwargs=dict(m.backbone_kwargs),
                **({"num_classes": d.num_classes} if d.num_classes else {}))


def flops_settings(*, checkpoint: str | None = None, config: str | None = None, **given) -> dict:
    """The keyword arguments of :func:`model_flops` for ``dynapp flops``.

    From a training checkpoint (its saved config, its classifier's outputs) or a YAML run config
    (``--config``), else the defaults: ``rgb`` on ``tsm_resnet50``, 8 segments, 224 pixels, 174
    classes, and T = 1 frame per segment for a representation that takes one (``rgb``), 8 for the
    others.  Options given (not None) win over all of these.
    """
    from dynapp.representations import REPRESENTATIONS

    if checkpoint and config:
        raise ValueError("give --checkpoint or --config, not both")
    base: dict = dict(representation="rgb", backbone="tsm_resnet50", segments=8, crop=224, num_classes=174)
    if checkpoint:
        from dynapp.config import config_from_dict
        from dynapp.engine.checkpoint import CheckpointError, load_checkpoint

        ck = load_checkpoint(checkpoint)
        if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not ck.get("config"):
            raise CheckpointError(f"{checkpoint} is not a dynapp training checkpoint (no model or config)")
        base.update(_settings_of_config(config_from_dict(ck["config"])))
        head = ck["model"].get("head.weight")
        if head is not None:
            base["num_classes"] = int(head.shape[0])
    elif config:
        from dynapp.config import load_config

        base.update(_settings_of_config(load_config(config)))
    base.update({k: v for k, v in given.items() if v is not None})
    if base.get("frames") is None:
        cls = REPRESENTATIONS.get(base["representation"])
        base["frames"] = 1 if cls is not None and cls.min_frames <= 1 else 8
    return base


# The paper's models (Dynamic Appearance, Tables 1, 2, 6, 7; X3D and TSM papers) with the published
# per-view GFLOPs and parameters.  Crops: 256 for TSM/X3D-M testing, 160 for X3D-XS, 224 for ViT.
PAPER_MODELS: list[dict] = [
    dict(model="X3D-XS", representation="rgb", backbone="x3d_xs", segments=4, frames=1, crop=160, num_classes=400, paper_gflops=0.6, paper_params=3.79e6, source="X3D paper (K400)"),
    dict(model="X3D-XS", representation="rgb", backbone="x3d_xs", segments=4, frames=1, crop=160, num_classes=174, paper_gflops=0.6, paper_params=3.33e6, source="Table 1"),
    dict(model="DA X3D-XS", representation="pwtp", backbone="x3d_xs", segments=4, frames=8, crop=160, num_classes=174, paper_gflops=0.8, paper_params=3.34e6, source="Table 1"),
    dict(model="X3D-M", representation="rgb", backbone="x3d_m", segments=16, frames=1, crop=256, num_classes=174, paper_gflops=6.3, paper_params=3.33e6, source="Table 1"),
    dict(model="DA X3D-M", representation="pwtp", backbone="x3d_m", segments=16, frames=3, crop=256, num_classes=174, paper_gflops=7.0, paper_params=3.34e6, source="Table 1"),
    dict(model="TSM R50", representation="rgb", backbone="tsm_resnet50", segments=8, frames=1, crop=224, num_classes=174, paper_gflops=33.0, paper_params=23.8e6, source="TSM paper"),
    dict(model="TSM R50", representation="rgb", backbone="tsm_resnet50", segments=8, frames=1, crop=256, num_classes=174, paper_gflops=42.9, paper_params=23.8e6, source="Tables 1, 7"),
    dict(model="DA TSM R50", representation="pwtp", backbone="tsm_resnet50", segments=8, frames=6, crop=256, num_classes=174, paper_gflops=43.1, paper_params=23.8e6 + 7.13e3, source="Table 7"),
    dict(model="ViT-B/16", representation="rgb", backbone="vit_b16", segments=8, frames=1, crop=224, num_classes=174, paper_gflops=269.0, paper_params=86.3e6, source="Table 1"),
    dict(model="DA ViT-B/16", representation="pwtp", backbone="vit_b16", segments=8, frames=4, crop=224, num_classes=174, paper_gflops=270.0, paper_params=86.3e6, source="Table 1"),
]

_CONFIG_KEYS = ("representation", "backbone", "segments", "frames", "crop", "num_classes")


def paper_rows() -> list[dict]:
    """Our count for every model of :data:`PAPER_MODELS`, beside the published numbers."""
    rows = []
    for spec in PAPER_MODELS:
        report = model_flops(**{k: spec[k] for k in _CONFIG_KEYS})
        rows.append({**spec, "report": report})
    return rows


def _fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.2f}K"


def format_table(rows: list[dict]) -> str:
    """A Markdown table of reports; rows carry the config keys, ``report`` and optionally ``paper_*``."""
    paper = any("paper_gflops" in r for r in rows)
    head = ["model", "input", "S x T", "crop", "classes", "repr. GFLOPs", "backbone GFLOPs", "total GFLOPs"]
    head += ["paper GFLOPs"] if paper else []
    head += ["repr. params", "total params"] + (["paper params", "source"] if paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rep: FlopsReport = r["report"]
        cells = [
            r.get("model", r["backbone"]),
            r["representation"],
            f"{r['segments']} x {r['frames']}",
            str(r["crop"]),
            str(r["num_classes"]),
            "n/a" if rep.representation_gflops is None else f"{rep.representation_gflops:.3f}",
            f"{rep.backbone_gflops:.2f}",
            f"{rep.gflops:.2f}",
        ]
        cells += [f"{r['paper_gflops']:g}"] if paper else []
        cells += [_fmt_params(rep.representation_params) if rep.representation_params else "0", _fmt_params(rep.params)]
        cells += [_fmt_params(r["paper_params"]), r["source"]] if paper else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
