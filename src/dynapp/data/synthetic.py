"""A procedural same-scene action dataset: the class is defined by motion only.

The paper's motivation (Huang and Bors, "Dynamic Appearance", AAAI 2023, Fig. 1): actions filmed
in the same scene look alike, so a recogniser fed RGB frames is distracted by static appearance.
This dataset isolates that situation so it can be studied on a CPU:

* every clip shows one **actor** (a square, disk or diamond of a random colour and size) moving in
  one way; the motion (:data:`MOTIONS`: move left/right/up/down, grow, shrink, circle clockwise /
  anticlockwise) is the label, and nothing else is;
* the **scene** (a smooth textured background with static distractor shapes drawn from the same
  shape and colour families as the actor) comes from one pool of ``num_scenes`` scenes shared by
  all classes, so a single frame tells nothing about the class;
* optional nuisances: camera **shake** (a random whole-frame shift of up to ``shake`` pixels per
  frame), brightness **flicker** (a per-frame gain ``1 +- flicker``), Gaussian pixel **noise**
  (``noise`` x 255 standard deviation) and ``moving_distractors``: per-clip shapes of the actor's
  families that sway back and forth along a random line (at least one full swing per clip, at
  speeds like the actor's), independent of the class, so that "something moves" is not the class;
* ``scene_bias`` correlates scene with class in the training split only: with that probability a
  training clip takes its scene from its class's group (scenes ``s`` with ``s % num_classes ==
  label``), otherwise from the whole pool.  The test split always pairs every scene with every
  class equally often (``scene = (i // num_classes) % num_scenes``), so there the scene is at chance.
  The validation split (``train=False, validation=True``) is laid out like the test split and
  drawn from its own random stream: other clips of the same distribution, for every choice
  (strategy, budget) so that the test split is used for none.

Item ``i`` is a pure function of ``(seed, split, i)`` (split: train, test or val) (numpy's ``default_rng([seed, split, i])``),
generated on the fly as uint8 ``(3, S*T, H, W)`` and passed through the same normalisation (and,
when the generated size differs from ``crop_size``, the same centre crop) as decoded videos, so an
item matches the :class:`dynapp.data.VideoDataset` contract ``(clip (3, S*T, H, W) float
normalised, label, video_index)``.  :func:`write_synthetic_videos` caches a split as real video
files in the ``folder`` layout (``root/<class>/<i>.avi``).

Horizontal flipping is never applied (it would swap "move left" and "move right").
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from dynapp.data.transforms import center_crop, normalize

__all__ = ["MOTIONS", "SHAPES", "SyntheticClip", "SyntheticActions", "build_synthetic", "write_synthetic_videos",
           "render_scene"]

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "grow", "shrink", "circle_cw", "circle_ccw")
SHAPES = ("square", "disk", "diamond")
_SPLITS = {"train": 1, "test": 2, "val": 3}
_SCENE_STREAM = 7  # the rng stream of the scene pool (shared by both splits)


class SyntheticClip(NamedTuple):
    """One rendered clip with its ground truth (for tests and figures)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    label: int
    scene: int
    actor_mask: np.ndarray  # (T, H, W) float32 in [0, 1], in camera coordinates
    centre: np.ndarray  # (T, 2) actor centre (x, y) in camera coordinates
    size: np.ndarray  # (T,) actor half-size in pixels


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Soft (anti-aliased, 1-pixel ramp) mask of a shape of half-size ``r`` at offsets (dx, dy)."""
    if shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy))
    elif shape == "disk":
        d = np.sqrt(dx * dx + dy * dy)
    else:  # diamond
        d = (np.abs(dx) + np.abs(dy)) / math.sqrt(2.0)
    return np.clip(r - d + 0.5, 0.0, 1.0).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour (actors and distractors share this family)."""
    hue = rng.random()
    k = (np.array([0.0, 2.0, 4.0]) + hue * 6.0) % 6.0
    rgb = 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)  # HSV with S = V = 1
    value = rng.uniform(0.55, 1.0)
    return (rgb * value * 255.0).astype(np.float32)


