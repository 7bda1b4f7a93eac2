"""An in-memory dataset of generated clips, for smoke tests, benchmarks and tests of training.

Item i is ``(clip (C, S*T, H, W), label, video_index)``: a deterministic function of
``(seed, i)``.  The label is ``video % num_classes`` and the clip carries a weak, learnable
signal of it (a bright square moving by ``label`` pixels per frame), so a model can learn it.
With ``views > 1`` every video has ``views`` consecutive items (its views), as a multi-view test
set does.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

__all__ = ["RandomClips", "build_random"]


class RandomClips(Dataset):
    """``num_videos * views`` generated items of shape (C, S*T, H, W)."""

    def __init__(self, *, num_videos: int, num_classes: int, segments: int, frames: int, crop_size: int,
                 in_channels: int = 3, views: int = 1, seed: int = 0):
        if num_videos < 1 or num_classes < 1 or views < 1:
            raise ValueError("num_videos, num_classes and views must be >= 1")
        self.num_videos, self.num_classes, self.views = num_videos, num_classes, views
        self.shape = (in_channels, segments * frames, crop_size, crop_size)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_videos * self.views

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        video = i // self.views
        label = video % self.num_classes
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        c, t, h, w = self.shape
        clip = 0.5 * torch.randn(self.shape, generator=gen)  # (C, T, H, W)
        side = max(h // 4, 1)
        y0 = int(torch.randint(0, h - side + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w, (1,), generator=gen))
        for f in range(t):
            x = (x0 + f * (label + 1)) % max(w - side + 1, 1)
            clip[:, f, y0 : y0 + side, x : x + side] += 2.0
        return clip, label, video


def build_random(root=None, *, split: int = 1, train: bool, segments: int, frames: int, crop_size: int,
                 num_classes: int = 0, in_channels: int = 3, num_samples: int = 64, num_clips: int = 1,
                 num_crops: int = 1, run_seed: int = 0, **ignored) -> RandomClips:
    """``data.dataset=random``: ``num_samples`` training videos, or a quarter as many test videos of
    ``num_clips * num_crops`` views each (``root``, ``split`` and the video-reading options are unused).

    ``num_classes`` 0 means 4.  The test clips are drawn with seed ``run_seed + 1``.
    """
    common = dict(num_classes=num_classes or 4, segments=segments, frames=frames, in_channels=in_channels,
                  crop_size=crop_size)
    if train:
        return RandomClips(num_videos=num_samples, seed=run_seed, **common)
    return RandomClips(num_videos=max(num_samples // 4, 1), views=num_clips * num_crops, seed=run_seed + 1, **common)
