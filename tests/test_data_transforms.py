"""Spatial transforms of (C, T, H, W) uint8 clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynapp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    denormalize,
    horizontal_flip,
    multiscale_crop,
    normalize,
    random_resized_crop,
    resize_short_side,
    three_crop,
)


def _coords(h: int, w: int, t: int = 2) -> torch.Tensor:
    """A clip whose channel 0 is the column index and channel 1 the row index."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img = torch.stack([x, y, torch.zeros_like(x)]).to(torch.uint8)  # (3, H, W)
    return img[:, None].repeat(1, t, 1, 1)


def test_resize_short_side_keeps_aspect_for_portrait_and_landscape():
    assert resize_short_side(_coords(30, 60), 15).shape == (3, 2, 15, 30)
    assert resize_short_side(_coords(60, 30), 15).shape == (3, 2, 30, 15)
    clip = _coords(20, 20)
    assert resize_short_side(clip, 20) is clip


def test_center_and_three_crop_positions():
    clip = _coords(10, 30)
    c = center_crop(clip, 10)
    assert c.shape == (3, 2, 10, 10) and c[0, 0, 0, 0] == 10
    crops = three_crop(clip, 10)
    assert [int(x[0, 0, 0, 0]) for x in crops] == [0, 10, 20]
    tall = three_crop(_coords(30, 10), 10)
    assert [int(x[1, 0, 0, 0]) for x in tall] == [0, 10, 20]
    assert center_crop(_coords(4, 6), 8).shape == (3, 2, 8, 8)  # smaller than the crop: enlarged


def test_multiscale_crop_sizes_and_positions():
    rng = np.random.default_rng(0)
    clip = _coords(64, 96)
    corners = set()
    for _ in range(100):
        out = multiscale_crop(clip, 32, rng)
        assert out.shape == (3, 2, 32, 32)
        corners.add((int(out[0, 0, 0, 0]) == 0, int(out[1, 0, 0, 0]) == 0))
        # the same crop for every frame
        assert torch.equal(out[:, 0], out[:, 1])
    assert len(corners) == 4  # crops at the left/right and top/bottom edges all occur


def test_random_resized_crop_is_seeded_and_sized():
    clip = _coords(40, 50)
    a = random_resized_crop(clip, 16, np.random.default_rng(3))
    b = random_resized_crop(clip, 16, np.random.default_rng(3))
    assert a.shape == (3, 2, 16, 16) and torch.equal(a, b)


def test_flip_and_normalize():
    clip = _coords(4, 5)
    f = horizontal_flip(clip)
    assert f[0, 0, 0].tolist() == [4, 3, 2, 1, 0]
    x = normalize(torch.full((3, 1, 2, 2), 255, dtype=torch.uint8))
    assert x.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor(expected))
    assert torch.allclose(denormalize(x), torch.ones_like(x))


@pytest.mark.parametrize("size", [(7, 5), (5, 7), (1, 1)])
def test_odd_and_tiny_sizes(size):
    clip = _coords(*size)
    rng = np.random.default_rng(0)
    assert multiscale_crop(resize_short_side(clip, 8), 8, rng).shape == (3, 2, 8, 8)
    assert random_resized_crop(clip, 8, rng).shape == (3, 2, 8, 8)
    assert all(c.shape == (3, 2, 8, 8) for c in three_crop(clip, 8))
