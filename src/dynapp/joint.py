"""Joint training of PWTP (Theta1) and the recogniser (Theta2): Eq. 9-13 and Algorithm 1.

Huang and Bors, "Dynamic Appearance", AAAI 2023, Sections 3.4-3.5 and Appendix D.
``L1`` is ENoPR (the model's ``aux_loss``, a function of Theta1 only), ``L2`` the recognition
loss (a function of Theta1 and Theta2).  Four strategies (Table 5 and Table 9):

``mgda``
    Algorithm 1: alpha from Eq. 12 every step; Theta1 steps along ``alpha g1 + (1 - alpha) g2``
    (``g1 = grad_Theta1 L1``, ``g2 = grad_Theta1 L2``), Theta2 along the full ``grad L2``.
    Cost: one ordinary backward of L2 for everything plus one backward of L1 through PWTP
    alone (``torch.autograd.grad`` on Theta1, which is about 10k numbers); never two full
    backward passes.  Under data parallelism g2 arrives averaged by DDP and g1 is averaged
    here (one all-reduce of a Theta1-sized vector) before alpha is computed, so every process
    takes the same alpha.  Optionally (``normalize``) g1 and g2 are normalised before Eq. 12 as
    Sener and Koltun ran MGDA (see ``gradient_normalizer``); ``"none"`` is the paper's Eq. 12.
``constant``
    Eq. 9 literally with a fixed alpha: one backward of ``alpha L1 + (1 - alpha) L2``.  Theta1
    thus gets ``alpha g1 + (1 - alpha) g2`` and Theta2 gets ``(1 - alpha) grad L2`` (the weighted
    objective, as in Fan et al. 2018, which the paper cites for a fixed alpha).
``scheduler``
    The same weighted objective with alpha from the scale scheduler (Eq. 13, NOTES.md reading).
``separate``
    PWTP trained on L1 alone for the first ``separate_epochs`` epochs (the backbone is not run),
    then frozen (no gradient step, BatchNorm statistics frozen) while the recogniser trains on L2.

The functions work on *scaled* gradients under mixed precision: alpha (Eq. 12) is invariant to a
common scale of g1 and g2, so the combination happens before ``GradScaler.unscale_`` and the
scaler still sees every non-finite value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "STRATEGIES",
    "NORMALIZATIONS",
    "mgda_alpha",
    "gradient_normalizer",
    "normalized_mgda_alpha",
    "scheduler_alpha",
    "constant_alpha",
    "weighted_alpha",
    "theta1_parameters",
    "MGDAState",
    "backward_joint",
    "combine_theta1_grads",
]

STRATEGIES = ("mgda", "constant", "scheduler", "separate")
NORMALIZATIONS = ("none", "l2", "loss", "loss+")  # MGDA's gradient normalisation (Sener and Koltun 2018)
_LOSS_NORMALIZATIONS = ("loss", "loss+")

# When ||g1 - g2||^2 is below this fraction of max(||g1||^2, ||g2||^2) the two gradients are
# taken as equal: every alpha in [0, 1] then gives the same direction and Eq. 12 is 0/0.
_EQUAL_RTOL = 1e-12
ALPHA_WHEN_EQUAL = 0.5


def mgda_alpha(g1: Tensor, g2: Tensor) -> float:
    """Eq. 12: the alpha in [0, 1] minimising ``||alpha g1 + (1 - alpha) g2||^2``.

    ``alpha' = (g2 - g1).g2 / ||g1 - g2||^2``, clipped to [0, 1].  ``g1`` and ``g2`` are the
    flattened gradients of ENoPR and of the recognition loss w.r.t. Theta1 (any shape, same
    numel).  Computed in float64.  When ``g1 == g2`` (also both zero) any alpha is optimal and
    ``ALPHA_WHEN_EQUAL = 0.5`` is returned, weighting both tasks equally.  A non-finite input
    gives NaN (the caller's non-finite check stops the run).
    """
    if g1.numel() != g2.numel():
        raise ValueError(f"g1 and g2 must have the same number of elements, got {g1.numel()} and {g2.numel()}")
    a = g1.detach().reshape(-1).double()
    b = g2.detach().reshape(-1).double()
    diff = a - b
    denom = float(diff.dot(diff))
    if not math.isfinite(denom):
        return math.nan
    scale = max(float(a.dot(a)), float(b.dot(b)))
    if denom <= _EQUAL_RTOL * scale or denom == 0.0:
        return ALPHA_WHEN_EQUAL
    alpha = float((b - a).dot(b)) / denom
    return min(max(alpha, 0.0), 1.0)


def gradient_normalizer(g: Tensor, loss: float, normalize: str) -> float:
    """The number a task's gradient is divided by before Eq. 12 (Sener and Koltun's normalisation).

    Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018: their
    code (``gradient_normalizers`` of MultiObjectiveOptimization) divides each task's gradient,
    before the min-norm solver, by ``1`` (``"none"``), its L2 norm ``||g||`` (``"l2"``), the
    task's loss value ``L`` at that step (``"loss"``) or ``L ||g||`` (``"loss+"``); the paper
    itself leaves this out.  ``g`` is the flattened gradient, ``loss`` the task's loss value.
    A normaliser of exactly 0 (a zero gradient, or a zero loss) is replaced by 1, so a zero
    gradient stays zero instead of becoming 0/0; a non-finite one is returned as it is (the
    non-finite check of the training loop then stops the run).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if normalize == "none":
        return 1.0
    norm = float(g.detach().reshape(-1).double().norm()) if normalize in ("l2", "loss+") else 1.0
    value = {"l2": norm, "loss": float(loss), "loss+": float(loss) * norm}[normalize]
    return 1.0 if value == 0.0 else value


