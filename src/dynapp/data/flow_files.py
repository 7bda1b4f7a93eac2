"""Precomputed optical flow: the file format and the precompute tool (``dynapp precompute-flow``).

Flow is stored the way the usual toolboxes store it, quantised to uint8:
``q = round((clip(f, -bound, bound) + bound) * 255 / (2 bound))`` (0 px -> 128), either as one
``.npy`` array ``(F-1, 2, H, W)`` uint8 per video, or as a folder of PNG pairs
``flow_x_00001.png`` / ``flow_y_00001.png`` (1-based, lossless).  :func:`load_flow`
dequantises (error at most ``bound / 255`` px).  The flow itself (OpenCV TV-L1 or Farneback)
is computed by :mod:`dynapp.representations.flow`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dynapp.data.decode import open_video
from dynapp.representations.flow import check_flow_options, video_flow

__all__ = ["dequantise_flow", "load_flow", "precompute_flow", "precompute_video_flow", "quantise_flow", "save_flow"]


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
    check_flow_options(method, **kwargs)
    with open_video(source) as video:
        if video.num_frames < 2:
            raise ValueError(f"{source}: flow needs at least 2 frames, the video has {video.num_frames}")
        frames = video.read(list(range(video.num_frames)), short_side=short_side)  # (3, F, H, W) uint8
    rgb = np.ascontiguousarray(frames.permute(1, 2, 3, 0).numpy())  # (F, H, W, 3)
    return len(precompute_flow(rgb, path, method, bound, **kwargs))
