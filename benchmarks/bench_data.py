"""Training-loader throughput against the decode floor, uint8 against float32 clips, decoding threads
per codec and a long-video (Kinetics-like) case, on generated videos.

Videos: ``--videos`` H.264 MP4s (``--width`` x ``--height``, ``--length`` frames, a smooth texture
panning at 1-3 px per frame, so the encoder produces realistic P/B frames), in the ``folder``
layout.  Everything runs in this one process (DataLoader workers are its children), in
alternating rounds so that machine load hits every row alike; medians over ``--rounds``.

* **Decode floor**: plain PyAV on one core, the frames the sampler asks for: seek to the keyframe
  before the first wanted frame, decode forward to the last wanted frame and convert the
  wanted ones to RGB arrays (``frame.to_ndarray(format="rgb24")``).  Also reported: the codec
  alone (no RGB conversion) and the whole video (every frame decoded, the wanted converted).
* **Loader**: the training DataLoader (TSN S x T, multi-scale crop, flip) with 0, 1, 2 workers,
  uint8 clips (the default) and float32 normalised clips (``dtype="float32"``), clips/s of whole
  passes over the videos (worker start-up excluded: persistent workers, a warm-up pass).  ``loader_over_floor[w]`` = loader / floor.
* **Codecs, backends and threads**: one clip's frames read by ``open_video(...).read`` for
  H.264, HEVC and MPEG-4 part 2 (AVI, B-frames) copies of the videos: PyAV with ``threads=1``
  (no FFmpeg threads, the default), ``threads=0`` with slice threads (what the reader uses) and
  ``threads=0`` with frame threading (``thread_type="AUTO"``, built directly, never used by the
  reader), and torchcodec (``backend="torchcodec"``, one FFmpeg thread) when it is installed.
* **JPEG frames**: ms per 320x240 frame for every JPEG decoder the frame-folder reader can use
  (torchcodec's, torchvision's, PIL), 16 frames per call.
* **Long videos**: ``--long-videos`` videos of ``--long-length`` frames (10 s at 30 fps),
  dense sampling of S x T frames (stride 1, the paper's Kinetics protocol, and ``--long-stride``),
  keyframes every ``--long-gop`` frames: the reader (keyframe seek, unreferenced frames skipped,
  stop at the last wanted frame) against decoding from the first frame, and the 1-worker loader
  against the floor.

Prints a table, then one JSON line::

    {"clips_per_s": {"uint8": {"0": ..}, "float32": {..}}, "floor_clips_per_s": {..},
     "loader_over_floor": {"0": .., "1": .., "2": ..}, "uint8_over_float32": {..}, "mb_per_item": {..},
     "threads_ms_per_clip": {"h264": {"1": .., "0": .., "0_auto": ..}, ..},
     "codec_clips_per_s": {"h264": {"pyav": .., "torchcodec": ..}, ..}, "torchcodec_via_pyav": {..},
     "jpeg_ms_per_frame": {"torchcodec": .., "torchvision": .., "pil": ..}, "long": {..}, "config": {..}}

Target: ``loader_over_floor["1"] >= 0.8`` and the 2-worker loader above the 1-worker one (on a
machine with 2 free cores).
Example: ``.venv/bin/python benchmarks/bench_data.py`` (defaults: 24 videos 320x240, 150 frames,
TSN 8x8, crop 224, batch 4 -- a UCF101-like clip of 64 decoded frames).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from dynapp.data import build_dataset, open_video
from dynapp.data.decode import _jpeg_decoders, _PyAVVideo, check_backend
from dynapp.data.encode import write_video
from dynapp.data.sampling import sample_indices


def make_videos(root: Path, n: int, length: int, height: int, width: int, classes: int = 4,
                codec: str = "libx264", ext: str = "mp4", gop: int | None = None) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    # A smooth random texture (blobs) plus mild grain: compresses like natural video, unlike
    # pure noise, which would make decoding several times slower than on real datasets.
    blobs = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
    texture = np.asarray(blobs.resize((width * 2, height * 2), Image.BICUBIC)).astype(np.int16)
    texture = np.clip(texture + rng.integers(-8, 9, texture.shape), 0, 255).astype(np.uint8)
    options = {"g": str(gop)} if gop else {}
    if codec == "mpeg4":
        options.update({"bf": "2", "qscale": "4"})  # MPEG-4 part 2 as XviD/DivX files use it (UCF101)
    paths = []
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        dy, dx = rng.integers(1, 4, size=2)
        frames = np.stack([texture[(t * dy) % height:(t * dy) % height + height,
                                   (t * dx) % width:(t * dx) % width + width] for t in range(length)])
        paths.append(write_video(folder / f"video{i:03d}.{ext}", frames, codec=codec, options=options))
    return paths


def floor_read(path: Path, idx: np.ndarray, *, convert: bool = True, whole: bool = False) -> int:
    """Plain PyAV, one thread: the frames ``idx`` (seek, decode to the last, convert); frames decoded."""
    wanted = set(int(i) for i in idx)
    last = max(wanted)
    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        rate, tb = stream.average_rate, stream.time_base
        if not whole:
            container.seek(int(min(wanted) / rate / tb), stream=stream, backward=True)
        for frame in container.decode(stream):
            i = int(round(float(frame.pts * tb * rate)))
            n += 1
            if i in wanted and convert:
                frame.to_ndarray(format="rgb24")
            if i >= last and not whole:
                break
    return n


def sampler(ds, n_frames: int, rng: np.random.Generator) -> np.ndarray:
    return sample_indices(ds.sampling, n_frames, ds.segments, ds.frames, train=True, stride=ds.stride, rng=rng)


def time_pass(loader) -> float:
    """clips/s of one full pass (the workers are started by a warm-up pass before)."""
    clips = 0
    tic = time.perf_counter()
    for clip, _, _ in loader:
        clips += clip.shape[0]
    return clips / (time.perf_counter() - tic)


def time_calls(fn, items) -> float:
    """Items per second of ``fn`` over ``items``."""
    tic = time.perf_counter()
    for item in items:
        fn(*item)
    return len(items) / (time.perf_counter() - tic)


def median(values) -> float:
    return round(statistics.median(values), 2)


def loader_for(ds, workers: int, batch_size: int) -> DataLoader:
    """A training DataLoader whose workers persist across passes, started by one warm-up pass."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:
        pass
    return loader


