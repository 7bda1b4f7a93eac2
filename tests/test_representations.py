"""Tests of dynapp.representations: shapes, exact small cases, errors, gradients."""

from fractions import Fraction

import pytest
import torch

from dynapp import PWTP
from dynapp.representations import (
    REPRESENTATIONS,
    RepresentationOutput,
    build_representation,
    centre_frames,
    dynamic_image,
    rank_pool_weights,
    rgb_difference,
)

NO_FLOW = ["rgb", "rgb_diff", "dynamic_image", "pwtp"]


def _clip(N=2, C=3, S=2, T=4, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, S * T, H, W, generator=g)


# ---------------------------------------------------------------------------------------------
# Interface.


def test_registry_names():
    assert set(REPRESENTATIONS) == {"rgb", "rgb_diff", "dynamic_image", "flow_tvl1", "flow_farneback", "flow_tvnet", "pwtp"}


@pytest.mark.parametrize(
    "name,channels",
    [("rgb", lambda C, T: C), ("rgb_diff", lambda C, T: C * (T - 1)), ("dynamic_image", lambda C, T: C), ("pwtp", lambda C, T: C)],
)
def test_output_shapes_and_attributes(name, channels):
    N, C, S, T, H, W = 2, 3, 3, 4, 16, 24
    rep = build_representation(name, segments=S, frames=T, in_channels=C)
    out = rep(_clip(N, C, S, T, H, W))
    assert isinstance(out, RepresentationOutput)
    assert rep.out_channels == channels(C, T)
    assert rep.out_frames == S
    assert out.frames.shape == (N, rep.out_channels, rep.out_frames, H, W)
    assert torch.isfinite(out.frames).all()
    if name == "pwtp":
        assert out.aux_loss is not None and out.aux_loss.dim() == 0
    else:
        assert out.aux_loss is None


