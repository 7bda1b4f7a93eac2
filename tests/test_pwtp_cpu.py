"""The fused CPU kernel (dynapp.kernels.pwtp_cpu) against the eager path of dynapp.pwtp, plus its build,
fallback and the impl switch of PWTP."""

import os
import shutil
import tempfile
import warnings

import pytest
import torch

from dynapp import PWTP
from dynapp.kernels import pwtp_cpu
from dynapp.pwtp import _REGULARISERS, _PairwiseSimilarity, _bilinear_matrix, dynamic_appearance, upsample_bilinear

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # relative to the largest reference value


def _compiler() -> str | None:
    """The compiler pwtp_cpu would use (same lookup order), or None."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@pytest.fixture
def kernel():
    """Skip where the kernel cannot be built by design (no compiler, or disabled); else it must load."""
    if os.environ.get("DYNAPP_NO_KERNEL", "") not in ("", "0") or _compiler() is None:
        pytest.skip("fused PWTP kernel disabled or no C++ compiler")
    assert pwtp_cpu.available(), "a compiler is present but the fused kernel did not load"
    return pwtp_cpu


@pytest.fixture
def fresh_state(monkeypatch):
    """An empty library cache in pwtp_cpu, so the next call resolves (builds, loads or refuses) anew."""
    monkeypatch.setattr(pwtp_cpu, "_state", {})
    monkeypatch.delenv("DYNAPP_NO_KERNEL", raising=False)


def eps_of(dtype: torch.dtype) -> float:
    """The absolute regulariser PWTP uses at this precision."""
    return _REGULARISERS[dtype][0]


def random_inputs(N, C, T, H, W, h, w, dtype, seed=0):
    """A clip x (N, C, T, H, W) and hyperplanes z (N, T, h, w), both standard normal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, T, H, W, generator=g, dtype=torch.float64).to(dtype)
    z = torch.randn(N, T, h, w, generator=g, dtype=torch.float64).to(dtype)
    return x, z


def upsample_w(z: torch.Tensor, W: int) -> torch.Tensor:
    """zc = z @ U_w^T: the hyperplanes (N, T, h, w) upsampled along the width only, as PWTP feeds the kernel."""
    return z @ _bilinear_matrix(z.shape[-1], W, "cpu", z.dtype).t()


def eager(x: torch.Tensor, z: torch.Tensor):
    """Reference: (da, enopr, static) of the eager path on A = upsample_bilinear(z, (H, W))."""
    A = upsample_bilinear(z, x.shape[-2:]).unsqueeze(2)  # (N, T, 1, H, W)
    return dynamic_appearance(x, A)


def fused(x: torch.Tensor, z: torch.Tensor):
    """The kernel on the same inputs: (da, enopr, static), z upsampled along W here and along H in the kernel."""
    return pwtp_cpu.rank_one_dynamic_appearance(x, upsample_w(z, x.shape[-1]), eps_of(x.dtype), need_static=True)


def outputs_and_grad(fn, x, z, grads):
    """fn(x, z) -> (da, enopr, static), and d/dz of <grads, outputs> for fixed upstream gradients."""
    z = z.detach().clone().requires_grad_(True)
    outs = fn(x, z)
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs], z.grad


