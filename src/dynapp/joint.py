"""Joint training of PWTP (Theta1) and the recogniser (Theta2): Eq. 9-13 and Algorithm 1.

Huang and Bors, "Dynamic Appearance", AAAI 2023, Sections 3.4-3.5 and Appendix D.
``L1`` is ENoPR (the model's ``aux_loss``, a function of Theta1 only), ``L2`` the recognition
loss (a function of Theta1 and Theta2).  Five strategies (Table 5, Table 9 and Sener and Koltun's
MGDA-UB); ``g1 = grad_Theta1 L1``, ``g2 = grad_Theta1 L2``:

``mgda``
    Algorithm 1: alpha from Eq. 12 every step; Theta1 steps along ``alpha g1 + (1 - alpha) g2``,
    Theta2 along the full ``grad L2`` (line 6).  Optionally (``normalize``) g1 and g2 are
    normalised before Eq. 12 as Sener and Koltun ran MGDA (see ``gradient_normalizer``);
    ``"none"`` is the paper's Eq. 12.  ``"l2"`` is not adaptive: Eq. 12 on two unit vectors is
    always 0.5, so it is the ``constant`` strategy with alpha 0.5 and ``backbone_grad="full"``
    (the strategy warns when it is built; it logs alpha 0.5 at every step).
``mgda_ub``
    MGDA-UB (Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
    2018, Section 3.3, the upper bound): both losses depend on Theta1 only through the
    hyperplanes PWTP's MLP outputs (Eq. 4 before the parameter-free upsampling: ``z``, shape
    (N*S, T*D, h, w); ``RepresentationOutput.hyperplanes``), so the min-norm problem (Eq. 11) is
    solved on ``grad_z L1`` and ``grad_z L2`` instead of the parameter gradients, with their
    normalisation (``normalize``: ``none``, ``loss``, ``loss+``, the default of their code) and
    their clamp of the two-task weight to ``SENER_KOLTUN_CLAMP`` = [0.001, 0.999].  Theta1 steps
    along ``alpha g1 + (1 - alpha) g2``, Theta2 along ``grad L2``, as in ``mgda``.  Why ``z``
    and not A at full resolution: ``||J_theta^T U^T g_A|| <= ||J_theta|| ||U^T g_A||``, so the
    bound through ``z`` (``U`` the upsampling) is the tighter one, and ``z`` exists on every
    implementation of PWTP (the fused CPU kernel never stores A at full size).
``constant``
    A fixed alpha.  Theta1 steps along ``alpha g1 + (1 - alpha) g2``; Theta2 along
    ``(1 - alpha) grad L2`` (``backbone_grad="weighted"``, Eq. 9 literally, as in Fan et al.
    2018, which the paper cites for a fixed alpha) or along the full ``grad L2``
    (``backbone_grad="full"``, Algorithm 1 line 6, as MGDA does): with ``"full"`` the strategies
    differ only in how PWTP is trained.
``scheduler``
    The same with alpha from the scale scheduler (Eq. 13, read as ``scheduler_alpha`` says).
``separate``
    PWTP trained on L1 alone for the first ``separate_epochs`` epochs (the backbone is not run),
    then frozen (no gradient step, BatchNorm statistics frozen) while the recogniser trains on L2.
    Under data parallelism the loop runs PWTP's phase through a DDP wrapper of the representation,
    so Theta1's gradient is averaged by DDP like every other gradient.

Every strategy but ``separate`` runs one step the same way (``_TwoGradients``): per micro-batch
g1 by ``torch.autograd.grad`` through PWTP alone (Theta1 is about 10k numbers), then ONE ordinary
backward of ``w L2`` (``w`` = 1, or ``1 - alpha`` for Eq. 9 literally) that gives Theta2 its
gradient and leaves ``w g2`` in Theta1's ``.grad``; after the step's last micro-batch Theta1's
gradient is set to ``alpha g1 + (1 - alpha) g2``.  Never two full backward passes.  Under data
parallelism g2 arrives averaged by DDP and g1 is averaged here (one all-reduce of a
Theta1-sized vector) before alpha is computed, so every process takes the same alpha.  Having
g1 and g2 apart also gives the training diagnostics (``stats``: ``|g1|``, ``|g2|`` and their
cosine, :mod:`dynapp.joint_diagnostics`).

Each strategy is one small object (``STRATEGIES`` maps its name to its class; ``build_strategy``
builds one) with the same three methods, which the training loop calls without knowing which
strategy runs:

``phase(epoch) -> Phase``
    what the epoch trains: whether the backbone runs (``separate``'s first epochs run PWTP
    alone) and whether Theta1 trains (``separate`` freezes it afterwards);
``backward(rec_loss, aux_loss, *, step, scale, divide, hyperplanes)``
    the backward pass of one micro-batch (``rec_loss`` is None when the backbone did not run;
    ``hyperplanes`` the representation's ``z``, or None);
``after_backward() -> alpha``
    after the last micro-batch of an optimiser step, before ``GradScaler.unscale_``: fixes
    Theta1's gradient and returns the step's alpha (logged; NaN where no alpha applies).  It
    leaves the step's gradient statistics in ``stats`` (a dict, empty where none apply).

``Plain`` (one backward of L2; no Theta1 or no aux loss, e.g. an RGB model) is the base of the
others.  To add a strategy: write its class here and add it to ``STRATEGIES`` (its constructor
takes ``theta1`` and the joint options as keywords); the config validation reads the names
from that dict and ``dynapp.engine.train.train`` builds it with ``build_strategy``.

The functions work on *scaled* gradients under mixed precision: alpha (Eq. 12) is invariant to a
common scale of g1 and g2, so the combination happens before ``GradScaler.unscale_`` and the
scaler still sees every non-finite value (``stats`` are unscaled).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "STRATEGIES",
    "NORMALIZATIONS",
    "BACKBONE_GRADS",
    "SENER_KOLTUN_CLAMP",
    "min_norm_alpha",
    "gram",
    "mgda_alpha",
    "gradient_normalizer",
    "normalized_alpha",
    "normalized_mgda_alpha",
    "gradient_stats",
    "scheduler_alpha",
    "constant_alpha",
    "theta1_parameters",
    "MGDAState",
    "combine_theta1_grads",
    "Phase",
    "Plain",
    "MGDA",
    "MGDAUB",
    "Constant",
    "Scheduler",
    "Separate",
    "build_strategy",
]

NORMALIZATIONS = ("none", "l2", "loss", "loss+")  # MGDA's gradient normalisation (Sener and Koltun 2018)
_LOSS_NORMALIZATIONS = ("loss", "loss+")
# What Theta2 (backbone and head) steps along under constant and scheduler: (1 - alpha) grad L2
# (Eq. 9 literally) or grad L2 (Algorithm 1, line 6)
BACKBONE_GRADS = ("weighted", "full")
# Sener and Koltun's two-task min-norm solver returns 0.999 / 0.001 at the end points
# (MultiObjectiveOptimization, ``MinNormSolver._min_norm_element_from2``)
SENER_KOLTUN_CLAMP = (0.001, 0.999)

# When ||g1 - g2||^2 is below this fraction of max(||g1||^2, ||g2||^2) the two gradients are
# taken as equal: every alpha in [0, 1] then gives the same direction and Eq. 12 is 0/0.
_EQUAL_RTOL = 1e-12
ALPHA_WHEN_EQUAL = 0.5


def min_norm_alpha(d11: float, d12: float, d22: float, *, clamp: tuple[float, float] = (0.0, 1.0)) -> float:
    """Eq. 11-12 from the Gram entries ``d11 = g1.g1``, ``d12 = g1.g2``, ``d22 = g2.g2``.

    The alpha minimising ``||alpha g1 + (1 - alpha) g2||^2``: ``alpha' = (d22 - d12) / (d11 -
    2 d12 + d22)`` (Eq. 12: ``(g2 - g1).g2 / ||g1 - g2||^2``), clipped to ``clamp`` ([0, 1] for
    Eq. 12; ``SENER_KOLTUN_CLAMP`` for MGDA-UB).  When ``g1 == g2`` (also both zero) any alpha
    is optimal and ``ALPHA_WHEN_EQUAL = 0.5`` is returned.  A non-finite entry gives NaN (the
    caller's non-finite check stops the run).  Working from the Gram entries lets them be summed
    over micro-batches and averaged over processes before alpha is computed.
    """
    d11, d12, d22 = float(d11), float(d12), float(d22)
    if not all(math.isfinite(v) for v in (d11, d12, d22)):
        return math.nan
    denom = d11 - 2.0 * d12 + d22  # ||g1 - g2||^2
    if denom <= _EQUAL_RTOL * max(d11, d22) or denom <= 0.0:
        alpha = ALPHA_WHEN_EQUAL
    else:
        alpha = (d22 - d12) / denom
    lo, hi = clamp
    return min(max(alpha, lo), hi)


def gram(g1: Tensor, g2: Tensor) -> Tensor:
    """``(g1.g1, g1.g2, g2.g2)`` of two flattened gradients, float64, shape (3,)."""
    if g1.numel() != g2.numel():
        raise ValueError(f"g1 and g2 must have the same number of elements, got {g1.numel()} and {g2.numel()}")
    a = g1.detach().reshape(-1).double()
    b = g2.detach().reshape(-1).double()
    return torch.stack([a.dot(a), a.dot(b), b.dot(b)])


def mgda_alpha(g1: Tensor, g2: Tensor) -> float:
    """Eq. 12: the alpha in [0, 1] minimising ``||alpha g1 + (1 - alpha) g2||^2``.

    ``alpha' = (g2 - g1).g2 / ||g1 - g2||^2``, clipped to [0, 1] (``min_norm_alpha``).  ``g1``
    and ``g2`` are the flattened gradients of ENoPR and of the recognition loss w.r.t. Theta1
    (any shape, same numel).  Computed in float64.
    """
    return min_norm_alpha(*gram(g1, g2).tolist())


def _normalizer(norm: float, loss: float, normalize: str) -> float:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    value = {"none": 1.0, "l2": norm, "loss": float(loss), "loss+": float(loss) * norm}[normalize]
    return 1.0 if value == 0.0 else value


def gradient_normalizer(g: Tensor, loss: float, normalize: str) -> float:
    """The number a task's gradient is divided by before Eq. 12 (Sener and Koltun's normalisation).

    Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018: their
    code (``gradient_normalizers`` of MultiObjectiveOptimization) divides each task's gradient,
    before the min-norm solver, by ``1`` (``"none"``), its L2 norm ``||g||`` (``"l2"``), the
    task's loss value ``L`` at that step (``"loss"``) or ``L ||g||`` (``"loss+"``); the paper
    itself leaves this out.  With two tasks ``"l2"`` always gives alpha = 0.5 (the min-norm
    point of two unit vectors is their midpoint).  ``g`` is the flattened gradient, ``loss`` the
    task's loss value.  A normaliser of exactly 0 (a zero gradient, or a zero loss) is replaced
    by 1, so a zero gradient stays zero instead of becoming 0/0; a non-finite one is returned
    as it is (the non-finite check of the training loop then stops the run).
    """
    norm = float(g.detach().reshape(-1).double().norm()) if normalize in ("l2", "loss+") else 1.0
    return _normalizer(norm, loss, normalize)


def normalized_alpha(d: Tensor, *, normalize: str = "none", l1: float = 1.0, l2: float = 1.0,
                     clamp: tuple[float, float] = (0.0, 1.0)) -> float:
    """``min_norm_alpha`` of ``g1 / n1`` and ``g2 / n2`` given the Gram entries ``d`` = (3,) of g1, g2.

    ``n1``, ``n2``: ``gradient_normalizer`` of each task (``l1``, ``l2``: the loss values of
    ENoPR and of the recognition loss, used by ``"loss"`` and ``"loss+"``).
    """
    d11, d12, d22 = (float(v) for v in d)
    n1 = _normalizer(math.sqrt(max(d11, 0.0)), l1, normalize)
    n2 = _normalizer(math.sqrt(max(d22, 0.0)), l2, normalize)
    return min_norm_alpha(d11 / (n1 * n1), d12 / (n1 * n2), d22 / (n2 * n2), clamp=clamp)


def normalized_mgda_alpha(g1: Tensor, g2: Tensor, *, normalize: str = "none", l1: float = 1.0,
                          l2: float = 1.0) -> float:
    """Eq. 12 on the normalised gradients ``g1 / n1`` and ``g2 / n2`` (``gradient_normalizer``).

    ``l1``, ``l2``: the loss values of ENoPR and of the recognition loss (used by ``"loss"`` and
    ``"loss+"``).  ``normalize="none"`` is exactly ``mgda_alpha(g1, g2)``.
    """
    return normalized_alpha(gram(g1, g2), normalize=normalize, l1=l1, l2=l2)


def gradient_stats(d: Tensor | None, *, scale: float = 1.0) -> dict:
    """``{"g1_norm", "g2_norm", "g_cos"}`` from the Gram entries ``d`` of g1 and g2 (None: NaN).

    ``scale``: the common factor of both gradients (the GradScaler's), divided out of the norms.
    The cosine is NaN when either gradient is zero.
    """
    if d is None:
        return {"g1_norm": math.nan, "g2_norm": math.nan, "g_cos": math.nan}
    d11, d12, d22 = (float(v) for v in d)
    n1, n2 = math.sqrt(max(d11, 0.0)), math.sqrt(max(d22, 0.0))
    cos = d12 / (n1 * n2) if n1 > 0 and n2 > 0 else math.nan
    return {"g1_norm": n1 / scale, "g2_norm": n2 / scale, "g_cos": max(-1.0, min(1.0, cos)) if math.isfinite(cos) else cos}


def scheduler_alpha(m: int, total: int, *, gamma: float, lam: float) -> float:
    """Eq. 13 (Appendix D), the scale scheduler; the printed formula is garbled, and this is the reading used.

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
    ``hyperplane_gram`` accumulates the Gram entries of the gradients w.r.t. the hyperplanes
    (MGDA-UB): the micro-batches hold different samples, so the step's Gram entries are sums.
    """

    def __init__(self, theta1: Sequence[Tensor]):
        self.theta1 = list(theta1)
        self.g1: list[Tensor] | None = None
        self.losses: Tensor | None = None  # (2,) float64: L1 (ENoPR), L2 (recognition)
        self.hyperplane_gram: Tensor | None = None  # (3,) float64
        self.scale = 1.0  # the common factor of the gradients (GradScaler's scale)

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

    def add_hyperplane_gram(self, d: Tensor) -> None:
        self.hyperplane_gram = d if self.hyperplane_gram is None else self.hyperplane_gram + d

    def reset(self) -> None:
        self.g1 = None
        self.losses = None
        self.hyperplane_gram = None


def _flat_g1(mgda_state: MGDAState, all_reduce_mean: Callable[[Tensor], Tensor] | None) -> Tensor:
    if mgda_state.g1 is None:
        raise ValueError("no g1 accumulated: run the strategy's backward first")
    g1 = torch.cat([g.reshape(-1) for g in mgda_state.g1])
    return g1 if all_reduce_mean is None else all_reduce_mean(g1)


def _flat_grad(theta1: Sequence[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in theta1])


def _step_losses(mgda_state: MGDAState, normalize: str,
                 all_reduce_mean: Callable[[Tensor], Tensor] | None) -> tuple[float, float]:
    """The step's mean (L1, L2), averaged over processes, where a loss normalisation needs them."""
    if normalize not in _LOSS_NORMALIZATIONS:
        return 1.0, 1.0
    if mgda_state.losses is None:
        raise ValueError(f"normalize={normalize!r} needs the loss values: the strategy's backward records them")
    losses = mgda_state.losses if all_reduce_mean is None else all_reduce_mean(mgda_state.losses)
    l1, l2 = (float(v) for v in losses)
    return l1, l2


def _set_theta1_grads(theta1: Sequence[Tensor], combined: Tensor) -> None:
    offset = 0
    for p in theta1:
        n = p.numel()
        new = combined[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = new.clone()
        else:  # in place: DDP may hold views of the gradients (gradient_as_bucket_view)
            p.grad.copy_(new)
        offset += n


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
    backward pass.  It keeps the step's scale the one of the losses, and ``"none"`` is Eq. 12
    and Algorithm 1 exactly.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    theta1 = list(theta1)
    g1 = _flat_g1(mgda_state, all_reduce_mean)
    g2 = _flat_grad(theta1)
    l1, l2 = _step_losses(mgda_state, normalize, all_reduce_mean)
    alpha = normalized_alpha(gram(g1, g2), normalize=normalize, l1=l1, l2=l2)
    _set_theta1_grads(theta1, alpha * g1.to(g2.dtype) + (1.0 - alpha) * g2)
    mgda_state.reset()
    return alpha


# ----------------------------------------------------------------------------------------------
# The strategies as objects: phase(epoch), backward(...), after_backward() -> alpha.

Scale = Callable[[Tensor], Tensor]  # GradScaler.scale, or the identity


def _identity(t: Tensor) -> Tensor:
    return t


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

    # PWTP is meant to learn from L2: a PWTP that stops doing so gets the freeze warning
    # (dynapp.joint_diagnostics); ``separate`` trains it on L1 alone by design
    pwtp_learns_from_l2 = True

    def __init__(self, theta1: Sequence[Tensor] = (), **_options):
        self.theta1 = list(theta1)
        self.alpha = math.nan
        self.stats: dict = {}  # the step's gradient statistics (g1_norm, g2_norm, g_cos), if any

    def phase(self, epoch: int) -> Phase:
        return JOINT

    def backward(self, rec_loss: Tensor, aux_loss: Tensor | None, *, step: int, scale: Scale = _identity,
                 divide: int = 1, hyperplanes: Tensor | None = None) -> None:
        """``scale``: ``GradScaler.scale``; ``divide``: the gradient-accumulation micro-batches;
        ``hyperplanes``: the representation's hyperplanes ``z`` (used by ``mgda_ub``)."""
        scale(rec_loss / divide).backward()

    def after_backward(self) -> float:
        return self.alpha


class _TwoGradients(Plain):
    """g1 apart, then one backward of ``w L2``; after the step, Theta1's grad = alpha g1 + (1 - alpha) g2.

    Subclasses say what the backward weights L2 by (``rec_weight``: 1 for Algorithm 1, ``1 -
    alpha`` for Eq. 9 literally) and how alpha is chosen (``choose_alpha``).
    ``all_reduce_mean``: averages g1 (and what alpha needs) over processes (None: one process).
    """

    uses_hyperplanes = False  # MGDA-UB: also the gradients w.r.t. the hyperplanes

    def __init__(self, theta1: Sequence[Tensor], *, all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
                 **_options):
        super().__init__(theta1)
        self.all_reduce_mean = all_reduce_mean
        self.state = MGDAState(self.theta1)
        self.weight = 1.0  # the weight of L2 in this step's backward pass

    def rec_weight(self, step: int) -> float:
        """The weight of L2 in the backward pass: Theta2's gradient is ``rec_weight * grad L2``."""
        return 1.0

    def choose_alpha(self, g1: Tensor, g2: Tensor) -> float:
        raise NotImplementedError

    def backward(self, rec_loss, aux_loss, *, step, scale=_identity, divide=1, hyperplanes=None):
        if aux_loss is None or not self.theta1:
            return super().backward(rec_loss, aux_loss, step=step, scale=scale, divide=divide)
        self.weight = self.rec_weight(step)
        inputs = list(self.theta1)
        if self.uses_hyperplanes:
            if hyperplanes is None or not hyperplanes.requires_grad:
                raise ValueError("joint.strategy=mgda_ub needs a representation that returns its hyperplanes (pwtp)")
            inputs.append(hyperplanes)
        grads = torch.autograd.grad(scale(aux_loss / divide), inputs, retain_graph=True, allow_unused=True)
        self.state.add(grads[: len(self.theta1)], losses=(aux_loss / divide, rec_loss / divide))
        self.state.scale = float(scale(torch.ones((), device=aux_loss.device)))
        if self.uses_hyperplanes:
            self._watch(hyperplanes, grads[-1])
        scale(self.weight * rec_loss / divide).backward()

    def _watch(self, hyperplanes: Tensor, g1: Tensor | None) -> None:
        """Accumulate the Gram entries of grad_z L1 (``g1``) and grad_z L2 (caught by a hook
        during the ordinary backward of L2, so it costs no extra pass)."""
        g1 = torch.zeros_like(hyperplanes) if g1 is None else g1.detach()

        def hook(g2: Tensor) -> None:
            self.state.add_hyperplane_gram(gram(g1, g2))

        hyperplanes.register_hook(hook)

    def after_backward(self) -> float:
        if self.state.g1 is None:  # no Theta1 / no aux loss: plain training
            self.stats = {}
            return math.nan
        g1 = _flat_g1(self.state, self.all_reduce_mean)
        g2w = _flat_grad(self.theta1)  # w g2
        w = self.weight
        g2 = g2w / w if w > 0 else None
        alpha = self.choose_alpha(g1, g2 if g2 is not None else g2w)
        coef = (1.0 - alpha) / w if w > 0 else 0.0  # = 1 for Eq. 9 literally: .grad already holds (1 - alpha) g2
        _set_theta1_grads(self.theta1, alpha * g1.to(g2w.dtype) + coef * g2w)
        self.stats = gradient_stats(gram(g1, g2) if g2 is not None else None, scale=self.state.scale)
        self.state.reset()
        self.alpha = alpha
        return alpha


class MGDA(_TwoGradients):
    """Algorithm 1: alpha by Eq. 12 (``normalize``: Sener and Koltun's normalisation) on the
    parameter gradients g1, g2; Theta1 along ``alpha g1 + (1 - alpha) g2``, Theta2 along grad L2."""

    def __init__(self, theta1: Sequence[Tensor], *, normalize: str = "none",
                 all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **_options):
        super().__init__(theta1, all_reduce_mean=all_reduce_mean)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        self.normalize = normalize
        if normalize == "l2" and self.theta1:
            warnings.warn(self.l2_note, stacklevel=3)

    #: What ``normalize="l2"`` amounts to (a warning at construction).
    l2_note = ("joint.normalize=l2 gives alpha = 0.5 at every step (Eq. 12 on two unit vectors): it is "
               "joint.strategy=constant joint.alpha=0.5 joint.backbone_grad=full")

    def choose_alpha(self, g1, g2):
        l1, l2 = _step_losses(self.state, self.normalize, self.all_reduce_mean)
        return normalized_alpha(gram(g1, g2), normalize=self.normalize, l1=l1, l2=l2)


class MGDAUB(MGDA):
    """MGDA-UB (Sener and Koltun 2018, Section 3.3): alpha from the gradients of L1 and L2 w.r.t.
    PWTP's hyperplanes ``z`` (``normalize``: none, loss, loss+), clamped to ``SENER_KOLTUN_CLAMP``;
    Theta1 along ``alpha g1 + (1 - alpha) g2`` (parameter gradients), Theta2 along grad L2.

    Under data parallelism the Gram entries of the hyperplane gradients (three numbers) are
    averaged over processes: each process holds its own samples' part of ``z``, so the whole
    batch's entries are the sum over processes, and alpha does not change under a common scale.
    """

    uses_hyperplanes = True
    l2_note = MGDA.l2_note.replace("Eq. 12", "the min-norm point")

    def choose_alpha(self, g1, g2):
        d = self.state.hyperplane_gram
        if d is None:
            raise ValueError("joint.strategy=mgda_ub: no gradient reached the hyperplanes in the backward pass")
        if self.all_reduce_mean is not None:
            d = self.all_reduce_mean(d)
        l1, l2 = _step_losses(self.state, self.normalize, self.all_reduce_mean)
        return normalized_alpha(d, normalize=self.normalize, l1=l1, l2=l2, clamp=SENER_KOLTUN_CLAMP)


class _Weighted(_TwoGradients):
    """Eq. 9 with an alpha known before the backward pass; ``backbone_grad`` says what Theta2
    steps along: ``"weighted"`` ``(1 - alpha) grad L2`` (Eq. 9 literally) or ``"full"`` grad L2."""

    def __init__(self, theta1: Sequence[Tensor], *, backbone_grad: str = "weighted",
                 all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **_options):
        super().__init__(theta1, all_reduce_mean=all_reduce_mean)
        if backbone_grad not in BACKBONE_GRADS:
            raise ValueError(f"backbone_grad must be one of {', '.join(BACKBONE_GRADS)}, got {backbone_grad!r}")
        self.backbone_grad = backbone_grad

    def alpha_at(self, step: int) -> float:
        """The alpha of optimiser step ``step`` (from 0)."""
        raise NotImplementedError

    def rec_weight(self, step: int) -> float:
        return 1.0 - self.alpha_at(step) if self.backbone_grad == "weighted" else 1.0

    def backward(self, rec_loss, aux_loss, *, step, scale=_identity, divide=1, hyperplanes=None):
        self.alpha = self.alpha_at(step)
        super().backward(rec_loss, aux_loss, step=step, scale=scale, divide=divide, hyperplanes=hyperplanes)

    def choose_alpha(self, g1, g2):
        return self.alpha

    def after_backward(self) -> float:
        alpha = super().after_backward()
        return self.alpha if math.isnan(alpha) else alpha


class Constant(_Weighted):
    """A fixed alpha (Table 5: 0, 0.5, 0.9), checked to be in [0, 1]."""

    def __init__(self, theta1: Sequence[Tensor], *, alpha: float = 0.5, backbone_grad: str = "weighted",
                 all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **_options):
        super().__init__(theta1, backbone_grad=backbone_grad, all_reduce_mean=all_reduce_mean)
        self.fixed = constant_alpha(alpha)

    def alpha_at(self, step: int) -> float:
        return self.fixed


class Scheduler(_Weighted):
    """Alpha from the scale scheduler, Eq. 13: ``scheduler_alpha(step + 1, total_steps, ...)``."""

    def __init__(self, theta1: Sequence[Tensor], *, total_steps: int, gamma: float = 0.2, lam: float = 0.1,
                 backbone_grad: str = "weighted", all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
                 **_options):
        super().__init__(theta1, backbone_grad=backbone_grad, all_reduce_mean=all_reduce_mean)
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

    pwtp_learns_from_l2 = False

    def __init__(self, theta1: Sequence[Tensor], *, separate_epochs: int = 1, **_options):
        super().__init__(theta1)
        if not self.theta1:
            raise ValueError("joint.strategy=separate needs a representation with parameters and an aux loss (pwtp)")
        self.separate_epochs = separate_epochs
        self._scale = 1.0

    def phase(self, epoch: int) -> Phase:
        if epoch < self.separate_epochs:
            return Phase(run_backbone=False)
        return Phase(train_theta1=False)

    def backward(self, rec_loss, aux_loss, *, step, scale=_identity, divide=1, hyperplanes=None):
        if rec_loss is None:  # PWTP's phase: L1 alone
            self.alpha = 1.0
            self._scale = float(scale(torch.ones((), device=aux_loss.device)))
            scale(aux_loss / divide).backward()
        else:
            self.alpha = 0.0
            super().backward(rec_loss, None, step=step, scale=scale, divide=divide)

    def after_backward(self) -> float:
        if self.alpha == 0.0:
            for p in self.theta1:  # Theta1 is frozen after separate pre-training
                p.grad = None
            self.stats = {}
        else:  # PWTP's phase: Theta1's gradient is g1 (averaged over processes by DDP)
            g1 = _flat_grad(self.theta1)
            self.stats = {**gradient_stats(None), "g1_norm": float(g1.double().norm()) / self._scale}
        return self.alpha


STRATEGIES: dict[str, type[Plain]] = {"mgda": MGDA, "mgda_ub": MGDAUB, "constant": Constant, "scheduler": Scheduler,
                                      "separate": Separate}


def build_strategy(name: str, theta1: Sequence[Tensor], *, total_steps: int,
                   all_reduce_mean: Callable[[Tensor], Tensor] | None = None, **options) -> Plain:
    """The strategy ``name`` of ``STRATEGIES`` for the parameters ``theta1`` of a run of ``total_steps``.

    ``options``: the joint options (``alpha``, ``gamma``, ``lam``, ``separate_epochs``,
    ``normalize``, ``backbone_grad``); each strategy takes the ones it uses.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown joint strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name](list(theta1), total_steps=total_steps, all_reduce_mean=all_reduce_mean, **options)
