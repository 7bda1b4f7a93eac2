"""TVNet: TV-L1 optical flow unrolled into a differentiable, learnable network, and ``flow_tvnet``.

Fan, Huang, Gan, Ermon, Gong and Huang, "End-to-End Learning of Motion Representation for
Video Understanding", CVPR 2018; one of the flow baselines Dynamic Appearance is compared
against (Huang and Bors, AAAI 2023).  The solver is the duality-based TV-L1 of Zach, Pock and
Bischof (2007) as OpenCV implements it, with every step written in torch:

for each scale (coarse to fine), for each warp: warp I1 and its centred gradient by the current
flow u and linearise the data term, ``rho(u) = I1(x + u) + grad I1 . (u - u0) - I0``; then
``iterations`` times

1. thresholding step: ``v = u + lt grad I1`` if ``rho < -lt |grad I1|^2``, ``u - lt grad I1`` if
   ``rho > lt |grad I1|^2``, else ``u - rho grad I1 / |grad I1|^2``, with ``lt = lambda theta``;
2. ``u = v + theta div p``;
3. ``p = (p + (tau/theta) grad u) / (1 + (tau/theta) |grad u|)`` (dual step, per flow component).

As in TVNet, the finite-difference stencils (centred gradient of the image, forward gradient of
the flow, divergence of the dual field) are 1 x 2 / 1 x 3 convolutions initialised to the exact
stencils and trainable, and so are tau, lambda and theta (defaults 0.25, 0.15, 0.3, OpenCV's and
the paper's).  ``scales``, ``warps`` and ``iterations`` are hyperparameters; the defaults
(1, 1, 50) are TVNet-50, the configuration the TVNet paper trains end to end.

Images are grayscale in [0, 255] (the range lambda is tuned for), taken as they are: the
original TVNet code additionally stretches each image pair to [0, 255] by its joint min/max,
which is left out here (it changes the effective lambda per pair).  Boundaries: replicate padding
for the gradients (Neumann), zero padding for the divergence (its adjoint), bilinear warping with
border padding.  Memory: autograd keeps about 20 image-sized tensors per iteration and pair, so
training at 224 x 224 with many iterations needs a small batch or checkpointing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynapp.representations.base import Representation, RepresentationOutput
from dynapp.representations.flow import normalised_to_gray255
from dynapp.segments import unfold_segments

__all__ = ["TVNet", "TVNetFlow", "normalised_to_gray255", "warp"]

_EPS = 1e-12


def warp(img: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` (B, C, H, W) at (x + u1, y + u2), bilinear, border padding; u (B, 1, H, W)."""
    B, _, H, W = img.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, device=img.device, dtype=img.dtype), torch.arange(W, device=img.device, dtype=img.dtype), indexing="ij"
    )
    gx = (xs + u1[:, 0]) * (2 / max(W - 1, 1)) - 1
    gy = (ys + u2[:, 0]) * (2 / max(H - 1, 1)) - 1
    grid = torch.stack([gx, gy], -1)  # (B, H, W, 2)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


