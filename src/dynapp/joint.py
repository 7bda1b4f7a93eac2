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
    Under data parallelism the loop runs PWTP's phase through a DDP wrapper of the representation,
    so Theta1's gradient is averaged by DDP like every other gradient.

Each strategy is one small object (``STRATEGIES`` maps its name to its class; ``build_strategy``
builds one) with the same three methods, which the training loop calls without knowing which
strategy runs:

``phase(epoch) -> Phase``
    what the epoch trains: whether the backbone runs (``separate``'s first epochs run PWTP
    alone) and whether Theta1 trains (``separate`` freezes it afterwards);
``backward(rec_loss, aux_loss, *, step, scale, divide)``
    the backward pass of one micro-batch (``rec_loss`` is None when the backbone did not run);
``after_backward() -> alpha``
    after the last micro-batch of an optimiser step, before ``GradScaler.unscale_``: fixes
    Theta1's gradient and returns the step's alpha (logged; NaN where no alpha applies).

``Plain`` (one backward of L2; no Theta1 or no aux loss, e.g. an RGB model) is the base of the
others.  To add a strategy: write its class here and add it to ``STRATEGIES`` (its constructor
takes ``theta1`` and the joint options as keywords); the config validation reads the names
from that dict and ``dynapp.engine.train.train`` builds it with ``build_strategy``.

The functions work on *scaled* gradients under mixed precision: alpha (Eq. 12) is invariant to a
common scale of g1 and g2, so the combination happens before ``GradScaler.unscale_`` and the
scaler still sees every non-finite value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    "theta1_parameters",
    "MGDAState",
    "combine_theta1_grads",
    "Phase",
    "Plain",
    "MGDA",
    "Constant",
    "Scheduler",
    "Separate",
    "build_strategy",
]

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
        raise ValueError("no g1 accumulated: run MGDA.backward first")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    g1 = torch.cat([g.reshape(-1) for g in mgda_state.g1])
    if all_reduce_mean is not None:
        g1 = all_reduce_mean(g1)
    g2 = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in theta1])
    l1 = l2 = 1.0
    if normalize in _LOSS_NORMALIZATIONS:
        if mgda_state.losses is None:
            raise ValueError(f"normalize={normalize!r} needs the loss values: MGDA.backward records them")
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


# ----------------------------------------------------------------------------------------------
# The strategies as objects: phase(epoch), backward(...), after_backward() -> alpha.

Scale = Callable[[Tensor], Tensor]  # GradScaler.scale, or the identity


@dataclass(frozen=True)
class Phase:
    """What an epoch trains.  ``run_backbone=False``: PWTP alone on L1 (the backbone is not run,
    ``rec_loss`` is None); ``train_theta1=False``: Theta1 frozen (eval mode, no gradient step)."""

    run_backbone: bool = True
    train_theta1: bool = True


JOINT = Phase()


class Plain:
    """L2 alone: one ordinary backward of the recognition loss; alpha is NaN (none applies).

    The training of a model without Theta1 or without an aux loss (e.g. an RGB model) and the
    base of the other strategies, which fall back to it when there is nothing to combine.
    """

    def __init__(self, theta1: Sequence[Tensor] = (), **_options):
        self.theta1 = list(theta1)
        self.alpha = math.nan

    def phase(self, epoch: int) -> Phase:
        return JOINT

    def backward(self, rec_loss: Tensor, aux_loss: Tensor | None, *, step: int, scale: Scale = lambda t: t,
                 divide: int = 1) -> None:
        """``scale``: ``GradScaler.scale``; ``divide``: the gradient-accumulation micro-batches."""
        scale(rec_loss / divide).backward()

    def after_backward(self) -> float:
        return self.alpha


class MGDA(Plain):
    """Algorithm 1: per micro-batch g1 by ``torch.autograd.grad`` through PWTP alone (kept in an
    ``MGDAState``), then ONE ordinary backward of L2 (g2 lands in Theta1's ``.grad``); after the
    step's last micro-batch ``combine_theta1_grads`` (Eq. 12, ``normalize``) sets Theta1's grad.

    ``all_reduce_mean``: averages g1 (and the loss values) over processes (None: one process).
    """

    def __init__(self, theta1: Sequence[Tensor], *, normalize: str = "none",
                 all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **_options):
        super().__init__(theta1)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        self.normalize, self.all_reduce_mean = normalize, all_reduce_mean
        self.state = MGDAState(self.theta1)

    def backward(self, rec_loss, aux_loss, *, step, scale=lambda t: t, divide=1):
        if aux_loss is None or not self.theta1:
            return super().backward(rec_loss, aux_loss, step=step, scale=scale, divide=divide)
        g1 = torch.autograd.grad(scale(aux_loss / divide), self.theta1, retain_graph=True, allow_unused=True)
        self.state.add(g1, losses=(aux_loss / divide, rec_loss / divide))
        scale(rec_loss / divide).backward()

    def after_backward(self) -> float:
        if self.state.g1 is None:  # no Theta1 / no aux loss: plain training
            return math.nan
        return combine_theta1_grads(self.theta1, self.state, all_reduce_mean=self.all_reduce_mean,
                                    normalize=self.normalize)


