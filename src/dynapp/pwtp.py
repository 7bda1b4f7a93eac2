"""Pixel-Wise Temporal Projection (PWTP) and Dynamic Appearance (DA).

Huang and Bors, "Dynamic Appearance: A Video Representation for Action Recognition with
Joint Training", AAAI 2023, Section 3 (Eq. 1-8) and Appendix C.

The equations, and where each one is in this file::

    feat = F(x)                      (Eq. 2, conv F frame by frame)          PWTP._coarse
    u    = triu(feat^T feat) / C'    (Eq. 3, relation descriptor)            relation_descriptor
    A    = Up(MLP(u))                (Eq. 4, T x D hyperplanes per pixel)    PWTP._coarse, _upsample
    y    = (A^T A)^-1 A^T x          (Eq. 1, the coefficients)               projection_coefficients
    x^   = A y                       (the static appearance)                 project
    p    = x - x^                    (Eq. 5, the projection residual)
    DA   = mean_t p                  (Eq. 6, the dynamic appearance)         dynamic_appearance
    ENoPR = 1/(HWC) sum_j ||p_j||^2  (Eq. 7, summed over T, averaged over pixels and channels)
    L1   = mean_n ENoPR_n            (Eq. 8, the batch mean; the ``pwtp`` representation takes it)

``dynamic_appearance`` never builds the (N, C, T, H, W) residual: ``mean_t p = mean_t x -
mean_t(A) y`` and, by orthogonality, ``||x - A y||^2 = ||x||^2 - 2 y.A^T x + y^T A^T A y``.  The
only work that touches the whole clip is one temporal contraction ``A^T x`` (a custom autograd
function whose backward is one more pass), a plain temporal sum and a squared norm; for D = 1
(the default) ``_RankOneDA`` writes the same arithmetic with a hand-written backward.

This file is the readable reference, and the oracle of the tests.  The fused CPU kernel
(:mod:`dynapp.kernels.pwtp_cpu`) does Eq. 3 and Eq. 1, 5-7 for D = 1 in one pass over the clip
each way; ``PWTP(impl="auto" | "reference" | "cpu_fused")`` chooses, by the one rule of
:func:`choose_impl`, and ``PWTP.last_impl`` reports what ran.

Choices where the paper is silent (documented and tested):

* Conv F uses padding ``k // 2`` and a bias, so a 224 input gives 28 x 28 at stride 8.
* MLP (Appendix C, read as docs/paper.md says): ``GELU(Linear(P -> rP))``, then B blocks
  ``h + GELU(Linear_up(GELU(Linear_down(BatchNorm(h)))))`` (the GELU of the up-projection sits
  inside the residual branch, before the sum), then ``Linear(rP -> T*D)`` with no activation.
  The bottleneck width is ``round(beta * rP)``.  The default configuration has 9,686 parameters.
* Upsampling is bilinear with ``align_corners=False`` (PyTorch's default), written as two
  small matrix products, which equals ``F.interpolate`` and is 3x cheaper to differentiate.
* Leak-free DA (``static="remove"``, beyond the paper).  DA is a per-pixel linear temporal
  filter, ``DA = sum_t w_t x_t`` with ``w_t = 1/T - a_t^T G^-1 m`` (G = A^T A regularised,
  m = mean_t A).  Its weights sum to ``s = 1 - T m^T G^-1 m >= 0``, so a static pixel x_t = xbar
  reaches DA as ``s xbar``: part of the scene leaks through.  The option subtracts it,
  ``DA' = DA - s mean_t x = (m^T G^-1 m) sum_t x - m^T y``, whose weights
  ``w'_t = -(a_t - m)^T G^-1 m`` sum to zero; equivalently DA' is the DA of the temporally
  centred clip ``x - mean_t x``.  For D = 1, ``m^T G^-1 m = m^2 / (a.a + eps)``.  ENoPR is a
  property of the projection (Eq. 7) and is unchanged.  Cost: nothing more than sum_t x, which
  DA already needs (one more D x D solve for D > 1).
* The normal equations are regularised: for D = 1, ``y = a.x / (a.a + eps)``; for D > 1 the
  D x D system ``(A^T A + (ridge * tr(A^T A) / D + eps) I) y = A^T x`` is solved by an
  unrolled Cholesky factorisation.  Zero or equal columns therefore give finite outputs and
  gradients.  The projection is always computed in float32 (or float64), also under autocast.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dynapp.kernels import pwtp_cpu
from dynapp.segments import fold_segments, segment_view, split_segments

__all__ = [
    "IMPLS",
    "PWTP",
    "PWTPImpl",
    "PWTPOutput",
    "STATIC_OPTIONS",
    "check_static",
    "choose_impl",
    "project",
    "projection_coefficients",
    "dynamic_appearance",
    "temporal_contract",
    "temporal_weights",
    "relation_descriptor",
    "upsample_bilinear",
]

# Regularisers of A^T A by working precision: an absolute one (zero columns stay finite) and,
# for D > 1, one relative to tr(A^T A) / D (equal columns stay finite).  A few ulps each, so a
# well-conditioned projection is exact to working precision.
_REGULARISERS = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12)}

# What PWTP does with the static part of DA: "keep" (the paper, Eq. 6) or "remove" (leak-free DA).
STATIC_OPTIONS = ("keep", "remove")


class PWTPOutput(NamedTuple):
    """What :class:`PWTP` returns.

    dynamic:  (N, C, H, W) the dynamic appearance, Eq. 6.
    enopr:    (N,) the per-sample ENoPR, Eq. 7 (average it over the batch for Eq. 8).
    static:   (N, C, H, W) the temporal mean of the projection x^ (static appearance), or None.
    residual: (N, C, T, H, W) the full projection residual p, or None.
    hyperplanes: (N, T*D, h, w) the MLP's output z (Eq. 4 before the upsampling, which has no
              parameters): the last tensor that depends on PWTP's parameters, through which
              every loss reaches them (``PWTP.forward`` fills it; MGDA-UB and the training
              diagnostics read it).
    """

    dynamic: torch.Tensor
    enopr: torch.Tensor
    static: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    hyperplanes: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# The projection (Eq. 1, 5-7) as pure functions.


def _contract(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """sum_t x[:, :, t] A[:, t]: x (N, C, T, H, W), A (N, T, D, H, W) -> (N, C, D, H, W)."""
    out = x[:, :, 0].unsqueeze(2) * A[:, 0].unsqueeze(1)
    for t in range(1, x.shape[2]):
        out.addcmul_(x[:, :, t].unsqueeze(2), A[:, t].unsqueeze(1))
    return out


class _TemporalContract(torch.autograd.Function):
    """B[n, c, d] = sum_t x[n, c, t] * A[n, t, d], per pixel, without an (N, C, T, D, H, W) temporary.

    Loops over T (forward) and over C and D (backward) with in-place multiply-adds: each pass
    reads the clip once in its own memory layout, so no layout copy of the clip is ever made.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        # x: (N, C, T, H, W), A: (N, T, D, H, W) -> (N, C, D, H, W)
        ctx.save_for_backward(x, A)
        return _contract(x, A)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, A = ctx.saved_tensors
        grad_x = grad_A = None
        C, D = x.shape[1], A.shape[2]
        if ctx.needs_input_grad[1]:
            # grad_A[n, t, d] = sum_c grad[n, c, d] * x[n, c, t]          -> (N, T, D, H, W)
            grad_A = x[:, 0].unsqueeze(2) * grad[:, 0].unsqueeze(1)
            for c in range(1, C):
                grad_A.addcmul_(x[:, c].unsqueeze(2), grad[:, c].unsqueeze(1))
        if ctx.needs_input_grad[0]:
            # grad_x[n, c, t] = sum_d grad[n, c, d] * A[n, t, d]          -> (N, C, T, H, W)
            grad_x = grad[:, :, 0].unsqueeze(2) * A[:, :, 0].unsqueeze(1)
            for d in range(1, D):
                grad_x.addcmul_(grad[:, :, d].unsqueeze(2), A[:, :, d].unsqueeze(1))
        return grad_x, grad_A


