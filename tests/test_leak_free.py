"""Leak-free DA, ``PWTP(static="remove")``: every pixel's temporal weights sum to zero.

Checked against a literal float64 reference (the full residual, the per-pixel T x T projection,
the weights with their sum removed), on the PyTorch path for D = 1, 2, 3 and on the fused CPU
kernel (D = 1), with gradchecks of both.
"""

import os
import shutil

import pytest
import torch

from dynapp import PWTP
from dynapp.kernels import pwtp_cpu
from dynapp.leakage import static_leakage
from dynapp.model import build_model
from dynapp.pwtp import _REGULARISERS, _bilinear_matrix, dynamic_appearance, temporal_weights, upsample_bilinear


def reference(x: torch.Tensor, A: torch.Tensor, static: str):
    """Literal float64 reference: per pixel P = A (A^T A)^-1 A^T, p = (I - P) x, DA = sum_t w_t x_t.

    The weights of DA = mean_t p are w = (I - P)^T 1 / T; "remove" subtracts their mean so they
    sum to zero.  Returns (da (N, C, H, W), enopr (N,), w (N, T, H, W)).
    """
    x, A = x.double(), A.double()
    T = x.shape[2]
    X = x.permute(0, 3, 4, 2, 1)  # (N, H, W, T, C)
    Ai = A.permute(0, 3, 4, 1, 2)  # (N, H, W, T, D)
    P = Ai @ torch.linalg.inv(Ai.transpose(-1, -2) @ Ai) @ Ai.transpose(-1, -2)  # (N, H, W, T, T)
    I = torch.eye(T, dtype=torch.float64)
    p = (I - P) @ X  # the full residual, Eq. 5
    w = ((I - P).transpose(-1, -2) @ torch.ones(T, 1, dtype=torch.float64) / T).squeeze(-1)  # (N, H, W, T)
    torch.testing.assert_close((w.unsqueeze(-1) * X).sum(-2), p.mean(-2))  # the weights are DA's (Eq. 6)
    if static == "remove":
        w = w - w.sum(-1, keepdim=True) / T
    da = (w.unsqueeze(-1) * X).sum(-2)  # (N, H, W, C)
    enopr = p.square().sum(-2).mean(dim=(1, 2, 3))  # Eq. 7
    return da.permute(0, 3, 1, 2), enopr, w.permute(0, 3, 1, 2)


def random_pair(N=2, C=3, T=6, D=1, H=5, W=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64) + 2.0,  # a strong static part
            torch.randn(N, T, D, H, W, generator=g, dtype=torch.float64))


def kernel_available() -> bool:
    if os.environ.get("DYNAPP_NO_KERNEL", "") not in ("", "0"):
        return False
    return bool(os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")) and pwtp_cpu.available()


needs_kernel = pytest.mark.skipif(not kernel_available(), reason="fused PWTP kernel disabled or no C++ compiler")


@pytest.mark.parametrize("D", [1, 2, 3])
@pytest.mark.parametrize("static", ["keep", "remove"])
def test_pytorch_path_matches_literal_reference(D, static):
    x, A = random_pair(D=D, seed=D)
    da_ref, en_ref, w_ref = reference(x, A, static)
    da, en, _ = dynamic_appearance(x, A, static=static)
    torch.testing.assert_close(da, da_ref, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(en, en_ref, rtol=1e-8, atol=1e-8)
    w = temporal_weights(A, static=static)
    torch.testing.assert_close(w, w_ref, rtol=1e-8, atol=1e-8)
    if static == "remove":
        assert w.sum(1).abs().max() < 1e-12
        # the leak-free DA differs from the paper's by (weight sum) x (temporal mean)
        da_keep = dynamic_appearance(x, A)[0]
        torch.testing.assert_close(da, da_keep - temporal_weights(A).sum(1).unsqueeze(1) * x.mean(2))
        # and it is the paper's DA of the temporally centred clip
        torch.testing.assert_close(da, dynamic_appearance(x - x.mean(2, keepdim=True), A)[0])


@pytest.mark.parametrize("D", [1, 2])
def test_static_clip_gives_zero_for_any_A(D):
    x, A = random_pair(D=D, seed=10 + D)
    static_clip = x[:, :, :1].expand_as(x).contiguous()
    assert dynamic_appearance(static_clip, A)[0].abs().max() > 1e-2  # the paper's DA leaks
    assert dynamic_appearance(static_clip, A, static="remove")[0].abs().max() < 1e-12
    # float32 as well, to rounding
    da32 = dynamic_appearance(static_clip.float(), A.float(), static="remove")[0]
    assert da32.abs().max() < 1e-5 * static_clip.abs().max()


def test_enopr_and_static_output_do_not_depend_on_the_option():
    for D in (1, 2):
        x, A = random_pair(D=D, seed=20 + D)
        keep, remove = dynamic_appearance(x, A), dynamic_appearance(x, A, static="remove")
        assert torch.equal(keep[1], remove[1]) and torch.equal(keep[2], remove[2])


@pytest.mark.parametrize("D", [1, 2])
def test_gradcheck_pytorch_path(D):
    x, A = random_pair(N=2, C=2, T=5, D=D, H=3, W=4, seed=30 + D)
    x.requires_grad_(True)
    A.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, A: dynamic_appearance(x, A, static="remove"), (x, A))


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="static must be one of 'keep', 'remove'"):
        PWTP(frames=4, static="drop")
    x, A = random_pair()
    with pytest.raises(ValueError, match="static must be one of"):
        dynamic_appearance(x, A, static="off")


