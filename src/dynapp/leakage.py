"""Static leakage: how much of the scene a PWTP lets through into dynamic appearance.

A diagnostic the Dynamic Appearance paper (Huang and Bors, AAAI 2023) does not have.  DA is a
per-pixel linear temporal filter of the clip (:func:`dynapp.pwtp.temporal_weights`,
:meth:`dynapp.PWTP.temporal_weights`)::

    DA[c] = sum_t w_t x_t[c],     w (N, T, H, W)

Split every pixel's frames into their temporal mean and the rest, ``x_t = xbar + (x_t - xbar)``.
Then ``DA = S + M`` with the **static part** ``S = (sum_t w_t) xbar`` and the **motion part**
``M = sum_t w_t (x_t - xbar)``.  Two numbers describe the leak:

* ``weight_sum`` (N, H, W) = ``sum_t w_t``: the gain with which a perfectly static pixel reaches
  DA (0: none of it; 1: as much as the frame average lets through);
* ``static_share`` (N,) = ``||S||^2 / (||S||^2 + ||M||^2)`` (sums over C, H, W): the fraction of
  DA's energy that comes from static content, in [0, 1].  (``S`` and ``M`` are not orthogonal in
  general, so this is the share of the two parts' energies, not ``||S||^2 / ||DA||^2``, which can
  exceed 1 when they cancel.)  It is ~0 when DA itself is numerically zero (energy below machine epsilon times the clip's).  A tiny weight sum can still carry a large share when the clip's
  static content (the normalised background) is much stronger than its motion.

Note that ``w = (I - P) 1 / T`` per pixel (P the projection onto the columns of A), so
``sum_t w_t = T ||w||^2``: the leak and the overall gain of DA vanish together (a constant
vector in the span of A gives DA = 0 at that pixel).  The leak can therefore not be judged from
the weight sum alone; ``static_share`` is the scale-free number.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dynapp.segments import fold_segments

__all__ = ["StaticLeakage", "leakage_from_weights", "static_leakage"]


class StaticLeakage(NamedTuple):
    weight_sum: torch.Tensor  # (N, H, W) per-pixel sum of DA's temporal weights
    static_share: torch.Tensor  # (N,) share of DA's energy from static content, in [0, 1]
    static: torch.Tensor  # (N, C, H, W) the static part (sum_t w_t) * mean_t x
    motion: torch.Tensor  # (N, C, H, W) the motion part sum_t w_t (x_t - mean_t x)


def leakage_from_weights(w: torch.Tensor, x: torch.Tensor) -> StaticLeakage:
    """Static leakage of DA given its temporal weights w (N, T, H, W) and the clip x (N, C, T, H, W)."""
    if w.dim() != 4 or x.dim() != 5 or w.shape[0] != x.shape[0] or w.shape[1:] != x.shape[2:]:
        raise ValueError(f"expected w (N, T, H, W) and x (N, C, T, H, W) with matching N, T, H, W; "
                         f"got {tuple(w.shape)} and {tuple(x.shape)}")
    x = x.to(w.dtype)
    xbar = x.mean(2)  # (N, C, H, W)
    weight_sum = w.sum(1)  # (N, H, W)
    static = weight_sum.unsqueeze(1) * xbar
    motion = (w.unsqueeze(1) * (x - xbar.unsqueeze(2))).sum(2)
    es = static.square().flatten(1).sum(1)
    em = motion.square().flatten(1).sum(1)
    # A DA that is numerically zero (energy below machine epsilon times the clip's, e.g. a
    # constant A, whose weights all vanish up to the solver's ridge) has no static share: the
    # floor makes it ~0 instead of the ratio of two rounding errors.
    floor = torch.finfo(es.dtype).eps * x.square().flatten(1).sum(1) + torch.finfo(es.dtype).tiny
    share = es / torch.maximum(es + em, floor)
    return StaticLeakage(weight_sum, share, static, motion)


@torch.no_grad()
def static_leakage(pwtp: nn.Module, clip: torch.Tensor) -> StaticLeakage:
    """Static leakage of a (trained) :class:`dynapp.PWTP` on ``clip``.

    ``clip``: (N, C, T, H, W) with T = ``pwtp.frames``, or (N, C, S*T, H, W) whose S segments are
    folded into the batch (the results then have N*S rows, segment-major within each clip), as
    the ``pwtp`` representation does.  The module is run in its current mode (call ``.eval()``
    first for test-time behaviour).
    """
    if clip.dim() != 5:
        raise ValueError(f"expected a clip (N, C, T, H, W); got {tuple(clip.shape)}")
    T = pwtp.frames
    if clip.shape[2] % T:
        raise ValueError(f"the clip has {clip.shape[2]} frames, not a multiple of the PWTP's {T} frames per segment")
    s = clip.shape[2] // T
    # the filter PWTP applies (with static="remove" its weights sum to 0, so nothing static leaks)
    weights = pwtp.temporal_weights(clip, segments=s)  # (N*S, T, H, W)
    return leakage_from_weights(weights, fold_segments(clip, s))
