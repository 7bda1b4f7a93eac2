"""Scan a dataset up front: every unreadable video and every video shorter than S*T frames.

``dynapp check-data`` calls :func:`check_dataset`.  By default every video is decoded to the
end (this finds truncated and corrupt files, whose headers often still look fine);
``quick=True`` only opens each video and decodes its first and last frame.  A frame folder is
checked by opening its images (all of them, or the first and last with ``quick``).
Too-short videos are reported but are not errors: the samplers use them by the documented
short-video rule (see :mod:`dynapp.data.sampling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from torch.utils.data import DataLoader, Dataset

from dynapp.data.dataset import worker_start_method
from dynapp.data.decode import VideoDecodeError, count_frames, open_video

__all__ = ["CheckResult", "check_video", "check_dataset"]


class CheckResult(NamedTuple):
    """The verdict on one video: ``status`` is ``"ok"``, ``"short"`` or ``"bad"``."""

    path: Path
    status: str
    num_frames: int | None
    reason: str


def check_video(path: str | Path, min_frames: int, *, quick: bool = False, backend: str = "pyav") -> CheckResult:
    """Open and decode one video or frame folder; ``"bad"`` with the reason if that fails."""
    path = Path(path)
    try:
        with open_video(path, backend) as video:
            n = video.num_frames
            if quick or path.is_dir():
                video.read([0, n - 1] if quick else list(range(n)), short_side=None if quick else 32)
        if not quick and not path.is_dir():
            decoded = count_frames(path, exact=True, backend=backend)
            if decoded < n - max(2, n // 20):
                raise VideoDecodeError(
                    path, f"truncated or corrupt: the container announces {n} frames but only {decoded} decode")
            n = decoded
    except VideoDecodeError as err:
        return CheckResult(path, "bad", None, err.reason)
    except Exception as err:  # report anything else on the file too, never crash the scan
        return CheckResult(path, "bad", None, f"{type(err).__name__}: {err}")
    if n < min_frames:
        return CheckResult(path, "short", n, f"{n} frames < S*T = {min_frames}; sampled by the short-video rule")
    return CheckResult(path, "ok", n, "")


class _Scan(Dataset):
    def __init__(self, paths, min_frames, quick, backend):
        self.paths, self.min_frames, self.quick, self.backend = paths, min_frames, quick, backend

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return check_video(self.paths[i], self.min_frames, quick=self.quick, backend=self.backend)


def _first(batch):
    return batch


def check_dataset(
    paths: Sequence[str | Path],
    *,
    min_frames: int,
    quick: bool = False,
    workers: int = 0,
    backend: str = "pyav",
    progress: bool = True,
) -> list[CheckResult]:
    """:func:`check_video` on every path (duplicates checked once), in order, with a tqdm bar.

    ``workers > 0`` decodes in that many DataLoader worker processes.
    """
    from tqdm.auto import tqdm

    unique = list(dict.fromkeys(Path(p) for p in paths))
    scan = _Scan(unique, min_frames, quick, backend)
    loader = DataLoader(scan, batch_size=None, num_workers=workers, collate_fn=_first, shuffle=False,
                        multiprocessing_context=worker_start_method(scan, workers))
    return list(tqdm(loader, total=len(unique), desc="check-data", unit="video", disable=not progress))


def run_check_data(
    dataset: str,
    root: str | Path,
    *,
    split: int = 1,
    subset: str = "all",
    segments: int = 8,
    frames: int = 8,
    quick: bool = False,
    workers: int = 0,
    backend: str = "pyav",
    list_short: bool = False,
    echo=print,
) -> int:
    """What ``dynapp check-data`` does: read the annotations, scan, print one line per bad video
    (and per short video with ``list_short``) and a summary with the counts; return the exit
    status (1 if any video is bad, else 0).

    Raises ``ValueError`` / ``FileNotFoundError`` for unknown datasets or missing annotation files.
    """
    from dynapp.data.catalog import read_annotations

    if subset not in ("all", "train", "test"):
        raise ValueError(f"--subset must be all, train or test, got {subset!r}")
    paths: list[Path] = []
    for train in ([True, False] if subset == "all" else [subset == "train"]):
        paths += [a.path for a in read_annotations(dataset, root, split=split, train=train).items]
    results = check_dataset(paths, min_frames=segments * frames, quick=quick, workers=workers, backend=backend)
    bad = [r for r in results if r.status == "bad"]
    short = [r for r in results if r.status == "short"]
    for r in bad:
        echo(f"BAD    {r.path}: {r.reason}")
    if list_short:
        for r in short:
            echo(f"SHORT  {r.path}: {r.reason}")
    hint = "" if list_short or not short else " (--list-short lists them)"
    echo(f"{len(results)} videos checked: {len(results) - len(bad) - len(short)} ok, "
         f"{len(short)} shorter than S*T={segments * frames} (warning; sampled by the short-video rule){hint}, "
         f"{len(bad)} bad")
    return 1 if bad else 0
