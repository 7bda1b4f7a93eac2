"""Tests of dynapp.representations.tvnet (TVNet, unrolled TV-L1) and the flow_tvnet representation."""

import numpy as np
import pytest
import torch

from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dynapp.representations import build_representation
from dynapp.representations.flow import flow_tvl1
from dynapp.representations.tvnet import TVNet, normalised_to_gray255, warp

cv2 = pytest.importorskip("cv2")

SIZE = 32


def _pair(dx, dy, seed=0):
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE + 16, SIZE + 16)).astype(np.float32), (0, 0), 2.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min()) * 255
    o = 8
    a = tex[o : o + SIZE, o : o + SIZE].round()
    b = tex[o - dy : o - dy + SIZE, o - dx : o - dx + SIZE].round()  # content moved by (dx, dy)
    return a, b


def _median(u, m=8):
    return u[0, 0, m:-m, m:-m].median().item()


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, -1)])
def test_tvnet50_recovers_small_translation(dx, dy):
    a, b = _pair(dx, dy)
    A, B = torch.tensor(a).view(1, 1, SIZE, SIZE), torch.tensor(b).view(1, 1, SIZE, SIZE)
    u1, u2 = TVNet()(A, B)  # TVNet-50: 1 scale, 1 warp, 50 iterations
    assert u1.shape == (1, 1, SIZE, SIZE)
    assert abs(_median(u1) - dx) < 0.15 and abs(_median(u2) - dy) < 0.15


def test_multiscale_matches_opencv_tvl1():
    """With scales and warps, the unrolled solver agrees with OpenCV's TV-L1 on a 2-px shift."""
    a, b = _pair(2, -1)
    A, B = torch.tensor(a).view(1, 1, SIZE, SIZE), torch.tensor(b).view(1, 1, SIZE, SIZE)
    u1, u2 = TVNet(scales=2, warps=3, iterations=20, learnable=False)(A, B)
    ref = flow_tvl1(a.astype(np.uint8), b.astype(np.uint8))
    assert abs(_median(u1) - 2) < 0.1 and abs(_median(u2) + 1) < 0.1
    assert abs(_median(u1) - np.median(ref[0, 8:-8, 8:-8])) < 0.1
    assert abs(_median(u2) - np.median(ref[1, 8:-8, 8:-8])) < 0.1


def test_static_pair_zero_flow():
    a, _ = _pair(0, 0)
    A = torch.tensor(a).view(1, 1, SIZE, SIZE)
    u1, u2 = TVNet(iterations=10)(A, A)
    assert u1.abs().max() < 1e-4 and u2.abs().max() < 1e-4


def test_warp_integer_shift():
    img = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    ones = torch.ones(1, 1, 5, 5)
    out = warp(img, ones, 0 * ones)  # sample one pixel to the right
    torch.testing.assert_close(out[..., :4], img[..., 1:])
    torch.testing.assert_close(out[..., 4], img[..., 4])  # border padding


def test_learnable_parameters_get_finite_gradients():
    net = TVNet(iterations=5)
    names = {n for n, _ in net.named_parameters()}
    assert names == {"tau", "lambda_", "theta", "centred", "forward_x", "forward_y", "div_x", "div_y"}
    a, b = _pair(1, 0)
    u1, u2 = net(torch.tensor(a).view(1, 1, SIZE, SIZE), torch.tensor(b).view(1, 1, SIZE, SIZE))
    (u1.square().mean() + u2.square().mean()).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert net.centred.grad.abs().sum() > 0 and net.lambda_.grad.abs() > 0
    assert len(list(TVNet(learnable=False).parameters())) == 0


def test_gray_conversion():
    rgb = torch.rand(1, 3, 2, 4, 4)
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    gray = normalised_to_gray255((rgb - m) / s)
    ref = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) * 255
    torch.testing.assert_close(gray, ref, rtol=1e-5, atol=1e-3)


def test_flow_tvnet_representation():
    S, T = 2, 3
    rep = build_representation("flow_tvnet", segments=S, frames=T, iterations=5, bound=10.0)
    assert rep.out_channels == 4 and rep.out_frames == S
    clip = torch.randn(2, 3, S * T, 16, 16, requires_grad=True)
    out = rep(clip)
    assert out.aux_loss is None and out.frames.shape == (2, 4, S, 16, 16)
    out.frames.square().mean().backward()
    assert torch.isfinite(clip.grad).all() and clip.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in rep.tvnet.parameters())
    with pytest.raises(ValueError, match=r"S\*T=2\*3=6"):
        rep(torch.randn(1, 3, 5, 16, 16))


def test_flow_tvnet_layout_matches_pairs():
    """Channel 2t/2t+1 of segment s is the flow from frame t to t+1 of that segment."""
    S, T = 2, 3
    rep = build_representation("flow_tvnet", segments=S, frames=T, iterations=5, bound=10.0)
    clip = torch.randn(1, 3, S * T, 16, 16)
    out = rep(clip).frames
    gray = normalised_to_gray255(clip)  # (1, S*T, H, W)
    for s in range(S):
        for t in range(T - 1):
            i0 = gray[:, s * T + t].unsqueeze(1)
            i1 = gray[:, s * T + t + 1].unsqueeze(1)
            u1, u2 = rep.tvnet(i0, i1)
            torch.testing.assert_close(out[:, 2 * t, s], (u1[:, 0].clamp(-10, 10) / 10), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out[:, 2 * t + 1, s], (u2[:, 0].clamp(-10, 10) / 10), rtol=1e-4, atol=1e-5)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="iterations"):
        TVNet(iterations=0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        TVNet()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