def _zc(z: torch.Tensor, W: int) -> torch.Tensor:
    return z @ _bilinear_matrix(z.shape[-1], W, "cpu", z.dtype).t()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("geometry", [(2, 3, 8, 40, 150, 5, 19), (2, 2, 4, 12, 10, 3, 4)], ids=["wide", "small"])
def test_kernel_matches_reference_and_pytorch_gradient(dtype, geometry):
    N, C, T, H, W, h, w = geometry
    g = torch.Generator().manual_seed(sum(geometry))
    x = (torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64) + 2.0).to(dtype)
    z = torch.randn(N, T, h, w, generator=g, dtype=torch.float64).to(dtype)
    eps = _REGULARISERS[dtype][0]
    A = upsample_bilinear(z.double(), (H, W)).unsqueeze(2)
    da_ref, en_ref, _ = reference(x, A, "remove")
    zc = _zc(z, W).requires_grad_(True)
    da, enopr, static = pwtp_cpu.rank_one_dynamic_appearance(x, zc, eps, need_static=True, remove=True)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert (da.double() - da_ref).abs().max() <= tol * da_ref.abs().max()
    assert (enopr.double() - en_ref).abs().max() <= tol * en_ref.abs().max()
    # gradient of every output against the PyTorch path on the same inputs
    grads = [torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype),
             torch.rand(N, generator=g, dtype=torch.float64).to(dtype) + 0.5,
             torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)]
    torch.autograd.backward((da, enopr, static), grads)
    zr = z.clone().requires_grad_(True)
    outs = dynamic_appearance(x, upsample_bilinear(zr, (H, W)).unsqueeze(2), static="remove")
    torch.autograd.backward(outs, grads)
    got = zc.grad @ _bilinear_matrix(w, W, "cpu", dtype)
    assert (got - zr.grad).abs().max() <= 10 * tol * zr.grad.abs().max()


@needs_kernel
def test_gradcheck_kernel():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 4, 5, 6, generator=g, dtype=torch.float64) + 1.0
    zc = _zc(torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64), 6).requires_grad_(True)
    f = lambda zc: pwtp_cpu.rank_one_dynamic_appearance(x, zc, 1e-12, need_static=True, remove=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (zc,))


@needs_kernel
def test_kernel_static_clip_and_enopr():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(2, 3, 1, 24, 20, generator=g, dtype=torch.float64) + 2.0
    x = v.expand(2, 3, 8, 24, 20).contiguous()
    zc = _zc(torch.randn(2, 8, 3, 4, generator=g, dtype=torch.float64), 20)
    keep = pwtp_cpu.rank_one_dynamic_appearance(x, zc, 1e-12, need_static=True)
    remove = pwtp_cpu.rank_one_dynamic_appearance(x, zc, 1e-12, need_static=True, remove=True)
    assert keep[0].abs().max() > 1e-2 and remove[0].abs().max() < 1e-12
    assert torch.equal(keep[1], remove[1]) and torch.equal(keep[2], remove[2])


@pytest.mark.parametrize("rank", [1, 2])
def test_module_weights_sum_to_zero_and_reproduce_da(rank):
    torch.manual_seed(0)
    pwtp = PWTP(frames=4, rank=rank, kernel_size=3, stride=2, channels=4, static="remove").double().eval()
    clip = torch.randn(2, 3, 8, 12, 10, dtype=torch.float64) + 2.0  # 2 segments of 4 frames
    w = pwtp.temporal_weights(clip, segments=2)  # (4, 4, 12, 10)
    assert w.shape == (4, 4, 12, 10) and w.sum(1).abs().max() < 1e-12
    folded = clip.unflatten(2, (2, 4)).transpose(1, 2).reshape(4, 3, 4, 12, 10)
    with torch.no_grad():
        out = pwtp(clip, segments=2)  # the fused kernel where it runs (D = 1)
        pwtp.impl = "reference"
        ref = pwtp(clip, segments=2)
    torch.testing.assert_close(out.dynamic, (w.unsqueeze(1) * folded).sum(2))
    torch.testing.assert_close(out.dynamic, ref.dynamic)
    torch.testing.assert_close(out.enopr, ref.enopr)
    # a static clip gives DA = 0 whatever the learned hyperplanes are
    still = clip[:, :, :1].expand_as(clip)
    with torch.no_grad():
        assert pwtp(still, segments=2).dynamic.abs().max() < 1e-12


def test_leakage_reports_no_static_share():
    torch.manual_seed(0)
    keep = PWTP(frames=4, kernel_size=3, stride=2, channels=4).eval()
    remove = PWTP(frames=4, kernel_size=3, stride=2, channels=4, static="remove").eval()
    remove.load_state_dict(keep.state_dict())  # the same hyperplanes
    clip = torch.randn(2, 3, 8, 16, 16) + 2.0
    assert static_leakage(keep, clip).static_share.min() > 1e-3
    out = static_leakage(remove, clip)
    assert out.weight_sum.abs().max() < 1e-6 and out.static_share.max() < 1e-10


def test_build_model_passes_the_option_through():
    model = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4,
                        representation_kwargs={"static": "remove"})
    assert model.representation.pwtp.static == "remove"
    assert "static='remove'" in repr(model.representation.pwtp)
    assert build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2,
                       frames=4).representation.pwtp.static == "keep"
    clip = torch.randn(2, 3, 8, 32, 32)
    out = model(clip)
    out.logits.sum().backward()
    assert torch.isfinite(out.aux_loss)
