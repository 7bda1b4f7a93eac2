"""Frame indices of TSN and dense sampling, in training and testing, including short videos."""

from __future__ import annotations

import numpy as np
import pytest

from dynapp.data.sampling import clip_span, dense_indices, sample_indices, tsn_indices


def test_tsn_test_windows_are_centred_in_each_segment():
    # 80 frames, 4 segments of 20: windows of 8 start at 6, 26, 46, 66.
    idx = tsn_indices(80, 4, 8, train=False)
    expected = np.concatenate([np.arange(s, s + 8) for s in (6, 26, 46, 66)])
    assert idx.tolist() == expected.tolist()
    # Uneven segments: 10 frames into 3 segments [0,3) [3,6) [6,10), T=1 -> 1, 4, 7.
    assert tsn_indices(10, 3, 1, train=False).tolist() == [1, 4, 7]


def test_tsn_train_windows_stay_inside_their_segments_and_vary():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = tsn_indices(100, 5, 4, train=True, rng=rng).reshape(5, 4)
        for s, window in enumerate(idx):
            assert np.all(np.diff(window) == 1)  # T consecutive frames
            assert 20 * s <= window[0] and window[-1] < 20 * (s + 1)
        starts.add(int(idx[0, 0]))
    assert starts == set(range(0, 17))  # every start in [0, 20 - 4] is drawn


def test_tsn_multi_clip_positions_spread_over_the_segment():
    # One segment of 40 frames, T=8: starts range over [0, 32]; 4 clips at 1/8, 3/8, 5/8, 7/8.
    starts = [int(tsn_indices(40, 1, 8, train=False, clip=k, num_clips=4)[0]) for k in range(4)]
    assert starts == [4, 12, 20, 28]
    assert int(tsn_indices(40, 1, 8, train=False)[0]) == 16


def test_tsn_short_video_uses_overlapping_windows_without_repeats():
    # 20 frames < S*T = 32: segments of 5 frames; each T=8 window contains its segment.
    idx = tsn_indices(20, 4, 8, train=False).reshape(4, 8)
    assert idx[:, 0].tolist() == [0, 3, 8, 12]
    for s, window in enumerate(idx):
        seg = range(5 * s, 5 * s + 5)
        assert set(seg) <= set(window.tolist())
        assert np.all(np.diff(window) == 1)
    rng = np.random.default_rng(1)
    for _ in range(50):
        w = tsn_indices(20, 4, 8, train=True, rng=rng).reshape(4, 8)
        assert w.min() >= 0 and w.max() <= 19
        for s in range(4):
            assert set(range(5 * s, 5 * s + 5)) <= set(w[s].tolist())


def test_video_shorter_than_one_segment_window_repeats_the_last_frame():
    idx = tsn_indices(5, 2, 4, train=False)
    assert idx.tolist() == [0, 1, 2, 3, 1, 2, 3, 4]
    idx = tsn_indices(3, 2, 4, train=True, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 1, 2, 2, 0, 1, 2, 2]
    assert tsn_indices(1, 8, 8, train=False).tolist() == [0] * 64


def test_dense_sampling_centre_random_and_views():
    # 100 frames, 2 x 4 = 8 frames at stride 2 -> span 15; centred start (100 - 15) // 2 = 42.
    assert clip_span(2, 4, 2) == 15
    assert dense_indices(100, 2, 4, stride=2, train=False).tolist() == list(range(42, 57, 2))
    views = [dense_indices(100, 2, 4, stride=2, train=False, clip=k, num_clips=3)[0] for k in range(3)]
    assert views == [14, 42, 70]  # 85 * 1/6, 3/6, 5/6
    rng = np.random.default_rng(0)
    seen = {int(dense_indices(100, 2, 4, stride=2, train=True, rng=rng)[0]) for _ in range(2000)}
    assert min(seen) == 0 and max(seen) == 85 and len(seen) > 80


def test_dense_short_video_shrinks_the_stride_then_clamps():
    # span at stride 4 is 29 > 20 frames: stride becomes (20 - 1) // 7 = 2 (span 15), centred.
    assert dense_indices(20, 2, 4, stride=4, train=False).tolist() == list(range(2, 17, 2))
    # fewer frames than S*T: consecutive from 0, last frame repeated
    assert dense_indices(5, 2, 4, stride=3, train=True, rng=np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_dispatch_and_errors():
    assert sample_indices("tsn", 80, 4, 8, train=False).tolist() == tsn_indices(80, 4, 8, train=False).tolist()
    assert sample_indices("dense", 80, 4, 8, train=False, stride=2).tolist() == dense_indices(
        80, 4, 8, train=False, stride=2).tolist()
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_indices("uniform", 80, 4, 8, train=False)
    with pytest.raises(ValueError, match="at least one frame"):
        tsn_indices(0, 4, 8, train=False)
    with pytest.raises(ValueError, match="clip must be"):
        dense_indices(80, 4, 8, train=False, clip=2, num_clips=2)
