"""The per-pixel D x D normal equations of Eq. 1, vectorised over pixels, and their precision.

Every pixel has its own small system ``(A^T A) y = A^T x`` (D x D, D = 1 by default).  Written as
explicit products and an unrolled Cholesky factorisation over (N, H, W) tensors: faster than
batched LAPACK calls on hundreds of thousands of tiny systems, and differentiable by plain
autograd.  They are solved in float32, or float64 where an input is float64 (also under
autocast), with the regularisers of :data:`REGULARISERS`.
"""

from __future__ import annotations

import torch

__all__ = ["REGULARISERS", "apply_gram", "gram", "regularisers", "solve_normal", "working_dtype"]

# Regularisers (eps, ridge) of A^T A by working precision: eps keeps zero columns finite, ridge
# (relative to tr(A^T A) / D, D > 1) equal ones.  A few ulps each: a well-conditioned projection is
# exact to working precision.
REGULARISERS = {torch.float32: (1e-6, 1e-6), torch.float64: (1e-12, 1e-12)}


def working_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: the precision of the projection."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def regularisers(dt: torch.dtype, eps: float | None, ridge: float | None) -> tuple[float, float]:
    """(eps, ridge) for working precision ``dt``; a value given (not None) wins."""
    e, r = REGULARISERS[dt]
    return (e if eps is None else eps), (r if ridge is None else ridge)


def gram(A: torch.Tensor) -> torch.Tensor:
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


def apply_gram(G: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``G y``: G (N, D, D, H, W), y (N, C, D, H, W) -> (N, C, D, H, W)."""
    D = G.shape[1]
    if D == 1:
        return G[:, :, 0].unsqueeze(1) * y
    return torch.stack([sum(G[:, d, e].unsqueeze(1) * y[:, :, e] for e in range(D)) for d in range(D)], 2)


def solve_normal(G: torch.Tensor, B: torch.Tensor, eps: float, ridge: float) -> torch.Tensor:
    """Solve the regularised per-pixel normal equations ``G~ y = B``.

    G: (N, D, D, H, W) symmetric positive semi-definite, B: (N, C, D, H, W) -> y (N, C, D, H, W).
    D = 1: ``G~ = G + eps``, a division.  D > 1: ``G~ = G + (ridge * tr(G) / D + eps) I``, an
    unrolled Cholesky factorisation (pivots clamped at eps), so zero or equal columns of A give
    finite outputs and gradients.
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
