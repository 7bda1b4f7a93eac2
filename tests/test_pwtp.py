"""PWTP against a plain float64 oracle of Eq. 1 and 5-7, plus its numerical edge cases."""

import pytest
import torch
import torch.nn.functional as F

from dynapp import PWTP
from dynapp.pwtp import (
    dynamic_appearance,
    project,
    projection_coefficients,
    relation_descriptor,
    upsample_bilinear,
)


def oracle(x: torch.Tensor, A: torch.Tensor):
    """Eq. 1 and 5-7 written out literally in float64: per pixel, y = (A^T A)^-1 A^T x.

    x (N, C, T, H, W), A (N, T, D, H, W) -> x_hat (N, C, T, H, W), DA (N, C, H, W), ENoPR (N,).
    """
    x, A = x.double(), A.double()
    N, C, T, H, W = x.shape
    X = x.permute(0, 3, 4, 2, 1)  # (N, H, W, T, C): the T x C matrix of every pixel
    Ai = A.permute(0, 3, 4, 1, 2)  # (N, H, W, T, D)
    At = Ai.transpose(-1, -2)
    y = torch.linalg.inv(At @ Ai) @ At @ X  # (N, H, W, D, C)      Eq. 1
    x_hat = Ai @ y  # (N, H, W, T, C)
    p = X - x_hat  # Eq. 5
    da = p.mean(3).permute(0, 3, 1, 2)  # Eq. 6
    enopr = p.square().sum(3).mean(dim=(1, 2, 3))  # Eq. 7: sum over T, mean over H, W, C
    return x_hat.permute(0, 4, 3, 1, 2), da, enopr


def random_pair(N=2, C=3, T=8, D=1, H=5, W=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, generator=g, dtype=dtype)
    A = torch.randn(N, T, D, H, W, generator=g, dtype=dtype)
    return x, A