def test_rgb_centre_frame_and_all_frames():
    S, T = 3, 4
    clip = _clip(S=S, T=T)
    out = build_representation("rgb", segments=S, frames=T)(clip).frames
    for s in range(S):
        assert torch.equal(out[:, :, s], clip[:, :, s * T + T // 2])
    assert torch.equal(centre_frames(clip, S, T), out)
    rep = build_representation("rgb", segments=S, frames=T, all_frames=True)
    assert rep.out_frames == S * T and rep.out_channels == 3
    assert torch.equal(rep(clip).frames, clip)


def test_rgb_one_channel():
    clip = _clip(C=1, S=2, T=3)
    rep = build_representation("rgb", segments=2, frames=3, in_channels=1)
    assert rep(clip).frames.shape == (2, 1, 2, 16, 16)


@pytest.mark.parametrize("name", NO_FLOW + ["flow_tvl1", "flow_farneback", "flow_tvnet"])
def test_wrong_frame_count_raises(name):
    rep = build_representation(name, segments=2, frames=4)
    with pytest.raises(ValueError, match=r"S\*T=2\*4=8"):
        rep(_clip(S=3, T=3))  # 9 frames instead of 8


@pytest.mark.parametrize("name", NO_FLOW)
def test_wrong_channel_count_raises(name):
    rep = build_representation(name, segments=2, frames=4)
    with pytest.raises(ValueError, match=r"\(N, 3, S\*T"):
        rep(_clip(C=2, S=2, T=4))
    with pytest.raises(ValueError, match="expected a clip of shape"):
        rep(torch.zeros(3, 8, 16, 16))  # not 5-D


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown representation 'optical'"):
        build_representation("optical", segments=1, frames=8)


# ---------------------------------------------------------------------------------------------
# pwtp (Dynamic Appearance).


def test_pwtp_matches_per_segment_calls():
    """Folding S into the batch equals running PWTP on each segment (eval mode: no batch statistics)."""
    torch.manual_seed(0)
    N, S, T = 2, 3, 4
    rep = build_representation("pwtp", segments=S, frames=T, rank=1, kernel_size=3, stride=4, channels=6).eval()
    assert isinstance(rep.pwtp, PWTP) and rep.pwtp.frames == T
    clip = _clip(N=N, S=S, T=T)
    out = rep(clip)
    enoprs = []
    for s in range(S):
        ref = rep.pwtp(clip[:, :, s * T : (s + 1) * T].contiguous())
        torch.testing.assert_close(out.frames[:, :, s], ref.dynamic, rtol=1e-5, atol=1e-5)
        enoprs.append(ref.enopr)
    torch.testing.assert_close(out.aux_loss, torch.stack(enoprs).mean(), rtol=1e-5, atol=1e-6)


def test_pwtp_kwargs_reach_pwtp():
    rep = build_representation("pwtp", segments=1, frames=6, rank=2, channels=8)
    assert rep.pwtp.rank == 2 and rep.pwtp.conv.out_channels == 8 and rep.pwtp.frames == 6


def test_pwtp_on_unit_pixels_sees_the_clip_before_normalisation():
    """``pixels="unit"``: PWTP runs on ``x * std + mean`` (the [0, 1] clip) of the normalised clip."""
    from dynapp.imagenet import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    unit = build_representation("pwtp", segments=2, frames=4, pixels="unit", kernel_size=3, stride=2).eval()
    plain = build_representation("pwtp", segments=2, frames=4, kernel_size=3, stride=2).eval()
    plain.load_state_dict(unit.state_dict())
    x01 = torch.rand(2, 3, 8, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    a, b = unit((x01 - mean) / std), plain(x01)
    torch.testing.assert_close(a.frames, b.frames, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.aux_loss, b.aux_loss)
    with pytest.raises(ValueError, match="pixels must be one of normalized, unit"):
        build_representation("pwtp", segments=1, frames=4, pixels="raw")


def test_pwtp_backward_finite():
    torch.manual_seed(0)
    rep = build_representation("pwtp", segments=2, frames=4, kernel_size=3, stride=4, channels=6)
    clip = _clip(N=2, S=2, T=4).requires_grad_()
    out = rep(clip)
    (out.frames.square().mean() + out.aux_loss).backward()
    assert torch.isfinite(clip.grad).all() and clip.grad.abs().sum() > 0
    grads = [p.grad for p in rep.pwtp.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------------------------------------
# rgb_diff.


def test_rgb_diff_values_and_order():
    S, T, C = 2, 3, 3
    clip = _clip(S=S, T=T, C=C)
    out = rgb_difference(clip, S, T)
    assert out.shape == (2, C * (T - 1), S, 16, 16)
    for s in range(S):
        for t in range(T - 1):
            for c in range(C):
                expected = clip[:, c, s * T + t + 1] - clip[:, c, s * T + t]
                assert torch.equal(out[:, t * C + c, s], expected)


def test_rgb_diff_static_clip_is_zero():
    frame = torch.randn(2, 3, 1, 8, 8)
    clip = frame.expand(2, 3, 8, 8, 8)
    out = build_representation("rgb_diff", segments=2, frames=4)(clip).frames
    assert out.shape == (2, 9, 2, 8, 8)
    assert torch.count_nonzero(out) == 0


# ---------------------------------------------------------------------------------------------
# dynamic_image.


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 10, 16])
def test_rank_pool_weights_formula_and_zero_sum(n):
    w = rank_pool_weights(n)
    exact = [sum(Fraction(2 * i - n - 1, i) for i in range(t, n + 1)) for t in range(1, n + 1)]
    torch.testing.assert_close(w, torch.tensor([float(e) for e in exact], dtype=torch.float64), rtol=0, atol=1e-12)
    assert sum(exact) == 0
    assert abs(w.sum().item()) < 1e-12


def test_rank_pool_weights_small_case():
    # n = 3: terms (2i - 4)/i = -2, 0, 2/3 -> alpha = (-4/3, 2/3, 2/3).
    torch.testing.assert_close(rank_pool_weights(3), torch.tensor([-4 / 3, 2 / 3, 2 / 3], dtype=torch.float64))
    # The first frame always has the most negative weight, the last a positive one.
    w = rank_pool_weights(8)
    assert w.argmin() == 0 and w[-1] > 0


def test_dynamic_image_static_clip_is_zero():
    frame = torch.randn(2, 3, 1, 8, 8)
    clip = frame.expand(2, 3, 12, 8, 8)
    out = build_representation("dynamic_image", segments=3, frames=4)(clip).frames
    assert out.shape == (2, 3, 3, 8, 8)
    assert out.abs().max() < 1e-5


def test_dynamic_image_values():
    S, T = 2, 5
    clip = _clip(S=S, T=T).double()
    alpha = rank_pool_weights(T)
    alpha = alpha / (alpha.abs().sum() / 2)
    out = build_representation("dynamic_image", segments=S, frames=T)(clip).frames
    for s in range(S):
        ref = sum(alpha[t] * clip[:, :, s * T + t] for t in range(T))
        torch.testing.assert_close(out[:, :, s], ref)
    # Unnormalised weights: the plain sum_t alpha_t x_t.
    raw = dynamic_image(clip[:, :, :T], dim=2, normalise=False)
    torch.testing.assert_close(raw, sum(rank_pool_weights(T)[t] * clip[:, :, t] for t in range(T)))


def test_dynamic_image_linear_ramp_is_positive():
    """A brightness ramp rising in time gives a positive dynamic image (later frames weigh more)."""
    T = 6
    ramp = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(1, 3, T, 4, 4)
    di = dynamic_image(ramp, dim=2)
    assert (di > 0).all()
    # Normalised weights: +1 and -1 halves, so a unit step from the first to the last frames
    # gives at most the step.
    assert di.max() <= T - 1


# ---------------------------------------------------------------------------------------------
# Declared capabilities and the names the CLI reads.


def test_names_module_lists_the_dict():
    from dynapp import names

    assert names.REPRESENTATIONS == tuple(REPRESENTATIONS)


@pytest.mark.parametrize("name", sorted(REPRESENTATIONS))
def test_capabilities_are_declared_and_consistent(name):
    cls = REPRESENTATIONS[name]
    S, T = 2, 4
    rep = build_representation(name, segments=S, frames=T)
    assert isinstance(rep, cls)
    assert rep.out_channels == cls.channels_per_frame(3, T)
    assert 1 <= cls.frames_consumed(T) <= T and cls.min_frames <= T
    assert cls.has_aux_loss == (name == "pwtp")
    if name in ("flow_tvl1", "flow_farneback"):  # OpenCV
        assert not cls.differentiable and not cls.countable
        return
    assert cls.differentiable and cls.countable == (name != "flow_tvnet")  # TVNet: element-wise only
    clip = _clip(N=1, S=S, T=T).requires_grad_()
    out = rep(clip)
    out.frames.sum().backward()
    assert clip.grad is not None and torch.isfinite(clip.grad).all()


def test_too_few_frames_is_a_clear_error():
    for name, cls in REPRESENTATIONS.items():
        if cls.min_frames > 1:
            with pytest.raises(ValueError, match=f"needs at least {cls.min_frames} frames per segment"):
                build_representation(name, segments=2, frames=cls.min_frames - 1)
    assert build_representation("rgb", segments=2, frames=1).out_frames == 2


def test_all_frames_only_where_one_frame_makes_one_output():
    for name, cls in REPRESENTATIONS.items():
        rep = build_representation(name, segments=2, frames=3, all_frames=True)
        assert rep.out_frames == (6 if cls.frames_consumed(3) == 1 else 2), name
