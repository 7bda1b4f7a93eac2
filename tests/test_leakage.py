"""Static leakage: 0 for a constant A, the weight-sum formula on random A, consistent with DA."""

from __future__ import annotations

import torch

from dynapp import PWTP
from dynapp.leakage import leakage_from_weights, static_leakage
from dynapp.pwtp import dynamic_appearance, temporal_weights


def _clip(n=2, c=3, t=6, h=5, w=4, seed=0):
    return torch.randn(n, c, t, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_constant_A_leaks_nothing():
    x = _clip() + 3.0  # a strong static offset
    A = torch.full((2, 6, 1, 5, 4), 0.7, dtype=torch.float64)  # rank 1, constant: DA is 0 altogether
    out = leakage_from_weights(temporal_weights(A), x)
    assert out.weight_sum.abs().max() < 1e-9
    assert out.static_share.abs().max() < 1e-6
    # rank 2 with a constant column: w = (I - P) 1 / T vanishes too (weight sum = T ||w||^2)
    A2 = torch.cat([A, torch.randn(2, 6, 1, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)], 2)
    out2 = leakage_from_weights(temporal_weights(A2), x)
    assert out2.weight_sum.abs().max() < 1e-9
    assert out2.static_share.abs().max() < 1e-6


def test_weight_sum_is_T_times_the_squared_weight_norm():
    A = torch.randn(3, 8, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = temporal_weights(A)
    out = leakage_from_weights(w, _clip(n=3, t=8, h=4, w=4))
    torch.testing.assert_close(out.weight_sum, 8 * w.square().sum(1))


def test_a_pwtp_with_constant_hyperplanes_leaks_nothing():
    torch.manual_seed(0)
    pwtp = PWTP(frames=4, rank=1, kernel_size=3, stride=2, channels=4).eval()
    with torch.no_grad():
        pwtp.head.weight.zero_()
        pwtp.head.bias.fill_(0.5)  # A = 0.5 everywhere: the constant vector spans the subspace
    clip = torch.randn(2, 3, 8, 8, 8) + 2.0  # 2 segments of 4 frames
    out = static_leakage(pwtp, clip)
    assert out.weight_sum.shape == (4, 8, 8) and out.static_share.shape == (4,)
    assert out.weight_sum.abs().max() < 1e-5 and out.static_share.max() < 1e-4
    pwtp.head.bias.data[0] = 3.0  # no longer constant over time: static content leaks
    assert static_leakage(pwtp, clip).static_share.min() > 1e-2


def test_random_A_matches_the_weight_sum_formula_and_da():
    for rank in (1, 2):
        x = _clip(seed=rank)
        A = torch.randn(2, 6, rank, 5, 4, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64)
        out = leakage_from_weights(temporal_weights(A), x)
        # 1 - T m^T (A^T A)^-1 m per pixel, m = mean_t a_t, computed independently
        Ap = A.permute(0, 3, 4, 1, 2)  # (N, H, W, T, D)
        m = Ap.mean(3, keepdim=True).transpose(-1, -2)  # (N, H, W, D, 1)
        G = Ap.transpose(-1, -2) @ Ap
        expected = 1 - 6 * (m.transpose(-1, -2) @ torch.linalg.solve(G, m)).squeeze(-1).squeeze(-1)
        torch.testing.assert_close(out.weight_sum, expected, rtol=1e-6, atol=1e-8)
        assert out.weight_sum.abs().min() > 1e-4  # random A: not the constant-vector case
        # static + motion is DA as the PWTP core computes it
        da, _, _ = dynamic_appearance(x, A)
        torch.testing.assert_close(out.static + out.motion, da, rtol=1e-6, atol=1e-8)
        # the static part is (sum_t w_t) * mean_t x, and the share its energy fraction
        xbar = x.mean(2)
        torch.testing.assert_close(out.static, expected.unsqueeze(1) * xbar)
        es = (expected.unsqueeze(1) * xbar).square().sum((1, 2, 3))
        em = out.motion.square().sum((1, 2, 3))
        torch.testing.assert_close(out.static_share, es / (es + em))
        assert ((out.static_share > 0) & (out.static_share < 1)).all()


def test_bad_shapes_raise():
    import pytest

    with pytest.raises(ValueError, match="expected w"):
        leakage_from_weights(torch.zeros(1, 4, 3, 3), torch.zeros(1, 3, 5, 3, 3))
    pwtp = PWTP(frames=4, kernel_size=3, stride=2, channels=4)
    with pytest.raises(ValueError, match="multiple"):
        static_leakage(pwtp, torch.zeros(1, 3, 6, 8, 8))
