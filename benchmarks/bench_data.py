"""Training-loader throughput (clips/s) with 0, 1 and 2 DataLoader workers on generated videos.

Writes ``--videos`` H.264 MP4s (``--width`` x ``--height``, ``--length`` frames, a smooth
texture panning at 1-3 px per frame, so the encoder produces realistic P/B frames) into a temporary folder, builds the
``folder`` dataset with TSN sampling (S segments x T frames), multi-scale crop, flip and
normalisation, and times full passes of a DataLoader.  The clock starts when the first batch
arrives (worker start-up excluded).  Prints a table, then one JSON line::

    {"clips_per_s": {"0": ..., "1": ..., "2": ...}, "config": {...}}

Example: ``.venv/bin/python benchmarks/bench_data.py`` (defaults: 24 videos 320x240, 150
frames, S=8, T=8, crop 224 -- a UCF101-like clip of 64 decoded frames).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynapp.data import build_dataset
from dynapp.data.encode import write_video


def make_videos(root: Path, n: int, length: int, height: int, width: int, classes: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    # A smooth random texture (blobs) plus mild grain: compresses like natural video, unlike
    # pure noise, which would make decoding several times slower than on real datasets.
    blobs = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    texture = np.asarray(blobs.resize((width * 2, height * 2), Image.BICUBIC)).astype(np.int16)
    texture = np.clip(texture + rng.integers(-8, 9, texture.shape), 0, 255).astype(np.uint8)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        dy, dx = rng.integers(1, 4, size=2)
        frames = np.stack([texture[(t * dy) % height:(t * dy) % height + height,
                                   (t * dx) % width:(t * dx) % width + width] for t in range(length)])
        write_video(folder / f"video{i:03d}.mp4", frames)


def time_loader(ds, workers: int, batch_size: int, passes: int) -> float:
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=False,
                        persistent_workers=workers > 0)  # later passes reuse the started workers
    clips, start = 0, None
    for _ in range(passes):
        for clip, _, _ in loader:
            if start is None:
                start = time.perf_counter()  # exclude worker start-up and the first batch
                continue
            clips += clip.shape[0]
    if clips == 0:
        raise SystemExit("only one batch was loaded: raise --videos or --passes")
    return clips / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--length", type=int, default=150, help="frames per video")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()

    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_videos(root, args.videos, args.length, args.height, args.width)
        ds = build_dataset("folder", root, train=True, segments=args.segments, frames=args.frames,
                           crop_size=args.crop)
        print(f"{args.videos} H.264 videos {args.width}x{args.height}, {args.length} frames; "
              f"TSN {args.segments}x{args.frames} frames, multi-scale crop {args.crop}, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} (other processes slow every row)")
        print(f"{'workers':>8} | {'clips/s':>8} | {'ms/clip':>8} | {'frames/s':>9}")
        print("-" * 43)
        for w in args.workers:
            rate = time_loader(ds, w, args.batch_size, args.passes)
            results[str(w)] = round(rate, 2)
            print(f"{w:>8} | {rate:8.2f} | {1000 / rate:8.1f} | {rate * args.segments * args.frames:9.0f}")
        assert ds.num_bad == 0
    config = {k: getattr(args, k) for k in ("videos", "length", "width", "height", "segments", "frames", "crop",
                                              "batch_size")}
    config["cpus"] = os.cpu_count()
    print(json.dumps({"clips_per_s": results, "config": config}))


if __name__ == "__main__":
    main()
