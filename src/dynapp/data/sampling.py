"""Which frames of a video make a clip: TSN sparse and dense sampling, and test-time views.

Pure functions of the frame count (numpy only), so every index can be checked exactly.
A clip is S segments of T consecutive frames, S*T indices in temporal order.

* **TSN sparse** (Wang et al., TSN; the paper's Section 3.3 for SS V1, UCF101, HMDB51): the
  video is cut into S equal parts; segment s covers frames ``[floor(s n / S), floor((s+1) n / S))``
  and contributes T consecutive frames, a window placed at random inside it in training and
  centred in testing.
* **Dense** (the paper's sampling for Kinetics): S*T frames ``start, start + stride, ...``,
  a random start in training, centred in testing.

Test views: with ``num_clips = K`` the window positions are spread evenly: view k takes the
position at fraction ``(2k + 1) / 2K`` of the allowed range (K = 1 is the centre).

**Short videos are never dropped.**  The documented rule:

* TSN: when a segment has fewer than T frames (a video shorter than S*T), its T-window is the
  one that *contains* the segment (it starts between ``seg_end - T`` and ``seg_start``), kept
  inside the video; neighbouring windows then overlap, but no frame is repeated as long as the
  video has at least T frames.
* Dense: the stride shrinks to ``max(1, (n - 1) // (S*T - 1))`` so that the clip fits.
* Either way, a video shorter than the window itself (n < T for TSN, n < S*T for dense) has its
  indices clamped to the last frame (the last frame repeats).
"""

from __future__ import annotations

import numpy as np

__all__ = ["tsn_indices", "dense_indices", "sample_indices", "SAMPLERS", "clip_span"]


def _check(num_frames: int, segments: int, frames: int, num_clips: int, clip: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    if segments < 1 or frames < 1:
        raise ValueError(f"segments and frames must be >= 1, got {segments} and {frames}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip must be in [0, num_clips={num_clips}), got {clip}")


def _position(lo: int, hi: int, *, train: bool, rng: np.random.Generator | None, clip: int, num_clips: int) -> int:
    """A start in [lo, hi]: uniform in training, else the (2k+1)/2K point of the range."""
    if hi <= lo:
        return lo
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        return int(rng.integers(lo, hi + 1))
    return lo + (hi - lo) * (2 * clip + 1) // (2 * num_clips)


def tsn_indices(
    num_frames: int,
    segments: int,
    frames: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """TSN sparse sampling: S segments of T consecutive frames; ``(S*T,)`` int64 indices.

    In training each segment's window is drawn at random (``rng``); in testing the window sits
    at position ``(2 clip + 1) / (2 num_clips)`` of its range (the centre for one clip).
    Short videos: see the module docstring.
    """
    _check(num_frames, segments, frames, num_clips, clip)
    n, T = num_frames, frames
    last_start = max(n - T, 0)
    out = np.empty((segments, T), dtype=np.int64)
    for s in range(segments):
        seg_start, seg_end = s * n // segments, (s + 1) * n // segments
        # Windows inside the segment (seg_len >= T) or windows containing it (seg_len < T).
        lo, hi = sorted((seg_start, seg_end - T))
        lo, hi = min(max(lo, 0), last_start), min(max(hi, 0), last_start)
        start = _position(lo, hi, train=train, rng=rng, clip=clip, num_clips=num_clips)
        out[s] = start + np.arange(T)
    return np.minimum(out.reshape(-1), n - 1)


def clip_span(segments: int, frames: int, stride: int = 1) -> int:
    """Frames covered by a dense clip of S*T frames at ``stride``."""
    return (segments * frames - 1) * stride + 1


def dense_indices(
    num_frames: int,
    segments: int,
    frames: int,
    *,
    train: bool,
    stride: int = 1,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dense sampling: S*T frames at ``stride`` from one start; ``(S*T,)`` int64 indices.

    The start is uniform over the valid range in training and at ``(2 clip + 1) / (2 num_clips)``
    of it in testing.  A video shorter than the span gets a smaller stride, then clamped
    indices (module docstring).
    """
    _check(num_frames, segments, frames, num_clips, clip)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    length = segments * frames
    if length > 1 and clip_span(segments, frames, stride) > num_frames:
        stride = max(1, (num_frames - 1) // (length - 1))
    span = clip_span(segments, frames, stride)
    start = _position(0, max(num_frames - span, 0), train=train, rng=rng, clip=clip, num_clips=num_clips)
    return np.minimum(start + stride * np.arange(length, dtype=np.int64), num_frames - 1)


SAMPLERS = {"tsn": tsn_indices, "dense": dense_indices}


def sample_indices(
    sampling: str,
    num_frames: int,
    segments: int,
    frames: int,
    *,
    train: bool,
    stride: int = 1,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dispatch to :func:`tsn_indices` (``"tsn"``) or :func:`dense_indices` (``"dense"``)."""
    if sampling == "tsn":
        return tsn_indices(num_frames, segments, frames, train=train, rng=rng, clip=clip, num_clips=num_clips)
    if sampling == "dense":
        return dense_indices(
            num_frames, segments, frames, train=train, stride=stride, rng=rng, clip=clip, num_clips=num_clips
        )
    raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLERS)}")
