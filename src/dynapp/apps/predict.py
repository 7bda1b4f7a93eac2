"""``dynapp predict``: the top-k classes of videos, and class scores over time on long videos.

Whole videos: each video is decoded at the run's test views (or ``--views CLIPSxCROPS``) and
the softmax scores of its views are averaged (``dynapp.engine.evaluate``'s video level).
Videos are given as files, frame folders, folders of videos (searched recursively, sorted) or list
files (``.txt``/``.lst``/``.list``: one path per line, a trailing label ignored, relative paths
from the list's folder).  DataLoader workers decode while the model runs; a video that cannot be
read is reported with its reason and skipped, the others are still predicted.

Long videos (``--window SECONDS --stride SECONDS``): the clip is slid over the whole video; each
window is sampled like a whole video (S segments x T frames, the test views) from its own frames
only, decoded on its own (``Video.read`` of the sampled frames, seeking to the keyframe before
them): memory holds one window's views at a time, whatever the video's length.  Per video:
``<name>.windows.csv`` and ``.windows.json`` (per-window top-k) and ``<name>.timeline.png`` (the
probabilities of the classes that lead some window, over time).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dynapp.apps.inference import Recognizer, ViewsDataset, first_item, read_views
from dynapp.data.dataset import worker_start_method
from dynapp.data.decode import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoDecodeError,
    open_video,
)

__all__ = ["LIST_EXTENSIONS", "collect_videos", "predict_videos", "format_table", "window_starts",
           "sliding_windows", "write_windows", "plot_timeline", "run_predict"]

LIST_EXTENSIONS = (".txt", ".lst", ".list")


def _is_frame_folder(path: Path) -> bool:
    try:
        return any(e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(path))
    except OSError:
        return False


def _read_list(list_file: Path) -> list[Path]:
    out = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        path = line
        # "path label" and "path num_frames label" lists (the data module's list format)
        while len(tokens) > 1 and tokens[-1].isdigit() and not (list_file.parent / path).exists():
            tokens = tokens[:-1]
            path = " ".join(tokens)
        p = Path(path)
        out.append(p if p.is_absolute() else list_file.parent / p)
    return out


def collect_videos(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files, frame folders, folders of videos (recursive, sorted) and list files.

    A path that does not exist is kept: it is reported as missing when it is decoded.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not _is_frame_folder(path):
            found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
            out.extend(sorted(found))
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            out.extend(_read_list(path))
        else:
            out.append(path)
    return out


def _top(recognizer: Recognizer, probs: torch.Tensor, topk: int) -> list[dict]:
    return [{"class": c, "prob": round(p, 6)} for c, p in recognizer.topk(probs, topk)]


def predict_videos(recognizer: Recognizer, paths: list[Path], *, topk: int = 5, views: tuple[int, int] | None = None,
                   workers: int = 0, batch_size: int = 8, progress: bool = True,
                   on_error: Callable[[str], None] | None = None) -> list[dict]:
    """``[{"video", "top": [{"class", "prob"}, ...], "error"}]`` in the order of ``paths``.

    A video that cannot be read gets ``"top": []`` and its reason in ``"error"`` (also passed to
    ``on_error`` as ``"path: reason"`` when it happens).
    """
    from tqdm.auto import tqdm

    views_set = ViewsDataset(paths, recognizer.preprocessing, views)
    loader = DataLoader(views_set, batch_size=1, collate_fn=first_item, num_workers=workers,
                        multiprocessing_context=worker_start_method(views_set, workers))
    results: list[dict] = [{}] * len(paths)
    for i, clips, error in tqdm(loader, total=len(paths), desc="predict", unit="video", disable=not progress):
        if error is None:
            top = _top(recognizer, recognizer.probabilities(clips, batch_size).mean(0), topk)
        else:
            top = []
            if on_error is not None:
                on_error(f"{paths[i]}: {error}")
        results[i] = {"video": str(paths[i]), "top": top, "error": error}
    return results


def format_table(results: list[dict]) -> str:
    """A plain-text table: one row per video, its top-k as ``class prob`` (or its error)."""
    k = max((len(r["top"]) for r in results), default=0)
    header = ["video"] + [f"top-{j + 1}" for j in range(k)]
    rows = [[r["video"]] + [f"{t['class']} {t['prob']:.3f}" for t in r["top"]] for r in results]
    widths = [max(len(row[j]) for row in [header, *rows] if j < len(row)) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    body = [line(row) if r["error"] is None else f"{r['video'].ljust(widths[0])}  error: {r['error']}"
            for row, r in zip(rows, results)]
    return "\n".join([line(header), *body])


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frames of the windows of ``window`` frames every ``stride`` frames that fit the video
    (one window over the whole video when it is shorter than a window)."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must cover at least one frame, got {window} and {stride}")
    return list(range(0, max(num_frames - window, 0) + 1, stride))


def sliding_windows(recognizer: Recognizer, path: str | os.PathLike, *, window: float, stride: float,
                    views: tuple[int, int] | None = None, fps: float | None = None,
                    batch_size: int = 8, progress: bool = False,
                    warn: Callable[[str], None] | None = None) -> tuple[list[dict], np.ndarray]:
    """Scores of every window of a video: ``([{"window", "start", "end"}...], probs (W, K))``.

    ``window``/``stride`` in seconds (frames at the video's frame rate, or ``fps`` when given or
    when the source has none, e.g. a frame folder).  Each window is decoded on its own.  ``warn``
    gets one line when a window holds fewer frames than one clip samples (frames then repeat).
    """
    from tqdm.auto import tqdm

    if window <= 0 or stride <= 0:
        raise ValueError(f"--window and --stride must be positive seconds, got {window} and {stride}")
    with open_video(path, recognizer.preprocessing["backend"]) as video:
        rate = fps or (float(video.fps) if getattr(video, "fps", None) else None)
        if not rate:
            raise ValueError(f"{path}: the frame rate is unknown (a frame folder?): give --fps")
        win, step = max(1, round(window * rate)), max(1, round(stride * rate))
        pre = recognizer.preprocessing
        clip = pre["segments"] * pre["frames"] * (pre.get("stride", 1) if pre["sampling"] == "dense" else 1)
        if win < clip and warn is not None:
            warn(f"warning: {path}: --window {window:g} s is {win} frames at {rate:g} fps, fewer than the {clip} "
                 f"frames of one clip, so frames repeat within each window; --window {clip / rate:.2f} or more avoids it")
        starts = window_starts(video.num_frames, win, step)
        rows, probs = [], []
        for j, start in enumerate(tqdm(starts, desc=Path(path).name, unit="window", disable=not progress)):
            length = min(win, video.num_frames - start)
            clips = read_views(video, recognizer.preprocessing, views, start=start, num_frames=length)
            probs.append(recognizer.probabilities(clips, batch_size).mean(0))
            rows.append({"window": j, "start": round(start / rate, 3), "end": round((start + length) / rate, 3)})
    return rows, torch.stack(probs).numpy()


def plot_timeline(rows: list[dict], probs: np.ndarray, classes: list[str], path: str | os.PathLike,
                  max_classes: int = 10, title: str = "") -> Path:
    """PNG of the probabilities over time of the classes that lead some window (at most ``max_classes``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    leaders = np.unique(probs.argmax(1))
    shown = sorted(leaders, key=lambda c: -probs[:, c].max())[:max_classes]
    t = [(r["start"] + r["end"]) / 2 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for c in shown:
        ax.plot(t, probs[:, c], marker="o" if len(t) < 40 else None, markersize=3, label=classes[c])
    ax.set_xlabel("time (s), window centre")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right", ncol=max(1, math.ceil(len(shown) / 5)))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_windows(rows: list[dict], probs: np.ndarray, classes: list[str], out_dir: str | os.PathLike, name: str,
                  *, topk: int = 5, meta: dict | None = None) -> list[Path]:
    """``<name>.windows.csv``, ``<name>.windows.json`` (per-window top-k) and ``<name>.timeline.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = min(topk, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    records = [{**r, "top": [{"class": classes[c], "prob": round(float(probs[j, c]), 6)} for c in order[j]]}
               for j, r in enumerate(rows)]
    csv_path, json_path = out / f"{name}.windows.csv", out / f"{name}.windows.json"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window", "start_s", "end_s"] + [x for j in range(k) for x in (f"top{j + 1}", f"prob{j + 1}")])
        for rec in records:
            w.writerow([rec["window"], rec["start"], rec["end"]]
                       + [x for t in rec["top"] for x in (t["class"], f"{t['prob']:.6f}")])
    json_path.write_text(json.dumps({**(meta or {}), "windows": records}, indent=2) + "\n")
    png = plot_timeline(rows, probs, classes, out / f"{name}.timeline.png", title=str((meta or {}).get("video", name)))
    return [csv_path, json_path, png]


def _to_stderr(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)  # above a running progress bar


def _unique_names(paths: list[Path]) -> Iterator[str]:
    seen: dict[str, int] = {}
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        yield p.stem if n == 0 else f"{p.stem}_{n}"


def run_predict(videos: list[str], checkpoint: str, *, topk: int = 5, views: str | None = None, as_json: bool = False,
                window: float | None = None, stride: float | None = None, out: str = "predictions",
                fps: float | None = None, workers: int = 0, device: str = "cpu", progress: bool = True,
                echo: Callable[[str], None] = print, echo_err: Callable[[str], None] | None = None) -> int:
    """The ``dynapp predict`` command: print (or write, with ``window``) the predictions.

    Returns the exit status: 0, or 1 when a video could not be read (it is reported and skipped).
    """
    from tqdm.auto import tqdm

    from dynapp.apps.inference import load, parse_views

    echo_err = echo_err or _to_stderr
    view_pair = parse_views(views)
    if topk < 1:
        raise ValueError(f"--topk must be >= 1, got {topk}")
    if (window is None) != (stride is None):
        raise ValueError("--window and --stride go together (seconds)")
    paths = collect_videos(videos)
    if not paths:
        raise ValueError("no video to predict (empty folder or list?)")
    recognizer = load(checkpoint, device=device)
    if window is None:
        results = predict_videos(recognizer, paths, topk=topk, views=view_pair, workers=workers, progress=progress,
                                 on_error=lambda msg: echo_err(f"error: {msg}"))
        echo(json.dumps(results, indent=2) if as_json else format_table(results))
        return int(any(r["error"] is not None for r in results))
    failed, written = 0, []
    for path, name in zip(tqdm(paths, desc="videos", unit="video", disable=not progress or len(paths) < 2),
                          _unique_names(paths)):
        try:
            rows, probs = sliding_windows(recognizer, path, window=window, stride=stride, views=view_pair, fps=fps,
                                          progress=progress, warn=echo_err)
        except (VideoDecodeError, ValueError) as err:  # this video only: the others go on
            echo_err(f"error: {path}: {err.reason if isinstance(err, VideoDecodeError) else err}")
            failed += 1
            continue
        meta = {"video": str(path), "window_s": window, "stride_s": stride, "checkpoint": str(checkpoint)}
        files = write_windows(rows, probs, recognizer.classes, out, name, topk=topk, meta=meta)
        written.append({"video": str(path), "windows": len(rows), "files": [str(f) for f in files]})
        if not as_json:
            echo(f"{path}: {len(rows)} windows -> {', '.join(str(f) for f in files)}")
    if as_json:
        echo(json.dumps(written, indent=2))
    return int(failed > 0)
