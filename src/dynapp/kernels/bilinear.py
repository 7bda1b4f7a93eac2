"""Eq. 4's bilinear upsampling (align_corners=False, PyTorch's rule) as dense matrix products.

Equal to ``F.interpolate``, and about 3x cheaper to differentiate on the CPU; the interpolation
matrices are cached per size, device and dtype.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["bilinear_matrix", "upsample_bilinear", "upsample_width"]


@functools.lru_cache(maxsize=32)
def bilinear_matrix(n_in: int, n_out: int, device: str, dtype: torch.dtype) -> torch.Tensor:
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
    Uh = bilinear_matrix(h, H, str(z.device), z.dtype)
    Uw = bilinear_matrix(w, W, str(z.device), z.dtype)
    # The big product last, flattened to one GEMM (N*T*H, w) @ (w, W) rather than a batched one.
    return torch.matmul(torch.matmul(Uh, z), Uw.t())


def upsample_width(z: torch.Tensor, W: int) -> torch.Tensor:
    """The width half of :func:`upsample_bilinear`: z (..., h, w) -> (..., h, W), contiguous, one GEMM."""
    z = z.contiguous()
    Uw = bilinear_matrix(z.shape[-1], W, str(z.device), z.dtype)  # (W, w)
    return (z.view(-1, z.shape[-1]) @ Uw.t()).view(*z.shape[:-1], W)
