"""The synthetic same-scene action dataset: determinism, motions as named, shared scenes, scene bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynapp.data import build_dataset
from dynapp.data.synthetic import MOTIONS, SyntheticActions, write_synthetic_videos


def _ds(**kw):
    base = dict(num_videos=16, train=True, segments=2, frames=4, num_classes=8, num_scenes=8, size=32)
    base.update(kw)
    return SyntheticActions(**base)


def test_deterministic_per_seed_and_split():
    a, b = _ds(seed=3, noise=0.02, flicker=0.1, shake=1), _ds(seed=3, noise=0.02, flicker=0.1, shake=1)
    for i in (0, 5, 11):
        xa, la, ia = a[i]
        xb, lb, ib = b[i]
        assert torch.equal(xa, xb) and la == lb and ia == ib == i
    c = _ds(seed=4)
    assert not torch.equal(a[0][0], c[0][0])
    test = _ds(seed=3, train=False, noise=0.02, flicker=0.1, shake=1)
    assert not torch.equal(a[0][0], test[0][0])  # the splits are different draws


def test_item_contract_and_build_dataset():
    ds = build_dataset("synthetic", "", train=True, segments=2, frames=4, crop_size=24, num_train=10,
                       num_classes=4, sampling="tsn", flip=True, num_clips=2)
    clip, label, index = ds[7]
    assert clip.shape == (3, 8, 24, 24) and clip.dtype == torch.float32
    assert label == 7 % 4 and index == 7 and len(ds) == 10 and ds.num_classes == 4
    # normalised with the ImageNet statistics: values outside [0, 1]
    assert float(clip.min()) < 0.0
    test = build_dataset("synthetic", "", train=False, segments=2, frames=4, crop_size=24, num_test=6, num_classes=4)
    assert len(test) == 6
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticActions(num_videos=2, train=True, segments=1, frames=2, num_classes=1)


def _measured_centroids(ds: SyntheticActions, i: int) -> np.ndarray:
    """Actor centroid (x, y) per frame, measured from the frames: pixels that differ from the
    same clip rendered without the actor."""
    with_actor = ds.render(i).frames.astype(np.float32)
    without = ds.render(i, actor=False).frames.astype(np.float32)
    diff = np.abs(with_actor - without).sum(-1)  # (T, H, W)
    out = []
    yy, xx = np.mgrid[0 : diff.shape[1], 0 : diff.shape[2]]
    for d in diff:
        m = d > 30
        assert m.sum() > 3, "actor not visible"
        out.append([xx[m].mean(), yy[m].mean()])
    return np.array(out)


def _measured_area(ds, i):
    a = ds.render(i).frames.astype(np.float32)
    b = ds.render(i, actor=False).frames.astype(np.float32)
    return (np.abs(a - b).sum(-1) > 30).sum(axis=(1, 2))


@pytest.mark.parametrize("shake,movers,scale", [(0.0, 0, (0.09, 0.14)), (1.0, 0, (0.09, 0.14)), (0.0, 2, (0.05, 0.08))])
def test_each_motion_is_what_its_name_says(shake, movers, scale):
    ds = _ds(num_videos=32, segments=4, frames=4, shake=shake, flicker=0.05, noise=0.0, moving_distractors=movers,
             actor_scale=scale)
    for i in range(32):
        name = MOTIONS[ds.label_and_scene(i)[0]]
        c = _measured_centroids(ds, i)
        dx, dy = c[-1] - c[0]
        if name == "move_left":
            assert dx < -2 and abs(dy) < 1.5 + 2 * shake, (i, dx, dy)
        elif name == "move_right":
            assert dx > 2 and abs(dy) < 1.5 + 2 * shake, (i, dx, dy)
        elif name == "move_up":
            assert dy < -2 and abs(dx) < 1.5 + 2 * shake, (i, dx, dy)
        elif name == "move_down":
            assert dy > 2 and abs(dx) < 1.5 + 2 * shake, (i, dx, dy)
        elif name in ("grow", "shrink"):
            area = _measured_area(ds, i)
            assert (area[-1] > 2 * area[0]) if name == "grow" else (area[0] > 2 * area[-1]), (name, area)
        else:  # circles: the signed area swept around the mean centre (image y down: cw > 0)
            rel = c - c.mean(0)
            cross = rel[:-1, 0] * rel[1:, 1] - rel[:-1, 1] * rel[1:, 0]
            assert (cross.sum() > 0) == (name == "circle_cw"), (name, cross.sum())


def test_actor_scale_sets_the_actor_size():
    small = _ds(num_videos=8, num_classes=4, actor_scale=(0.05, 0.05))
    large = _ds(num_videos=8, num_classes=4, actor_scale=(0.12, 0.12))
    for i in (0, 1):  # move_left, move_right: constant size
        assert np.allclose(small.render(i).size, 0.05 * 32) and np.allclose(large.render(i).size, 0.12 * 32)
        assert _measured_area(large, i).mean() > 3 * _measured_area(small, i).mean()
    with pytest.raises(ValueError, match="actor_scale"):
        _ds(actor_scale=(0.1, 0.05))


def test_moving_distractors_sway_without_net_motion_and_ignore_the_class():
    n = 32  # frames per clip (segments 4 x frames 8)
    ds = _ds(num_videos=16, segments=4, frames=8, moving_distractors=2, distractors=0)
    still = _ds(num_videos=16, segments=4, frames=8, moving_distractors=0, distractors=0)
    for i in range(16):
        movers = ds._movers(np.random.default_rng([ds.seed, 1, i, 4]), n)
        assert len(movers) == 2
        for _, _, x, y, r in movers:
            path = np.hypot(np.diff(x), np.diff(y)).sum()
            span = np.hypot(x - x[0], y - y[0]).max()
            assert path > 2.5 * span > 0  # back and forth: at least one full swing
            assert (x - r >= -1).all() and (x + r <= 33).all() and (y - r >= -1).all() and (y + r <= 33).all()
        # the scene without the actor changes over time (the movers), it does not without them
        bg = ds.render(i, actor=False).frames.astype(np.float32)
        assert np.abs(bg - bg[0]).max() > 50
        assert np.array_equal(still.render(i, actor=False).frames[0], still.render(i, actor=False).frames[-1])
    # the movers come from the clip's own stream, not from its class: item 3 is move_right with
    # 2 classes and move_down with 4, and its scene and movers are the same
    a = _ds(num_videos=4, num_classes=2, moving_distractors=1).render(3, actor=False).frames
    b = _ds(num_videos=4, num_classes=4, moving_distractors=1).render(3, actor=False).frames
    assert np.array_equal(a, b)


def test_test_scenes_are_shared_by_all_classes():
    k, scenes = 4, 5
    test = _ds(num_videos=k * scenes * 2, train=False, num_classes=k, num_scenes=scenes)
    pairs = {test.label_and_scene(i) for i in range(len(test))}
    assert pairs == {(c, s) for c in range(k) for s in range(scenes)}
    # the same scene index renders the same background in both splits
    train = _ds(num_videos=40, train=True, num_classes=k, num_scenes=scenes)
    i_test = 0
    s = test.label_and_scene(i_test)[1]
    j = next(j for j in range(40) if train.label_and_scene(j)[1] == s)
    bg_test = test.render(i_test, actor=False).frames[0]
    bg_train = train.render(j, actor=False).frames[0]
    assert np.array_equal(bg_test, bg_train)


@pytest.mark.parametrize("bias", [0.0, 0.6, 1.0])
def test_scene_bias_in_training_only(bias):
    k, scenes, n = 4, 8, 4000
    train = _ds(num_videos=n, train=True, num_classes=k, num_scenes=scenes, scene_bias=bias)
    test = _ds(num_videos=n, train=False, num_classes=k, num_scenes=scenes, scene_bias=bias)
    match_train = np.mean([s % k == c for c, s in (train.label_and_scene(i) for i in range(n))])
    match_test = np.mean([s % k == c for c, s in (test.label_and_scene(i) for i in range(n))])
    expected = bias + (1 - bias) / k
    assert abs(match_train - expected) < 0.03, (match_train, expected)
    assert abs(match_test - 1 / k) < 0.01, match_test


def test_cache_as_lossless_video_files(tmp_path):
    pytest.importorskip("av")
    from dynapp.data.decode import read_frames

    ds = _ds(num_videos=3, num_classes=2, segments=1, frames=4)
    paths = write_synthetic_videos(ds, tmp_path)
    assert [p.parent.name for p in paths] == ["move_left", "move_right", "move_left"]
    frames = read_frames(paths[1], list(range(4)))  # (3, T, H, W) uint8
    assert torch.equal(frames, ds.clip_uint8(1))


def test_validation_split_is_laid_out_like_test_but_holds_other_clips():
    from dynapp.data.synthetic import SyntheticActions

    kw = dict(num_videos=16, segments=2, frames=4, num_classes=4, num_scenes=4, size=16, seed=3)
    test = SyntheticActions(train=False, **kw)
    val = SyntheticActions(train=False, validation=True, **kw)
    assert val.split == "val" and test.split == "test"
    # same layout (every scene with every class, uncorrelated), different clips
    assert [val.label_and_scene(i) for i in range(16)] == [test.label_and_scene(i) for i in range(16)]
    assert all(not torch.equal(val.clip_uint8(i), test.clip_uint8(i)) for i in range(16))
    again = SyntheticActions(train=False, validation=True, **kw)
    assert torch.equal(again.clip_uint8(5), val.clip_uint8(5))  # a pure function of (seed, split, index)
    with pytest.raises(ValueError, match="validation=True is a held-out split"):
        SyntheticActions(train=True, validation=True, **kw)
