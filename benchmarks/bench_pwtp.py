"""Speed of PWTP (forward, and forward + backward) against the floor, in one process.

Setting: batch 8, T = 8 frames, 224 x 224, C = 3, the default PWTP (k=9, s=8, C'=24), D in {1, 3}.
The floor is what no implementation of PWTP can avoid: the conv F alone plus one reduction pass
over the clip (``x.sum(2)``).  Every candidate is timed interleaved with the floor (floor, candidate,
floor, candidate, ...) and the ratio is the median over repeats of candidate / floor, so slow drift
of a shared machine cancels out.

    python benchmarks/bench_pwtp.py [--repeats 15] [--batch 8] [--size 224] [--compile]

It prints a table and, last, one JSON line with the times (ms), the ratios to the floor and the
keys ``forward_ratio`` and ``train_ratio`` (D = 1, the default configuration, default path),
and ``D1_impl``/``D3_impl``: what ``PWTP(impl="auto")`` ran.  The ``leak_free`` row is
``PWTP(static="remove")`` with the same weights.
"Forward + backward" is PWTP's own: the backward starts from fixed upstream gradients for
(dynamic, enopr), as a backbone would hand them over.  ``train_with_loss_ratio`` times
``(dynamic.square().mean() + enopr.mean()).backward()`` instead, which adds a loss and its
backward over a frame-sized tensor (about 0.4x the floor).

What each optimisation bought (2-core development CPU, batch 8, D = 1; the ``naive`` row against
the ``eager`` row of the table is all of it together):

* No layout copy of the clip: conv F is a (1, k, k) Conv3d reading (N, C, T, H, W) in place
  (3-6 ms) instead of a Conv2d on a transposed (N*T, C, H, W) copy (70 ms: the 38 MB copy is
  a fresh allocation above glibc's mmap threshold and page-faults on every call).
* Fused reductions: DA = mean_t x - mean_t(a) y and ||p||^2 = ||x||^2 - y^2 (a.a + 2 eps) need
  only a.x, sum_t x and ||x||^2, and no (N, C, T, H, W) temporary.
* A fused CPU kernel (``dynapp/kernels/pwtp_cpu.cpp``, the default on the CPU for D = 1): one pass over
  the clip computes a.x, sum_t x, ||x||^2 and DA, with A interpolated on the fly from the
  (N, T, 28, 224) half-upsampled hyperplanes, so neither A at full resolution nor its gradient
  is ever stored; the backward is one more pass (it recomputes y from the clip instead of
  saving it).  The PyTorch version of the same arithmetic (``kernels.autograd.RankOneDA``, used on the GPU)
  was 2.8-3.6x forward and 6-9x forward + backward on this machine; the kernel's forward pass
  now takes 1.27 ms against 1.25-1.28 ms for ``x.sum(2)`` in the same process.  Inside the kernel, measured on one
  thread: register blocks of 64 pixels instead of whole-row arrays (6.0 -> 3.8 ms), channel-
  outer order with a software prefetch 1 KB ahead (3.8 -> 3.4 ms: the hardware prefetchers do
  not follow 8-24 streams), A of a unit computed in register blocks (3.4 -> 2.9 ms).
* The kernel's threads are PyTorch's own OpenMP pool (it links the libgomp PyTorch has loaded):
  a separate std::thread pool beside PyTorch's spinning OpenMP workers ran the same kernel
  2-2.5x slower (4.8 instead of 2.0 ms forward).
* The Gram features of Eq. 3 in the same library (one pass each way, next block prefetched):
  0.12 ms forward and 0.3 ms backward, against 0.5 and 1.0 ms as PyTorch ops.
* torch.compile (``--compile``) is reported as a separate row; the fused kernel is a graph break
  for it (``torch.compiler.disable``), so it only compiles the conv and the MLP.

What is left (forward, D = 1): conv F (also in the floor), the MLP on 6,272 positions (0.6-1.2 ms
of small matrix products and GELUs), the Gram features and the half upsampling, and the
allocation of fresh outputs (page faults that depend on glibc's heap state; setting
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` removes them for the floor and PWTP alike).

The ``naive`` row (:class:`NaivePWTP`, same weights) is the straightforward version, timed in
the same process, so the table shows what the optimisations bought together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dynapp import PWTP
from dynapp.pwtp import PWTPOutput


class NaivePWTP(torch.nn.Module):
    """The straightforward eager reading of Eq. 1-7, sharing the weights of a :class:`PWTP`.

    Conv2d on a (N*T, C, H, W) copy, Gram by einsum, F.interpolate, A^T A and A^T x by einsum,
    torch.linalg.solve, the full residual materialised, autograd through everything.  It is the
    baseline row of the table (what the optimisations are measured against).
    """

    def __init__(self, pwtp: PWTP):
        super().__init__()
        self.p = pwtp

    def forward(self, x):
        p = self.p
        N, C, T, H, W = x.shape
        D = p.rank
        frames = x.transpose(1, 2).reshape(N * T, C, H, W)
        w = p.conv.weight.squeeze(2)
        feat = torch.nn.functional.conv2d(frames, w, p.conv.bias, stride=p.conv.stride[1:],
                                          padding=p.conv.padding[1:])
        h, w_ = feat.shape[-2:]
        feat = feat.view(N, T, -1, h, w_)
        gram = torch.einsum("ntchw,nschw->nhwts", feat, feat) / feat.shape[2]
        i, j = torch.triu_indices(T, T, 1)
        u = gram[..., i, j].reshape(-1, i.numel())
        z = p.head(p.blocks(torch.nn.functional.gelu(p.expand(u))))
        z = z.view(N, h, w_, T * D).permute(0, 3, 1, 2)
        A = torch.nn.functional.interpolate(z, size=(H, W), mode="bilinear", align_corners=False)
        A = A.view(N, T, D, H, W)
        AtA = torch.einsum("ntdhw,ntehw->nhwde", A, A)
        Atx = torch.einsum("ntdhw,ncthw->nhwdc", A, x)
        eye = torch.eye(D, dtype=x.dtype) * 1e-6
        y = torch.linalg.solve(AtA + eye, Atx)  # (N, H, W, D, C)
        x_hat = torch.einsum("ntdhw,nhwdc->ncthw", A, y)
        res = x - x_hat
        return PWTPOutput(res.mean(2), res.square().sum(2).mean(dim=(1, 2, 3)))


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(floor, candidate, repeats: int, warmup: int = 3) -> tuple[float, float, float]:
    """Median floor time, median candidate time and median per-pair ratio, in ms."""
    for _ in range(warmup):
        floor()
        candidate()
    fs, cs, rs = [], [], []
    for _ in range(repeats):
        f = _time_once(floor)
        c = _time_once(candidate)
        fs.append(f)
        cs.append(c)
        rs.append(c / f)
    return statistics.median(fs), statistics.median(cs), statistics.median(rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(PWTP)")
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    g_da = torch.randn(args.batch, 3, args.size, args.size) / args.size  # upstream gradients
    g_enopr = torch.full((args.batch,), 1.0 / args.batch)
    rows, result = [], {"device": "cpu", "threads": torch.get_num_threads(), "batch": args.batch,
                        "frames": args.frames, "size": args.size}

    for rank in (1, 3):
        pwtp = PWTP(frames=args.frames, rank=rank).train()
        variants = [("naive", NaivePWTP(pwtp)), ("eager", pwtp)]
        with torch.no_grad():  # the fast path computes the same thing as the naive one
            fast, naive = pwtp(x[:2]), NaivePWTP(pwtp)(x[:2])
            result[f"D{rank}_max_abs_diff_vs_naive"] = float((fast.dynamic - naive.dynamic).abs().max())
            result[f"D{rank}_impl"] = dict(pwtp.last_impl._asdict())  # what "auto" ran (forward, no grad)
        if rank == 1:  # the leak-free DA (static="remove"), same weights: what the option costs
            leak_free = PWTP(frames=args.frames, rank=rank, static="remove").train()
            leak_free.load_state_dict(pwtp.state_dict())
            variants.append(("leak_free", leak_free))
        if args.compile:
            variants.append(("compiled", torch.compile(pwtp)))

        def floor():
            with torch.no_grad():
                pwtp.conv(x)
                x.sum(2)

        for name, module in variants:
            def forward(module=module):
                with torch.no_grad():
                    module(x)

            def train_step(module=module):
                # PWTP's own forward + backward: the upstream gradients are given, as a backbone
                # would hand them over, so no loss function is timed.
                out = module(x)
                torch.autograd.backward([out.dynamic, out.enopr], [g_da, g_enopr])

            def train_step_with_loss(module=module):
                out = module(x)
                (out.dynamic.square().mean() + out.enopr.mean()).backward()

            f_floor, f_ms, f_ratio = interleaved(floor, forward, args.repeats)
            t_floor, t_ms, t_ratio = interleaved(floor, train_step, args.repeats)
            l_floor, l_ms, l_ratio = interleaved(floor, train_step_with_loss, args.repeats)
            rows.append((rank, name, f_floor, f_ms, f_ratio, t_ms, t_ratio, l_ratio))
            key = f"D{rank}_{name}"
            result[key] = {"floor_ms": round((f_floor + t_floor + l_floor) / 3, 3), "forward_ms": round(f_ms, 3),
                           "train_ms": round(t_ms, 3), "forward_ratio": round(f_ratio, 3),
                           "train_ratio": round(t_ratio, 3), "train_with_loss_ms": round(l_ms, 3),
                           "train_with_loss_ratio": round(l_ratio, 3)}

    print(f"{'D':>2} {'variant':>9} {'floor ms':>9} {'fwd ms':>8} {'fwd/floor':>10} {'fwd+bwd ms':>11} "
          f"{'(fwd+bwd)/floor':>16} {'with loss/floor':>16}")
    for rank, name, fl, f, fr, t, tr, lr in rows:
        print(f"{rank:>2} {name:>9} {fl:>9.2f} {f:>8.2f} {fr:>10.2f} {t:>11.2f} {tr:>16.2f} {lr:>16.2f}")
    result["forward_ratio"] = result["D1_eager"]["forward_ratio"]
    result["train_ratio"] = result["D1_eager"]["train_ratio"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
