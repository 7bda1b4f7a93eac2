"""The dynamic image: approximate rank pooling of each segment (Bilen et al., CVPR 2016)."""

from __future__ import annotations

import torch

from dynapp.representations.base import Representation, RepresentationOutput

__all__ = ["DynamicImage", "dynamic_image", "rank_pool_weights"]


def rank_pool_weights(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Approximate rank pooling weights (Bilen et al., "Dynamic Image Networks", CVPR 2016).

    ``alpha_t = sum_{i=t..n} (2i - n - 1) / i`` for ``t = 1..n``, i.e.
    ``2(n - t + 1) - (n + 1)(H_n - H_{t-1})`` with ``H`` the harmonic numbers.  The weights sum
    to zero (``sum_t alpha_t = sum_i (2i - n - 1) = 0``), so a static clip pools to zero.
    (A widely copied port uses ``(2i - n) / i``, whose weights do not sum to zero.)
    """
    if n < 1:
        raise ValueError(f"rank pooling needs at least 1 frame, got n={n}")
    i = torch.arange(1, n + 1, dtype=torch.float64)
    terms = (2 * i - n - 1) / i
    # Reverse cumulative sum: alpha_t = sum of terms[t-1:].
    alpha = terms.flip(0).cumsum(0).flip(0)
    return alpha.to(dtype=dtype, device=device)


def dynamic_image(frames: torch.Tensor, dim: int = 2, normalise: bool = True) -> torch.Tensor:
    """Approximate rank pooling of ``frames`` along ``dim`` (Bilen et al., CVPR 2016).

    ``sum_t alpha_t x_t`` with :func:`rank_pool_weights`; the dimension is reduced.  With
    ``normalise=True`` the weights are divided by half their L1 norm, so the positive weights
    sum to 1 and the negative ones to -1: the dynamic image is then a weighted mean of the
    later frames minus a weighted mean of the earlier ones, in the units of the input (the
    range of a frame difference), instead of growing like T^2.  A fixed linear scale keeps a
    static clip at exactly zero (the paper's per-image min-max rescaling to [0, 255] would
    divide by zero there, and a normalised clip needs no further offset).
    """
    T = frames.shape[dim]
    alpha = rank_pool_weights(T, dtype=torch.float64)
    if normalise and T > 1:
        alpha = alpha / (alpha.abs().sum() / 2)
    alpha = alpha.to(dtype=frames.dtype, device=frames.device)
    shape = [1] * frames.dim()
    shape[dim] = T
    return (frames * alpha.view(shape)).sum(dim)


class DynamicImage(Representation):
    """One dynamic image per segment (approximate rank pooling), (N, C, S, H, W); see :func:`dynamic_image`."""

    name = "dynamic_image"

    def __init__(self, segments: int, frames: int, in_channels: int = 3, normalise: bool = True):
        super().__init__(segments, frames, in_channels)
        self.normalise = normalise

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        x = self._split(clip)  # (N, C, S, T, H, W)
        return RepresentationOutput(dynamic_image(x, dim=3, normalise=self.normalise))  # (N, C, S, H, W)