@pytest.mark.parametrize("D", [1, 2, 3])
def test_matches_float64_oracle(D):
    x, A = random_pair(D=D, seed=D)
    x_hat_ref, da_ref, en_ref = oracle(x, A)
    da, en, static = dynamic_appearance(x, A)
    torch.testing.assert_close(da, da_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(en, en_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(project(x, A), x_hat_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(static, x_hat_ref.mean(2), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("D", [1, 2, 3])
def test_float32_close_to_oracle(D):
    x, A = random_pair(D=D, seed=10 + D, H=16, W=16)
    _, da_ref, en_ref = oracle(x, A)
    da, en, _ = dynamic_appearance(x.float(), A.float())
    assert da.dtype == torch.float32
    torch.testing.assert_close(da.double(), da_ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(en.double(), en_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("D", [1, 3])
def test_residual_orthogonal_to_columns(D):
    x, A = random_pair(D=D, seed=3)
    p = x - project(x, A)  # (N, C, T, H, W)
    Atp = torch.einsum("ntdhw,ncthw->ncdhw", A, p)
    assert Atp.abs().max() < 1e-9


@pytest.mark.parametrize("D", [1, 2])
def test_projection_is_idempotent(D):
    x, A = random_pair(D=D, seed=4)
    x_hat = project(x, A)
    torch.testing.assert_close(project(x_hat, A), x_hat, rtol=1e-9, atol=1e-9)
    # and projecting x_hat leaves no residual energy
    _, en, _ = dynamic_appearance(x_hat, A)
    assert en.abs().max() < 1e-9


def test_constant_A_gives_zero_da():
    x, _ = random_pair(seed=5)
    N, C, T, H, W = x.shape
    level = torch.rand(N, 1, 1, H, W, dtype=x.dtype) + 0.5
    A = level.expand(N, T, 1, H, W)  # constant over time at every pixel
    da, en, _ = dynamic_appearance(x, A)
    assert da.abs().max() < 1e-9
    # the residual is then x minus its temporal mean
    expected = (x - x.mean(2, keepdim=True)).square().sum(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(en, expected)
    # with D = 2, one constant column is enough for DA = 0 as well
    A2 = torch.cat([A, torch.randn(N, T, 1, H, W, dtype=x.dtype)], 2)
    assert dynamic_appearance(x, A2)[0].abs().max() < 1e-9
    # a non-constant A does not give zero DA (the check above can fail)
    assert dynamic_appearance(x, random_pair(seed=6)[1])[0].abs().max() > 1e-2


def test_static_plus_dynamic_is_frame_mean_and_residual_on_request():
    torch.manual_seed(0)
    pwtp = PWTP(frames=4, channels=6, kernel_size=3, stride=2).double()
    x = torch.randn(2, 3, 4, 10, 12, dtype=torch.float64)
    out = pwtp(x)
    assert out.static is None and out.residual is None
    out = pwtp(x, return_static=True, return_residual=True)
    torch.testing.assert_close(out.static + out.dynamic, x.mean(2))
    assert out.residual.shape == x.shape
    torch.testing.assert_close(out.residual.mean(2), out.dynamic)
    torch.testing.assert_close(out.residual.square().sum(2).mean(dim=(1, 2, 3)), out.enopr)


def test_module_agrees_with_oracle_on_its_own_hyperplanes():
    torch.manual_seed(1)
    for D in (1, 3):
        pwtp = PWTP(frames=8, rank=D).double().eval()
        x = torch.randn(2, 3, 8, 40, 48, dtype=torch.float64)
        A = pwtp.hyperplanes(x)
        assert A.shape == (2, 8, D, 40, 48)
        _, da_ref, en_ref = oracle(x, A)
        out = pwtp(x)
        assert out.dynamic.shape == (2, 3, 40, 48) and out.enopr.shape == (2,)
        torch.testing.assert_close(out.dynamic, da_ref, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(out.enopr, en_ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("D", [1, 2])
def test_gradcheck_projection(D):
    x, A = random_pair(N=2, C=2, T=5, D=D, H=3, W=4, seed=7)
    x.requires_grad_(True)
    A.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, A: dynamic_appearance(x, A), (x, A))


@pytest.mark.parametrize("static", ["keep", "remove"])
def test_gradcheck_module_parameters_and_input(static):
    torch.manual_seed(2)
    pwtp = PWTP(frames=4, rank=1, kernel_size=3, stride=2, channels=4, static=static).double()
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in pwtp.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in pwtp.parameters())

    def f(x, *ps):
        out = torch.func.functional_call(pwtp, dict(zip(names, ps)), (x,), {"return_static": True})
        return out.dynamic, out.enopr, out.static

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_deficient_A_is_finite(dtype):
    x, A = random_pair(D=2, seed=8, dtype=dtype)
    cases = {
        "zero column": torch.cat([A[:, :, :1], torch.zeros_like(A[:, :, :1])], 2),
        "equal columns": torch.cat([A[:, :, :1], A[:, :, :1]], 2),
        "all zero, D=2": torch.zeros_like(A),
        "all zero, D=1": torch.zeros_like(A[:, :, :1]),
        "constant, D=1": torch.ones_like(A[:, :, :1]),
    }
    for name, A_bad in cases.items():
        A_bad = A_bad.clone().requires_grad_(True)
        xg = x.clone().requires_grad_(True)
        da, en, static = dynamic_appearance(xg, A_bad)
        assert torch.isfinite(da).all() and torch.isfinite(en).all(), name
        (da.square().sum() + en.sum() + static.sum()).backward()
        assert torch.isfinite(A_bad.grad).all() and torch.isfinite(xg.grad).all(), name
    # equal columns span the same line as one column: same projection as D = 1
    da1, en1, _ = dynamic_appearance(x, A[:, :, :1])
    da2, en2, _ = dynamic_appearance(x, cases["equal columns"])
    tol = 1e-3 if dtype == torch.float32 else 1e-6
    torch.testing.assert_close(da2, da1, rtol=tol, atol=tol)
    torch.testing.assert_close(en2, en1, rtol=tol, atol=tol)


def test_solved_in_float32_under_autocast():
    x, A = random_pair(D=2, seed=9, dtype=torch.float32)
    ref = dynamic_appearance(x, A)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dynamic_appearance(x, A)
        y = projection_coefficients(x, A)
    assert got[0].dtype == torch.float32 and y.dtype == torch.float32
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    pwtp = PWTP(frames=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pwtp(torch.randn(1, 3, 8, 32, 32))
    assert out.dynamic.dtype == torch.float32 and torch.isfinite(out.enopr).all()


def test_default_parameter_count():
    assert sum(p.numel() for p in PWTP().parameters()) == 9686
    # T = 6 (Table 6 of the paper: 7.13K); the bottleneck width round(0.25 * 30) = 8
    assert sum(p.numel() for p in PWTP(frames=6).parameters()) == 7100


def test_wrong_shapes_raise_clear_errors():
    pwtp = PWTP(frames=8)
    with pytest.raises(ValueError, match=r"\(N, 3, 8, H, W\)"):
        pwtp(torch.randn(3, 8, 32, 32))  # missing batch dimension
    with pytest.raises(ValueError, match=r"\(N, 3, 8, H, W\).*got \(1, 3, 6, 32, 32\)"):
        pwtp(torch.randn(1, 3, 6, 32, 32))  # wrong number of frames
    with pytest.raises(ValueError, match=r"\(N, 3, 8, H, W\)"):
        pwtp.hyperplanes(torch.randn(1, 1, 8, 32, 32))  # wrong channels
    with pytest.raises(ValueError, match="A must have shape"):
        dynamic_appearance(torch.randn(1, 3, 8, 4, 4), torch.randn(1, 6, 1, 4, 4))
    with pytest.raises(ValueError, match="rank"):
        PWTP(frames=4, rank=4)


def test_relation_descriptor_is_upper_triangle_of_gram():
    feat = torch.randn(2, 5, 4, 3, 2, dtype=torch.float64)  # (N, C', T, h, w)
    u = relation_descriptor(feat)
    assert u.shape == (2, 3, 2, 6)
    n, i, j = 1, 2, 1
    f = feat[n, :, :, i, j]  # (C', T)
    gram = f.t() @ f / 5
    expected = torch.stack([gram[0, 1], gram[0, 2], gram[0, 3], gram[1, 2], gram[1, 3], gram[2, 3]])
    torch.testing.assert_close(u[n, i, j], expected)


@pytest.mark.parametrize("src,dst", [((28, 28), (224, 224)), ((7, 5), (30, 17)), ((4, 4), (4, 4)), ((1, 3), (5, 9))])
def test_upsample_equals_interpolate(src, dst):
    z = torch.randn(2, 3, *src, dtype=torch.float64)
    ref = F.interpolate(z, size=dst, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(z, dst), ref)


def test_relation_descriptor_gradient():
    feat = torch.randn(1, 3, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(relation_descriptor, (feat,))


@pytest.mark.parametrize("D", [1, 2, 3])
def test_temporal_weights_reproduce_da(D):
    from dynapp.pwtp import temporal_weights

    x, A = random_pair(D=D, seed=20 + D)
    w = temporal_weights(A)  # (N, T, H, W)
    da = (w.unsqueeze(1) * x).sum(2)
    torch.testing.assert_close(da, dynamic_appearance(x, A)[0])
    assert (w.sum(1) >= -1e-12).all()  # the weights sum to >= 0 (docs/paper.md)
    if D == 1:
        a = A[:, :, 0]
        expected = 1 / a.shape[1] - a.mean(1, keepdim=True) * a / a.square().sum(1, keepdim=True)
        torch.testing.assert_close(w, expected)
    const = torch.ones_like(A[:, :, :1])
    assert temporal_weights(const).sum(1).abs().max() < 1e-12  # a constant A leaks nothing
