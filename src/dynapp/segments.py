"""The clip layout every representation and PWTP share: S segments of T consecutive frames.

A clip is ``(N, C, S*T, H, W)`` (torchvision's video layout): frame ``s*T + t`` is frame t of
segment s.  Representations and PWTP treat the N*S segments as samples, in (n, s) order.  These
four functions are the only place that layout is split, folded into the batch or restored.
They import nothing from dynapp, so that both :mod:`dynapp.pwtp` (``PWTP(clip, segments=S)``)
and :mod:`dynapp.representations` (which builds on PWTP) can use them.
"""

from __future__ import annotations

import torch

__all__ = ["split_segments", "segment_view", "fold_segments", "unfold_segments"]


def _expected(segments: int, frames: int, in_channels: int | None) -> str:
    c = "C" if in_channels is None else str(in_channels)
    t = str(frames) if segments == 1 else f"S*T={segments}*{frames}={segments * frames}"
    return f"(N, {c}, {t}, H, W)"


def split_segments(clip: torch.Tensor, segments: int, frames: int, in_channels: int | None = None) -> torch.Tensor:
    """View a clip (N, C, S*T, H, W) as (N, C, S, T, H, W), checking its shape.

    Raises ValueError naming the expected shape, ``(N, C, S*T=2*4=8, H, W)`` (or
    ``(N, C, 8, H, W)`` for one segment), when the clip is not 5-D, the channel count is not
    ``in_channels`` (if given) or the frame count is not ``segments * frames``.  This is the one
    shape check of every representation and of PWTP.
    """
    if segments < 1 or frames < 1:
        raise ValueError(f"segments and frames must be positive, got segments={segments}, frames={frames}")
    expected = _expected(segments, frames, in_channels)
    if clip.dim() != 5:
        raise ValueError(f"expected a clip of shape {expected}; got {tuple(clip.shape)}")
    _, C, F = clip.shape[:3]
    if (in_channels is not None and C != in_channels) or F != segments * frames:
        raise ValueError(f"expected a clip of shape {expected}; got {tuple(clip.shape)}")
    return clip.unflatten(2, (segments, frames))  # splitting one dim is always a view


def segment_view(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(N, C, S*T, ...) -> (N, S, C, T, ...): the segments as a batch dimension, a view (no copy)."""
    return x.unflatten(2, (segments, x.shape[2] // segments)).transpose(1, 2)


def fold_segments(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(N, C, S*T, ...) -> (N*S, C, T, ...): the segments folded into the batch, in (n, s) order.

    A copy when N > 1, S > 1 and C > 1 (C sits between N and S); the tensor itself when S = 1.
    """
    if segments == 1:
        return x
    v = segment_view(x, segments)  # (N, S, C, T, ...)
    return v.reshape(v.shape[0] * segments, *v.shape[2:])


def unfold_segments(x: torch.Tensor, segments: int) -> torch.Tensor:
    """(N*S, C', ...) -> (N, C', S, ...): one output per segment back into the clip layout, a view."""
    return x.unflatten(0, (x.shape[0] // segments, segments)).transpose(1, 2)