def render_scene(seed: int, scene: int, height: int, width: int, distractors: int) -> tuple[np.ndarray, list]:
    """Background (height, width, 3) float32 of scene ``scene`` and its static distractors.

    A smooth two-colour gradient, low-frequency texture and stripes, then ``distractors`` static
    shapes (same shape and colour families as actors).  Returns (image, [(shape, x, y, r, colour)]).
    """
    rng = np.random.default_rng([seed, _SCENE_STREAM, scene])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0 = rng.uniform(30, 200, 3).astype(np.float32)
    c1 = rng.uniform(30, 200, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    g = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0
    img = c0 * (1.0 - g[..., None]) + c1 * g[..., None]
    for _ in range(3):  # low-frequency texture
        fx, fy = rng.uniform(0.5, 3.0, 2) * 2 * math.pi
        ph = rng.uniform(0, 2 * math.pi)
        amp = rng.uniform(-25, 25, 3).astype(np.float32)
        img += amp * np.sin(fx * xx / width + fy * yy / height + ph)[..., None]
    if rng.random() < 0.5:  # stripes: strong static edges
        period = rng.uniform(6, 16)
        theta = rng.uniform(0, math.pi)
        s = (np.sin(2 * math.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / period) > 0).astype(np.float32)
        img += rng.uniform(-30, 30, 3).astype(np.float32) * s[..., None]
    items = []
    scale = min(height, width)
    for _ in range(distractors):
        shape = SHAPES[rng.integers(len(SHAPES))]
        r = rng.uniform(0.06, 0.12) * scale
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        colour = _random_colour(rng)
        m = _shape_mask(shape, xx - x, yy - y, r)[..., None]
        img = img * (1 - m) + colour * m
        items.append((shape, x, y, r, colour))
    return np.clip(img, 0, 255).astype(np.float32), items


class SyntheticActions(Dataset):
    """Generated same-scene action clips (module docstring); item ``i`` -> (clip, label, i).

    Args:
        num_videos: clips in this split.  train: the training split (scene bias applies) or a held-out one.
        validation: with ``train=False``, the validation split instead of the test split.
        segments, frames: S and T (the clip has S*T consecutive frames).
        num_classes: the first ``num_classes`` names of :data:`MOTIONS` (2..8).
        num_scenes: size of the scene pool shared by all classes.
        size: generated frame size (H = W); crop_size: output size (default ``size``).
        scene_bias: in [0, 1], probability that a training clip's scene comes from its class's group.
        shake, flicker, noise: nuisances (pixels, relative gain, fraction of 255).
        distractors: static shapes per scene.  moving_distractors: swaying shapes per clip.
        speed: actor speed range in pixels per frame (relative to a 32-pixel frame; scaled with
            ``size``).  actor_scale: range of the actor's half-size as a fraction of the frame
            (grow/shrink span 0.06-0.24 whatever it is).
        seed: the dataset seed (scenes and clips).
        cache: keep every generated uint8 clip in memory (about ``3 S T size^2`` bytes each), so
            later epochs and other models reuse it (within one process: use ``num_workers=0``).
    """

    def __init__(
        self,
        *,
        num_videos: int,
        train: bool,
        segments: int,
        frames: int,
        num_classes: int = 4,
        num_scenes: int = 8,
        size: int = 32,
        crop_size: int | None = None,
        scene_bias: float = 0.0,
        shake: float = 0.0,
        flicker: float = 0.0,
        noise: float = 0.0,
        distractors: int = 3,
        speed: tuple[float, float] = (0.3, 0.6),
        actor_scale: tuple[float, float] = (0.09, 0.14),
        moving_distractors: int = 0,
        seed: int = 0,
        cache: bool = False,
        validation: bool = False,
    ):
        if not 2 <= num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in 2..{len(MOTIONS)}, got {num_classes}")
        if num_videos < 1 or num_scenes < 1 or segments < 1 or frames < 1:
            raise ValueError("num_videos, num_scenes, segments and frames must be >= 1")
        if size < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        if not 0.0 <= scene_bias <= 1.0:
            raise ValueError(f"scene_bias must be in [0, 1], got {scene_bias}")
        if shake < 0 or flicker < 0 or noise < 0 or distractors < 0 or moving_distractors < 0:
            raise ValueError("shake, flicker, noise, distractors and moving_distractors must be >= 0")
        if not 0.0 < actor_scale[0] <= actor_scale[1] <= 0.2:
            raise ValueError(f"actor_scale must be a range (lo, hi) with 0 < lo <= hi <= 0.2, got {actor_scale}")
        if train and validation:
            raise ValueError("validation=True is a held-out split: use it with train=False")
        if scene_bias > 0 and num_scenes < num_classes:
            raise ValueError(f"scene_bias needs at least one scene per class: num_scenes {num_scenes} < num_classes {num_classes}")
        self.num_videos, self.train = num_videos, train
        self.split = "train" if train else "val" if validation else "test"
        self.segments, self.frames = segments, frames
        self.num_scenes, self.size = num_scenes, size
        self.crop_size = crop_size or size
        self.scene_bias, self.shake, self.flicker, self.noise = scene_bias, shake, flicker, noise
        self.distractors, self.speed, self.seed = distractors, tuple(speed), seed
        self.actor_scale, self.moving_distractors = tuple(actor_scale), moving_distractors
        self.classes = list(MOTIONS[:num_classes])
        self.views = 1
        self.name = "synthetic"
        self._margin = int(math.ceil(shake))
        self._scene = lru_cache(maxsize=None)(self._render_scene)
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_videos

    def video_index(self, item: int) -> int:
        return item

    # ------------------------------------------------------------------------------------------

    def _render_scene(self, scene: int) -> np.ndarray:
        m = self._margin
        img, _ = render_scene(self.seed, scene, self.size + 2 * m, self.size + 2 * m, self.distractors)
        return img

    def label_and_scene(self, index: int) -> tuple[int, int]:
        """The class and the scene of item ``index`` (cheap: no rendering)."""
        k = self.num_classes
        label = index % k
        if not self.train:
            return label, (index // k) % self.num_scenes
        rng = np.random.default_rng([self.seed, _SPLITS["train"], index, 1])
        if self.scene_bias > 0 and rng.random() < self.scene_bias:
            group = list(range(label, self.num_scenes, k))
            return label, int(group[rng.integers(len(group))])
        return label, int(rng.integers(self.num_scenes))

    def render(self, index: int, *, actor: bool = True) -> SyntheticClip:
        """Render item ``index``: frames (T, H, W, 3) uint8 and the ground truth.

        ``actor=False`` renders the same clip (scene, shake, flicker, noise) without the actor.
        """
        if not 0 <= index < self.num_videos:
            raise IndexError(f"item {index} out of range for {self.num_videos} items")
        label, scene = self.label_and_scene(index)
        split = _SPLITS[self.split]
        rng = np.random.default_rng([self.seed, split, index, 2])
        n, s, m = self.segments * self.frames, self.size, self._margin
        unit = s / 32.0
        t = np.arange(n, dtype=np.float32)
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = _random_colour(rng)
        motion = MOTIONS[label]
        v = rng.uniform(*self.speed) * unit  # pixels per frame
        r0 = rng.uniform(*self.actor_scale) * s
        travel = v * (n - 1)
        radius = np.full(n, r0, dtype=np.float32)
        if motion in ("move_left", "move_right", "move_up", "move_down"):
            travel = min(travel, s - 2 * r0 - 2)
            sign = -1.0 if motion in ("move_left", "move_up") else 1.0
            along = rng.uniform(r0 + 1, s - r0 - 1 - travel) + (travel if sign < 0 else 0.0)
            across = rng.uniform(r0 + 1, s - r0 - 1)
            path = along + sign * travel * t / max(n - 1, 1)
            cx, cy = (path, np.full(n, across)) if motion in ("move_left", "move_right") else (np.full(n, across), path)
        elif motion in ("grow", "shrink"):
            small, large = 0.06 * s, 0.24 * s
            lo, hi = (small, large) if motion == "grow" else (large, small)
            radius = (lo + (hi - lo) * t / max(n - 1, 1)).astype(np.float32)
            cx = np.full(n, rng.uniform(large + 1, s - large - 1))
            cy = np.full(n, rng.uniform(large + 1, s - large - 1))
        else:  # circles: about 3/4 of a turn over the clip at the drawn speed (at least)
            rad = rng.uniform(0.15, 0.22) * s
            ang_speed = max(v / rad, 1.5 * math.pi / max(n - 1, 1))
            sign = 1.0 if motion == "circle_cw" else -1.0  # image y points down: +angle is clockwise
            a0 = rng.uniform(0, 2 * math.pi)
            ang = a0 + sign * ang_speed * t
            c = rng.uniform(rad + r0 + 1, s - rad - r0 - 1, 2)
            cx, cy = c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)
        shifts = np.zeros((n, 2), dtype=np.int64)
        if self.shake > 0:
            shifts = rng.integers(-m, m + 1, size=(n, 2))
        gains = np.ones(n, dtype=np.float32)
        if self.flicker > 0:
            gains = 1.0 + rng.uniform(-self.flicker, self.flicker, n).astype(np.float32)
        movers = self._movers(np.random.default_rng([self.seed, split, index, 4]), n)
        noise_rng = np.random.default_rng([self.seed, split, index, 3])
        bg = self._scene(scene)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        out = np.empty((n, s, s, 3), dtype=np.uint8)
        masks = np.zeros((n, s, s), dtype=np.float32)
        for f in range(n):
            dy, dx = shifts[f]
            # the camera moves: the view is a shifted window of the (margin-padded) scene, and the
            # actor, which lives in scene coordinates, shifts with it
            img = bg[m + dy : m + dy + s, m + dx : m + dx + s].copy()
            for mshape, mcolour, mx, my, mr in movers:  # behind the actor, in scene coordinates
                mm = _shape_mask(mshape, xx - (mx[f] - dx), yy - (my[f] - dy), mr)[..., None]
                img = img * (1 - mm) + mcolour * mm
            if actor:
                mask = _shape_mask(shape, xx - (cx[f] - dx), yy - (cy[f] - dy), float(radius[f]))
                masks[f] = mask
                img = img * (1 - mask[..., None]) + colour * mask[..., None]
            img = img * gains[f]
            if self.noise > 0:
                img = img + noise_rng.normal(0.0, self.noise * 255.0, img.shape).astype(np.float32)
            out[f] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        centre = np.stack([cx - shifts[:, 1], cy - shifts[:, 0]], axis=1).astype(np.float32)
        return SyntheticClip(out, label, scene, masks, centre, radius)

    def _movers(self, rng: np.random.Generator, n: int) -> list:
        """The clip's swaying distractors: [(shape, colour, x (n,), y (n,), half-size)].

        Each sways along a random line through a random point: position ``c + d * amp *
        sin(2 pi t / period + phase)`` with a period of 1/3 to 2/3 of the clip (so every clip shows
        at least one full swing and no net direction) and an amplitude of 10-20% of the frame.
        """
        s, t = self.size, np.arange(n, dtype=np.float32)
        out = []
        for _ in range(self.moving_distractors):
            shape = SHAPES[rng.integers(len(SHAPES))]
            colour = _random_colour(rng)
            r = rng.uniform(*self.actor_scale) * s
            theta = rng.uniform(0, math.pi)
            amp = rng.uniform(0.10, 0.20) * s
            period = rng.uniform(n / 3.0, 2.0 * n / 3.0)
            phase = rng.uniform(0, 2 * math.pi)
            cx, cy = rng.uniform(r + amp, s - r - amp, 2)
            swing = amp * np.sin(2 * math.pi * t / period + phase)
            out.append((shape, colour, cx + math.cos(theta) * swing, cy + math.sin(theta) * swing, float(r)))
        return out

    def clip_uint8(self, index: int) -> torch.Tensor:
        """Item ``index`` as uint8 (3, S*T, H, W), before crop and normalisation."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        x = torch.from_numpy(self.render(index).frames).permute(3, 0, 1, 2).contiguous()
        if self._cache is not None:
            self._cache[index] = x
        return x

    def __getitem__(self, index: int):
        x = self.clip_uint8(index)  # (3, S*T, size, size) uint8
        if self.crop_size != self.size:
            x = center_crop(x, self.crop_size, self.crop_size)
        return normalize(x), self.label_and_scene(index)[0], index


# The video-reading options and the run-level ones (run_seed: the data seed is ``seed``; num_samples and
# in_channels: the ``random`` dataset's) that the generated clips have no use for.
_IGNORED = ("sampling", "flip", "flip_pairs", "stride", "scale_size", "train_crop", "num_clips", "num_crops", "backend",
            "decode_device", "max_replacements", "run_seed", "num_samples", "in_channels", "val_fraction", "val_seed")


def build_synthetic(
    root: str | os.PathLike | None = None,
    *,
    split: int = 1,
    train: bool,
    segments: int,
    frames: int,
    crop_size: int = 32,
    num_train: int = 960,
    num_test: int = 320,
    **kwargs,
) -> SyntheticActions:
    """``--dataset synthetic``: the training or the test split of :class:`SyntheticActions`.

    ``root`` is unused (the data are generated).  ``split`` (1..3) shifts the dataset seed, so the
    three "splits" are three different draws.  ``crop_size`` is the generated size unless ``size``
    is given.  The video-reading options of :func:`dynapp.data.build_dataset` (sampling, flip,
    views, ...) have no meaning here and are ignored; the rest goes to :class:`SyntheticActions`
    (``num_classes``, ``num_scenes``, ``scene_bias``, ``shake``, ``flicker``, ``noise``, ...).
    """
    for k in _IGNORED:
        kwargs.pop(k, None)
    kwargs.setdefault("size", crop_size)
    kwargs["seed"] = int(kwargs.get("seed", 0)) + 1000 * (split - 1)
    return SyntheticActions(num_videos=num_train if train else num_test, train=train, segments=segments,
                            frames=frames, crop_size=crop_size, **kwargs)


def write_synthetic_videos(dataset: SyntheticActions, root: str | os.PathLike, *, codec: str = "png",
                           ext: str = ".avi", limit: int | None = None) -> list[Path]:
    """Cache ``dataset`` as video files ``root/<class>/<index>.avi`` (the ``folder`` layout).

    The default ``png`` codec (RGB) is lossless, so a decoded file equals the generated frames exactly.
    """
    from dynapp.data.encode import write_video

    root = Path(root)
    paths = []
    for i in range(min(len(dataset), limit or len(dataset))):
        clip = dataset.render(i)
        path = root / dataset.classes[clip.label] / f"{i:06d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(write_video(path, clip.frames, codec=codec))
    return paths
