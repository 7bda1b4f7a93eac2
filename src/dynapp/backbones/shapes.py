"""Input checks shared by the backbones: one clear ValueError naming the expected shape."""

from __future__ import annotations

import torch

__all__ = ["check_video_input"]


def check_video_input(x: torch.Tensor, name: str, in_channels: int, frames: int) -> None:
    """Raise a ValueError unless ``x`` is (N, in_channels, frames, H, W)."""
    expected = f"(N, {in_channels}, {frames}, H, W)"
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects input of shape {expected}, got {got}")
    if x.shape[1] != in_channels or x.shape[2] != frames:
        raise ValueError(f"{name} expects input of shape {expected}, got {tuple(x.shape)}")