class _Weighted(Plain):
    """Eq. 9 with an alpha known before the backward pass: one backward of ``alpha L1 + (1 - alpha) L2``."""

    def alpha_at(self, step: int) -> float:
        """The alpha of optimiser step ``step`` (from 0)."""
        raise NotImplementedError

    def backward(self, rec_loss, aux_loss, *, step, scale=lambda t: t, divide=1):
        self.alpha = self.alpha_at(step)
        if aux_loss is None or not self.theta1:
            return super().backward(rec_loss, aux_loss, step=step, scale=scale, divide=divide)
        scale((self.alpha * aux_loss + (1.0 - self.alpha) * rec_loss) / divide).backward()


class Constant(_Weighted):
    """A fixed alpha (Table 5: 0, 0.5, 0.9), checked to be in [0, 1]."""

    def __init__(self, theta1: Sequence[Tensor], *, alpha: float = 0.5, **_options):
        super().__init__(theta1)
        self.fixed = constant_alpha(alpha)

    def alpha_at(self, step: int) -> float:
        return self.fixed


class Scheduler(_Weighted):
    """Alpha from the scale scheduler, Eq. 13: ``scheduler_alpha(step + 1, total_steps, ...)``."""

    def __init__(self, theta1: Sequence[Tensor], *, total_steps: int, gamma: float = 0.2, lam: float = 0.1,
                 **_options):
        super().__init__(theta1)
        scheduler_alpha(1, total_steps, gamma=gamma, lam=lam)  # checks the parameters now
        self.total_steps, self.gamma, self.lam = total_steps, gamma, lam

    def alpha_at(self, step: int) -> float:
        return scheduler_alpha(step + 1, self.total_steps, gamma=self.gamma, lam=self.lam)


class Separate(Plain):
    """PWTP on L1 alone for the first ``separate_epochs`` epochs (alpha 1, the backbone not run),
    then Theta1 frozen (no gradient step, BatchNorm statistics frozen) while the recogniser trains
    on L2 (alpha 0).  Under data parallelism the caller runs PWTP's phase through a DDP wrapper of
    the representation, so DDP averages Theta1's gradient as it does every other gradient.
    """

    def __init__(self, theta1: Sequence[Tensor], *, separate_epochs: int = 1, **_options):
        super().__init__(theta1)
        if not self.theta1:
            raise ValueError("joint.strategy=separate needs a representation with parameters and an aux loss (pwtp)")
        self.separate_epochs = separate_epochs

    def phase(self, epoch: int) -> Phase:
        if epoch < self.separate_epochs:
            return Phase(run_backbone=False)
        return Phase(train_theta1=False)

    def backward(self, rec_loss, aux_loss, *, step, scale=lambda t: t, divide=1):
        if rec_loss is None:  # PWTP's phase: L1 alone
            self.alpha = 1.0
            scale(aux_loss / divide).backward()
        else:
            self.alpha = 0.0
            super().backward(rec_loss, None, step=step, scale=scale, divide=divide)

    def after_backward(self) -> float:
        if self.alpha == 0.0:
            for p in self.theta1:  # Theta1 is frozen after separate pre-training
                p.grad = None
        return self.alpha


STRATEGIES: dict[str, type[Plain]] = {"mgda": MGDA, "constant": Constant, "scheduler": Scheduler, "separate": Separate}


def build_strategy(name: str, theta1: Sequence[Tensor], *, total_steps: int,
                   all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **options) -> Plain:
    """The strategy ``name`` of ``STRATEGIES`` for the parameters ``theta1`` of a run of ``total_steps``.

    ``options``: the joint options (``alpha``, ``gamma``, ``lam``, ``separate_epochs``,
    ``normalize``); each strategy takes the ones it uses.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown joint strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name](list(theta1), total_steps=total_steps, all_reduce_mean=all_reduce_mean, **options)
