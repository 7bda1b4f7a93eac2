"""Write small videos with PyAV (tests, benchmarks, synthetic data): frames in, a file out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_video", "ramp_frames"]

_DEFAULT_PIX_FMT = {"libx264": "yuv420p", "mpeg4": "yuv420p", "libx265": "yuv420p", "ffv1": "yuv444p",
                    "png": "rgb24", "mjpeg": "yuvj420p"}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fps: int = 25,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) RGB or (T, H, W) gray uint8 into ``path``.

    The container follows the extension (``.mp4``, ``.avi``, ``.mkv``, ...).  ``libx264`` and
    ``libx265`` need even H and W with 4:2:0 pixel formats; use ``pix_fmt="yuv444p"`` (x264)
    or ``codec="ffv1"`` / ``"png"`` for odd sizes.
    """
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    gray = frames.ndim == 3
    path = Path(path)
    opts = dict(options or {})
    if codec == "libx265":
        opts.setdefault("x265-params", "log-level=none")
    if codec == "libx264" and "mbtree" not in opts.get("x264-params", ""):
        # x264's macroblock tree (rate control over the lookahead) gave different bytes for the same
        # small noisy frames in about one write in four (measured on 32x32 clips; threads made no
        # difference).  Generated test and benchmark videos must be the same on every run.
        opts["x264-params"] = ":".join(filter(None, [opts.get("x264-params", ""), "mbtree=0"]))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt or _DEFAULT_PIX_FMT.get(codec, "yuv420p")
        stream.options = opts
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="gray" if gray else "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ramp_frames(num_frames: int, height: int, width: int, *, step: int = 8, base: int = 16) -> np.ndarray:
    """(T, H, W, 3) frames whose frame ``t`` is uniformly grey ``base + step * t`` (mod 240),
    so a decoded frame's index can be read off its mean (lossy codecs keep flat frames exact
    to a few levels)."""
    t = np.arange(num_frames)
    levels = (base + step * t) % 240
    out = np.repeat(levels[:, None, None, None], 3, axis=3) * np.ones((1, height, width, 1))
    return out.astype(np.uint8)
