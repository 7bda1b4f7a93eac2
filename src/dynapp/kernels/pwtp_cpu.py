"""Fused CPU kernel for the rank-one dynamic appearance (the default PWTP, D = 1).

PWTP runs it when ``PWTP(impl=...)`` says so (:func:`dynapp.kernels.choose.choose_impl` holds the
rule); nothing in this module decides which implementation runs, and it does not import dynapp.pwtp.

The reference path (:class:`dynapp.kernels.autograd.RankOneDA`) already avoids the clip-sized
residual, but on a CPU every elementwise PyTorch op is a separate pass over memory: the projection costs
about a dozen passes over frame- and clip-sized tensors plus the upsampled A (N, T, H, W) and
its gradient.  ``pwtp_cpu.cpp`` does the same arithmetic in one pass over the clip forward and
one backward, and upsamples A on the fly (the vertical half; the horizontal half is a small
matrix product done here), so A at full resolution is never written.

The kernel is plain C++ with a C ABI, compiled with the system compiler (``$CXX`` or ``c++``)
the first time it is needed (about 2 s) into ``$DYNAPP_CACHE`` (default
``~/.cache/dynapp``), and called through ctypes, which releases the GIL.  Where it cannot be
built (no compiler), :func:`available` is False after one warning and ``PWTP(impl="auto")`` runs
the reference path; ``DYNAPP_NO_KERNEL=1`` makes :func:`available` False without a warning.
The two agree to rounding (``tests/test_pwtp_cpu.py``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from dynapp.kernels.bilinear import upsample_width
from dynapp.kernels.normal_equations import regularisers

__all__ = [
    "available",
    "supports",
    "rank_one_dynamic_appearance",
    "dynamic_appearance_from_coarse",
    "relation_descriptor",
    "linear_interpolation",
]

_SOURCE = Path(__file__).with_name("pwtp_cpu.cpp")
# -march=native: the library is built on the machine that runs it, and its file name carries the
# CPU's identity (below), so a shared cache directory never hands it to a different CPU.
# -fopenmp: run on PyTorch's own OpenMP pool (see parallel_ranges in the .cpp); retried without it.
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
_OPENMP = ["-fopenmp"]
_lock = threading.Lock()
_state: dict = {}


def _cache_dirs() -> list[Path]:
    """Where the library may live: $DYNAPP_CACHE (or ~/.cache/dynapp), then a per-user temp folder."""
    root = os.environ.get("DYNAPP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dynapp"
    )
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(root) / "kernels", Path(tempfile.gettempdir()) / f"dynapp-{user}" / "kernels"]


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.platform() + platform.processor()


def _compile(compiler: str, flags: list[str], out: str) -> None:
    proc = subprocess.run([compiler, *flags, str(_SOURCE), "-o", out], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "compiler failed").strip().splitlines()
        raise RuntimeError(lines[0] if lines else "compiler failed")


def _build(compiler: str) -> Path:
    """Compile the kernel (once per source, compiler and CPU) and return the .so path.

    The OpenMP build is tried first (and looked up first); only if it fails is a serial build
    made, under its own name, so a one-off OpenMP failure is retried by the next process.
    """
    source = _SOURCE.read_bytes()
    names = []
    for flags, kind in ((_FLAGS + _OPENMP, "omp"), (_FLAGS, "serial")):
        ident = " ".join([compiler, *flags, platform.machine(), _cpu_identity()])
        names.append((flags, f"pwtp_cpu-{kind}-{hashlib.sha256(source + ident.encode()).hexdigest()[:16]}.so"))
    for out_dir in _cache_dirs():  # the first that has the library or can hold it
        if (out_dir / names[0][1]).exists():
            return out_dir / names[0][1]
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(out_dir, os.W_OK):
            break
    else:
        raise RuntimeError(f"no writable cache directory among {[str(d) for d in _cache_dirs()]}")
    candidates = [(flags, out_dir / name) for flags, name in names]
    error = None
    for flags, lib in candidates:
        # Compile to a private name, then rename: concurrent processes (DDP ranks) never see half a file.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            _compile(compiler, flags, tmp)
            os.replace(tmp, lib)
            return lib
        except RuntimeError as e:  # e.g. a compiler without OpenMP: try the serial build
            error = error or e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise error


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"dynapp_da1_forward_{suffix}")
        fwd.argtypes = [p, i64, i64, i64, i64, i64, p, p, p, p, i64, i64, i64, i64, i64, i64, real, i32, p, p, p, p, i32]
        fwd.restype = None
        bwd = getattr(lib, f"dynapp_da1_backward_{suffix}")
        bwd.argtypes = [p, i64, i64, i64, i64, i64, p, p, p, p, i64, i64, i64, i64, i64, i64, real, i32, p, p, p, p, i32]
        bwd.restype = None
        gram_f = getattr(lib, f"dynapp_gram_forward_{suffix}")
        gram_f.argtypes = [p, i64, i64, i64, i64, p, i32]
        gram_f.restype = None
        gram_b = getattr(lib, f"dynapp_gram_backward_{suffix}")
        gram_b.argtypes = [p, p, i64, i64, i64, i64, p, i32]
        gram_b.restype = None
    lib.dynapp_pwtp_abi_version.restype = ctypes.c_int
    if lib.dynapp_pwtp_abi_version() != 8:
        raise RuntimeError("stale kernel library")
    return lib


def _library() -> ctypes.CDLL | None:
    """The loaded kernel, compiling it on first use; None (and one warning) where it cannot be built.

    ``DYNAPP_NO_KERNEL=1`` (or any value but "" and "0") gives None without building or warning.
    """
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib = None
        if os.environ.get("DYNAPP_NO_KERNEL", "") in ("", "0"):  # else: the eager path, silently
            compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
            try:
                if not compiler:
                    raise RuntimeError("no C++ compiler found (set CXX)")
                lib = _declare(ctypes.CDLL(str(_build(compiler))))
            except Exception as e:  # noqa: BLE001 - any failure means: use the eager path
                warnings.warn(f"dynapp: fused PWTP CPU kernel unavailable, using the eager path ({e})", stacklevel=3)
                lib = None
        _state["lib"] = lib
        return lib


def available() -> bool:
    """True if the fused CPU kernel is built and loaded (builds it on first call)."""
    return _library() is not None


def supports(x: torch.Tensor, rank: int) -> bool:
    """Whether :func:`rank_one_dynamic_appearance` can take this clip: D = 1, a float32/float64
    CPU tensor that does not require grad (the kernel gives no gradient for the clip), and the
    kernel is :func:`available`."""
    return (
        rank == 1
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not x.requires_grad
        and available()
    )


@functools.lru_cache(maxsize=32)
def linear_interpolation(n_in: int, n_out: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1-D linear interpolation, align_corners=False (PyTorch's rule), as index pairs and weights.

    Returns (i0, i1, lam) of length n_out with ``out[k] = (1 - lam[k]) in[i0[k]] + lam[k] in[i1[k]]``,
    the same rule as :func:`dynapp.kernels.bilinear.bilinear_matrix` (tests/test_pwtp_cpu.py checks they agree).
    """
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    lam = (src - i0).to(dtype)
    return i0.to(torch.int32), i1.to(torch.int32), lam


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _clip_layout(x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(samples, C, T, H, W) and the kernel's strides (sN, S, sS, sc, st) of a clip.

    x is (N, C, T, H, W), or (N, S, C, T, H, W) for S segments per clip (samples in (n, s) order),
    with any strides except within a frame (H, W), which must be contiguous.
    """
    if x.dim() == 5:
        N, C, T, H, W = x.shape
        return (N, C, T, H, W), (x.stride(0), 1, 0, x.stride(1), x.stride(2))
    N, S, C, T, H, W = x.shape
    return (N * S, C, T, H, W), (x.stride(0), S, x.stride(1), x.stride(2), x.stride(3))


class _FusedRankOneDA(torch.autograd.Function):
    """(x, zc) -> (da, enopr[, static]) with the fused kernel; zc = z U_w^T is A upsampled along W only."""

    @staticmethod
    def forward(ctx, x, zc, eps, need_static, remove):
        # x: see _clip_layout; zc: (samples, T, h, W) contiguous, same dtype.
        lib = _library()
        (N, C, T, H, W), strides = _clip_layout(x)
        h = zc.shape[2]
        i0, i1, lam = linear_interpolation(h, H, x.dtype)
        da = x.new_empty(N, C, H, W)
        static = x.new_empty(N, C, H, W) if need_static else None
        res_sq = torch.empty(N, dtype=torch.float64)  # ||x||^2 - explained, before the clamp at 0
        enopr = x.new_empty(N)
        fn = lib.dynapp_da1_forward_f32 if x.dtype == torch.float32 else lib.dynapp_da1_forward_f64
        fn(x.data_ptr(), *strides, zc.data_ptr(), i0.data_ptr(), i1.data_ptr(), lam.data_ptr(), N, C, T, H, W, h, eps,
           int(remove), da.data_ptr(), _ptr(static), res_sq.data_ptr(), enopr.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(x, zc, res_sq)  # the backward recomputes y = a.x / (a.a + eps)
        ctx.eps, ctx.remove = eps, remove
        ctx.set_materialize_grads(False)
        return (da, enopr, static) if need_static else (da, enopr)

    @staticmethod
    def backward(ctx, g_da, g_enopr, g_static=None):
        x, zc, res_sq = ctx.saved_tensors
        (N, C, T, H, W), strides = _clip_layout(x)
        h = zc.shape[2]
        i0, i1, lam = linear_interpolation(h, H, x.dtype)
        g_da = x.new_zeros(N, C, H, W) if g_da is None else g_da.contiguous()
        g_static = None if g_static is None else g_static.contiguous()
        if g_enopr is None:
            g_expl = x.new_zeros(N)
        else:  # d enopr / d explained = -1 / (CHW) where the residual is positive (clamped otherwise)
            g_expl = (-g_enopr * (res_sq > 0) / (C * H * W)).to(x.dtype).contiguous()
        g_zc = torch.zeros_like(zc)  # accumulated into by the kernel
        lib = _library()
        fn = lib.dynapp_da1_backward_f32 if x.dtype == torch.float32 else lib.dynapp_da1_backward_f64
        fn(x.data_ptr(), *strides, zc.data_ptr(), i0.data_ptr(), i1.data_ptr(), lam.data_ptr(), N, C, T, H, W, h,
           ctx.eps, int(ctx.remove), g_da.data_ptr(), _ptr(g_static), g_expl.data_ptr(), g_zc.data_ptr(), torch.get_num_threads())
        return None, g_zc, None, None, None


def _check_inputs(x: torch.Tensor, zc: torch.Tensor) -> None:
    if x.requires_grad:
        raise ValueError("the fused kernel gives no gradient for the clip; use dynapp.pwtp.dynamic_appearance")
    if x.dim() not in (5, 6) or zc.dim() != 4:
        raise ValueError(f"expected x (N, C, T, H, W) or (N, S, C, T, H, W) and zc (N, T, h, W); "
                         f"got {tuple(x.shape)} and {tuple(zc.shape)}")
    (N, _, T, _, W), _ = _clip_layout(x)
    if zc.shape[:2] != (N, T) or zc.shape[3] != W:
        raise ValueError(f"zc must have shape ({N}, {T}, h, {W}) for x {tuple(x.shape)}; got {tuple(zc.shape)}")


# torch.compile must not trace into the ctypes calls (it would hand fake tensors' pointers to the
# kernel): the fused functions are graph breaks, run eagerly.
@torch.compiler.disable
def rank_one_dynamic_appearance(
    x: torch.Tensor,
    zc: torch.Tensor,
    eps: float,
    need_static: bool = False,
    remove: bool = False,
    *,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DA, per-sample ENoPR and (on request) the static appearance for D = 1, fused on the CPU.

    x: (N, C, T, H, W) clip, or (N, S, C, T, H, W) for S segments per clip (any strides, e.g. a
    view of an (N, C, S*T, H, W) clip: no copy); it must not require grad (ValueError).
    zc: (samples, T, h, W) the hyperplanes upsampled along W only (``z @ U_w^T``), samples in
    (n, s) order.  A is ``zc`` interpolated linearly along h to H (align_corners=False).
    Returns ``(da, enopr, static or None)`` per sample, equal to
    :func:`dynapp.pwtp.dynamic_appearance` on the fully upsampled A.  ``remove=True`` gives the
    leak-free DA (``static="remove"`` there); ENoPR and static do not depend on it.
    ``check=False`` skips the shape checks (PWTP has checked the clip already).
    """
    if check:
        _check_inputs(x, zc)
    H, W = x.shape[-2:]
    if (W > 1 and x.stride(-1) != 1) or (H > 1 and x.stride(-2) != W):  # other strides are free
        x = x.contiguous()
    out = _FusedRankOneDA.apply(x, zc.to(x.dtype).contiguous(), float(eps), need_static, bool(remove))
    return (out[0], out[1], out[2] if need_static else None)


def dynamic_appearance_from_coarse(
    x: torch.Tensor, z: torch.Tensor, need_static: bool = False, remove: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`rank_one_dynamic_appearance` from the MLP's output z (samples, T, h, w), as PWTP runs it.

    A is upsampled along W here (one GEMM) and along H inside the kernel, never stored at full
    size; the clip x (shapes as there, unchecked) is read in z's dtype with its default eps.
    """
    with torch.autocast(x.device.type, enabled=False):
        zc = upsample_width(z, x.shape[-1])  # (samples, T, h, W)
        eps, _ = regularisers(zc.dtype, None, None)
        return rank_one_dynamic_appearance(x.to(zc.dtype), zc, eps, need_static, remove, check=False)


class _FusedGram(torch.autograd.Function):
    """feat (N, C', T, h, w) -> u (N, h, w, T(T-1)/2), the relation descriptor of Eq. 3."""

    @staticmethod
    def forward(ctx, feat):
        lib = _library()
        N, Cf, T, h, w = feat.shape
        u = feat.new_empty(N, h, w, T * (T - 1) // 2)
        fn = lib.dynapp_gram_forward_f32 if feat.dtype == torch.float32 else lib.dynapp_gram_forward_f64
        fn(feat.data_ptr(), N, Cf, T, h * w, u.data_ptr(), torch.get_num_threads())
        ctx.save_for_backward(feat)
        return u

    @staticmethod
    def backward(ctx, g_u):
        (feat,) = ctx.saved_tensors
        N, Cf, T, h, w = feat.shape
        g_u = g_u.contiguous()
        g_feat = torch.empty_like(feat)
        lib = _library()
        fn = lib.dynapp_gram_backward_f32 if feat.dtype == torch.float32 else lib.dynapp_gram_backward_f64
        fn(feat.data_ptr(), g_u.data_ptr(), N, Cf, T, h * w, g_feat.data_ptr(), torch.get_num_threads())
        return g_feat


@torch.compiler.disable
def relation_descriptor(feat: torch.Tensor) -> torch.Tensor:
    """Eq. 3 fused on the CPU: feat (N, C', T, h, w) float32/64 -> u (N, h, w, T(T-1)/2), contiguous.

    Equal to :func:`dynapp.pwtp.relation_descriptor`; the eager version is several strided passes
    and a permuted copy, this is one pass each way.
    """
    if feat.dim() != 5:
        raise ValueError(f"expected features of shape (N, C', T, h, w); got {tuple(feat.shape)}")
    return _FusedGram.apply(feat.contiguous())