class TVNet(nn.Module):
    """Unrolled TV-L1 flow from I0 to I1: (B, 1, H, W) x 2 in [0, 255] -> (u1, u2), each (B, 1, H, W) in pixels.

    Args:
        tau, lambda_, theta: TV-L1's time step, data weight and coupling (trainable).
        scales: pyramid levels (factor ``zoom`` between levels).  warps: re-linearisations per
        level.  iterations: primal-dual iterations per warp.  learnable: make the stencils and
        the three scalars trainable parameters (otherwise buffers: plain unrolled TV-L1).
    """

    def __init__(
        self,
        tau: float = 0.25,
        lambda_: float = 0.15,
        theta: float = 0.3,
        scales: int = 1,
        warps: int = 1,
        iterations: int = 50,
        zoom: float = 0.5,
        learnable: bool = True,
    ):
        super().__init__()
        if scales < 1 or warps < 1 or iterations < 1 or not 0 < zoom < 1:
            raise ValueError(
                f"TVNet needs scales, warps, iterations >= 1 and 0 < zoom < 1; got {scales}, {warps}, {iterations}, {zoom}"
            )
        self.scales, self.warps, self.iterations, self.zoom = scales, warps, iterations, zoom
        values = {
            "tau": torch.tensor(float(tau)),
            "lambda_": torch.tensor(float(lambda_)),
            "theta": torch.tensor(float(theta)),
            # Cross-correlation taps along one axis.
            "centred": torch.tensor([-0.5, 0.0, 0.5]),  # image gradient: (I[j+1] - I[j-1]) / 2
            "forward_x": torch.tensor([-1.0, 1.0]),  # flow gradient: u[j+1] - u[j]
            "forward_y": torch.tensor([-1.0, 1.0]),
            "div_x": torch.tensor([-1.0, 1.0]),  # divergence: p[j] - p[j-1]
            "div_y": torch.tensor([-1.0, 1.0]),
        }
        for name, v in values.items():
            if learnable:
                setattr(self, name, nn.Parameter(v))
            else:
                self.register_buffer(name, v)

    # Stencils as 1-D cross-correlations along x (last dim) or y; (B, 1, H, W) in and out.  Written
    # as sums of shifted slices: a conv2d with a 1 x 2 kernel on one channel is several times slower.
    @staticmethod
    def _conv(x: torch.Tensor, taps: torch.Tensor, axis: str, pad: tuple[int, int], mode: str) -> torch.Tensor:
        k = taps.to(x.dtype)
        dim = -1 if axis == "x" else -2
        n = x.shape[dim]
        xp = F.pad(x, (pad[0], pad[1], 0, 0) if axis == "x" else (0, 0, pad[0], pad[1]), mode=mode)
        out = k[0] * xp.narrow(dim, 0, n)
        for i in range(1, k.numel()):
            out = out + k[i] * xp.narrow(dim, i, n)
        return out

    def _centred_gradient(self, img):
        return self._conv(img, self.centred, "x", (1, 1), "replicate"), self._conv(img, self.centred, "y", (1, 1), "replicate")

    def _forward_gradient(self, u):
        # Replicate padding makes the last column/row zero (Neumann boundary).
        return self._conv(u, self.forward_x, "x", (0, 1), "replicate"), self._conv(u, self.forward_y, "y", (0, 1), "replicate")

    def _divergence(self, px, py):
        # The last column of px (row of py) is zero by construction, so zero padding gives the
        # adjoint of -forward gradient.
        return self._conv(px, self.div_x, "x", (1, 0), "constant") + self._conv(py, self.div_y, "y", (1, 0), "constant")

    def _solve_level(self, i0, i1, u1, u2):
        lt = self.lambda_ * self.theta
        taut = self.tau / self.theta
        gx, gy = self._centred_gradient(i1)
        p11 = p12 = p21 = p22 = torch.zeros_like(i0)
        for _ in range(self.warps):
            u1_0, u2_0 = u1, u2
            i1w = warp(torch.cat([i1, gx, gy], 1), u1_0, u2_0)
            i1w, gxw, gyw = i1w[:, :1], i1w[:, 1:2], i1w[:, 2:]
            grad = gxw.square() + gyw.square()
            rho_c = i1w - gxw * u1_0 - gyw * u2_0 - i0
            safe = grad.clamp_min(1e-9)
            for _ in range(self.iterations):
                rho = rho_c + gxw * u1 + gyw * u2
                step = lt * grad
                # Thresholding: a shift of +-lt grad I, or the exact zero of rho.
                coef = torch.where(rho < -step, lt, torch.where(rho > step, -lt, -rho / safe))
                coef = torch.where(grad > 1e-9, coef, torch.zeros_like(coef))
                v1, v2 = u1 + coef * gxw, u2 + coef * gyw
                u1 = v1 + self.theta * self._divergence(p11, p12)
                u2 = v2 + self.theta * self._divergence(p21, p22)
                u1x, u1y = self._forward_gradient(u1)
                u2x, u2y = self._forward_gradient(u2)
                n1 = 1 + taut * (u1x.square() + u1y.square() + _EPS).sqrt()
                n2 = 1 + taut * (u2x.square() + u2y.square() + _EPS).sqrt()
                p11, p12 = (p11 + taut * u1x) / n1, (p12 + taut * u1y) / n1
                p21, p22 = (p21 + taut * u2x) / n2, (p22 + taut * u2y) / n2
        return u1, u2

    def forward(self, i0: torch.Tensor, i1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if i0.dim() != 4 or i0.shape[1] != 1 or i0.shape != i1.shape:
            raise ValueError(f"TVNet expects two grayscale batches of shape (B, 1, H, W); got {tuple(i0.shape)} and {tuple(i1.shape)}")
        H, W = i0.shape[-2:]
        sizes = [(H, W)]
        for _ in range(self.scales - 1):
            h, w = sizes[-1]
            sizes.append((max(1, round(h * self.zoom)), max(1, round(w * self.zoom))))
        u1 = u2 = None
        for h, w in reversed(sizes):
            if (h, w) == (H, W):
                a, b = i0, i1
            else:
                a = F.interpolate(i0, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
                b = F.interpolate(i1, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            if u1 is None:
                u1 = u2 = torch.zeros_like(a)
            else:
                # Upsample the coarser flow and rescale it to this level's pixels.
                sh, sw = h / u1.shape[-2], w / u1.shape[-1]
                u1 = F.interpolate(u1, size=(h, w), mode="bilinear", align_corners=False) * sw
                u2 = F.interpolate(u2, size=(h, w), mode="bilinear", align_corners=False) * sh
            u1, u2 = self._solve_level(a, b, u1, u2)
        return u1, u2


class TVNetFlow(Representation):
    """TVNet flow (learnable unrolled TV-L1, Fan et al. CVPR 2018) within each segment: (N, 2*(T-1), S, H, W).

    The same layout and scaling as :class:`dynapp.representations.flow.OpticalFlow` (x/y per
    consecutive pair, clipped to +-``bound`` px, divided by ``bound``) but differentiable end to
    end; the module is ``.tvnet`` (trainable stencils and tau, lambda, theta).  ``kwargs`` go to
    :class:`TVNet` (scales, warps, iterations, ...).
    """

    name = "flow"
    # Differentiable and in PyTorch, but every step is element-wise (the stencils are shifted
    # sums): FLOP counting by multiply-adds of convolutions and matrix products would report 0.
    countable = False

    @classmethod
    def channels_per_frame(cls, in_channels: int, frames: int) -> int:
        return 2 * (frames - 1)

    def __init__(self, segments: int, frames: int, in_channels: int = 3, bound: float = 20.0, **kwargs):
        if in_channels != 3:
            raise ValueError(f"flow is computed from RGB clips (in_channels=3), got in_channels={in_channels}")
        super().__init__(segments, frames, in_channels)
        self.bound = bound
        self.tvnet = TVNet(**kwargs)

    def forward(self, clip: torch.Tensor) -> RepresentationOutput:
        x = self._split(clip)  # (N, C, S, T, H, W)
        T, H, W = x.shape[3:]
        gray = normalised_to_gray255(clip).reshape(-1, T, H, W)  # (N*S, T, H, W): no channel axis, a reshape
        i0 = gray[:, :-1].reshape(-1, 1, H, W)  # (N*S*(T-1), 1, H, W)
        i1 = gray[:, 1:].reshape(-1, 1, H, W)
        u1, u2 = self.tvnet(i0, i1)
        flow = torch.cat([u1, u2], 1).clamp(-self.bound, self.bound) / self.bound  # (N*S*(T-1), 2, H, W)
        flow = unfold_segments(flow.reshape(-1, 2 * (T - 1), H, W), self.segments)  # (N, 2*(T-1), S, H, W)
        return RepresentationOutput(flow.to(clip.dtype))
