"""Optical flow baselines with OpenCV: TV-L1 and Farneback, computed on the fly.

Flow is one of the representations Dynamic Appearance is compared against (Huang and Bors,
AAAI 2023).  Both methods run on 8-bit grayscale frames through OpenCV, so they are not
differentiable: the representation computes them under ``torch.no_grad`` on the CPU.

* TV-L1 (Zach, Pock and Bischof 2007): ``cv2.optflow.DualTVL1OpticalFlow_create`` with
  OpenCV's defaults (tau=0.25, lambda=0.15, theta=0.3, 5 scales, 5 warps, epsilon=0.01,
  30 inner x 10 outer iterations, scale step 0.8, median filter 5), as the usual
  flow-extraction tools use.
* Farneback (2003): ``cv2.calcOpticalFlowFarneback`` with OpenCV's documented example
  settings (pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2).

A flow field is ``(2, H, W)`` float32 in pixels: channel 0 is x (positive = rightwards),
channel 1 is y (positive = downwards), the displacement from frame t to frame t+1.

As a network input a field is clipped to +-``bound`` pixels (20 by default, as TSN's
toolchain) and divided by ``bound`` (values in [-1, 1]).  Per segment of T frames the T-1
fields are stacked x/y, time-major: channels ``(x_1, y_1, x_2, y_2, ...)``, 2*(T-1) of them.

The file format of precomputed flow and the precompute tool are in :mod:`dynapp.data.flow_files`.

:class:`OpticalFlow` (``flow_tvl1``, ``flow_farneback``) is the representation; grayscale
conversion (:func:`normalised_to_gray255`, BT.601 luma) is shared with TVNet.
"""

from __future__ import annotations

import numpy as np
import torch

from dynapp.imagenet import IMAGENET_MEAN, IMAGENET_STD
from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.segments import split_segments, unfold_segments

__all__ = [
    "FLOW_METHODS",
    "FarnebackFlow",
    "OpticalFlow",
    "TVL1Flow",
    "check_flow_options",
    "clip_flow",
    "flow_farneback",
    "flow_to_input",
    "flow_tvl1",
    "normalised_to_gray255",
    "to_gray_uint8",
    "video_flow",
]

# ITU-R BT.601 luma, the weights of cv2.cvtColor(..., COLOR_RGB2GRAY).
_LUMA = (0.299, 0.587, 0.114)


def _cv2():
    import cv2  # imported lazily: building any model imports this file, flow alone needs OpenCV

    return cv2


def normalised_to_gray255(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Un-normalise an RGB clip and take its BT.601 luma, differentiably.

    clip: (..., 3, F, H, W) normalised with ``mean``/``std`` -> (..., F, H, W) in [0, 255].
    """
    if clip.dim() < 4 or clip.shape[-4] != 3:
        raise ValueError(f"expected an RGB clip of shape (..., 3, F, H, W); got {tuple(clip.shape)}")
    shape = (3, 1, 1, 1)
    m = clip.new_tensor(mean).view(shape)
    s = clip.new_tensor(std).view(shape)
    w = clip.new_tensor(_LUMA).view(shape)
    return ((clip * s + m) * w).sum(-4) * 255


def to_gray_uint8(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Un-normalise an RGB clip and convert it to 8-bit grayscale.

    clip: (..., 3, F, H, W) normalised with ``mean``/``std`` (values in [0, 1] after
    un-normalising) -> numpy uint8 (..., F, H, W).
    """
    gray = normalised_to_gray255(clip.detach().to("cpu", torch.float32), mean, std)  # (..., F, H, W)
    return gray.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _check_pair(prev: np.ndarray, nxt: np.ndarray) -> None:
    if prev.dtype != np.uint8 or nxt.dtype != np.uint8 or prev.ndim != 2 or prev.shape != nxt.shape:
        raise ValueError(
            f"flow needs two uint8 grayscale frames of the same (H, W) shape; got {prev.dtype}{prev.shape} "
            f"and {nxt.dtype}{nxt.shape}"
        )


def _tvl1_solver(**kwargs):
    return _cv2().optflow.DualTVL1OpticalFlow_create(**kwargs)


def flow_tvl1(prev: np.ndarray, nxt: np.ndarray, solver=None, **kwargs) -> np.ndarray:
    """TV-L1 flow from ``prev`` to ``nxt`` (uint8 (H, W)) -> float32 (2, H, W), x then y, in pixels.

    ``solver`` is a ``cv2.optflow.DualTVL1OpticalFlow`` to reuse; otherwise one is created with
    ``kwargs`` (OpenCV's names: tau, lambda_, theta, nscales, warps, epsilon, innnerIterations,
    outerIterations, scaleStep, gamma, medianFiltering).
    """
    _check_pair(prev, nxt)
    solver = solver if solver is not None else _tvl1_solver(**kwargs)
    flow = solver.calc(prev, nxt, None)  # (H, W, 2)
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def flow_farneback(prev: np.ndarray, nxt: np.ndarray, **kwargs) -> np.ndarray:
    """Farneback flow from ``prev`` to ``nxt`` (uint8 (H, W)) -> float32 (2, H, W), x then y, in pixels.

    ``kwargs`` override OpenCV's example settings (pyr_scale, levels, winsize, iterations,
    poly_n, poly_sigma, flags).
    """
    _check_pair(prev, nxt)
    p = {**_FARNEBACK, **kwargs}
    flow = _cv2().calcOpticalFlowFarneback(
        prev, nxt, None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"]
    )
    return np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)


