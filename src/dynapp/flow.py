"""Optical flow baselines with OpenCV: TV-L1 and Farneback, on the fly or precomputed.

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

Precomputed flow is stored the way the usual toolboxes store it, quantised to uint8:
``q = round((clip(f, -bound, bound) + bound) * 255 / (2 bound))`` (0 px -> 128), either as one
``.npy`` array ``(F-1, 2, H, W)`` uint8 per video, or as a folder of PNG pairs
``flow_x_00001.png`` / ``flow_y_00001.png`` (1-based, lossless).  :func:`load_flow`
dequantises (error at most ``bound / 255`` px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FLOW_METHODS",
    "to_gray_uint8",
    "flow_tvl1",
    "flow_farneback",
    "video_flow",
    "check_flow_options",
    "flow_to_input",
    "clip_flow",
    "quantise_flow",
    "dequantise_flow",
    "save_flow",
    "load_flow",
    "precompute_flow",
    "precompute_video_flow",
]

# ITU-R BT.601 luma, the weights of cv2.cvtColor(..., COLOR_RGB2GRAY).
_LUMA = (0.299, 0.587, 0.114)


def _cv2():
    import cv2  # imported lazily: OpenCV is only needed when flow is computed

    return cv2


def to_gray_uint8(clip: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Un-normalise an RGB clip and convert it to 8-bit grayscale.

    clip: (..., 3, F, H, W) normalised with ``mean``/``std`` (values in [0, 1] after
    un-normalising) -> numpy uint8 (..., F, H, W).
    """
    if clip.dim() < 4 or clip.shape[-4] != 3:
        raise ValueError(f"expected an RGB clip of shape (..., 3, F, H, W); got {tuple(clip.shape)}")
    x = clip.detach().to("cpu", torch.float32)
    shape = (3, 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    w = torch.tensor(_LUMA, dtype=torch.float32).view(shape)
    gray = ((x * s + m) * w).sum(-4)  # (..., F, H, W) in [0, 1]
    return (gray * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()


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
    N, C, F, H, W = clip.shape
    if C != 3 or F != segments * frames:
        raise ValueError(f"expected a clip of shape (N, 3, S*T={segments}*{frames}={segments * frames}, H, W); got {tuple(clip.shape)}")
    gray = to_gray_uint8(clip).reshape(N * segments, frames, H, W)
    fields = np.stack([video_flow(seg, method, **kwargs) for seg in gray])  # (N*S, T-1, 2, H, W)
    out = flow_to_input(fields, bound).reshape(N, segments, 2 * (frames - 1), H, W)
    return out.transpose(1, 2).contiguous()  # (N, 2*(T-1), S, H, W)


# ----------------------------------------------------------------------------------------------
# Precomputed flow.


def quantise_flow(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Pixels -> uint8: clip to +-bound and map [-bound, bound] linearly onto [0, 255]."""
    f = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint((f + bound) * (255.0 / (2 * bound))).astype(np.uint8)


def dequantise_flow(q: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """uint8 -> pixels (float32), the inverse of :func:`quantise_flow` up to ``bound / 255``."""
    return q.astype(np.float32) * (2 * bound / 255.0) - bound


def save_flow(path: str | Path, flow: np.ndarray, bound: float = 20.0) -> Path:
    """Save flow (F, 2, H, W) pixels quantised to uint8.

    ``path`` ending in ``.npy``: one array (F, 2, H, W) uint8.  Otherwise ``path`` is a folder
    that receives ``flow_x_00001.png``, ``flow_y_00001.png``, ... (1-based).
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow of shape (F, 2, H, W); got {flow.shape}")
    q = quantise_flow(flow, bound)
    path = Path(path)
    if path.suffix == ".npy":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, q)
        return path
    cv2 = _cv2()
    path.mkdir(parents=True, exist_ok=True)
    for i, (qx, qy) in enumerate(q, start=1):
        for name, img in (("x", qx), ("y", qy)):
            if not cv2.imwrite(str(path / f"flow_{name}_{i:05d}.png"), img):
                raise OSError(f"could not write {path / f'flow_{name}_{i:05d}.png'}")
    return path


def load_flow(path: str | Path, bound: float = 20.0) -> np.ndarray:
    """Load flow saved by :func:`save_flow` -> float32 (F, 2, H, W) in pixels."""
    path = Path(path)
    if path.suffix == ".npy":
        q = np.load(path)
        if q.dtype != np.uint8 or q.ndim != 4 or q.shape[1] != 2:
            raise ValueError(f"{path}: expected a uint8 array of shape (F, 2, H, W); got {q.dtype}{q.shape}")
        return dequantise_flow(q, bound)
    cv2 = _cv2()
    xs = sorted(path.glob("flow_x_*.png"))
    if not xs:
        raise ValueError(f"{path}: no flow_x_*.png files")
    fields = []
    for fx in xs:
        fy = fx.with_name(fx.name.replace("flow_x_", "flow_y_"))
        qx, qy = cv2.imread(str(fx), cv2.IMREAD_GRAYSCALE), cv2.imread(str(fy), cv2.IMREAD_GRAYSCALE)
        if qx is None or qy is None:
            raise ValueError(f"{path}: could not read {fx.name} and {fy.name}")
        fields.append(np.stack([qx, qy]))
    return dequantise_flow(np.stack(fields), bound)


def precompute_flow(frames: np.ndarray, path: str | Path, method: str = "tvl1", bound: float = 20.0, **kwargs) -> np.ndarray:
    """Compute a video's flow and save it (see :func:`save_flow`); returns the flow in pixels.

    frames: uint8 RGB (F, H, W, 3) (as PyAV's ``to_ndarray(format="rgb24")`` decodes) or
    grayscale (F, H, W).  Output: float32 (F-1, 2, H, W).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3):
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3) or (F, H, W); got {frames.dtype}{frames.shape}")
    if frames.ndim == 4:
        cv2 = _cv2()
        frames = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    flow = video_flow(frames, method, **kwargs)
    save_flow(path, flow, bound)
    return flow


def precompute_video_flow(
    source: str | Path, path: str | Path, method: str = "tvl1", bound: float = 20.0, short_side: int | None = None, **kwargs
) -> int:
    """Decode a whole video (file or frame folder, via :mod:`dynapp.data.decode`), compute its flow
    between consecutive frames and save it (see :func:`save_flow`).  Returns the number of fields.

    ``short_side`` resizes the frames in the decoder first (flow is usually stored at the
    training resolution, e.g. 256).
    """
    from dynapp.data.decode import open_video

    check_flow_options(method, **kwargs)
    with open_video(source) as video:
        if video.num_frames < 2:
            raise ValueError(f"{source}: flow needs at least 2 frames, the video has {video.num_frames}")
        frames = video.read(list(range(video.num_frames)), short_side=short_side)  # (3, F, H, W) uint8
    rgb = np.ascontiguousarray(frames.permute(1, 2, 3, 0).numpy())  # (F, H, W, 3)
    return len(precompute_flow(rgb, path, method, bound, **kwargs))
