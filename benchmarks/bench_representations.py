"""Milliseconds per clip to produce each representation from the same decoded clip (CPU).

Setting: S = 1 segment of T = 8 frames, 224 x 224, batch 1, CPU, one process.  The
clip is decoded once -- synthetic by default (a smooth random texture panning 1.5 px/frame
right and 1 px/frame down, with a bright square moving 3 px/frame left across it; uint8 RGB as
PyAV decodes), or the first S*T frames of ``--video`` decoded with PyAV and resized -- then
normalised with the ImageNet mean/std into the (1, 3, S*T, H, W) clip every representation
receives.  Each representation is built with ``build_representation`` and timed as a forward
under ``torch.no_grad`` (eval mode), which for the flows includes un-normalising to uint8
grayscale and OpenCV's flow for the T-1 consecutive pairs.  DA is the ``pwtp``
representation with PWTP's defaults (D=1, k=9, s=8, C'=24); TVNet is ``flow_tvnet`` with its
defaults (TVNet-50: 1 scale, 1 warp, 50 iterations), in torch like DA.

Representations are timed round-robin (one call of each per round, so slow drift of the
shared machine hits all alike); the figure is the median over rounds.  TV-L1 and TVNet take
up to seconds per clip, so they run only in the first ``--slow-repeats`` rounds.

    python benchmarks/bench_representations.py [--repeats 20] [--slow-repeats 3] [--threads 1] [--video PATH]

Prints a table (ms per clip, and each representation's time divided by DA's), then, last,
one JSON line with ``ms_per_clip`` (name -> ms), ``speedup_vs_tvl1`` and
``speedup_vs_farneback`` (how many times faster DA is).  Targets: DA >= 100x faster than
TV-L1 and faster than Farneback.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dynapp.representations import build_representation

NAMES = ["rgb", "rgb_diff", "dynamic_image", "pwtp", "flow_farneback", "flow_tvl1", "flow_tvnet"]
SLOW = {"flow_tvl1", "flow_tvnet"}  # seconds per clip: timed in the first --slow-repeats rounds only


def synthetic_video(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB (F, H, W, 3): a panning smooth texture with a square moving the other way."""
    import cv2

    rng = np.random.default_rng(seed)
    pad = 4 * frames + 8
    big = size + 2 * pad
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (big, big, 3)).astype(np.float32), (0, 0), 3.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 200
    out = []
    for t in range(frames):
        x0, y0 = pad - round(1.5 * t), pad - t  # content moves right and down
        f = tex[y0 : y0 + size, x0 : x0 + size].copy()
        sx = size // 2 + 12 - 3 * t
        f[size // 3 : size // 3 + 40, sx : sx + 40] = (250, 240, 220)
        out.append(f.round().clip(0, 255).astype(np.uint8))
    return np.stack(out)


def decode_video(path: str, frames: int, size: int) -> np.ndarray:
    """The first ``frames`` frames of a video file, RGB uint8 (F, size, size, 3), via PyAV."""
    import av
    import cv2

    out = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            out.append(cv2.resize(frame.to_ndarray(format="rgb24"), (size, size), interpolation=cv2.INTER_AREA))
            if len(out) == frames:
                break
    if len(out) < frames:
        raise SystemExit(f"{path}: only {len(out)} frames, need {frames}")
    return np.stack(out)


def to_clip(video: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> normalised float clip (1, 3, F, H, W)."""
    x = torch.from_numpy(video).float().div_(255).permute(3, 0, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return ((x - mean) / std).unsqueeze(0).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--slow-repeats", type=int, default=3, help="rounds for TV-L1 and TVNet")
    ap.add_argument("--segments", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--video", default=None, help="decode this video instead of the synthetic one")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch and for OpenCV alike (0: leave the defaults)")
    args = ap.parse_args()

    import cv2

    if args.threads > 0:
        # The same budget for every representation; one thread also keeps a shared machine's
        # load from stalling OpenMP barriers (with 2 threads on a loaded 2-core machine the
        # same PWTP call varied from 3 ms to 900 ms).
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    torch.manual_seed(0)
    S, T = args.segments, args.frames
    video = decode_video(args.video, S * T, args.size) if args.video else synthetic_video(S * T, args.size)
    clip = to_clip(video)
    reps = {n: build_representation(n, segments=S, frames=T).eval() for n in NAMES}

    times: dict[str, list[float]] = {n: [] for n in NAMES}
    with torch.no_grad():
        for n in NAMES:  # warm-up
            reps[n](clip)
        for r in range(args.repeats):
            for n in NAMES:
                if n in SLOW and r >= args.slow_repeats:
                    continue
                t0 = time.perf_counter()
                reps[n](clip)
                times[n].append((time.perf_counter() - t0) * 1e3)

    ms = {n: statistics.median(v) for n, v in times.items()}
    da = ms["pwtp"]
    print(
        f"representations, ms per clip: S={S}, T={T}, {args.size}x{args.size}, batch 1, CPU "
        f"({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"OpenCV threads {cv2.getNumThreads()}), {'video ' + args.video if args.video else 'synthetic clip'}"
    )
    print(f"{'representation':<16} {'channels':>8} {'ms/clip':>10} {'x DA':>9} {'runs':>5}")
    for n in NAMES:
        print(f"{n:<16} {reps[n].out_channels:>8} {ms[n]:>10.3f} {ms[n] / da:>9.2f} {len(times[n]):>5}")
    result = {
        "ms_per_clip": {n: round(v, 4) for n, v in ms.items()},
        "speedup_vs_tvl1": round(ms["flow_tvl1"] / da, 1),
        "speedup_vs_farneback": round(ms["flow_farneback"] / da, 2),
        "speedup_vs_tvnet": round(ms["flow_tvnet"] / da, 1),
        "segments": S,
        "frames": T,
        "size": args.size,
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