def assert_rel_close(got: torch.Tensor, ref: torch.Tensor, rtol: float, what: str = ""):
    """max |got - ref| <= rtol * max |ref| (a tolerance relative to the tensor's scale, not elementwise)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:g} * {scale:.3g}"


# (N, C, T, H, W, h, w), with the kernel's rows per unit R = 2048 // W, units per sample and phases
# of the backward (as computed by Geometry::phases) in the comment.
GEOMETRIES = {
    "224-wide, 8 units/sample, 3 phases": (2, 3, 8, 64, 224, 8, 28),
    "W=150 (64+64+16+6), 4 units, 3 phases": (1, 2, 6, 40, 150, 5, 19),
    "W=33 (16+16+1), 2 units": (2, 3, 8, 70, 33, 9, 7),
    "W=10 (< 16)": (2, 3, 8, 12, 10, 3, 4),
    "h=H, w=W (no upsampling), 4 units": (1, 2, 4, 48, 150, 48, 150),
    "h=H, w<W": (2, 3, 5, 16, 24, 16, 6),
    "h=w=1, one unit": (2, 3, 6, 16, 20, 1, 1),
    "h=w=1, 10 forward units, one backward unit": (2, 2, 6, 20, 700, 1, 1),
    "C=1": (2, 1, 8, 24, 40, 3, 5),
    "N=3, T=4": (3, 2, 4, 12, 18, 3, 4),
    "T=2": (2, 3, 2, 9, 17, 2, 3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES.values()), ids=list(GEOMETRIES))
def test_matches_eager_forward_and_gradient(kernel, geometry, dtype):
    N, C, T, H, W, h, w = geometry
    x, z = random_inputs(*geometry, dtype=dtype, seed=sum(geometry))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype),  # on da
             torch.rand(N, generator=g, dtype=torch.float64).to(dtype) + 0.5,  # on enopr
             torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)]  # on static
    ref, ref_gz = outputs_and_grad(eager, x, z, grads)
    got, got_gz = outputs_and_grad(fused, x, z, grads)
    if dtype == torch.float32:
        # The eager float32 ENoPR sums ||x||^2 and the explained energy in float32 over the whole
        # sample (relative error up to ~1e-5 here); the kernel sums its rows in double.  Compare
        # it with the eager path in float64 on the same inputs instead.
        ref[1] = eager(x.double(), z.double())[1].float()
    for name, a, b in zip(("da", "enopr", "static"), got, ref):
        assert_rel_close(a, b, TOL[dtype], name)
    assert_rel_close(got_gz, ref_gz, TOL[dtype], "grad z")
    # each upstream gradient on its own, so that one term cannot hide an error in another
    for k, name in enumerate(("da", "enopr", "static")):
        only = [gr if i == k else torch.zeros_like(gr) for i, gr in enumerate(grads)]
        assert_rel_close(outputs_and_grad(fused, x, z, only)[1], outputs_and_grad(eager, x, z, only)[1],
                         TOL[dtype], f"grad z from {name}")


def test_without_static_and_partial_upstream_gradients(kernel):
    x, z = random_inputs(2, 3, 6, 20, 30, 4, 5, torch.float64, seed=3)
    zc = upsample_w(z, 30).requires_grad_(True)
    da, enopr, static = pwtp_cpu.rank_one_dynamic_appearance(x, zc, eps_of(x.dtype))
    assert static is None
    ref = eager(x, z)
    assert_rel_close(da, ref[0], 1e-12, "da")
    assert_rel_close(enopr, ref[1], 1e-12, "enopr")
    da.sum().backward()  # enopr unused: its gradient is None in the backward
    zr = z.clone().requires_grad_(True)
    eager(x, zr)[0].sum().backward()
    assert_rel_close(zc.grad @ _bilinear_matrix(5, 30, "cpu", x.dtype), zr.grad, 1e-12, "grad z from da only")


def test_gradcheck_rank_one(kernel):
    x, z = random_inputs(2, 2, 4, 5, 6, 3, 3, torch.float64, seed=4)
    zc = upsample_w(z, 6).requires_grad_(True)
    f = lambda zc: pwtp_cpu.rank_one_dynamic_appearance(x, zc, 1e-12, need_static=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (zc,))


def test_gradcheck_relation_descriptor(kernel):
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 3, 4, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)  # 20 = 16 + 4 positions
    assert torch.autograd.gradcheck(pwtp_cpu.relation_descriptor, (feat,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(2, 24, 8, 7, 9), (1, 5, 3, 4, 4), (3, 1, 2, 1, 1), (2, 6, 5, 8, 8)])
def test_relation_descriptor_matches_eager(kernel, shape, dtype):
    g = torch.Generator().manual_seed(6)
    feat = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    N, Cf, T, h, w = shape
    g_u = torch.randn(N, h, w, T * (T - 1) // 2, generator=g, dtype=torch.float64).to(dtype)
    f1 = feat.clone().requires_grad_(True)
    u = pwtp_cpu.relation_descriptor(f1)
    u.backward(g_u)
    f2 = feat.clone().requires_grad_(True)
    u_ref = (_PairwiseSimilarity.apply(f2) / Cf).permute(0, 2, 3, 1)
    u_ref.backward(g_u)
    assert u.is_contiguous()
    assert_rel_close(u.detach(), u_ref.detach(), TOL[dtype], "u")
    assert_rel_close(f1.grad, f2.grad, TOL[dtype], "grad feat")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("geometry", [(2, 3, 8, 64, 224, 8, 28), (2, 2, 6, 20, 700, 1, 1)], ids=["phased", "wide"])
def test_bitwise_independent_of_thread_count(kernel, geometry, dtype):
    N, C, T, H, W, h, w = geometry
    x, z = random_inputs(*geometry, dtype=dtype, seed=7)
    g = torch.Generator().manual_seed(8)
    grads = [torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype), torch.ones(N, dtype=dtype),
             torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)]
    feat = torch.randn(N, 6, T, 7, 9, generator=g, dtype=torch.float64).to(dtype)
    g_u = torch.randn(N, 7, 9, T * (T - 1) // 2, generator=g, dtype=torch.float64).to(dtype)

    def run():
        zc = upsample_w(z, W).requires_grad_(True)
        outs = pwtp_cpu.rank_one_dynamic_appearance(x, zc, eps_of(dtype), need_static=True)
        torch.autograd.backward(outs, grads)
        f = feat.clone().requires_grad_(True)
        u = pwtp_cpu.relation_descriptor(f)
        u.backward(g_u)
        return [o.detach() for o in outs] + [zc.grad, u.detach(), f.grad]

    before = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.get_num_threads() == n
            results[n] = run()
    finally:
        torch.set_num_threads(before)
    names = ("da", "enopr", "static", "grad zc", "u", "grad feat")
    for n in (2, 3):
        for name, a, b in zip(names, results[n], results[1]):
            assert torch.equal(a, b), f"{name} differs between 1 and {n} threads"


def test_pwtp_end_to_end_kernel_equals_eager(kernel, monkeypatch):
    torch.manual_seed(9)
    pwtp = PWTP()
    x = torch.randn(2, 3, 8, 32, 48)
    g = torch.Generator().manual_seed(10)
    g_da, g_st = torch.randn(2, 3, 32, 48, generator=g), torch.randn(2, 3, 32, 48, generator=g)

    def run():
        pwtp.zero_grad()
        out = pwtp(x, return_static=True)
        ((out.dynamic * g_da).sum() + 10 * out.enopr.sum() + (out.static * g_st).sum()).backward()
        return out, {n: p.grad.clone() for n, p in pwtp.named_parameters()}

    assert pwtp_cpu.supports(x, pwtp.rank)
    out_k, grads_k = run()
    monkeypatch.setattr(pwtp_cpu, "_state", {})
    monkeypatch.setenv("DYNAPP_NO_KERNEL", "1")
    assert not pwtp_cpu.supports(x, pwtp.rank) and not pwtp_cpu.available()
    out_e, grads_e = run()
    for name in ("dynamic", "enopr", "static"):
        assert_rel_close(getattr(out_k, name), getattr(out_e, name), 1e-5, name)
    assert out_k.residual is None and out_e.residual is None
    assert grads_k.keys() == grads_e.keys()
    for name in grads_e:
        assert_rel_close(grads_k[name], grads_e[name], 1e-4, f"grad {name}")


def test_falls_back_with_one_warning_when_no_compiler(fresh_state, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DYNAPP_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="kernel unavailable") as record:
        assert not pwtp_cpu.available()
    assert len([w for w in record if "kernel unavailable" in str(w.message)]) == 1
    assert not list((tmp_path / "kernels").glob("*")), "the failed build left files behind"
    torch.manual_seed(11)
    pwtp = PWTP()
    x = torch.randn(2, 3, 8, 32, 48)
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert not pwtp_cpu.available() and not pwtp_cpu.supports(x, 1)
        out = pwtp(x, return_static=True)
        out.enopr.sum().backward()
    assert not [w for w in later if "kernel" in str(w.message)], "warned more than once"
    assert out.dynamic.shape == (2, 3, 32, 48) and out.enopr.shape == (2,)
    assert all(torch.isfinite(t).all() for t in (out.dynamic, out.enopr, out.static))
    assert all(torch.isfinite(p.grad).all() for p in pwtp.parameters())
    torch.testing.assert_close(out.dynamic + out.static, x.mean(2))


def test_disabled_by_environment(fresh_state, monkeypatch):
    monkeypatch.setenv("DYNAPP_NO_KERNEL", "1")
    assert not pwtp_cpu.available()
    assert not pwtp_cpu.supports(torch.zeros(1, 3, 8, 4, 4), 1)


def test_builds_once_into_cache_and_reuses_it(fresh_state, monkeypatch, tmp_path):
    if _compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("DYNAPP_CACHE", str(tmp_path))
    assert pwtp_cpu.available()
    files = list(tmp_path.rglob("*"))
    libs = [f for f in files if f.is_file()]
    assert len(libs) == 1 and libs[0].parent == tmp_path / "kernels", files
    lib = libs[0]
    assert lib.name.startswith("pwtp_cpu-") and lib.suffix == ".so"
    mtime = lib.stat().st_mtime_ns
    monkeypatch.setattr(pwtp_cpu, "_state", {})
    assert pwtp_cpu.available()
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == [lib]
    assert lib.stat().st_mtime_ns == mtime, "the cached library was rebuilt"
    assert pwtp_cpu._state["lib"]._name == str(lib)
    # and the freshly built library computes (the relation descriptor of a tiny input)
    feat = torch.arange(12, dtype=torch.float64).reshape(1, 2, 3, 2, 1)
    u = pwtp_cpu.relation_descriptor(feat)
    torch.testing.assert_close(u, (_PairwiseSimilarity.apply(feat) / 2).permute(0, 2, 3, 1))


def test_supports(kernel):
    x = torch.zeros(1, 3, 8, 4, 4)
    assert pwtp_cpu.supports(x, 1) and pwtp_cpu.supports(x.double(), 1)
    assert not pwtp_cpu.supports(x.half(), 1)
    assert not pwtp_cpu.supports(x.bfloat16(), 1)
    assert not pwtp_cpu.supports(x, 2)
    assert not pwtp_cpu.supports(x.clone().requires_grad_(True), 1)


def test_rejects_mismatched_shapes(kernel):
    x = torch.zeros(2, 3, 8, 4, 6)
    with pytest.raises(ValueError, match=r"zc must have shape \(2, 8, h, 6\)"):
        pwtp_cpu.rank_one_dynamic_appearance(x, torch.zeros(2, 8, 2, 5), 1e-6)  # width 5 != 6
    with pytest.raises(ValueError, match=r"zc must have shape \(2, 8, h, 6\)"):
        pwtp_cpu.rank_one_dynamic_appearance(x, torch.zeros(2, 7, 2, 6), 1e-6)  # 7 frames != 8
    with pytest.raises(ValueError, match=r"zc must have shape \(6, 8, h, 6\)"):  # 2 clips x 3 segments
        pwtp_cpu.rank_one_dynamic_appearance(torch.zeros(2, 3, 3, 8, 4, 6), torch.zeros(2, 8, 2, 6), 1e-6)
    with pytest.raises(ValueError, match=r"expected x \(N, C, T, H, W\) or"):
        pwtp_cpu.rank_one_dynamic_appearance(x[0], torch.zeros(2, 8, 2, 6), 1e-6)
    with pytest.raises(ValueError, match="features"):
        pwtp_cpu.relation_descriptor(torch.zeros(2, 3, 8, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_zero_hyperplanes_are_finite(kernel, dtype):
    N, C, T, H, W, h = 2, 3, 6, 20, 30, 4
    x, _ = random_inputs(N, C, T, H, W, h, 5, dtype, seed=12)
    zc = torch.zeros(N, T, h, W, dtype=dtype, requires_grad=True)
    da, enopr, static = pwtp_cpu.rank_one_dynamic_appearance(x, zc, eps_of(dtype), need_static=True)
    # y = 0 / (0 + eps) = 0: nothing is explained
    torch.testing.assert_close(da, x.mean(2))
    torch.testing.assert_close(static, torch.zeros_like(static))
    torch.testing.assert_close(enopr, x.square().sum(2).mean(dim=(1, 2, 3)))
    (da.square().sum() + enopr.sum() + static.sum()).backward()
    # da and the explained energy are of second order in A at A = 0, so the gradient is 0 there
    assert torch.isfinite(zc.grad).all()
    torch.testing.assert_close(zc.grad, torch.zeros_like(zc.grad), rtol=0, atol=TOL[dtype])
    zr = torch.zeros(N, T, h, 5, dtype=dtype, requires_grad=True)
    da_r, en_r, st_r = eager(x, zr)
    (da_r.square().sum() + en_r.sum() + st_r.sum()).backward()
    torch.testing.assert_close(zc.grad @ _bilinear_matrix(5, W, "cpu", dtype), zr.grad, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_constant_hyperplanes_and_static_clip_give_zero_da(kernel, dtype):
    # DA = v - c (T c v) / (T c^2 + eps) = v eps / (T c^2 + eps): zero up to eps and rounding
    N, C, T, H, W, h = 2, 3, 8, 40, 150, 5
    g = torch.Generator().manual_seed(13)
    v = torch.randn(N, C, 1, H, W, generator=g, dtype=torch.float64).to(dtype)
    x = v.expand(N, C, T, H, W).contiguous()  # every pixel constant in time
    c = (torch.rand(N, 1, h, W, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    zc = c.expand(N, T, h, W).contiguous()  # A constant in time at every pixel
    da, enopr, static = pwtp_cpu.rank_one_dynamic_appearance(x, zc, eps_of(dtype), need_static=True)
    tol = 10 * TOL[dtype] * v.abs().max().item()
    assert da.abs().max().item() <= tol
    torch.testing.assert_close(static, v[:, :, 0], rtol=TOL[dtype], atol=tol)
    assert enopr.abs().max().item() <= 10 * TOL[dtype] * v.square().mean().item()
    # the checks above can fail: a clip that moves leaves a residual, and an A that varies in
    # time does not explain a static pixel's mean
    ramp = torch.linspace(-1, 1, T, dtype=dtype)
    _, en_m, _ = pwtp_cpu.rank_one_dynamic_appearance(x + ramp.view(1, 1, T, 1, 1), zc, eps_of(dtype))
    assert en_m.min().item() > 1.0  # about sum_t ramp_t^2 = 3.4
    da_v, _, _ = pwtp_cpu.rank_one_dynamic_appearance(x, zc + ramp.view(1, T, 1, 1), eps_of(dtype))
    assert da_v.abs().max().item() > 1e3 * tol


def test_clip_requiring_grad_is_refused(kernel):
    """The kernel gives no gradient for the clip, so a clip that needs one is an error, not a silent None."""
    x, z = random_inputs(1, 3, 4, 8, 8, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="no gradient for the clip"):
        pwtp_cpu.rank_one_dynamic_appearance(x.requires_grad_(), upsample_w(z, 8), 1e-6)


def test_reference_impl_takes_the_pytorch_path(kernel, monkeypatch):
    """PWTP(impl="reference") does not call the kernel (FLOP counting relies on it); "auto" does."""
    x, _ = random_inputs(1, 3, 8, 16, 16, 2, 2, torch.float32)
    assert pwtp_cpu.supports(x, 1)
    pwtp = PWTP()
    with torch.no_grad():
        auto = pwtp(x)
        assert pwtp.last_impl == ("cpu_fused", "cpu_fused")

        def refuse(*args, **kwargs):
            raise AssertionError("the kernel was called")

        monkeypatch.setattr(pwtp_cpu, "rank_one_dynamic_appearance", refuse)
        monkeypatch.setattr(pwtp_cpu, "relation_descriptor", refuse)
        pwtp.impl = "reference"
        ref = pwtp(x)
    assert pwtp.last_impl == ("reference", "reference")
    assert_rel_close(ref.dynamic, auto.dynamic, 1e-5, "dynamic")
    assert pwtp_cpu.supports(x, 1)  # the switch is the module's, not a global state


def test_torch_compile_runs_around_the_kernel(kernel):
    """torch.compile(PWTP) must not trace into the ctypes calls (it once segfaulted on fake tensors)."""
    torch.manual_seed(0)
    pwtp = PWTP()
    x = torch.randn(2, 3, 8, 32, 32)
    compiled = torch.compile(pwtp)
    out, ref = compiled(x), pwtp(x)
    assert_rel_close(out.dynamic.detach(), ref.dynamic.detach(), 1e-5, "dynamic")
    (out.dynamic.square().mean() + out.enopr.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pwtp.parameters())


def test_unusable_cache_directory_falls_back_to_temp(fresh_state, monkeypatch, tmp_path):
    """A $DYNAPP_CACHE that cannot be created (here: below a plain file) gives a per-user temp folder."""
    if _compiler() is None:
        pytest.skip("no C++ compiler")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DYNAPP_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert pwtp_cpu.available()
    built = [f for f in (tmp_path / "tmp").rglob("*.so")]
    assert len(built) == 1 and pwtp_cpu._state["lib"]._name == str(built[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_segmented_clip_is_read_in_place(kernel, dtype):
    """(N, S, C, T, H, W) views of an (N, C, S*T, H, W) clip give what the folded copy gives, bitwise."""
    N, S, C, T, H, W, h, w = 2, 3, 3, 4, 24, 20, 3, 5
    clip, _ = random_inputs(N, C, S * T, H, W, h, w, dtype)
    view = clip.unflatten(2, (S, T)).transpose(1, 2)  # (N, S, C, T, H, W), no copy
    folded = view.reshape(N * S, C, T, H, W)  # the copy the PyTorch path makes
    assert view.data_ptr() == clip.data_ptr() and folded.data_ptr() != clip.data_ptr()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(N * S, T, h, w, generator=g, dtype=torch.float64).to(dtype)
    grads = [torch.randn(N * S, C, H, W, generator=g, dtype=torch.float64).to(dtype),
             torch.randn(N * S, generator=g, dtype=torch.float64).to(dtype),
             torch.randn(N * S, C, H, W, generator=g, dtype=torch.float64).to(dtype)]
    got, g_got = outputs_and_grad(fused, view, z, grads)
    ref, g_ref = outputs_and_grad(fused, folded, z, grads)
    assert all(torch.equal(a, b) for a, b in zip(got, ref)) and torch.equal(g_got, g_ref)


def test_pwtp_segments_equal_folding_the_batch(kernel):
    """PWTP(clip, segments=S) equals PWTP on the clip with its segments folded into the batch, on both paths."""
    torch.manual_seed(0)
    pwtp = PWTP(frames=4).eval()  # eval: BatchNorm statistics do not depend on the call
    N, S = 2, 3
    clip = torch.randn(N, 3, S * 4, 32, 40)
    folded = clip.unflatten(2, (S, 4)).transpose(1, 2).reshape(N * S, 3, 4, 32, 40)
    for impl in ("cpu_fused", "reference"):
        pwtp.impl = impl
        with torch.no_grad():
            out, ref = pwtp(clip, segments=S, return_static=True), pwtp(folded, return_static=True)
        assert pwtp.last_impl == (impl, impl)
        for a, b in zip(out[:3], ref[:3]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"S\*T"):
        pwtp(clip, segments=2)


def test_auto_rule_and_what_ran(kernel):
    """impl="auto" fuses each part where it can and says so; "cpu_fused" refuses with the reason."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 16, 16)
    cases = {  # (rank, requires_grad, return_residual) -> what auto runs
        (1, False, False): ("cpu_fused", "cpu_fused"),
        (1, True, False): ("cpu_fused", "reference"),  # the kernel gives no gradient for the clip
        (1, False, True): ("cpu_fused", "reference"),  # nor the residual
        (2, False, False): ("cpu_fused", "reference"),  # the projection kernel is for D = 1
    }
    for (rank, grad, residual), expected in cases.items():
        pwtp = PWTP(rank=rank)
        pwtp(x.clone().requires_grad_(grad), return_residual=residual)
        assert pwtp.last_impl == expected, (rank, grad, residual)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pwtp = PWTP()
        pwtp(x)
    assert pwtp.last_impl == ("reference", "cpu_fused")  # conv F's features are bfloat16 there
    pwtp = PWTP(impl="cpu_fused")
    pwtp(x)
    assert pwtp.last_impl == ("cpu_fused", "cpu_fused")
    with pytest.raises(ValueError, match="cannot run: the clip requires grad"):
        pwtp(x.clone().requires_grad_())
    with pytest.raises(ValueError, match="cannot run: return_residual=True"):
        pwtp(x, return_residual=True)
    with pytest.raises(ValueError, match="cannot run: the clip is torch.float16"):
        pwtp.half()(x.half())
    with pytest.raises(ValueError, match="needs rank D = 1"):
        PWTP(rank=2, impl="cpu_fused")
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'reference', 'cpu_fused'"):
        PWTP(impl="gpu")


def test_no_kernel_environment_makes_auto_take_the_reference(fresh_state, monkeypatch):
    monkeypatch.setenv("DYNAPP_NO_KERNEL", "1")
    pwtp = PWTP()
    with torch.no_grad():
        pwtp(torch.randn(1, 3, 8, 16, 16))
    assert pwtp.last_impl == ("reference", "reference")
    with pytest.raises(ValueError, match="not available"):
        PWTP(impl="cpu_fused")(torch.randn(1, 3, 8, 16, 16))
