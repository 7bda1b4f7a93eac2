"""Diagnostics of joint training: is PWTP still learning, and what does its DA filter do?

Not in the Dynamic Appearance paper (Huang and Bors, AAAI 2023); they make a failure of the joint
training (Eq. 9-13) visible in ``train_log.csv`` and TensorBoard.  For every PWTP run, every
optimiser step logs, beside ``alpha`` and ``enopr``:

``g1_norm``, ``g2_norm``, ``g_cos``
    ``|grad_Theta1 ENoPR|``, ``|grad_Theta1 L2|`` and their cosine (from the joint strategy,
    :func:`dynapp.joint.gradient_stats`).
``enopr_floor``
    ENoPR (Eq. 7-8) of a constant A on the same batch: every pixel's series projected onto its
    temporal mean, ``1/(HWC) sum_j ||x_j - mean_t x_j||^2``, averaged over the N*S segments.
    A constant A gives DA = 0 (DA's temporal weights ``1/T - mean(a) a_t / (a.a)`` all vanish), and
    ENoPR alone pulls A there: an ENoPR at this floor means a PWTP that outputs almost nothing.
``da_forward``, ``da_antisym``
    The direction of DA's temporal filter (``DA = sum_t w_t x_t``, :func:`dynapp.pwtp.temporal_weights`).
    With ``c = w - mean_t w`` the centred weights of a pixel: ``da_forward`` is the share of
    pixels (weighted by their motion energy ``sum_{c,t} (x_t - mean_t x)^2``, so the pixels
    something moves over count) whose ``c`` correlates positively with time (DA is then "later
    frames minus earlier ones"); ``da_antisym`` is the same weighted mean of
    ``||c - reverse(c)||^2 / (4 ||c||^2)``, the antisymmetric share of ``c`` in [0, 1] (1: an odd,
    direction-sensitive filter; 0: an even one that cannot tell an action from its reverse).
    ENoPR is symmetric under time reversal, so PWTP trained by it alone leaves the sign arbitrary:
    ``da_forward`` near 0.5 means a direction that changes from segment to segment; near 0 or 1,
    a consistent one.
``static_share``
    The share of DA's energy that comes from static content (:mod:`dynapp.leakage`).

:class:`FreezeWatch` turns the log into one warning line when PWTP stops moving: alpha pinned near
1 (its mean over ``window`` steps) and ENoPR at the constant-A floor for all of them (the failure of Eq. 12 when
``|g1|`` becomes much smaller than ``|g2|``); the line names the option to change.
:class:`PWTPMonitor` holds both for the training loop: ``observe`` per micro-batch (the filter's direction and the
static share on its first :data:`MONITOR_CLIPS` clips, enough to follow them at a small cost),
``end_step`` per optimiser step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dynapp.leakage import leakage_from_weights
from dynapp.pwtp import PWTP, temporal_weights
from dynapp.segments import fold_segments

__all__ = ["DIAGNOSTICS", "enopr_floor", "filter_direction", "FreezeWatch", "PWTPMonitor"]

# the log columns this module fills (with alpha and enopr, which the loop logs for every run)
DIAGNOSTICS = ("g1_norm", "g2_norm", "g_cos", "enopr_floor", "da_forward", "da_antisym", "static_share")

FROZEN_ALPHA = 0.98  # a mean alpha over the window at or above this is "pinned near 1"
FLOOR_RTOL = 0.02  # ENoPR within 2% of the constant-A floor is "at the floor"
FROZEN_STEPS = 20  # the window of steps both must hold over
MONITOR_CLIPS = 4  # da_forward, da_antisym and static_share are measured on the first clips of each micro-batch


def enopr_floor(x: Tensor) -> Tensor:
    """ENoPR (Eq. 7) of a constant A for each sample of x (N, C, T, H, W): (N,).

    A constant A projects each pixel's series onto its temporal mean, so the residual is
    ``x - mean_t x`` and ENoPR is its squared norm summed over T, averaged over C, H, W.
    """
    x = x.float()
    centred = x - x.mean(2, keepdim=True)
    N, C, T, H, W = x.shape
    return centred.square().reshape(N, -1).sum(1) / (C * H * W)


def filter_direction(w: Tensor, x: Tensor) -> tuple[float, float]:
    """``(da_forward, da_antisym)`` of DA's temporal weights w (N, T, H, W) on the clip x (N, C, T, H, W).

    Both are means over the pixels weighted by their motion energy ``sum_{c,t} (x_t - mean_t x)^2``
    and over the pixels whose centred weights are not zero; NaN when there is none (e.g. a
    constant A, whose weights all vanish, or a static clip).
    """
    T = w.shape[1]
    c = (w - w.mean(1, keepdim=True)).double()  # centred weights (N, T, H, W)
    x = x.double()
    energy = (x - x.mean(2, keepdim=True)).square().sum((1, 2))  # (N, H, W)
    norm2 = c.square().sum(1)  # (N, H, W)
    ramp = torch.arange(T, dtype=c.dtype, device=c.device) - (T - 1) / 2.0
    forward = ((c * ramp.view(1, T, 1, 1)).sum(1) > 0).double()
    anti = (c - c.flip(1)).square().sum(1) / 4.0
    live = norm2 > 1e-12 * norm2.max().clamp_min(1e-300)
    weight = energy * live
    total = float(weight.sum())
    if not total > 0:
        return math.nan, math.nan
    share = torch.where(live, anti / norm2.clamp_min(1e-300), torch.zeros_like(anti))
    return float((weight * forward).sum()) / total, float((weight * share).sum()) / total


class FreezeWatch:
    """One warning when PWTP stops moving: over the last ``window`` steps alpha averages at least
    ``FROZEN_ALPHA`` (per-step alphas of Eq. 12 scatter below 1 even when it is pinned) and ENoPR is
    within ``FLOOR_RTOL`` of the constant-A floor at every step.  ``update`` returns the warning line
    once (the first step it holds), else None."""

    def __init__(self, window: int = FROZEN_STEPS):
        self.window = max(1, int(window))
        self.recent: deque[tuple[float, bool]] = deque(maxlen=self.window)  # (alpha, ENoPR at the floor)
        self.warned = False

    def update(self, alpha: float | None, enopr: float | None, floor: float | None) -> str | None:
        if not all(v is not None and math.isfinite(v) for v in (alpha, enopr, floor)):
            self.recent.clear()
            return None
        self.recent.append((alpha, floor > 0 and abs(enopr - floor) <= FLOOR_RTOL * floor))
        mean_alpha = sum(a for a, _ in self.recent) / len(self.recent)
        frozen = len(self.recent) == self.window and mean_alpha >= FROZEN_ALPHA and all(f for _, f in self.recent)
        if not frozen or self.warned:
            return None
        self.warned = True
        return (f"warning: PWTP has stopped learning from the recognition loss: over the last {self.window} steps "
                f"alpha averaged {mean_alpha:.3f} and ENoPR ({enopr:.4g}) stayed within {100 * FLOOR_RTOL:.0f}% of the "
                f"constant-A floor ({floor:.4g}), where each pixel's hyperplane is constant over time and DA is near "
                "zero. dynapp's default joint strategy (joint.strategy=constant joint.alpha=0.5 "
                "joint.backbone_grad=full) or Eq. 12 on normalised gradients (joint.strategy=mgda "
                "joint.normalize=loss+) lets the recognition loss shape PWTP (see docs/joint.md)")


class PWTPMonitor:
    """The diagnostics of one PWTP run for the training loop.

    ``observe(clip, out)`` after the forward of every micro-batch (``out`` has ``hyperplanes``,
    the MLP's output z); at the end of each optimiser step ``take()`` hands over the step's sums
    and counts of this process, and ``end_step(alpha, enopr, stats, means)`` (``means``: what
    ``take()`` returned, averaged over processes by the loop together with its own statistics)
    returns ``(values, warning)``: the :data:`DIAGNOSTICS` of the step (micro-batch means) and the
    freeze warning line or None.  Everything is computed without autograd from z (upsampled as
    PWTP does) and the normalised clip.
    """

    def __init__(self, pwtp: PWTP, *, segments: int, normalize: Callable[[Tensor], Tensor] | None = None,
                 window: int = FROZEN_STEPS):
        self.pwtp, self.segments = pwtp, segments
        self.normalize = normalize or (lambda t: t)
        self.watch = FreezeWatch(window)
        self._sums = torch.zeros(4, dtype=torch.float64)  # floor, forward, antisym, static share
        self._counts = torch.zeros(4, dtype=torch.float64)

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> PWTPMonitor | None:
        """The monitor of a ``VideoClassifier`` whose representation is PWTP, else None."""
        rep = getattr(model, "representation", None)
        pwtp = getattr(rep, "pwtp", None)
        if not isinstance(pwtp, PWTP):
            return None
        return cls(pwtp, segments=rep.segments, normalize=getattr(model, "normalize", None), **kwargs)

    @torch.no_grad()
    def observe(self, clip: Tensor, out) -> None:
        z = getattr(out, "hyperplanes", None)
        if z is None:
            return
        x = fold_segments(self.normalize(clip).float(), self.segments)  # (N*S, C, T, H, W)
        floor = float(enopr_floor(x).mean())  # the whole micro-batch, as the logged ENoPR
        m = min(x.shape[0], MONITOR_CLIPS * self.segments)  # the first clips' segments: the filter's shape
        x = x[:m]
        A = self.pwtp.upsample(z.detach()[:m].float(), x.shape[-2:])
        w = temporal_weights(A, static=self.pwtp.static)  # (m, T, H, W)
        forward, antisym = filter_direction(w, x)
        share = float(leakage_from_weights(w, x).static_share.mean())
        values = torch.tensor([floor, forward, antisym, share], dtype=torch.float64)
        seen = torch.isfinite(values)
        self._sums += torch.where(seen, values, torch.zeros_like(values))
        self._counts += seen.double()

    def take(self) -> Tensor:
        """This process's sums and counts since the last step (8 float64 values); starts the next step."""
        both = torch.cat([self._sums, self._counts])
        self._sums.zero_()
        self._counts.zero_()
        return both

    def end_step(self, alpha: float | None, enopr: float | None, stats: dict | None,
                 means: Tensor) -> tuple[dict, str | None]:
        """The diagnostics of the step and the freeze warning; ``means``: ``take()`` averaged over processes."""
        sums, counts = means[:4], means[4:]
        means = [float(s / c) if c > 0 else math.nan for s, c in zip(sums, counts)]
        values = {"g1_norm": math.nan, "g2_norm": math.nan, "g_cos": math.nan, **(stats or {}),
                  "enopr_floor": means[0], "da_forward": means[1], "da_antisym": means[2], "static_share": means[3]}
        return values, self.watch.update(alpha, enopr, means[0])
