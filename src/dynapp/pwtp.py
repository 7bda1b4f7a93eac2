"""Pixel-Wise Temporal Projection (PWTP) and Dynamic Appearance (DA), Eq. 1-8 stated plainly.

Huang and Bors, "Dynamic Appearance: A Video Representation for Action Recognition with
Joint Training", AAAI 2023, Section 3 (Eq. 1-8) and Appendix C.  Each equation and where it is::

    feat = F(x)                      (Eq. 2, conv F frame by frame)          PWTP._coarse
    u    = triu(feat^T feat) / C'    (Eq. 3, relation descriptor)            relation_descriptor
    A    = Up(MLP(u))                (Eq. 4, T x D hyperplanes per pixel)    PWTP._coarse, PWTP.upsample
    y    = (A^T A)^-1 A^T x          (Eq. 1, the coefficients)               projection_coefficients
    x^   = A y                       (the static appearance)                 project
    p    = x - x^                    (Eq. 5, the projection residual)
    DA   = mean_t p                  (Eq. 6, the dynamic appearance)         dynamic_appearance
    ENoPR = 1/(HWC) sum_j ||p_j||^2  (Eq. 7, summed over T, averaged over pixels and channels)
    L1   = mean_n ENoPR_n            (Eq. 8, the batch mean; the ``pwtp`` representation takes it)

This file is the reference path and the oracle of the tests; :mod:`dynapp.kernels` holds how it
runs fast, and the one rule, :func:`choose_impl`, that picks the fused CPU kernel or this file
(``PWTP(impl=...)``; ``PWTP.last_impl`` says what ran).  ``dynamic_appearance`` never builds the
(N, C, T, H, W) residual: ``mean_t p = mean_t x - mean_t(A) y`` and, by orthogonality,
``||x - A y||^2 = ||x||^2 - 2 y.A^T x + y^T A^T A y``.

Choices where the paper is silent (docs/paper.md gives the readings; all tested):

* Conv F uses padding ``k // 2`` and a bias, so a 224 input gives 28 x 28 at stride 8.
* MLP (Appendix C, read as docs/paper.md says): ``GELU(Linear(P -> rP))``, then B blocks
  ``h + GELU(Linear_up(GELU(Linear_down(BatchNorm(h)))))`` (the GELU of the up-projection sits
  inside the residual branch, before the sum), then ``Linear(rP -> T*D)`` with no activation.
  The bottleneck width is ``round(beta * rP)``.  The default configuration has 9,686 parameters.
* Upsampling is bilinear with ``align_corners=False`` (PyTorch's default).
* The normal equations are regularised, ``y = a.x / (a.a + eps)`` for D = 1 and
  ``(A^T A + (ridge * tr(A^T A) / D + eps) I) y = A^T x`` for D > 1, so zero or equal columns
  give finite outputs and gradients; they are solved in float32 (or float64), also under autocast.
* Leak-free DA (``static="remove"``, beyond the paper).  DA is a per-pixel temporal filter
  (:func:`temporal_weights`) whose weights sum to ``s >= 0``, so a static pixel reaches DA as
  ``s xbar``; the option subtracts ``s mean_t x``, the DA of the temporally centred clip.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dynapp.kernels import pwtp_cpu
from dynapp.kernels.autograd import PairwiseSimilarity, RankOneDA, temporal_contract
from dynapp.kernels.bilinear import bilinear_matrix, upsample_bilinear
from dynapp.kernels.choose import IMPLS, PWTPImpl, check_impl, choose_impl, choose_relation
from dynapp.kernels.normal_equations import REGULARISERS, apply_gram, gram, regularisers, solve_normal, working_dtype
from dynapp.segments import fold_segments, segment_view, split_segments

# The kernels' tests reach these through this module.
_REGULARISERS, _bilinear_matrix = REGULARISERS, bilinear_matrix
_PairwiseSimilarity, _RankOneDA = PairwiseSimilarity, RankOneDA

__all__ = [
    "IMPLS", "PWTP", "PWTPImpl", "PWTPOutput", "STATIC_OPTIONS", "check_static", "choose_impl", "project",
    "projection_coefficients", "dynamic_appearance", "temporal_contract", "temporal_weights",
    "relation_descriptor", "upsample_bilinear",
]

# What PWTP does with the static part of DA: "keep" (the paper, Eq. 6) or "remove" (leak-free DA).
STATIC_OPTIONS = ("keep", "remove")


class PWTPOutput(NamedTuple):
    """What :class:`PWTP` returns.

    dynamic:  (N, C, H, W) the dynamic appearance, Eq. 6.
    enopr:    (N,) the per-sample ENoPR, Eq. 7 (average it over the batch for Eq. 8).
    static:   (N, C, H, W) the temporal mean of the projection x^ (static appearance), or None.
    residual: (N, C, T, H, W) the full projection residual p, or None.
    hyperplanes: (N, T*D, h, w) the MLP's output z (Eq. 4 before the upsampling, which has no
              parameters): the last tensor that depends on PWTP's parameters, through which every
              loss reaches them (MGDA-UB and the training diagnostics read it).
    """

    dynamic: torch.Tensor
    enopr: torch.Tensor
    static: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    hyperplanes: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# The projection, DA and ENoPR (Eq. 1, 5-7) as pure functions of a clip x and hyperplanes A.


def _check_pair(x: torch.Tensor, A: torch.Tensor) -> None:
    if x.dim() != 5 or A.dim() != 5:
        raise ValueError(f"expected x of shape (N, C, T, H, W) and A of shape (N, T, D, H, W); "
                         f"got x {tuple(x.shape)} and A {tuple(A.shape)}")
    N, _, T, H, W = x.shape
    if A.shape[0] != N or A.shape[1] != T or A.shape[3:] != (H, W):
        raise ValueError(f"A must have shape ({N}, {T}, D, {H}, {W}) to match x {tuple(x.shape)}; got {tuple(A.shape)}")


def projection_coefficients(
    x: torch.Tensor, A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None
) -> torch.Tensor:
    """Eq. 1: the coefficients ``y = (A^T A)^-1 A^T x``, shape (N, C, D, H, W)."""
    _check_pair(x, A)
    dt = working_dtype(x, A)
    eps, ridge = regularisers(dt, eps, ridge)
    with torch.autocast(x.device.type, enabled=False):
        x, A = x.to(dt), A.to(dt)
        return solve_normal(gram(A), temporal_contract(x, A), eps, ridge)


def project(x: torch.Tensor, A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None) -> torch.Tensor:
    """Eq. 1: the projection ``x^ = A (A^T A)^-1 A^T x`` of every pixel's T-vector.

    x: (N, C, T, H, W), A: (N, T, D, H, W) -> x^ (N, C, T, H, W).  The residual of Eq. 5 is
    ``x - project(x, A)``.  This materialises a clip-sized tensor; :func:`dynamic_appearance`
    gives DA and ENoPR without it.
    """
    y = projection_coefficients(x, A, eps=eps, ridge=ridge)  # (N, C, D, H, W)
    with torch.autocast(x.device.type, enabled=False):
        return torch.einsum("ntdhw,ncdhw->ncthw", A.to(y.dtype), y)


def check_static(static: str) -> bool:
    """Validate a ``static`` option ("keep" or "remove"); True for "remove"."""
    if static not in STATIC_OPTIONS:
        raise ValueError(f"static must be one of {', '.join(map(repr, STATIC_OPTIONS))}; got {static!r}")
    return static == "remove"


def dynamic_appearance(
    x: torch.Tensor, A: torch.Tensor, *, eps: float | None = None, ridge: float | None = None, static: str = "keep"
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
    remove = check_static(static)
    N, C, T, H, W = x.shape
    dt = working_dtype(x, A)
    eps, ridge = regularisers(dt, eps, ridge)
    with torch.autocast(x.device.type, enabled=False):
        x, A = x.to(dt), A.to(dt)
        if A.shape[2] == 1:  # the same arithmetic for D = 1, with a hand-written backward
            return RankOneDA.apply(x, A.squeeze(2), eps, remove)
        G = gram(A)  # (N, D, D, H, W)
        B = temporal_contract(x, A)  # (N, C, D, H, W)
        y = solve_normal(G, B, eps, ridge)  # (N, C, D, H, W), Eq. 1
        a_mean = A.mean(1)  # (N, D, H, W)
        static = (a_mean.unsqueeze(1) * y).sum(2)  # (N, C, H, W) = mean_t x^
        if remove:  # f = m^T G^-1 m = (1 - weight sum) / T, one more D x D solve
            v = solve_normal(G, a_mean.unsqueeze(1), eps, ridge)  # (N, 1, D, H, W)
            f = (a_mean.unsqueeze(1) * v).sum(2)  # (N, 1, H, W)
            da = x.sum(2) * f - static
        else:
            da = x.sum(2) / T - static  # Eq. 5-6
        # Eq. 7: ||x - A y||^2 summed over t, c, h, w = ||x||^2 - sum(2 y.B - y^T G y); exact for any y.
        x_sq = torch.linalg.vector_norm(x.reshape(N, -1), dim=1).square()  # (N,)
        explained = (y * (2 * B - apply_gram(G, y))).reshape(N, -1).sum(1)  # (N,)
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
    dt = working_dtype(A)
    eps, ridge = regularisers(dt, eps, ridge)
    with torch.autocast(A.device.type, enabled=False):
        A = A.to(dt)
        m = A.mean(1)  # (N, D, H, W)
        v = solve_normal(gram(A), m.unsqueeze(1), eps, ridge)  # (N, 1, D, H, W) = G^-1 m
        if remove:
            return -((A - m.unsqueeze(1)) * v).sum(2)  # (N, T, H, W)
        return 1.0 / T - (A * v).sum(2)  # (N, T, H, W)


# ----------------------------------------------------------------------------------------------
# The hyperplane generator (Eq. 2-4).


def relation_descriptor(feat: torch.Tensor) -> torch.Tensor:
    """Eq. 3: pairwise frame similarities at every position.

    feat (N, C', T, h, w) -> u (N, h, w, T(T-1)/2): the Gram matrix of the T feature vectors
    divided by C', upper triangle without the diagonal, row-major (t1 < t2).  This is the
    reference; :func:`dynapp.kernels.pwtp_cpu.relation_descriptor` is the fused CPU version.
    """
    u = PairwiseSimilarity.apply(feat) / feat.shape[1]  # (N, P, h, w)
    return u.permute(0, 2, 3, 1)


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
# The module.


class PWTP(nn.Module):
    """Pixel-Wise Temporal Projection: a clip (N, C, T, H, W) -> dynamic appearance (N, C, H, W).

    Args:
        frames: T, the frames of one segment.
        rank: D, the dimension of the static subspace per pixel (D <= T/2 recommended).
        kernel_size, stride, channels: k, s and C' of the spatial convolution F (Eq. 2).
        expansion: r, the MLP's first expansion ratio.  bottleneck: beta.  blocks: B.
        in_channels: C of the clip.
        static: "keep" (the paper's DA, Eq. 6) or "remove" (leak-free DA, not in the paper): every
            pixel's temporal weights sum to zero, so a static pixel gives DA = 0 for any A.  ENoPR
            (Eq. 7-8), ``.static`` and ``.residual`` are properties of the projection and do not change.
        impl: which code runs, "auto" (default), "reference" or "cpu_fused"; the rule is
            :func:`choose_impl`, and ``last_impl`` (a :class:`PWTPImpl`) says what the last forward
            ran.  The implementations agree to rounding.

    ``forward(x)`` returns a :class:`PWTPOutput` with ``.dynamic`` and ``.enopr``; pass
    ``return_static=True`` / ``return_residual=True`` for the static appearance and the full
    residual.  ``hyperplanes(x)`` returns A (N, T, D, H, W).
    """

    def __init__(self, frames: int = 8, rank: int = 1, kernel_size: int = 9, stride: int = 8, channels: int = 24,
                 expansion: float = 2.0, bottleneck: float = 0.25, blocks: int = 1, in_channels: int = 3,
                 static: str = "keep", impl: str = "auto"):
        super().__init__()
        if frames < 2:
            raise ValueError(f"PWTP needs at least 2 frames per segment, got frames={frames}")
        if not 1 <= rank < frames:
            raise ValueError(f"rank D must satisfy 1 <= D < T={frames}, got rank={rank}")
        check_impl(impl, rank)
        check_static(static)
        self.frames, self.rank, self.in_channels = frames, rank, in_channels
        self.static, self.impl = static, impl
        self.last_impl: PWTPImpl | None = None  # what the last forward ran (not in the state dict)
        pairs = frames * (frames - 1) // 2  # P
        width = max(1, int(round(expansion * pairs)))  # rP
        inner = max(1, int(round(bottleneck * width)))  # beta rP
        # Conv F applied frame by frame: a (1, k, k) 3-D convolution reads the clip in place.
        self.conv = nn.Conv3d(in_channels, channels, (1, kernel_size, kernel_size), stride=(1, stride, stride),
                              padding=(0, kernel_size // 2, kernel_size // 2))
        self.expand = nn.Linear(pairs, width)
        self.blocks = nn.Sequential(*[_Bottleneck(width, inner) for _ in range(blocks)])
        self.head = nn.Linear(width, frames * rank)

    def forward(
        self, x: torch.Tensor, return_static: bool = False, return_residual: bool = False, segments: int = 1
    ) -> PWTPOutput:
        """x: (N, C, T, H, W), or (N, C, S*T, H, W) with ``segments=S``: one output per segment
        (N*S of them, in (n, s) order), as if the segments were folded into the batch, without
        copying the clip on the fused CPU path."""
        split_segments(x, segments, self.frames, self.in_channels)  # the one shape check
        impl = choose_impl(self.impl, x, self.rank, return_residual)  # a few microseconds
        self.last_impl = impl  # what ran, for the caller: a report, not state
        z = self._coarse(x, segments, impl.relation)  # Eq. 2-4 before the upsampling: (N*S, T*D, h, w)
        if impl.projection == "cpu_fused":  # Eq. 1, 5-7 fused; the kernel reads the segments in place
            clip = segment_view(x, segments) if segments > 1 else x  # (N, S, C, T, H, W), a view
            remove = self.static == "remove"
            da, enopr, static = pwtp_cpu.dynamic_appearance_from_coarse(clip, z, return_static, remove)
            return PWTPOutput(da, enopr, static, None, z)
        A = self.upsample(z, x.shape[-2:])  # Eq. 4: (N*S, T, D, H, W)
        x = fold_segments(x, segments)  # (N*S, C, T, H, W)
        da, enopr, static = dynamic_appearance(x, A, static=self.static)  # Eq. 1, 5-7
        residual = x.to(A.dtype) - project(x, A) if return_residual else None  # Eq. 5
        return PWTPOutput(da, enopr, static if return_static else None, residual, z)

    def _coarse(self, x: torch.Tensor, segments: int, relation: str) -> torch.Tensor:
        """Eq. 2-4 before the upsampling: z (N*S, T*D, h, w), in float32 or float64."""
        # Conv F works frame by frame, so it runs on the clip as it is; only its small output is
        # folded (N, C', S*T, h, w) -> (N*S, C', T, h, w).
        feat = fold_segments(self.conv(x), segments)  # Eq. 2
        u = pwtp_cpu.relation_descriptor(feat) if relation == "cpu_fused" else relation_descriptor(feat)  # Eq. 3
        NS, h, w = u.shape[:3]  # u: (N*S, h, w, P)
        z = F.gelu(self.expand(u.reshape(-1, u.shape[-1])))  # Eq. 4, the MLP: (N*S*h*w, rP)
        z = self.head(self.blocks(z))  # (N*S*h*w, T*D)
        z = z.reshape(NS, h, w, self.frames * self.rank).permute(0, 3, 1, 2)  # (N*S, T*D, h, w)
        return z.to(working_dtype(x, z))

    # Views of the same computation.

    def coarse_hyperplanes(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """Eq. 2-4 before the upsampling: the MLP's output z, shape (N*S, T*D, h, w), in float32 or float64."""
        split_segments(x, segments, self.frames, self.in_channels)
        return self._coarse(x, segments, choose_relation(self.impl, x))

    def upsample(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Eq. 4's bilinear upsampling: z (N*S, T*D, h, w), e.g. ``PWTPOutput.hyperplanes``, -> A (N*S, T, D, H, W)."""
        H, W = size
        with torch.autocast(z.device.type, enabled=False):
            A = upsample_bilinear(z, (H, W))  # (N*S, T*D, H, W)
        return A.reshape(z.shape[0], self.frames, self.rank, H, W)

    def hyperplanes(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """Eq. 2-4: A = Upsample(MLP(u)), shape (N*S, T, D, H, W)."""
        return self.upsample(self.coarse_hyperplanes(x, segments), x.shape[-2:])

    def temporal_weights(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        """DA as a per-pixel temporal filter of ``x`` (:func:`temporal_weights`), honouring ``static``.

        (N, C, S*T, H, W) -> (N*S, T, H, W): ``DA[c] = sum_t w[t] x[c, t]`` per segment.
        """
        return temporal_weights(self.hyperplanes(x, segments), static=self.static)

    def extra_repr(self) -> str:
        extra = "" if self.static == "keep" else f", static={self.static!r}"
        extra += "" if self.impl == "auto" else f", impl={self.impl!r}"
        return f"frames={self.frames}, rank={self.rank}{extra}"
