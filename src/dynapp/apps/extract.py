"""``dynapp extract``: the dynamic appearance of one video, as images (the paper's Figure 4).

The video is decoded and cut into S segments of T consecutive frames (TSN sampling, centred
windows).  A PWTP is either fitted to this video alone, unsupervised, by minimising the ENoPR
(Eq. 7-8) with Adam -- the paper notes that PWTP can learn from unlabeled video -- or loaded from
a trained checkpoint.  One PNG per segment shows the frame average (left) beside the dynamic
appearance (right).  DA is a signed residual in normalised units, so it is displayed with a
symmetric percentile scale: ``0.5 + 0.5 * clip(DA / q, -1, 1)`` where ``q`` is the 99th
percentile of ``|DA|`` over the whole video (grey = no motion; the same scale for every segment).

Checkpoints (read with ``torch.load(weights_only=True)``): a bare PWTP ``state_dict``, or a
dict with a ``"model"`` entry holding a VideoClassifier state dict whose PWTP keys start with
``representation.pwtp.`` (a ``module.`` prefix from DataParallel/DDP is stripped too).  The
PWTP's frames, rank, channels, kernel size, expansion, bottleneck and blocks are read from the
weight shapes; the stride and the ``static`` option (leak-free DA) cannot be: they come from the
run config a training checkpoint carries (``model.representation_kwargs``), else the defaults
(stride 8, the paper's DA).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dynapp.data.decode import open_video
from dynapp.data.sampling import tsn_indices
from dynapp.data.transforms import normalize
from dynapp.pwtp import PWTP

from dynapp.engine.checkpoint import CheckpointError, load_checkpoint, model_state_dict

__all__ = ["extract", "fit_pwtp", "load_pwtp", "pwtp_state_dict", "da_panel"]

_PREFIX = "representation.pwtp."


def pwtp_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The PWTP weights of a checkpoint: a bare state dict or ``{"model": {...representation.pwtp.*}}``."""
    state = model_state_dict(checkpoint)
    if any(k.startswith(_PREFIX) for k in state):
        state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not any(k.startswith("conv.") for k in state):
        raise ValueError(f"the checkpoint holds no PWTP weights (expected 'conv.weight' or '{_PREFIX}conv.weight')")
    return state


def _pwtp_kwargs(state: dict[str, torch.Tensor]) -> dict:
    """PWTP constructor arguments read from the weight shapes (stride excepted)."""
    kw: dict = {}
    conv = state.get("conv.weight")
    if conv is not None and conv.dim() >= 4:
        kw.update(channels=conv.shape[0], in_channels=conv.shape[1], kernel_size=conv.shape[-1])
    expand = state.get("expand.weight")
    if expand is not None:
        width, pairs = expand.shape
        frames = int(round((1 + math.sqrt(1 + 8 * pairs)) / 2))
        kw.update(frames=frames, expansion=width / pairs)
        head = state.get("head.weight")
        if head is not None:
            kw["rank"] = head.shape[0] // frames
        blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
        kw["blocks"] = len(blocks)
        down = state.get("blocks.0.down.weight")
        if down is not None:
            kw["bottleneck"] = down.shape[0] / width
    return kw


def _config_kwargs(checkpoint) -> dict:
    """The PWTP options its weights do not show (stride, static), from the run config that a
    training checkpoint carries (``config.model.representation_kwargs``); {} where there is none."""
    cfg = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    rep = model.get("representation_kwargs") if isinstance(model, dict) else None
    return {k: rep[k] for k in ("stride", "static") if k in rep} if isinstance(rep, dict) else {}


def load_pwtp(path: str | os.PathLike):
    """A PWTP with the weights of a checkpoint file (see the module docstring), in eval mode."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    state = pwtp_state_dict(ckpt)
    try:
        pwtp = PWTP(**(_pwtp_kwargs(state) | _config_kwargs(ckpt)))
        pwtp.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"checkpoint {path} does not fit a PWTP: {str(err).splitlines()[0]}") from None
    return pwtp.eval()


def fit_pwtp(x: torch.Tensor, *, steps: int = 200, lr: float = 3e-3, seed: int = 0, progress: bool = True, **pwtp_kwargs):
    """Fit a fresh PWTP to segments ``x`` (S, C, T, H, W) by minimising ENoPR (Eq. 8) with Adam."""


    torch.manual_seed(seed)
    pwtp = PWTP(frames=x.shape[2], in_channels=x.shape[1], **pwtp_kwargs)
    opt = torch.optim.Adam(pwtp.parameters(), lr=lr)
    pwtp.train()
    bar = tqdm(range(steps), desc="fit PWTP", unit="step", disable=not progress)
    for _ in bar:
        loss = pwtp(x).enopr.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(enopr=f"{loss.item():.4f}", refresh=False)
    return pwtp.eval()


def da_panel(average: torch.Tensor, dynamic: torch.Tensor, scale: float, gap: int = 4) -> np.ndarray:
    """(H, 2W + gap, 3) uint8: the frame average (C, H, W in [0, 1]) beside DA (C, H, W) / scale."""
    left = average.clamp(0, 1)
    right = (0.5 + 0.5 * (dynamic / scale).clamp(-1, 1))
    sep = torch.ones(3, left.shape[1], gap)
    img = torch.cat([left, sep, right], dim=2)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def extract(
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    segments: int = 8,
    frames: int = 8,
    steps: int = 200,
    checkpoint: str | os.PathLike | None = None,
    short_side: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write ``segment_XX.png`` (frame average | dynamic appearance) for each of S segments.

    Raises :class:`dynapp.data.VideoDecodeError` for an unreadable video and ``ValueError``
    for a bad checkpoint or arguments.  Returns the written paths.
    """


    if segments < 1 or frames < 2 or steps < 0 or short_side < 8:
        raise ValueError("need segments >= 1, frames >= 2, steps >= 0 and short_side >= 8")
    pwtp = load_pwtp(checkpoint) if checkpoint is not None else None
    if pwtp is not None and pwtp.frames != frames:
        raise ValueError(f"the checkpoint's PWTP takes T={pwtp.frames} frames per segment, not --frames {frames}")
    with open_video(video) as v:
        idx = tsn_indices(v.num_frames, segments, frames, train=False)
        clip = v.read(idx, short_side=short_side).contiguous()  # (3, S*T, H, W) uint8
    c, _, h, w = clip.shape
    x = normalize(clip).view(c, segments, frames, h, w).transpose(0, 1).contiguous()  # (S, C, T, H, W)
    if pwtp is None:
        pwtp = fit_pwtp(x, steps=steps, lr=lr, seed=seed, progress=progress)
    with torch.no_grad():
        dynamic = pwtp(x).dynamic  # (S, C, H, W)
    average = clip.view(c, segments, frames, h, w).float().mean(2).transpose(0, 1) / 255  # (S, C, H, W)
    scale = float(torch.quantile(dynamic.abs().flatten()[:1_000_000], 0.99)) or 1.0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in tqdm(range(segments), desc="write PNGs", unit="image", disable=not progress):
        p = out / f"segment_{s:02d}.png"
        Image.fromarray(da_panel(average[s], dynamic[s], scale)).save(p)
        paths.append(p)
    return paths
