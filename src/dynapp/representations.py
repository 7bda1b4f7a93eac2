"""Video representations: a clip of S segments x T frames -> the frames a backbone classifies.

Every representation takes a normalised clip ``(N, C, S*T, H, W)`` (torchvision's video layout,
ImageNet mean/std, S segments of T consecutive frames each) and returns a
:class:`RepresentationOutput` whose ``frames`` are ``(N, C_out, S_out, H, W)``; ``aux_loss`` is
a scalar where the representation has its own objective (ENoPR for DA) and None otherwise.
Each module carries ``out_channels`` (C_out) and ``out_frames`` (S_out).

=================  ====================  ========  =============================================
name               C_out                 S_out     what
=================  ====================  ========  =============================================
``rgb``            C                     S         centre frame of each segment (index T // 2)
``rgb`` all_frames C                     S*T       the clip itself, for 3-D backbones
``rgb_diff``       C*(T-1)               S         TSN: stacked consecutive differences
``dynamic_image``  C                     S         approximate rank pooling (Bilen et al.)
``flow_tvl1``      2*(T-1)               S         OpenCV TV-L1 optical flow, stacked x/y
``flow_farneback`` 2*(T-1)               S         OpenCV Farneback optical flow, stacked x/y
``flow_tvnet``     2*(T-1)               S         TVNet (learnable unrolled TV-L1), stacked x/y
``pwtp``           C                     S         Dynamic Appearance (Huang and Bors), + ENoPR
=================  ====================  ========  =============================================

``frames`` may be a strided view of the clip (e.g. ``rgb`` and ``pwtp`` return
``permute``/slice views rather than copies): backbones should use ``reshape`` (not ``view``).

``REPRESENTATIONS`` maps each name to a builder; :func:`build_representation` is the one entry
point.  ``all_frames`` only changes ``rgb`` (every other representation already yields one
frame per segment, so it is accepted and ignored there).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import nn

from dynapp.pwtp import PWTP

__all__ = [
    "RepresentationOutput",
    "REPRESENTATIONS",
    "build_representation",
    "split_segments",
    "centre_frames",
    "rgb_difference",
    "rank_pool_weights",
    "dynamic_image",
    "RGB",
    "RGBDifference",
    "DynamicImage",
    "OpticalFlow",
    "TVNetFlow",
    "DynamicAppearance",
]


class RepresentationOutput(NamedTuple):
    """What every representation returns.

    frames:   (N, C_out, S_out, H, W) the input of the backbone.
    aux_loss: a scalar auxiliary loss (ENoPR averaged over all segments for ``pwtp``, Eq. 8),
              or None.
    """

    frames: torch.Tensor
    aux_loss: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# Pure functions.


def split_segments(clip: torch.Tensor, segments: int, frames: int, in_channels: int | None = None) -> torch.Tensor:
    """View a clip (N, C, S*T, H, W) as (N, C, S, T, H, W), checking its shape.

    Raises ValueError naming the expected shape when the clip is not 5-D, the channel count is
    not ``in_channels`` (if given) or the frame count is not ``segments * frames``.
    """
    c = "C" if in_channels is None else str(in_channels)
    expected = f"(N, {c}, S*T={segments}*{frames}={segments * frames}, H, W)"
    if clip.dim() != 5:
        raise ValueError(f"expected a clip of shape {expected}; got {tuple(clip.shape)}")
    N, C, F, H, W = clip.shape
    if (in_channels is not None and C != in_channels) or F != segments * frames:
        raise ValueError(f"expected a clip of shape {expected}; got {tuple(clip.shape)}")
    return clip.unflatten(2, (segments, frames))  # splitting one dim is always a view


def centre_frames(clip: torch.Tensor, segments: int, frames: int) -> torch.Tensor:
    """The centre frame (index ``T // 2``) of each segment: (N, C, S*T, H, W) -> (N, C, S, H, W).

    A strided view of the clip, no copy.  For even T this is the later of the two middle frames.
    """
    split_segments(clip, segments, frames)
    return clip[:, :, frames // 2 :: frames]


def rgb_difference(clip: torch.Tensor, segments: int, frames: int) -> torch.Tensor:
    """TSN's RGB difference (Wang et al., ECCV 2016): stacked consecutive frame differences.

    (N, C, S*T, H, W) -> (N, (T-1)*C, S, H, W); channel ``t*C + c`` is ``x[t+1, c] - x[t, c]``
    within each segment (time-major, as TSN stacks them).  On a normalised clip this is the
    difference of raw frames divided by the per-channel std (the mean cancels).
    """
    if frames < 2:
        raise ValueError(f"rgb_diff needs at least 2 frames per segment, got frames={frames}")
    x = split_segments(clip, segments, frames)  # (N, C, S, T, H, W)
    N, C, S, T, H, W = x.shape
    d = x[:, :, :, 1:] - x[:, :, :, :-1]  # (N, C, S, T-1, H, W)
    return d.permute(0, 3, 1, 2, 4, 5).reshape(N, (T - 1) * C, S, H, W)


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


# ----------------------------------------------------------------------------------------------
# Modules.


class _Representation(nn.Module):
    """Common shape bookkeeping: ``segments``, ``frames``, ``in_channels``, ``out_channels``, ``out_frames``."""

    def __init__(self, segments: int, frames: int, in_channels: int, out_channels: int, out_frames: int):
        super().__init__()
        if segments < 1 or frames < 1:
            raise ValueError(f"segments and frames must be positive, got segments={segments}, frames={frames}")
        self.segments, self.frames, self.in_channels = segments, frames, in_channels
        self.out_channels, self.out_frames = out_channels, out_frames

    def _split(self, clip: torch.Tensor) -> torch.Tensor:
        return split_segments(clip, self.segments, self.frames, self.in_channels)  # (N, C, S, T, H, W)

    def extra_repr(self) -> str:
        return (
            f"segments={self.segments}, frames={self.frames}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, out_frames={self.out_frames}"
        )


class RGB(_Representation):
    """The centre frame of each segment (N, C, S, H, W), or with ``all_frames`` the whole clip (N, C, S*T, H, W)."""

    def __init__(self, segments: int, frames: int, in_channels: int = 3, all_frames: bool = False):
        super().__init__(segments, frames, in_channels, in_channels, segments * frames if all_frames else segments)
        self.all_frames = all_frames

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        self._split(clip)
        if self.all_frames:
            return RepresentationOutput(clip)
        return RepresentationOutput(clip[:, :, self.frames // 2 :: self.frames])  # (N, C, S, H, W)


class RGBDifference(_Representation):
    """TSN's stacked RGB differences, (N, C*(T-1), S, H, W); see :func:`rgb_difference`."""

    def __init__(self, segments: int, frames: int, in_channels: int = 3):
        if frames < 2:
            raise ValueError(f"rgb_diff needs at least 2 frames per segment, got frames={frames}")
        super().__init__(segments, frames, in_channels, in_channels * (frames - 1), segments)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        self._split(clip)
        return RepresentationOutput(rgb_difference(clip, self.segments, self.frames))


class DynamicImage(_Representation):
    """One dynamic image per segment (approximate rank pooling), (N, C, S, H, W); see :func:`dynamic_image`."""

    def __init__(self, segments: int, frames: int, in_channels: int = 3, normalise: bool = True):
        if frames < 2:
            raise ValueError(f"dynamic_image needs at least 2 frames per segment, got frames={frames}")
        super().__init__(segments, frames, in_channels, in_channels, segments)
        self.normalise = normalise

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        x = self._split(clip)  # (N, C, S, T, H, W)
        return RepresentationOutput(dynamic_image(x, dim=3, normalise=self.normalise))  # (N, C, S, H, W)


class DynamicAppearance(_Representation):
    """Dynamic Appearance (Huang and Bors, AAAI 2023): PWTP on every segment at once.

    The S segments are treated as N*S samples (``PWTP(clip, segments=S)``), so one PWTP call (and
    one BatchNorm batch in its MLP) covers all N*S segments.  On the CPU (fused kernel) the clip
    is never copied: conv F runs on it as it is and the kernel reads each segment in place; the
    PyTorch path folds (N, C, S*T, H, W) -> (N*S, C, T, H, W), which copies the clip when N and S
    are both > 1 (C sits between N and S).  A 2-D backbone's
    ``frames.transpose(1, 2).reshape(N*S, C, H, W)`` is again a view.
    Output: DA frames (N, C, S, H, W) (a permuted view) and
    ``aux_loss`` = ENoPR averaged over all N*S segments (Eq. 8).  ``kwargs`` go to
    :class:`dynapp.PWTP` (rank, kernel_size, stride, channels, ...); the module is ``.pwtp``.
    """

    def __init__(self, segments: int, frames: int, in_channels: int = 3, **kwargs):
        if frames < 2:
            raise ValueError(f"pwtp needs at least 2 frames per segment, got frames={frames}")
        super().__init__(segments, frames, in_channels, in_channels, segments)
        self.pwtp = PWTP(frames=frames, in_channels=in_channels, **kwargs)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        x = self._split(clip)  # (N, C, S, T, H, W)
        N, C, S, T, H, W = x.shape
        out = self.pwtp(x.flatten(2, 3), segments=S)  # PWTP folds the segments itself
        da = out.dynamic.reshape(N, S, C, H, W).transpose(1, 2)  # (N, C, S, H, W), a view
        return RepresentationOutput(da, out.enopr.mean())


class OpticalFlow(_Representation):
    """Optical flow within each segment (OpenCV, not differentiable), stacked x/y: (N, 2*(T-1), S, H, W).

    The T frames of a segment give T-1 flow fields between consecutive frames; channel
    ``2t`` is the x (horizontal) and ``2t + 1`` the y (vertical) displacement from frame t to
    t+1, clipped to +-``bound`` pixels and divided by ``bound`` (values in [-1, 1]).  Computed
    under ``torch.no_grad`` on the CPU and moved to the clip's device.  See :mod:`dynapp.flow`.
    """

    def __init__(self, segments: int, frames: int, in_channels: int = 3, method: str = "tvl1", bound: float = 20.0, **kwargs):
        if frames < 2:
            raise ValueError(f"flow needs at least 2 frames per segment, got frames={frames}")
        if in_channels != 3:
            raise ValueError(f"flow is computed from RGB clips (in_channels=3), got in_channels={in_channels}")
        from dynapp.flow import check_flow_options

        check_flow_options(method, **kwargs)
        super().__init__(segments, frames, in_channels, 2 * (frames - 1), segments)
        self.method, self.bound, self.flow_kwargs = method, bound, kwargs

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        self._split(clip)
        from dynapp.flow import clip_flow  # OpenCV is imported only when flow is used

        with torch.no_grad():
            out = clip_flow(clip, self.segments, self.frames, method=self.method, bound=self.bound, **self.flow_kwargs)
        return RepresentationOutput(out.to(device=clip.device, dtype=clip.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", method={self.method!r}, bound={self.bound}"


class TVNetFlow(_Representation):
    """TVNet flow (learnable unrolled TV-L1, Fan et al. CVPR 2018) within each segment: (N, 2*(T-1), S, H, W).

    The same layout and scaling as :class:`OpticalFlow` (x/y per consecutive pair, clipped to
    +-``bound`` px, divided by ``bound``) but differentiable end to end; the module is
    ``.tvnet`` (trainable stencils and tau, lambda, theta).  ``kwargs`` go to
    :class:`dynapp.tvnet.TVNet` (scales, warps, iterations, ...).
    """

    def __init__(self, segments: int, frames: int, in_channels: int = 3, bound: float = 20.0, **kwargs):
        from dynapp.tvnet import TVNet

        if frames < 2:
            raise ValueError(f"flow needs at least 2 frames per segment, got frames={frames}")
        if in_channels != 3:
            raise ValueError(f"flow is computed from RGB clips (in_channels=3), got in_channels={in_channels}")
        super().__init__(segments, frames, in_channels, 2 * (frames - 1), segments)
        self.bound = bound
        self.tvnet = TVNet(**kwargs)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        from dynapp.tvnet import normalised_to_gray255

        x = self._split(clip)  # (N, C, S, T, H, W)
        N, C, S, T, H, W = x.shape
        gray = normalised_to_gray255(clip).reshape(N * S, T, H, W)
        i0 = gray[:, :-1].reshape(-1, 1, H, W)  # (N*S*(T-1), 1, H, W)
        i1 = gray[:, 1:].reshape(-1, 1, H, W)
        u1, u2 = self.tvnet(i0, i1)
        flow = torch.cat([u1, u2], 1).clamp(-self.bound, self.bound) / self.bound  # (N*S*(T-1), 2, H, W)
        flow = flow.reshape(N, S, 2 * (T - 1), H, W).transpose(1, 2)  # (N, 2*(T-1), S, H, W)
        return RepresentationOutput(flow.to(clip.dtype))


# ----------------------------------------------------------------------------------------------
# Builders.


def _rgb(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return RGB(segments, frames, in_channels, all_frames=all_frames, **kwargs)


def _rgb_diff(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return RGBDifference(segments, frames, in_channels, **kwargs)


def _dynamic_image(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return DynamicImage(segments, frames, in_channels, **kwargs)


def _flow_tvl1(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return OpticalFlow(segments, frames, in_channels, method="tvl1", **kwargs)


def _flow_farneback(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return OpticalFlow(segments, frames, in_channels, method="farneback", **kwargs)


def _flow_tvnet(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return TVNetFlow(segments, frames, in_channels, **kwargs)


def _pwtp(*, segments, frames, in_channels=3, all_frames=False, **kwargs):
    return DynamicAppearance(segments, frames, in_channels, **kwargs)


REPRESENTATIONS: dict[str, Callable[..., nn.Module]] = {
    "rgb": _rgb,
    "rgb_diff": _rgb_diff,
    "dynamic_image": _dynamic_image,
    "flow_tvl1": _flow_tvl1,
    "flow_farneback": _flow_farneback,
    "flow_tvnet": _flow_tvnet,
    "pwtp": _pwtp,
}


def build_representation(
    name: str, *, segments: int, frames: int, in_channels: int = 3, all_frames: bool = False, **kwargs
) -> nn.Module:
    """Build the representation ``name`` (a key of :data:`REPRESENTATIONS`).

    ``segments`` (S) and ``frames`` (T) fix the clip length S*T; ``all_frames`` only affects
    ``rgb``; ``kwargs`` go to the representation (e.g. ``rank`` for ``pwtp``, ``bound`` for
    the flows).
    """
    if name not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {name!r}; choose from {', '.join(REPRESENTATIONS)}")
    return REPRESENTATIONS[name](segments=segments, frames=frames, in_channels=in_channels, all_frames=all_frames, **kwargs)