FLOW_METHODS = {"tvl1": flow_tvl1, "farneback": flow_farneback}
_TVL1_KWARGS = {
    "tau", "lambda_", "theta", "nscales", "warps", "epsilon", "innnerIterations", "outerIterations",
    "scaleStep", "gamma", "medianFiltering",
}


def check_flow_options(method: str, **kwargs) -> None:
    """Raise ValueError for an unknown method or option name (before any flow is computed)."""
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose from {', '.join(FLOW_METHODS)}")
    known = _TVL1_KWARGS if method == "tvl1" else set(_FARNEBACK)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown {method} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def video_flow(frames: np.ndarray, method: str = "tvl1", **kwargs) -> np.ndarray:
    """Flow between consecutive frames: uint8 (F, H, W) grayscale -> float32 (F-1, 2, H, W) pixels."""
    check_flow_options(method, **kwargs)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected grayscale frames of shape (F >= 2, H, W); got {frames.shape}")
    if method == "tvl1":
        solver = _tvl1_solver(**kwargs)  # one solver for the whole video
        fields = [flow_tvl1(frames[i], frames[i + 1], solver=solver) for i in range(len(frames) - 1)]
    else:
        fields = [flow_farneback(frames[i], frames[i + 1], **kwargs) for i in range(len(frames) - 1)]
    return np.stack(fields)


def flow_to_input(flow: torch.Tensor | np.ndarray, bound: float = 20.0) -> torch.Tensor:
    """Clip flow to +-``bound`` pixels and scale it to [-1, 1] (float32 tensor, same shape)."""
    f = torch.as_tensor(flow, dtype=torch.float32)
    return f.clamp(-bound, bound) / bound


def clip_flow(clip: torch.Tensor, segments: int, frames: int, method: str = "tvl1", bound: float = 20.0, **kwargs) -> torch.Tensor:
    """On-the-fly flow of a normalised RGB clip, stacked per segment.

    clip (N, 3, S*T, H, W) -> float32 CPU tensor (N, 2*(T-1), S, H, W): for each segment the
    T-1 flow fields between its consecutive frames, channels (x_1, y_1, ..., x_{T-1}, y_{T-1}),
    clipped to +-``bound`` px and divided by ``bound``.  ``kwargs`` go to the OpenCV method.
    """
    split_segments(clip, segments, frames, 3)
    H, W = clip.shape[-2:]
    gray = to_gray_uint8(clip).reshape(-1, frames, H, W)  # (N*S, T, H, W): with no channel axis, folding is a reshape
    fields = np.stack([video_flow(seg, method, **kwargs) for seg in gray])  # (N*S, T-1, 2, H, W)
    out = flow_to_input(fields, bound).reshape(-1, 2 * (frames - 1), H, W)  # (N*S, 2*(T-1), H, W)
    return unfold_segments(out, segments).contiguous()  # (N, 2*(T-1), S, H, W)


# ----------------------------------------------------------------------------------------------
# The representation.


class OpticalFlow(Representation):
    """Optical flow within each segment (OpenCV, not differentiable), stacked x/y: (N, 2*(T-1), S, H, W).

    The T frames of a segment give T-1 flow fields between consecutive frames; channel
    ``2t`` is the x (horizontal) and ``2t + 1`` the y (vertical) displacement from frame t to
    t+1, clipped to +-``bound`` pixels and divided by ``bound`` (values in [-1, 1]).  Computed
    under ``torch.no_grad`` on the CPU and moved to the clip's device.
    """

    name = "flow"
    differentiable = False
    countable = False  # OpenCV, outside PyTorch

    @classmethod
    def channels_per_frame(cls, in_channels: int, frames: int) -> int:
        return 2 * (frames - 1)

    def __init__(self, segments: int, frames: int, in_channels: int = 3, method: str = "tvl1", bound: float = 20.0, **kwargs):
        if in_channels != 3:
            raise ValueError(f"flow is computed from RGB clips (in_channels=3), got in_channels={in_channels}")
        super().__init__(segments, frames, in_channels)
        check_flow_options(method, **kwargs)
        self.method, self.bound, self.flow_kwargs = method, bound, kwargs

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        self._split(clip)
        with torch.no_grad():
            out = clip_flow(clip, self.segments, self.frames, method=self.method, bound=self.bound, **self.flow_kwargs)
        return RepresentationOutput(out.to(device=clip.device, dtype=clip.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", method={self.method!r}, bound={self.bound}"


class TVL1Flow(OpticalFlow):
    """``flow_tvl1``: :class:`OpticalFlow` with OpenCV's TV-L1."""

    def __init__(self, segments: int, frames: int, in_channels: int = 3, bound: float = 20.0, **kwargs):
        super().__init__(segments, frames, in_channels, method="tvl1", bound=bound, **kwargs)


class FarnebackFlow(OpticalFlow):
    """``flow_farneback``: :class:`OpticalFlow` with OpenCV's Farneback."""

    def __init__(self, segments: int, frames: int, in_channels: int = 3, bound: float = 20.0, **kwargs):
        super().__init__(segments, frames, in_channels, method="farneback", bound=bound, **kwargs)