def normalized_mgda_alpha(g1: Tensor, g2: Tensor, *, normalize: str = "none", l1: float = 1.0,
                          l2: float = 1.0) -> float:
    """Eq. 12 on the normalised gradients ``g1 / n1`` and ``g2 / n2`` (``gradient_normalizer``).

    ``l1``, ``l2``: the loss values of ENoPR and of the recognition loss (used by ``"loss"`` and
    ``"loss+"``).  ``normalize="none"`` is exactly ``mgda_alpha(g1, g2)``.
    """
    if normalize == "none":
        return mgda_alpha(g1, g2)
    n1, n2 = gradient_normalizer(g1, l1, normalize), gradient_normalizer(g2, l2, normalize)
    return mgda_alpha(g1.detach().double() / n1, g2.detach().double() / n2)


def scheduler_alpha(m: int, total: int, *, gamma: float, lam: float) -> float:
    """Eq. 13 (Appendix D), the scale scheduler, as NOTES.md reads the garbled formula.

    ``m = 1..M`` is the iteration (``total = M``), ``0 < gamma < 1``, ``0 < lam < 1``::

        m <  gamma M: 1/2 (1 + cos(arccos(2 lam - 1) ln m / ln(gamma M)))
        m >= gamma M: lam/2 (1 + cos(pi ln(m - gamma M + 1) / ln((1 - gamma) M + 1)))

    It is 1 at m = 1, ``lam`` at m = gamma M (continuously), 0 at m = M, and never rises.
    ``m`` beyond M is clamped to M.
    """
    if total < 1:
        raise ValueError(f"total iterations must be >= 1, got {total}")
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lambda must be in (0, 1), got {lam}")
    if m < 1:
        raise ValueError(f"iteration m counts from 1, got {m}")
    m = min(m, total)
    knee = gamma * total
    if m < knee:
        # knee > m >= 1, so ln(knee) > 0.
        return 0.5 * (1.0 + math.cos(math.acos(2.0 * lam - 1.0) * math.log(m) / math.log(knee)))
    span = math.log((1.0 - gamma) * total + 1.0)
    if span <= 0.0:  # only when (1 - gamma) M rounds to 0
        return 0.0
    ratio = min(math.log(m - knee + 1.0) / span, 1.0)
    return 0.5 * lam * (1.0 + math.cos(math.pi * ratio))


def constant_alpha(alpha: float) -> float:
    """The fixed alpha of the ``constant`` strategy (Table 5: 0, 0.5, 0.9), checked to be in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def weighted_alpha(strategy: str, *, step: int, total_steps: int, alpha: float, gamma: float, lam: float) -> float:
    """Alpha of the strategies that fix it before the backward pass (``constant``, ``scheduler``).

    ``step`` counts optimiser steps from 0; the scheduler's iteration is ``m = step + 1``.
    """
    if strategy == "constant":
        return constant_alpha(alpha)
    if strategy == "scheduler":
        return scheduler_alpha(step + 1, total_steps, gamma=gamma, lam=lam)
    raise ValueError(f"strategy {strategy!r} has no alpha fixed in advance")


def theta1_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Theta1: the trainable parameters of ``model.representation`` (PWTP), or [] if it has none."""
    rep = getattr(model, "representation", None)
    if rep is None:
        return []
    return [p for p in rep.parameters() if p.requires_grad]


class MGDAState:
    """The g1 accumulator of one optimiser step (sums over gradient-accumulation micro-batches).

    ``losses`` accumulates ``(L1, L2)`` the same way (each micro-batch adds its losses divided by
    the number of micro-batches, so the sum is the step's mean loss), for the loss normalisations.
    """

    def __init__(self, theta1: Sequence[Tensor]):
        self.theta1 = list(theta1)
        self.g1: list[Tensor] | None = None
        self.losses: Tensor | None = None  # (2,) float64: L1 (ENoPR), L2 (recognition)

    def add(self, grads: Sequence[Tensor | None], losses: tuple[Tensor, Tensor] | None = None) -> None:
        grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(self.theta1, grads)]
        if self.g1 is None:
            self.g1 = grads
        else:
            for acc, g in zip(self.g1, grads):
                acc.add_(g)
        if losses is not None:
            values = torch.stack([v.detach().double() for v in losses])
            self.losses = values if self.losses is None else self.losses + values

    def reset(self) -> None:
        self.g1 = None
        self.losses = None