def _has_torchcodec() -> bool:
    try:
        check_backend("torchcodec")
        return True
    except ValueError:
        return False


def codec_rows(tmp: Path, args, indices: list[np.ndarray]) -> dict:
    """ms per clip of PyAV's threading modes, clips/s of PyAV and torchcodec, per codec."""
    readers = {
        "1": lambda p: open_video(p, threads=1),  # thread_type NONE
        "0": lambda p: open_video(p, threads=0),  # SLICE: what the reader uses
        "0_auto": lambda p: _PyAVVideo(p, threads=0, thread_type="AUTO"),  # frame threading
    }
    torchcodec = _has_torchcodec()
    if torchcodec:
        readers["torchcodec"] = lambda p: open_video(p, "torchcodec")
    threads, clips, via_pyav = {}, {}, {}
    n = min(args.codec_videos, args.videos)
    for codec, ext in (("libx264", "mp4"), ("libx265", "mkv"), ("mpeg4", "avi")):
        vids = make_videos(tmp / codec, n, args.length, args.height, args.width, codec=codec, ext=ext)
        items = list(zip(vids, indices))
        per = {k: [] for k in readers}
        fell_back = False
        for _ in range(args.rounds):
            for k, opener in readers.items():
                def read(path, idx, opener=opener):
                    nonlocal fell_back
                    with opener(path) as v:
                        v.read(idx)
                        fell_back |= getattr(v, "pyav", None) is not None
                per[k].append(1000 / time_calls(read, items))
        name = {"libx264": "h264", "libx265": "hevc", "mpeg4": "mpeg4"}[codec]
        threads[name] = {k: median(per[k]) for k in ("1", "0", "0_auto")}
        clips[name] = {"pyav": round(1000 / threads[name]["1"], 2)}
        if torchcodec:
            clips[name]["torchcodec"] = round(1000 / median(per["torchcodec"]), 2)
            via_pyav[name] = fell_back
    print("one clip through open_video: ms per clip (PyAV threads=1 | threads=0 SLICE | threads=0 AUTO) and "
          "clips/s (PyAV threads=1 | torchcodec)")
    print(f"{'codec':>6} | {'1':>6} | {'0 SLICE':>7} | {'0 AUTO':>7} | {'PyAV/s':>7} | {'torchcodec/s':>12}")
    for name, t in threads.items():
        tc = clips[name].get("torchcodec")
        note = " (read by PyAV: see the README)" if via_pyav.get(name) else ""
        print(f"{name:>6} | {t['1']:6.1f} | {t['0']:7.1f} | {t['0_auto']:7.1f} | {clips[name]['pyav']:7.2f} | "
              + (f"{tc:12.2f}{note}" if tc is not None else f"{'not installed':>12}"))
    return {"threads_ms_per_clip": threads, "codec_clips_per_s": clips, "torchcodec_via_pyav": via_pyav}


