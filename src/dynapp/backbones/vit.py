"""ViT-B/16 for video as in Dynamic Appearance (Huang and Bors, AAAI 2023, Section 3.3).

timm's VisionTransformer, adapted the way MAE adapts it (a thin module around the timm blocks):

* every frame (segment) is cut into 16x16 patches and attended to on its own: attention stays
  within a frame (the frames are folded into the batch);
* each segment has its own copy of the positional embedding, ``pos_embed`` of shape
  (S, P, D), initialised by duplicating the (pretrained) image embedding and then learned;
* there is no class token: the prediction input is the mean of all last-layer token embeddings
  of all segments.  The module returns the per-segment token means (N, S, D); the classifier is
  linear and the consensus of :class:`dynapp.model.VideoClassifier` averages over segments, so
  the logits equal the classifier applied to the mean over all tokens of all segments.
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn

from dynapp.backbones.entry import Backbone
from dynapp.backbones.shapes import check_video_input
from dynapp.backbones.weights import inflate_input_kernel, load_backbone_weights, read_state_dict, timm_state_dict

__all__ = ["VideoViT", "build_vit", "image_to_video_vit_state_dict", "ENTRIES"]

# The paper's ViT-B is pretrained on ImageNet-21k.
DEFAULT_TIMM_WEIGHTS = "vit_base_patch16_224.augreg_in21k"


class VideoViT(nn.Module):
    """ViT with per-segment positional embeddings; ``forward((N, C, S, H, W)) -> (N, S, D)``.

    ``kwargs`` go to ``timm.create_model`` (e.g. ``embed_dim=64, depth=2, num_heads=2,
    img_size=32`` for a tiny test model).  The model is always created with
    ``pretrained=False``; see :meth:`load_pretrained`.
    """

    def __init__(self, *, num_segments: int, in_channels: int = 3, model_name: str = "vit_base_patch16_224", **kwargs) -> None:
        super().__init__()
        self.in_channels, self.num_segments, self.model_name = in_channels, num_segments, model_name
        self.vit = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=0,
            in_chans=in_channels,
            class_token=False,
            global_pool="avg",
            fc_norm=False,  # the final LayerNorm acts on every token, as in the pretrained model
            **kwargs,
        )
        image_pos = self.vit.pos_embed.detach()  # (1, P, D)
        self.vit.pos_embed = None  # replaced by the per-segment copies below
        self.pos_embed = nn.Parameter(image_pos.expand(num_segments, -1, -1).clone())  # (S, P, D)
        self.num_features = self.vit.embed_dim
        self.img_size = tuple(self.vit.patch_embed.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_video_input(x, "vit", self.in_channels, self.num_segments)
        n, c, s, h, w = x.shape
        if (h, w) != self.img_size:
            raise ValueError(f"vit expects input of shape (N, {c}, {s}, {self.img_size[0]}, {self.img_size[1]}), got {tuple(x.shape)}")
        frames = x.transpose(1, 2).reshape(n * s, c, h, w)  # (N*S, C, H, W)
        tokens = self.vit.patch_embed(frames)  # (N*S, P, D)
        tokens = (tokens.view(n, s, *tokens.shape[1:]) + self.pos_embed).flatten(0, 1)
        tokens = self.vit.norm_pre(self.vit.patch_drop(self.vit.pos_drop(tokens)))
        tokens = self.vit.norm(self.vit.blocks(tokens))  # (N*S, P, D), attention within a frame
        return tokens.mean(dim=1).view(n, s, -1)  # (N, S, D) per-segment token means

    def load_pretrained(self, pretrained: str) -> None:
        """Load image ViT weights: a local timm-format file (``.pth``/``.bin``/``.safetensors``),
        or a timm name such as ``"vit_base_patch16_224.augreg_in21k"`` (or ``"timm"`` for that
        default) downloaded by timm (online only)."""
        if os.path.isfile(pretrained) or _looks_like_path(pretrained):
            sd = read_state_dict(pretrained)  # a missing file raises FileNotFoundError here
        else:
            name = DEFAULT_TIMM_WEIGHTS if pretrained == "timm" else pretrained
            tags = timm.list_pretrained(name.split(".")[0] + ".*")  # an untagged name takes timm's default tag
            if name not in tags and not ("." not in name and tags):
                raise ValueError(f"{pretrained!r} is neither a weights file nor a timm pretrained tag (e.g. {DEFAULT_TIMM_WEIGHTS!r})")
            sd = timm_state_dict(name)  # the Hugging Face cache, else a download
        sd = image_to_video_vit_state_dict(sd, self)
        load_backbone_weights(self, sd, first_conv="vit.patch_embed.proj.weight")


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pyth"))


def image_to_video_vit_state_dict(state_dict: dict[str, torch.Tensor], model: VideoViT) -> dict[str, torch.Tensor]:
    """Turn a timm image-ViT state dict into :class:`VideoViT`'s.

    Drops the class token, its positional slot and the classifier; resamples the positional
    grid if the image size differs; duplicates it for each of the model's segments; prefixes the
    rest with ``vit.``; adapts the patch-embedding kernel to the model's input channels.
    """
    from timm.layers import resample_abs_pos_embed

    grid = model.vit.patch_embed.grid_size
    num_patches = grid[0] * grid[1]
    out = {}
    for key, value in state_dict.items():
        if key in ("cls_token",) or key.startswith(("head.", "fc_norm.")):
            continue
        if key == "pos_embed":
            pos = value  # (1, P [+1], D)
            prefix = pos.shape[1] - int(round((pos.shape[1]) ** 0.5)) ** 2
            pos = pos[:, prefix:]
            if pos.shape[1] != num_patches:
                pos = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=0)
            out["pos_embed"] = pos[0].expand(model.num_segments, -1, -1).clone()
            continue
        if key == "patch_embed.proj.weight":
            value = inflate_input_kernel(value, model.in_channels)
        out["vit." + key] = value
    return out


def build_vit(*, in_channels: int = 3, num_segments: int, pretrained: str | None = None, **kwargs) -> VideoViT:
    """ViT-B/16 for video (Dynamic Appearance's adaptation); ``pretrained``: a file or a timm name."""
    model = VideoViT(num_segments=num_segments, in_channels=in_channels, **kwargs)
    if pretrained:
        model.load_pretrained(pretrained)
    return model


# This file's entries of dynapp.backbones.BACKBONES.
ENTRIES = {"vit_b16": Backbone(build_vit, dims=2)}
