"""The hand-written backward passes of PWTP's reference path (:mod:`dynapp.pwtp`).

Each Function computes exactly what the plain PyTorch expression in its docstring computes, with
fewer passes over the clip and fewer temporaries than autograd would keep:

* :class:`TemporalContract`: the per-pixel ``A^T x`` of Eq. 1 (any D).
* :class:`RankOneDA`: DA and ENoPR (Eq. 5-7, also the leak-free DA) for D = 1, the default.
* :class:`PairwiseSimilarity`: the Gram matrix of the frames' features, Eq. 3.

``dynapp export`` inlines their forwards (the exporters cannot record a Function), so each
forward is plain tensor code.
"""

from __future__ import annotations

import torch

__all__ = ["PairwiseSimilarity", "RankOneDA", "TemporalContract", "channel_dot", "contract", "temporal_contract"]

def contract(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """sum_t x[:, :, t] A[:, t]: x (N, C, T, H, W), A (N, T, D, H, W) -> (N, C, D, H, W)."""
    out = x[:, :, 0].unsqueeze(2) * A[:, 0].unsqueeze(1)
    for t in range(1, x.shape[2]):
        out.addcmul_(x[:, :, t].unsqueeze(2), A[:, t].unsqueeze(1))
    return out

class TemporalContract(torch.autograd.Function):
    """B[n, c, d] = sum_t x[n, c, t] * A[n, t, d], per pixel, without an (N, C, T, D, H, W) temporary.

    Loops over T (forward) and over C and D (backward) with in-place multiply-adds: each pass
    reads the clip once in its own memory layout, so no layout copy of the clip is ever made.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        # x: (N, C, T, H, W), A: (N, T, D, H, W) -> (N, C, D, H, W)
        ctx.save_for_backward(x, A)
        return contract(x, A)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, A = ctx.saved_tensors
        grad_x = grad_A = None
        C, D = x.shape[1], A.shape[2]
        if ctx.needs_input_grad[1]:
            # grad_A[n, t, d] = sum_c grad[n, c, d] * x[n, c, t]          -> (N, T, D, H, W)
            grad_A = x[:, 0].unsqueeze(2) * grad[:, 0].unsqueeze(1)
            for c in range(1, C):
                grad_A.addcmul_(x[:, c].unsqueeze(2), grad[:, c].unsqueeze(1))
        if ctx.needs_input_grad[0]:
            # grad_x[n, c, t] = sum_d grad[n, c, d] * A[n, t, d]          -> (N, C, T, H, W)
            grad_x = grad[:, :, 0].unsqueeze(2) * A[:, :, 0].unsqueeze(1)
            for d in range(1, D):
                grad_x.addcmul_(grad[:, :, d].unsqueeze(2), A[:, :, d].unsqueeze(1))
        return grad_x, grad_A

def temporal_contract(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``A^T x``: x (N, C, T, H, W), A (N, T, D, H, W) -> (N, C, D, H, W)."""
    return TemporalContract.apply(x, A)

def channel_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_c u[:, c] v[:, c] for (N, C, H, W) tensors -> (N, H, W), without a (N, C, H, W) temporary."""
    out = u[:, 0] * v[:, 0]
    for c in range(1, u.shape[1]):
        out.addcmul_(u[:, c], v[:, c])
    return out

class RankOneDA(torch.autograd.Function):
    """DA and ENoPR for D = 1 with a hand-written backward (the default configuration).

    Forward: B = a.x (one pass over the clip), S = sum_t x (one pass), ||x||^2 (one pass), then
    a few per-pixel operations.  Backward: one pass over the clip for grad_a (and one for grad_x
    if the clip needs a gradient).  Autograd through the same arithmetic keeps about ten clip- or
    frame-sized temporaries and runs about 25 elementwise kernels; this runs eight.

    With den = a.a + eps and y = B / den:
        da = S / T - m y                     (m = mean_t a)
        ||p||^2 = ||x||^2 - sum_c y_c^2 (a.a + 2 eps)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, eps: float, remove: bool = False):
        # x: (N, C, T, H, W), a: (N, T, H, W)
        N, C, T, H, W = x.shape
        B = contract(x, a.unsqueeze(2)).squeeze(2)  # (N, C, H, W) = a.x
        aa = a[:, 0] * a[:, 0]  # (N, H, W)
        asum = a[:, 0].clone()
        for t in range(1, T):
            aa.addcmul_(a[:, t], a[:, t])
            asum.add_(a[:, t])
        inv_den = (aa + eps).reciprocal_().unsqueeze(1)  # (N, 1, H, W)
        m = asum.div_(T).unsqueeze(1)  # (N, 1, H, W)
        y = B.mul_(inv_den)  # (N, C, H, W), B is not needed any more
        static = m * y
        if remove:  # leak-free: da = f S - m y with f = m^2 / (a.a + eps) (the weights sum to 0)
            S = x.sum(2)  # (N, C, H, W), kept for the backward
            da = torch.addcmul(-static, S, m * m * inv_den)
        else:
            S = None
            da = x.sum(2).div_(T).sub_(static)
        yy = channel_dot(y, y).unsqueeze(1)  # (N, 1, H, W) sum_c y_c^2
        x_sq = torch.linalg.vector_norm(x.reshape(N, -1), dim=1).square()
        explained = (yy * (aa.unsqueeze(1) + 2 * eps)).reshape(N, -1).sum(1)
        res_sq = x_sq.double() - explained.double()
        positive = res_sq > 0
        enopr = (res_sq.clamp_min(0) / (C * H * W)).to(x.dtype)
        ctx.save_for_backward(x, a, y, inv_den, m, yy, positive, S)
        ctx.eps = eps
        return da, enopr, static

    @staticmethod
    def backward(ctx, g_da: torch.Tensor, g_enopr: torch.Tensor, g_static: torch.Tensor):
        x, a, y, inv_den, m, yy, positive, S = ctx.saved_tensors
        eps = ctx.eps
        N, C, T, H, W = x.shape
        # d enopr / d explained = -1/(CHW) where the residual is positive (clamped otherwise).
        g_expl = (-g_enopr * positive / (C * H * W)).to(x.dtype).view(N, 1, 1, 1)
        aa = inv_den.reciprocal() - eps  # (N, 1, H, W)
        u = g_static - g_da  # (N, C, H, W); g_y = m u
        yu = channel_dot(y, u).unsqueeze(1)  # (N, 1, H, W), this is also g_m
        # g_B = (m u + 2 g_expl (aa + 2 eps) y) / den
        g_B = torch.addcmul(m * u, 2 * g_expl * (aa + 2 * eps), y).mul_(inv_den)
        # g_aa = -(m yu + g_expl (aa + 3 eps) yy) / den
        g_aa = torch.addcmul(m * yu, g_expl * (aa + 3 * eps), yy)
        g_m, g_S = yu, g_da / T
        if S is not None:  # the leak-free term f S, f = m^2 / den: q = sum_c g_da[c] S[c]
            f = m * m * inv_den
            q = channel_dot(g_da, S).unsqueeze(1)  # (N, 1, H, W)
            g_aa.addcmul_(f, q)  # d(f S)/d aa = -f S / den (the sign and 1/den follow)
            g_m = torch.addcmul(yu, m * inv_den, q, value=2.0)  # d(f S)/dm = 2 m S / den
            g_S = g_da * f
        g_aa.mul_(inv_den).neg_()
        grad_x = grad_a = None
        if ctx.needs_input_grad[1]:
            # grad_a[t] = sum_c g_B[c] x[c, t] + 2 a[t] g_aa + g_m / T       -> (N, T, H, W)
            grad_a = torch.addcmul(g_m / T, a, g_aa, value=2.0)
            for c in range(C):
                grad_a.addcmul_(x[:, c], g_B[:, c : c + 1])
        if ctx.needs_input_grad[0]:
            # grad_x[c, t] = g_B[c] a[t] + g_S[c] - 2 x[c, t] g_expl         -> (N, C, T, H, W)
            grad_x = g_B.unsqueeze(2) * a.unsqueeze(1)
            grad_x.add_(g_S.unsqueeze(2)).addcmul_(x, g_expl.view(N, 1, 1, 1, 1), value=-2.0)
        return grad_x, grad_a, None, None

