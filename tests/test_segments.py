"""The one segment layout helper: split, view, fold and unfold of (N, C, S*T, H, W) clips."""

import pytest
import torch

from dynapp.segments import fold_segments, segment_view, split_segments, unfold_segments


def test_fold_is_per_segment_slicing_and_unfold_inverts_it():
    N, C, S, T, H, W = 2, 3, 4, 5, 6, 7
    clip = torch.randn(N, C, S * T, H, W)
    folded = fold_segments(clip, S)
    assert folded.shape == (N * S, C, T, H, W)
    for n in range(N):
        for s in range(S):
            assert torch.equal(folded[n * S + s], clip[n, :, s * T : (s + 1) * T])
    view = segment_view(clip, S)
    assert view.shape == (N, S, C, T, H, W) and view.data_ptr() == clip.data_ptr()
    assert torch.equal(view.reshape(N * S, C, T, H, W), folded)
    assert fold_segments(clip, 1) is clip
    per_segment = folded.mean(2)  # (N*S, C, H, W): one output per segment
    back = unfold_segments(per_segment, S)  # (N, C, S, H, W)
    assert back.shape == (N, C, S, H, W)
    for s in range(S):
        assert torch.equal(back[:, :, s], clip[:, :, s * T : (s + 1) * T].mean(2))


def test_split_checks_the_shape_with_a_clear_message():
    clip = torch.zeros(2, 3, 8, 4, 4)
    assert split_segments(clip, 2, 4, 3).shape == (2, 3, 2, 4, 4, 4)
    with pytest.raises(ValueError, match=r"expected a clip of shape \(N, 3, S\*T=3\*3=9, H, W\); got \(2, 3, 8, 4, 4\)"):
        split_segments(clip, 3, 3, 3)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, H, W\)"):
        split_segments(clip, 1, 8, 1)
    with pytest.raises(ValueError, match="expected a clip of shape"):
        split_segments(clip[0], 2, 4)
    with pytest.raises(ValueError, match="must be positive"):
        split_segments(clip, 0, 4)