def backward_joint(
    strategy: str,
    *,
    rec_loss: Tensor,
    aux_loss: Tensor | None,
    theta1: Sequence[Tensor],
    alpha: float = 0.0,
    scale: Callable[[Tensor], Tensor] = lambda t: t,
    divide: int = 1,
    mgda_state: MGDAState | None = None,
) -> None:
    """The backward pass of one micro-batch for a joint strategy.

    ``scale`` is ``GradScaler.scale`` (identity without AMP); ``divide`` the number of
    gradient-accumulation micro-batches.  ``mgda``: g1 by ``torch.autograd.grad`` through PWTP
    alone (kept in ``mgda_state``), then ONE ordinary backward of L2 (g2 lands in Theta1's
    ``.grad``).  ``constant``/``scheduler``: one backward of ``alpha L1 + (1 - alpha) L2``.
    Without Theta1 or without an aux loss (e.g. an RGB model): a plain backward of L2.
    ``separate`` is not handled here: its two phases are plain backward passes of L1 and L2.
    """
    if aux_loss is None or not theta1:
        scale(rec_loss / divide).backward()
        return
    if strategy == "mgda":
        if mgda_state is None:
            raise ValueError("mgda needs an MGDAState")
        g1 = torch.autograd.grad(scale(aux_loss / divide), list(theta1), retain_graph=True, allow_unused=True)
        mgda_state.add(g1, losses=(aux_loss / divide, rec_loss / divide))
        scale(rec_loss / divide).backward()
    elif strategy in ("constant", "scheduler"):
        scale((alpha * aux_loss + (1.0 - alpha) * rec_loss) / divide).backward()
    else:
        raise ValueError(f"backward_joint does not handle strategy {strategy!r}")


def combine_theta1_grads(
    theta1: Sequence[Tensor],
    mgda_state: MGDAState,
    *,
    all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    normalize: str = "none",
) -> float:
    """Algorithm 1, lines 3-5: average g1 over processes, alpha by Eq. 12, set Theta1's grad.

    ``theta1[i].grad`` holds g2 (already averaged over processes by DDP); afterwards it holds
    ``alpha g1 + (1 - alpha) g2``.  ``all_reduce_mean`` averages a tensor over processes
    (None for one process).  Returns alpha.  Resets ``mgda_state``.

    ``normalize`` (``NORMALIZATIONS``): alpha is the min-norm point of the *normalised*
    gradients ``g1 / n1``, ``g2 / n2`` (``gradient_normalizer``; the loss values are the step's
    mean losses, averaged over processes like g1), but Theta1 steps along the combination of
    the *unnormalised* gradients ``alpha g1 + (1 - alpha) g2``.  This is what Sener and Koltun's
    code does (NeurIPS 2018, MultiObjectiveOptimization ``train_multi_task.py``): the
    normalisation only chooses the weights, which then multiply the raw task losses in one
    backward pass.  It keeps the step's scale the one of the losses (with ``"l2"`` a normalised
    combination would have norm <= 1 whatever the learning rate was tuned for), and
    ``"none"`` is Eq. 12 and Algorithm 1 exactly.
    """
    theta1 = list(theta1)
    if mgda_state.g1 is None:
        raise ValueError("no g1 accumulated: call backward_joint('mgda', ...) first")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    g1 = torch.cat([g.reshape(-1) for g in mgda_state.g1])
    if all_reduce_mean is not None:
        g1 = all_reduce_mean(g1)
    g2 = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in theta1])
    l1 = l2 = 1.0
    if normalize in _LOSS_NORMALIZATIONS:
        if mgda_state.losses is None:
            raise ValueError(f"normalize={normalize!r} needs the loss values: backward_joint records them")
        losses = mgda_state.losses if all_reduce_mean is None else all_reduce_mean(mgda_state.losses)
        l1, l2 = (float(v) for v in losses)
    alpha = normalized_mgda_alpha(g1, g2, normalize=normalize, l1=l1, l2=l2)
    combined = alpha * g1.to(g2.dtype) + (1.0 - alpha) * g2
    offset = 0
    for p in theta1:
        n = p.numel()
        new = combined[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = new.clone()
        else:  # in place: DDP may hold views of the gradients (gradient_as_bucket_view)
            p.grad.copy_(new)
        offset += n
    mgda_state.reset()
    return alpha