class PairwiseSimilarity(torch.autograd.Function):
    """u[n, k, h, w] = <feat[n, :, t1_k, h, w], feat[n, :, t2_k, h, w]> for the pairs t1 < t2.

    Forward: row t1 of the upper triangle is one broadcast product summed over C'.  Backward:
    the gradient is scattered into a symmetric T x T matrix G per position and
    ``grad_feat[:, t] = sum_s G[t, s] feat[:, s]``, T in-place multiply-adds into one buffer
    (autograd through the slices allocated a full-size zero gradient per slice: 5x slower).
    """

    @staticmethod
    def forward(ctx, feat: torch.Tensor) -> torch.Tensor:
        # feat: (N, C', T, h, w) -> (N, T(T-1)/2, h, w)
        ctx.save_for_backward(feat)
        T = feat.shape[2]
        return torch.cat([(feat[:, :, t : t + 1] * feat[:, :, t + 1 :]).sum(1) for t in range(T - 1)], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (feat,) = ctx.saved_tensors
        N, _, T, h, w = feat.shape
        i, j = torch.triu_indices(T, T, offset=1, device=feat.device)
        G = grad.new_zeros(N, T, T, h, w)
        G[:, i, j] = grad
        G = G + G.transpose(1, 2)  # (N, T, T, h, w), symmetric with a zero diagonal
        g_feat = feat[:, :, 0:1] * G[:, :, 0].unsqueeze(1)  # (N, C', T, h, w)
        for s in range(1, T):
            g_feat.addcmul_(feat[:, :, s : s + 1], G[:, :, s].unsqueeze(1))
        return g_feat