def jpeg_rows(rounds: int, frames: int = 16) -> dict:
    """ms per 320x240 JPEG frame (quality 90) of each decoder the frame-folder reader can use."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = Image.fromarray(rng.integers(0, 256, (15, 20, 3), dtype=np.uint8))
    texture = np.asarray(blobs.resize((640, 480), Image.BICUBIC)).astype(np.int16)
    data, raw = [], []
    for t in range(frames):
        img = np.clip(texture[2 * t:2 * t + 240, 3 * t:3 * t + 320] + rng.integers(-8, 9, (240, 320, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, format="JPEG", quality=90)
        raw.append(buf.getvalue())
        data.append(torch.frombuffer(bytearray(raw[-1]), dtype=torch.uint8))
    fns = dict(_jpeg_decoders())
    fns["pil"] = lambda ds: [np.asarray(Image.open(io.BytesIO(raw[i])).convert("RGB")) for i in range(len(ds))]
    times: dict = {}
    for name, fn in fns.items():
        try:
            fn(data[:1])
        except Exception:  # not installed here
            continue
        times[name] = []
    for _ in range(rounds):
        for name in times:
            tic = time.perf_counter()
            fns[name](data)
            times[name].append((time.perf_counter() - tic) * 1000 / frames)
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


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
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--codec-videos", type=int, default=6, help="videos per codec for the threads rows")
    p.add_argument("--long-videos", type=int, default=12, help="0 skips the long-video case")
    p.add_argument("--long-length", type=int, default=300)
    p.add_argument("--long-stride", type=int, default=8)
    p.add_argument("--long-gop", type=int, nargs="+", default=[250, 30],
                   help="keyframe intervals (250: x264's default, as ffmpeg-cut Kinetics clips)")
    args = p.parse_args()

    torch.set_num_threads(1)  # one core for the floor and for the 0-worker loader
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    kw = dict(train=True, segments=args.segments, frames=args.frames, crop_size=args.crop)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "short"
        paths = make_videos(root, args.videos, args.length, args.height, args.width)
        ds = {dt: build_dataset("folder", root, dtype=dt, **kw) for dt in ("uint8", "float32")}
        items = {dt: ds[dt][0][0] for dt in ds}
        mb = {dt: round(x.numel() * x.element_size() / 2**20, 2) for dt, x in items.items()}
        print(f"{args.videos} H.264 videos {args.width}x{args.height}, {args.length} frames; TSN "
              f"{args.segments}x{args.frames}, multi-scale crop {args.crop}, flip, batch {args.batch_size}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine: other "
              "processes slow every row; compare rows, not absolute numbers)")
        plans = [(path, sampler(ds["uint8"], args.length, rng)) for path in paths]
        floor_fns = {"floor": lambda p, i: floor_read(p, i), "codec": lambda p, i: floor_read(p, i, convert=False),
                     "whole": lambda p, i: floor_read(p, i, whole=True)}
        ld = {(dt, w): loader_for(ds[dt], w, args.batch_size) for dt in ds for w in args.workers}
        rates: dict = {k: [] for k in list(floor_fns) + list(ld)}
        for _ in range(args.rounds):
            for name, fn in floor_fns.items():
                rates[name].append(time_calls(fn, plans))
            for key, loader in ld.items():
                rates[key].append(time_pass(loader))
        floor = {k: median(rates[k]) for k in floor_fns}
        clips = {dt: {str(w): median(rates[(dt, w)]) for w in args.workers} for dt in ds}
        out["clips_per_s"] = clips
        out["floor_clips_per_s"] = floor
        out["loader_over_floor"] = {w: round(v / floor["floor"], 3) for w, v in clips["uint8"].items()}
        out["uint8_over_float32"] = {w: round(clips["uint8"][w] / clips["float32"][w], 3) for w in clips["uint8"]}
        out["mb_per_item"] = mb
        print(f"decode floor (plain PyAV, 1 core): {floor['floor']:.1f} clips/s; codec alone {floor['codec']:.1f}; "
              f"whole video {floor['whole']:.1f}")
        print(f"{'workers':>8} | {'uint8 clips/s':>13} | {'float32':>8} | {'u8/f32':>6} | {'loader/floor':>12}")
        print("-" * 60)
        for w in clips["uint8"]:
            print(f"{w:>8} | {clips['uint8'][w]:13.2f} | {clips['float32'][w]:8.2f} | "
                  f"{out['uint8_over_float32'][w]:6.2f} | {out['loader_over_floor'][w]:12.2f}")
        print(f"item: {mb['uint8']} MB uint8, {mb['float32']} MB float32")
        for dt in ds:
            assert ds[dt].num_bad == 0
        del ld

        # Codecs: PyAV's threading modes and torchcodec, one clip's frames through open_video(...).read
        out.update(codec_rows(Path(tmp), args, [pl[1] for pl in plans]))
        out["jpeg_ms_per_frame"] = jpeg_rows(args.rounds)
        print("JPEG ms per 320x240 frame: " + ", ".join(f"{k} {v:.3f}" for k, v in out["jpeg_ms_per_frame"].items()))

        # Long videos, dense sampling
        long: dict = {}
        if args.long_videos:
            print(f"long: {args.long_videos} H.264 videos {args.long_length} frames, dense {args.segments}x{args.frames}")
            print(f"{'stride':>6} {'gop':>5} | {'reader':>7} | {'from start':>10} | {'floor':>7} | "
                  f"{'reader/start':>12} | {'loader 1w':>9} | {'loader/floor':>12}   (clips/s)")
        for gop in args.long_gop if args.long_videos else []:
            lroot = Path(tmp) / f"long{gop}"
            lpaths = make_videos(lroot, args.long_videos, args.long_length, args.height, args.width, gop=gop)
            for stride in sorted({1, args.long_stride}):
                lds = build_dataset("folder", lroot, sampling="dense", stride=stride, **kw)
                lplans = [(path, sampler(lds, args.long_length, rng)) for path in lpaths]

                def reader(path, idx):
                    with open_video(path) as v:
                        v.read(idx)

                def from_start(path, idx):
                    with open_video(path) as v:
                        v._decode_counting(np.unique(idx), lambda f: f.to_ndarray(format="rgb24"))

                loader = loader_for(lds, 1, args.batch_size)
                fns = {"reader": reader, "from_start": from_start, "floor": lambda p, i: floor_read(p, i)}
                r = {k: [] for k in list(fns) + ["loader_1"]}
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        r[k].append(time_calls(fn, lplans))
                    r["loader_1"].append(time_pass(loader))
                del loader
                m = {k: median(v) for k, v in r.items()}
                m["reader_over_from_start"] = round(m["reader"] / m["from_start"], 3)
                m["loader_over_floor"] = round(m["loader_1"] / m["floor"], 3)
                long[f"stride{stride}_gop{gop}"] = m
                print(f"{stride:>6} {gop:>5} | {m['reader']:7.1f} | {m['from_start']:10.1f} | {m['floor']:7.1f} | "
                      f"{m['reader_over_from_start']:12.2f} | {m['loader_1']:9.2f} | {m['loader_over_floor']:12.2f}")
        out["long"] = long
    config = {k: getattr(args, k) for k in ("videos", "length", "width", "height", "segments", "frames", "crop",
                                              "batch_size", "rounds", "long_length", "long_stride", "long_gop")}
    config.update(cpus=os.cpu_count(), load_average=round(os.getloadavg()[0], 1))
    out["config"] = config
    print(json.dumps(out))


if __name__ == "__main__":
    main()