def temporal_contract(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``A^T x``: x (N, C, T, H, W), A (N, T, D, H, W) -> (N, C, D, H, W)."""
    return _TemporalContract.apply(x, A)


def _gram(A: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``A^T A``: (N, T, D, H, W) -> (N, D, D, H, W).

    Written as D(D+1)/2 products summed over T: an einsum here becomes a batched matmul over
    pixels with layout copies, several times slower on CPU.
    """
    D = A.shape[2]
    if D == 1:
        return A.square().sum(1, keepdim=True)
    cols = A.unbind(2)
    entries = {}
    for d in range(D):
        for e in range(d, D):
            entries[d, e] = entries[e, d] = (cols[d] * cols[e]).sum(1)  # (N, H, W)
    return torch.stack([torch.stack([entries[d, e] for e in range(D)], 1) for d in range(D)], 1)


def _apply_gram(G: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``G y``: G (N, D, D, H, W), y (N, C, D, H, W) -> (N, C, D, H, W)."""
    D = G.shape[1]
    if D == 1:
        return G[:, :, 0].unsqueeze(1) * y
    return torch.stack([sum(G[:, d, e].unsqueeze(1) * y[:, :, e] for e in range(D)) for d in range(D)], 2)


def _solve_normal(G: torch.Tensor, B: torch.Tensor, eps: float, ridge: float) -> torch.Tensor:
    """Solve the regularised per-pixel normal equations ``G~ y = B``.

    G: (N, D, D, H, W) symmetric positive semi-definite, B: (N, C, D, H, W) -> y (N, C, D, H, W).
    D = 1 is a division; D > 1 is an unrolled Cholesky factorisation, vectorised over pixels
    (faster than batched LAPACK calls on hundreds of thousands of tiny systems, and
    differentiable by plain autograd).
    """
    D = G.shape[1]
    if D == 1:
        return B / (G[:, :, 0].unsqueeze(1) + eps)
    diag = torch.diagonal(G, dim1=1, dim2=2)  # (N, H, W, D)
    shift = ridge * diag.sum(-1) / D + eps  # (N, H, W)
    # Cholesky factor L (lower), each entry (N, H, W).
    L = [[None] * D for _ in range(D)]
    for j in range(D):
        s = G[:, j, j] + shift
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        L[j][j] = s.clamp_min(eps).sqrt()
        for i in range(j + 1, D):
            s = G[:, i, j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s / L[j][j]
    # Forward substitution L z = B, then back substitution L^T y = z; broadcast over C.
    z = [None] * D
    for i in range(D):
        s = B[:, :, i]
        for k in range(i):
            s = s - L[i][k].unsqueeze(1) * z[k]
        z[i] = s / L[i][i].unsqueeze(1)
    y = [None] * D
    for i in reversed(range(D)):
        s = z[i]
        for k in range(i + 1, D):
            s = s - L[k][i].unsqueeze(1) * y[k]
        y[i] = s / L[i][i].unsqueeze(1)
    return torch.stack(y, dim=2)


def _check_pair(x: torch.Tensor, A: torch.Tensor) -> None:
    if x.dim() != 5 or A.dim() != 5:
        raise ValueError(
            f"expected x of shape (N, C, T, H, W) and A of shape (N, T, D, H, W); "
            f"got x {tuple(x.shape)} and A {tuple(A.shape)}"
        )
    N, _, T, H, W = x.shape
    if A.shape[0] != N or A.shape[1] != T or A.shape[3:] != (H, W):
        raise ValueError(
            f"A must have shape ({N}, {T}, D, {H}, {W}) to match x {tuple(x.shape)}; got {tuple(A.shape)}"
        )


def _working_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _regularisers(dt: torch.dtype, eps: float | None, ridge: float | None) -> tuple[float, float]:
    e, r = _REGULARISERS[dt]
    return (e if eps is None else eps), (r if ridge is None else ridge)


def projection_coefficients(
    x: torch.Tensor, A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None
) -> torch.Tensor:
    """Eq. 1: the coefficients ``y = (A^T A)^-1 A^T x``, shape (N, C, D, H, W)."""
    _check_pair(x, A)
    return _projection_coefficients(x, A, eps, ridge)


def _projection_coefficients(x: torch.Tensor, A: torch.Tensor, eps: float | None, ridge: float | None) -> torch.Tensor:
    dt = _working_dtype(x, A)
    eps, ridge = _regularisers(dt, eps, ridge)
    with torch.autocast(x.device.type, enabled=False):
        x, A = x.to(dt), A.to(dt)
        return _solve_normal(_gram(A), temporal_contract(x, A), eps, ridge)


def project(x: torch.Tensor, A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None) -> torch.Tensor:
    """Eq. 1: the projection ``x^ = A (A^T A)^-1 A^T x`` of every pixel's T-vector.

    x: (N, C, T, H, W), A: (N, T, D, H, W) -> x^ (N, C, T, H, W).  The residual of Eq. 5 is
    ``x - project(x, A)``.  This materialises a clip-sized tensor; :func:`dynamic_appearance`
    gives DA and ENoPR without it.
    """
    _check_pair(x, A)
    return _project(x, A, eps, ridge)


def _project(x: torch.Tensor, A: torch.Tensor, eps: float | None, ridge: float | None) -> torch.Tensor:
    y = _projection_coefficients(x, A, eps, ridge)  # (N, C, D, H, W)
    with torch.autocast(x.device.type, enabled=False):
        return torch.einsum("ntdhw,ncdhw->ncthw", A.to(y.dtype), y)


def _channel_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_c u[:, c] v[:, c] for (N, C, H, W) tensors -> (N, H, W), without a (N, C, H, W) temporary."""
    out = u[:, 0] * v[:, 0]
    for c in range(1, u.shape[1]):
        out.addcmul_(u[:, c], v[:, c])
    return out


class _RankOneDA(torch.autograd.Function):
    """DA and ENoPR for D = 1 with a hand-written backward (the default configuration).

    Forward: B = a.x (one pass over the clip), S = sum_t x (one pass), ||x||^2 (one pass), then
    a few per-pixel operations.  Backward: one pass over the clip for grad_a (and one for grad_x
    if the clip needs a gradient).  Autograd through the same arithmetic keeps about ten clip- or
    frame-sized temporaries and runs about 25 elementwise kernels; this runs eight.

    With den = a.a + eps and y = B / den:
        da = S / T - m y                     (m = mean_t a)
        ||p||^2 = ||x||^2 - sum_c y_c^2 (a.a + 2 eps)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, eps: float, remove: bool = False):
        # x: (N, C, T, H, W), a: (N, T, H, W)
        N, C, T, H, W = x.shape
        B = _contract(x, a.unsqueeze(2)).squeeze(2)  # (N, C, H, W) = a.x
        aa = a[:, 0] * a[:, 0]  # (N, H, W)
        asum = a[:, 0].clone()
        for t in range(1, T):
            aa.addcmul_(a[:, t], a[:, t])
            asum.add_(a[:, t])
        inv_den = (aa + eps).reciprocal_().unsqueeze(1)  # (N, 1, H, W)
        m = asum.div_(T).unsqueeze(1)  # (N, 1, H, W)
        y = B.mul_(inv_den)  # (N, C, H, W), B is not needed any more
        static = m * y
        if remove:  # leak-free: da = f S - m y with f = m^2 / (a.a + eps) (the weights sum to 0)
            S = x.sum(2)  # (N, C, H, W), kept for the backward
            da = torch.addcmul(-static, S, m * m * inv_den)
        else:
            S = None
            da = x.sum(2).div_(T).sub_(static)
        yy = _channel_dot(y, y).unsqueeze(1)  # (N, 1, H, W) sum_c y_c^2
        x_sq = torch.linalg.vector_norm(x.reshape(N, -1), dim=1).square()
        explained = (yy * (aa.unsqueeze(1) + 2 * eps)).reshape(N, -1).sum(1)
        res_sq = x_sq.double() - explained.double()
        positive = res_sq > 0
        enopr = (res_sq.clamp_min(0) / (C * H * W)).to(x.dtype)
        ctx.save_for_backward(x, a, y, inv_den, m, yy, positive, S)
        ctx.eps = eps
        return da, enopr, static

    @staticmethod
    def backward(ctx, g_da: torch.Tensor, g_enopr: torch.Tensor, g_static: torch.Tensor):
        x, a, y, inv_den, m, yy, positive, S = ctx.saved_tensors
        eps = ctx.eps
        N, C, T, H, W = x.shape
        # d enopr / d explained = -1/(CHW) where the residual is positive (clamped otherwise).
        g_expl = (-g_enopr * positive / (C * H * W)).to(x.dtype).view(N, 1, 1, 1)
        aa = inv_den.reciprocal() - eps  # (N, 1, H, W)
        u = g_static - g_da  # (N, C, H, W); g_y = m u
        yu = _channel_dot(y, u).unsqueeze(1)  # (N, 1, H, W), this is also g_m
        # g_B = (m u + 2 g_expl (aa + 2 eps) y) / den
        g_B = torch.addcmul(m * u, 2 * g_expl * (aa + 2 * eps), y).mul_(inv_den)
        # g_aa = -(m yu + g_expl (aa + 3 eps) yy) / den
        g_aa = torch.addcmul(m * yu, g_expl * (aa + 3 * eps), yy)
        g_m, g_S = yu, g_da / T
        if S is not None:  # the leak-free term f S, f = m^2 / den: q = sum_c g_da[c] S[c]
            f = m * m * inv_den
            q = _channel_dot(g_da, S).unsqueeze(1)  # (N, 1, H, W)
            g_aa.addcmul_(f, q)  # d(f S)/d aa = -f S / den (the sign and 1/den follow)
            g_m = torch.addcmul(yu, m * inv_den, q, value=2.0)  # d(f S)/dm = 2 m S / den
            g_S = g_da * f
        g_aa.mul_(inv_den).neg_()
        grad_x = grad_a = None
        if ctx.needs_input_grad[1]:
            # grad_a[t] = sum_c g_B[c] x[c, t] + 2 a[t] g_aa + g_m / T       -> (N, T, H, W)
            grad_a = torch.addcmul(g_m / T, a, g_aa, value=2.0)
            for c in range(C):
                grad_a.addcmul_(x[:, c], g_B[:, c : c + 1])
        if ctx.needs_input_grad[0]:
            # grad_x[c, t] = g_B[c] a[t] + g_S[c] - 2 x[c, t] g_expl         -> (N, C, T, H, W)
            grad_x = g_B.unsqueeze(2) * a.unsqueeze(1)
            grad_x.add_(g_S.unsqueeze(2)).addcmul_(x, g_expl.view(N, 1, 1, 1, 1), value=-2.0)
        return grad_x, grad_a, None, None


def check_static(static: str) -> bool:
    """Validate a ``static`` option ("keep" or "remove"); True for "remove"."""
    if static not in STATIC_OPTIONS:
        raise ValueError(f"static must be one of {', '.join(map(repr, STATIC_OPTIONS))}; got {static!r}")
    return static == "remove"


def dynamic_appearance(
    x: torch.Tensor,
    A: torch.Tensor,
    *,
    eps: float | None = None,
    ridge: float | None = None,
    static: str = "keep",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DA (Eq. 6) and per-sample ENoPR (Eq. 7) without building the residual.

    x: (N, C, T, H, W), A: (N, T, D, H, W).  Returns ``(da, enopr, static)`` with
    da (N, C, H, W) = mean_t (x - x^), enopr (N,) and static (N, C, H, W) = mean_t x^.
    Computed in float32 (float64 if either input is float64), also under autocast.

    ``static="remove"`` gives the leak-free DA (not in the paper): ``da - s * mean_t x`` with
    ``s = 1 - T m^T (A^T A)^-1 m`` the sum of the pixel's temporal weights (m = mean_t A), i.e.
    ``da = (m^T (A^T A)^-1 m) sum_t x - m^T y``: its weights sum to zero, so a static pixel
    gives 0 for any A.  ENoPR and the returned static appearance are those of the projection
    and do not depend on the option.
    """
    _check_pair(x, A)
    return _dynamic_appearance(x, A, eps=eps, ridge=ridge, remove=check_static(static))


def _dynamic_appearance(
    x: torch.Tensor, A: torch.Tensor, *, eps: float | None, ridge: float | None, remove: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`dynamic_appearance` on inputs whose shapes are known to match."""
    N, C, T, H, W = x.shape
    dt = _working_dtype(x, A)
    eps, ridge = _regularisers(dt, eps, ridge)
    with torch.autocast(x.device.type, enabled=False):
        x, A = x.to(dt), A.to(dt)
        if A.shape[2] == 1:
            return _RankOneDA.apply(x, A.squeeze(2), eps, remove)
        G = _gram(A)  # (N, D, D, H, W)
        B = temporal_contract(x, A)  # (N, C, D, H, W)
        y = _solve_normal(G, B, eps, ridge)  # (N, C, D, H, W)
        a_mean = A.mean(1)  # (N, D, H, W)
        static = (a_mean.unsqueeze(1) * y).sum(2)  # (N, C, H, W)
        if remove:
            # f = m^T G^-1 m = (1 - weight sum) / T, one more D x D solve with a single right side
            v = _solve_normal(G, a_mean.unsqueeze(1), eps, ridge)  # (N, 1, D, H, W)
            f = (a_mean.unsqueeze(1) * v).sum(2)  # (N, 1, H, W)
            da = x.sum(2) * f - static
        else:
            da = x.sum(2) / T - static
        # ||x - A y||^2 summed over t, c, h, w = ||x||^2 - sum(2 y.B - y^T G y); exact for any y.
        x_sq = torch.linalg.vector_norm(x.reshape(N, -1), dim=1).square()  # (N,)
        explained = (y * (2 * B - _apply_gram(G, y))).reshape(N, -1).sum(1)  # (N,)
        res_sq = (x_sq.double() - explained.double()).clamp_min(0).to(dt)
        enopr = res_sq / (C * H * W)
    return da, enopr, static


def temporal_weights(
    A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None, static: str = "keep"
) -> torch.Tensor:
    """DA as a per-pixel linear temporal filter: ``DA[c] = sum_t w[t] x[c, t]``.

    A (N, T, D, H, W) -> w (N, T, H, W) with ``w_t = 1/T - a_t^T (A^T A)^-1 mean_t(A)`` (for
    D = 1, ``1/T - mean(a) a_t / (a.a)``).  The weights sum to ``1 - T mean(a)^T (A^T A)^-1 mean(a)``
    (>= 0), which is 0 exactly when the constant vector lies in the column space of A: then a
    static pixel contributes nothing to DA.  ``w.sum(1)`` is therefore the per-pixel static leakage.

    ``static="remove"`` gives the weights of the leak-free DA, ``w_t - (sum_s w_s) / T =
    -(a_t - mean_t A)^T (A^T A)^-1 mean_t(A)``, which sum to zero at every pixel.
    """
    if A.dim() != 5:
        raise ValueError(f"expected A of shape (N, T, D, H, W); got {tuple(A.shape)}")
    remove = check_static(static)
    T = A.shape[1]
    dt = _working_dtype(A)
    eps, ridge = _regularisers(dt, eps, ridge)
    with torch.autocast(A.device.type, enabled=False):
        A = A.to(dt)
        m = A.mean(1)  # (N, D, H, W)
        v = _solve_normal(_gram(A), m.unsqueeze(1), eps, ridge)  # (N, 1, D, H, W)
        if remove:
            return -((A - m.unsqueeze(1)) * v).sum(2)  # (N, T, H, W)
        return 1.0 / T - (A * v).sum(2)  # (N, T, H, W)


# ----------------------------------------------------------------------------------------------
# The hyperplane generator (Eq. 2-4).


class _PairwiseSimilarity(torch.autograd.Function):
    """u[n, k, h, w] = <feat[n, :, t1_k, h, w], feat[n, :, t2_k, h, w]> for the pairs t1 < t2.

    Forward: row t1 of the upper triangle is one broadcast product summed over C'.  Backward:
    the gradient is scattered into a symmetric T x T matrix G per position and
    ``grad_feat[:, t] = sum_s G[t, s] feat[:, s]``, T in-place multiply-adds into one buffer
    (autograd through the slices allocated a full-size zero gradient per slice: 5x slower).
    """

    @staticmethod
    def forward(ctx, feat: torch.Tensor) -> torch.Tensor:
        # feat: (N, C', T, h, w) -> (N, T(T-1)/2, h, w)
        ctx.save_for_backward(feat)
        T = feat.shape[2]
        return torch.cat([(feat[:, :, t : t + 1] * feat[:, :, t + 1 :]).sum(1) for t in range(T - 1)], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (feat,) = ctx.saved_tensors
        N, _, T, h, w = feat.shape
        i, j = torch.triu_indices(T, T, offset=1, device=feat.device)
        G = grad.new_zeros(N, T, T, h, w)
        G[:, i, j] = grad
        G = G + G.transpose(1, 2)  # (N, T, T, h, w), symmetric with a zero diagonal
        g_feat = feat[:, :, 0:1] * G[:, :, 0].unsqueeze(1)  # (N, C', T, h, w)
        for s in range(1, T):
            g_feat.addcmul_(feat[:, :, s : s + 1], G[:, :, s].unsqueeze(1))
        return g_feat


def relation_descriptor(feat: torch.Tensor) -> torch.Tensor:
    """Eq. 3: pairwise frame similarities at every position.

    feat (N, C', T, h, w) -> u (N, h, w, T(T-1)/2): the Gram matrix of the T feature vectors
    divided by C', upper triangle without the diagonal, row-major (t1 < t2).  This is the
    reference; :func:`dynapp.kernels.pwtp_cpu.relation_descriptor` is the fused CPU version.
    """
    u = _PairwiseSimilarity.apply(feat) / feat.shape[1]  # (N, P, h, w)
    return u.permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(n_in: int, n_out: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bilinear interpolation, align_corners=False (PyTorch's rule)."""
    scale = n_in / n_out
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    lam = src - i0
    U = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    U.index_put_((rows, i0), 1 - lam, accumulate=True)
    U.index_put_((rows, i1), lam, accumulate=True)
    return U.to(device=device, dtype=dtype)


def upsample_bilinear(z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of the last two dims, equal to ``F.interpolate(..., align_corners=False)``.

    Written as ``U_h @ z @ U_w^T``: dense matrix products whose backward is also a matrix
    product (PyTorch's CPU upsample backward is a scatter, about 3x slower here).
    """
    h, w = z.shape[-2:]
    H, W = size
    Uh = _bilinear_matrix(h, H, str(z.device), z.dtype)
    Uw = _bilinear_matrix(w, W, str(z.device), z.dtype)
    # The big product last, flattened to one GEMM (N*T*H, w) @ (w, W) rather than a batched one.
    return torch.matmul(torch.matmul(Uh, z), Uw.t())


class _Bottleneck(nn.Module):
    """h + GELU(Linear_up(GELU(Linear_down(BatchNorm(h))))) (Appendix C)."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(width)
        self.down = nn.Linear(width, inner)
        self.up = nn.Linear(inner, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (M, width)
        return h + F.gelu(self.up(F.gelu(self.down(self.norm(h)))))


# ----------------------------------------------------------------------------------------------
# Which code runs: one switch, PWTP(impl=...), and one rule, choose_impl.

IMPLS = ("auto", "reference", "cpu_fused")


class PWTPImpl(NamedTuple):
    """What a PWTP forward ran (``PWTP.last_impl``), each "reference" (the PyTorch code of this
    file) or "cpu_fused" (:mod:`dynapp.kernels.pwtp_cpu`).

    relation:   the relation descriptor, Eq. 3.
    projection: the projection, DA and ENoPR, Eq. 1 and 5-7.
    """

    relation: str
    projection: str


def _kernel_blocker(x: torch.Tensor) -> str | None:
    """Why the CPU kernel cannot read this clip at all, or None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return f"the clip is {x.dtype} on {x.device.type}; the kernel takes float32/float64 CPU tensors"
    if not pwtp_cpu.available():  # builds the kernel on first use
        return "the fused CPU kernel is not available (no C++ compiler, or DYNAPP_NO_KERNEL=1)"
    return None


def _relation_blocker(x: torch.Tensor) -> str | None:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return "CPU autocast is on (conv F's features are in low precision)"
    return _kernel_blocker(x)


def _projection_blocker(x: torch.Tensor, rank: int, residual: bool) -> str | None:
    if rank != 1:
        return f"rank D = {rank}; the kernel is for D = 1"
    if x.requires_grad:
        return "the clip requires grad; the kernel gives no gradient for the clip"
    if residual:
        return "return_residual=True; the kernel never builds the residual"
    return _kernel_blocker(x)


def _resolve(impl: str, blocker) -> str:
    """"reference" or "cpu_fused" for one part; ``blocker()`` says why the kernel cannot run it, or None."""
    if impl == "reference":
        return "reference"
    reason = blocker()
    if reason is None:
        return "cpu_fused"
    if impl == "cpu_fused":
        raise ValueError(f"PWTP(impl='cpu_fused') cannot run: {reason}")
    return "reference"


def choose_impl(impl: str, x: torch.Tensor, rank: int, residual: bool = False) -> PWTPImpl:
    """The rule behind ``PWTP(impl=...)``: which code computes Eq. 3 and Eq. 1, 5-7 on clip ``x``.

    * ``"reference"``: the PyTorch code of this file for both (any device and dtype; the oracle
      of the tests, and what FLOP counting sees op by op).
    * ``"cpu_fused"``: the fused CPU kernel for both; ValueError naming the reason where it cannot.
    * ``"auto"`` (default): each part fused where it can run, else the reference.  Eq. 3 is fused
      when x is a float32/float64 CPU tensor, CPU autocast is off and the kernel is available;
      Eq. 1, 5-7 when x is a float32/float64 CPU tensor, D = 1, x does not require grad, no
      residual is asked for and the kernel is available.  The kernel is available when it could
      be compiled (a C++ compiler, found once per process; a warning otherwise) and the
      environment variable ``DYNAPP_NO_KERNEL`` is unset, empty or 0.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    return PWTPImpl(
        relation=_resolve(impl, lambda: _relation_blocker(x)),
        projection=_resolve(impl, lambda: _projection_blocker(x, rank, residual)),
    )


# ----------------------------------------------------------------------------------------------
# The module.


class PWTP(nn.Module):
    """Pixel-Wise Temporal Projection: a clip (N, C, T, H, W) -> dynamic appearance (N, C, H, W).

    Args:
        frames: T, the frames of one segment.
        rank: D, the dimension of the static subspace per pixel (D <= T/2 recommended).
        kernel_size, stride, channels: k, s and C' of the spatial convolution F (Eq. 2).
        expansion: r, the MLP's first expansion ratio.  bottleneck: beta.  blocks: B.
        in_channels: C of the clip.
        static: "keep" (the paper's DA, Eq. 6) or "remove" (leak-free DA, not in the paper):
            subtract (sum of the pixel's temporal weights) x (temporal mean of the clip), so that
            every pixel's weights sum to zero and a static pixel gives DA = 0 for any A.  ENoPR
            (Eq. 7-8), ``.static`` and ``.residual`` are properties of the projection and do not
            change.
        impl: which code runs, "auto" (default), "reference" or "cpu_fused"; the rule is
            :func:`choose_impl`.  After each forward ``last_impl`` (a :class:`PWTPImpl`) says
            what ran.  The implementations agree to rounding.

    ``forward(x)`` returns a :class:`PWTPOutput` with ``.dynamic`` and ``.enopr``; pass
    ``return_static=True`` / ``return_residual=True`` for the static appearance and the full
    residual.  ``hyperplanes(x)`` returns A (N, T, D, H, W).
    """

    def __init__(
        self,
        frames: int = 8,
        rank: int = 1,
        kernel_size: int = 9,
        stride: int = 8,
        channels: int = 24,
        expansion: float = 2.0,
        bottleneck: float = 0.25,
        blocks: int = 1,
        in_channels: int = 3,
        static: str = "keep",
        impl: str = "auto",
    ):
        super().__init__()
        if frames < 2:
            raise ValueError(f"PWTP needs at least 2 frames per segment, got frames={frames}")
        if not 1 <= rank < frames:
            raise ValueError(f"rank D must satisfy 1 <= D < T={frames}, got rank={rank}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
        if impl == "cpu_fused" and rank != 1:
            raise ValueError(f"PWTP(impl='cpu_fused') needs rank D = 1 (the kernel's), got rank={rank}")
        check_static(static)
        self.frames, self.rank, self.in_channels = frames, rank, in_channels
        self.static, self.impl = static, impl
        self.last_impl: PWTPImpl | None = None
        pairs = frames * (frames - 1) // 2
        width = max(1, int(round(expansion * pairs)))
        inner = max(1, int(round(bottleneck * width)))
        # Conv F applied frame by frame: a (1, k, k) 3-D convolution reads the clip in place.
        self.conv = nn.Conv3d(
            in_channels, channels, (1, kernel_size, kernel_size), stride=(1, stride, stride),
            padding=(0, kernel_size // 2, kernel_size // 2),
        )
        self.expand = nn.Linear(pairs, width)
        self.blocks = nn.Sequential(*[_Bottleneck(width, inner) for _ in range(blocks)])
        self.head = nn.Linear(width, frames * rank)

    # The forward: Eq. 2-4 (hyperplanes), then Eq. 1, 5-7 (projection, DA, ENoPR).

    def forward(
        self, x: torch.Tensor, return_static: bool = False, return_residual: bool = False, segments: int = 1
    ) -> PWTPOutput:
        """x: (N, C, T, H, W), or (N, C, S*T, H, W) with ``segments=S``: one output per segment
        (N*S of them, in (n, s) order), as if the segments were folded into the batch, without
        copying the clip on the fused CPU path."""
        split_segments(x, segments, self.frames, self.in_channels)  # the one shape check
        impl = self.last_impl = choose_impl(self.impl, x, self.rank, return_residual)
        z = self._coarse(x, segments, impl.relation)  # Eq. 2-4 before the upsampling: (N*S, T*D, h, w)
        if impl.projection == "cpu_fused":
            return self._fused_projection(x, z, segments, return_static)._replace(hyperplanes=z)
        A = self._upsample(z, x.shape[-2:])  # Eq. 4: (N*S, T, D, H, W)
        x = fold_segments(x, segments)  # (N*S, C, T, H, W)
        da, enopr, static = _dynamic_appearance(x, A, eps=None, ridge=None, remove=self.static == "remove")
        residual = x.to(A.dtype) - _project(x, A, None, None) if return_residual else None  # Eq. 5
        return PWTPOutput(da, enopr, static if return_static else None, residual, z)

    def _coarse(self, x: torch.Tensor, segments: int, relation: str) -> torch.Tensor:
        """Eq. 2-4 before the upsampling: z (N*S, T*D, h, w), in float32 or float64."""
        # Conv F works frame by frame, so it runs on the clip as it is; only its small output is
        # folded (N, C', S*T, h, w) -> (N*S, C', T, h, w).
        feat = fold_segments(self.conv(x), segments)  # Eq. 2
        if relation == "cpu_fused":
            u = pwtp_cpu.relation_descriptor(feat)  # Eq. 3, (N*S, h, w, P)
        else:
            u = relation_descriptor(feat)
        NS, h, w = u.shape[:3]
        z = F.gelu(self.expand(u.reshape(-1, u.shape[-1])))  # Eq. 4, the MLP: (N*S*h*w, rP)
        z = self.head(self.blocks(z))  # (N*S*h*w, T*D)
        z = z.reshape(NS, h, w, self.frames * self.rank).permute(0, 3, 1, 2)  # (N*S, T*D, h, w)
        return z.to(_working_dtype(x, z))

    def _upsample(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Eq. 4's bilinear upsampling: z (N*S, T*D, h, w) -> A (N*S, T, D, H, W)."""
        H, W = size
        with torch.autocast(z.device.type, enabled=False):
            A = upsample_bilinear(z, (H, W))  # (N*S, T*D, H, W)
        return A.reshape(z.shape[0], self.frames, self.rank, H, W)

    def _fused_projection(self, x: torch.Tensor, z: torch.Tensor, segments: int, return_static: bool) -> PWTPOutput:
        """Eq. 1, 5-7 in the fused CPU kernel: A is upsampled along W here (one GEMM) and along H
        inside the kernel, never stored at full size; the kernel reads the segments in place."""
        z = z.contiguous()  # (N*S, T, h, w)
        W = x.shape[-1]
        with torch.autocast(x.device.type, enabled=False):
            dt = z.dtype
            Uw = _bilinear_matrix(z.shape[-1], W, str(z.device), dt)  # (W, w)
            zc = (z.view(-1, z.shape[-1]) @ Uw.t()).view(*z.shape[:-1], W)  # (N*S, T, h, W): one GEMM
            eps, _ = _regularisers(dt, None, None)
            clip = x.to(dt)
            if segments > 1:  # (N, S, C, T, H, W), a view: the kernel takes the strides
                clip = segment_view(clip, segments)
            da, enopr, static = pwtp_cpu.rank_one_dynamic_appearance(
                clip, zc, eps, return_static, remove=self.static == "remove", check=False
            )
        return PWTPOutput(da, enopr, static)

    # Views of the same computation.

    def coarse_hyperplanes(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """Eq. 2-4 before the upsampling: the MLP's output z, shape (N*S, T*D, h, w), in float32 or float64."""
        split_segments(x, segments, self.frames, self.in_channels)
        return self._coarse(x, segments, _resolve(self.impl, lambda: _relation_blocker(x)))

    def hyperplanes(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """Eq. 2-4: A = Upsample(MLP(u)), shape (N*S, T, D, H, W)."""
        return self._upsample(self.coarse_hyperplanes(x, segments), x.shape[-2:])

    def upsample(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A (N*S, T, D, H, W) from the MLP's output z (N*S, T*D, h, w), e.g. ``PWTPOutput.hyperplanes``."""
        return self._upsample(z, size)

    def temporal_weights(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """DA as a per-pixel temporal filter of ``x`` (:func:`temporal_weights`), honouring ``static``.

        (N, C, S*T, H, W) -> (N*S, T, H, W): ``DA[c] = sum_t w[t] x[c, t]`` per segment.
        """
        return temporal_weights(self.hyperplanes(x, segments), static=self.static)

    def extra_repr(self) -> str:
        extra = "" if self.static == "keep" else f", static={self.static!r}"
        extra += "" if self.impl == "auto" else f", impl={self.impl!r}"
        return f"frames={self.frames}, rank={self.rank}{extra}"
