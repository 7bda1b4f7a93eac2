"""The demo's sizes (:class:`DemoConfig`) and the :class:`dynapp.config.RunConfig` of each of its runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dynapp.apps.demo.rule import RULE_BASELINE_ARM, RULE_CANDIDATE_ARMS
from dynapp.config import CheckpointConfig, DataConfig, JointConfig, LogConfig, ModelConfig, OptimConfig, RunConfig

INPUTS = ("rgb", "rgb_diff", "dynamic_image", "pwtp", "pwtp_remove")
# demo input -> (representation, its fixed keyword arguments)
_REPRESENTATIONS = {"pwtp_remove": ("pwtp", {"static": "remove"})}
DEMO_BACKBONES = ("small_tsm", "small2d", "small3d")  # the backbones the demo trains (of dynapp.backbones.BACKBONES)
STUDIES = ("joint", "frames", "backbones")
SETTINGS = ("unbiased", "biased")
# The joint study's arms, (strategy, alpha, MGDA normalisation, backbone gradient): the arms of the
# pre-registered rule that decides the default strategy (dynapp.apps.demo.rule, docs/joint.md):
# the paper's Eq. 12 and the candidates of the exploratory study, each with the backbone on the
# full recognition gradient (Algorithm 1's line 6), so that only PWTP's training differs.
JOINT_STRATEGIES = (RULE_BASELINE_ARM, *RULE_CANDIDATE_ARMS)
_DEFAULT = JointConfig()
# the demo's DA runs (inputs pwtp and pwtp_remove) train with dynapp train's default strategy
DEFAULT_JOINT = (_DEFAULT.strategy, _DEFAULT.alpha, _DEFAULT.normalize, _DEFAULT.backbone_grad)


@dataclass
class DemoConfig:
    """Sizes of the demo (defaults: docs/demo.md, the difficulty probe and the budget calibration)."""

    num_classes: int = 8
    num_scenes: int = 16
    size: int = 32
    segments: int = 4
    frames: int = 8
    num_train: int = 960
    num_val: int = 256  # validation clips: every choice (strategy, budget) is made on these, never on the test clips
    num_test: int = 1024  # the sampling error of one test accuracy: about 1.3 points at 80% (2.5 with 256 clips)
    epochs: int = 24  # set by convergence on the validation clips (benchmarks/calibrate_budget.py, docs/demo.md)
    batch_size: int = 32
    lr: float = 0.05
    scene_bias: float = 0.8
    shake: float = 0.0
    flicker: float = 0.05
    noise: float = 0.02
    distractors: int = 3
    moving_distractors: int = 1
    actor_scale: tuple = (0.09, 0.14)
    speed: tuple = (0.3, 0.6)
    backbone: str = "small_tsm"
    widths: tuple = (32, 64, 128, 128)
    rank: int = 1
    inputs: tuple = INPUTS
    settings: tuple = SETTINGS
    threads: int = 1
    jobs: int = 1  # runs trained at once, each in its own process (results do not depend on it)
    extra: dict = field(default_factory=dict)



QUICK = dict(num_train=96, num_val=48, num_test=48, epochs=2, size=24, widths=(16, 32, 32, 32))


def demo_config(*, quick: bool = False, threads: int = 1, jobs: int = 1, inputs: str | None = None,
                **overrides) -> DemoConfig:
    """The default (or ``quick``) config with the command line's overrides (None: keep)."""
    cfg = DemoConfig(**QUICK) if quick else DemoConfig()
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if overrides.get("backbone") not in (None, *DEMO_BACKBONES):
        raise ValueError(f"--backbone: unknown {overrides['backbone']!r}; choose from {', '.join(DEMO_BACKBONES)}")
    cfg = replace(cfg, threads=threads, jobs=jobs, **{k: v for k, v in overrides.items() if v is not None})
    if inputs:
        names = tuple(n.strip() for n in inputs.split(",") if n.strip())
        unknown = [n for n in names if n not in INPUTS]
        if unknown or not names:
            raise ValueError(f"--inputs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(INPUTS)}")
        cfg = replace(cfg, inputs=names)
    for key in ("epochs", "num_train", "num_val", "num_test"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.size < 8:
        raise ValueError(f"--size must be >= 8, got {cfg.size}")
    if cfg.num_train < cfg.batch_size:
        cfg = replace(cfg, batch_size=max(1, cfg.num_train))
    return cfg


def data_kwargs(cfg: DemoConfig, seed: int) -> dict:
    """The keyword arguments of seed ``seed``'s :class:`dynapp.data.synthetic.SyntheticActions`."""
    return dict(segments=cfg.segments, frames=cfg.frames, num_classes=cfg.num_classes, num_scenes=cfg.num_scenes,
                size=cfg.size, shake=cfg.shake, flicker=cfg.flicker, noise=cfg.noise,
                distractors=cfg.distractors, moving_distractors=cfg.moving_distractors,
                actor_scale=tuple(cfg.actor_scale), speed=tuple(cfg.speed), seed=seed, cache=True)


def parse_studies(study: str | None) -> tuple[str, ...]:
    """``--study``: a comma list of joint, frames, backbones (None or empty: no study)."""
    names = tuple(n.strip() for n in (study or "").split(",") if n.strip())
    for n in names:
        if n not in STUDIES:
            raise ValueError(f"unknown study {n!r}; choose from {', '.join(STUDIES)}")
    return names


def _representation(cfg: DemoConfig, name: str, rank: int | None = None, pwtp: dict | None = None) -> tuple[str, dict]:
    """The representation and its keyword arguments behind demo input ``name`` (``pwtp``: more
    keyword arguments of a PWTP input, e.g. ``kernel_size``, ``stride``, ``pixels``)."""
    rep, kwargs = _REPRESENTATIONS.get(name, (name, {}))
    if rep == "pwtp":
        kwargs = {"rank": rank or cfg.rank, **kwargs, **(pwtp or {})}
    return rep, kwargs


def _backbone_kwargs(cfg: DemoConfig) -> dict:
    """small2d and small_tsm take the demo's widths; small3d keeps its own (about the same 0.24M parameters)."""
    return {} if cfg.backbone == "small3d" else {"widths": tuple(cfg.widths)}


def run_config(cfg: DemoConfig, rep: str, *, out_dir, seed: int, strategy: str = _DEFAULT.strategy,
               alpha: float = _DEFAULT.alpha, normalize: str = _DEFAULT.normalize,
               backbone_grad: str = _DEFAULT.backbone_grad, rank: int | None = None, pwtp: dict | None = None,
               enopr_weight: float = _DEFAULT.enopr_weight) -> RunConfig:
    """The :class:`dynapp.config.RunConfig` of one demo run: ``cfg.backbone`` on demo input ``rep``,
    trained by ``dynapp train``'s loop with these sections (the clips themselves are the demo's own
    :class:`dynapp.data.synthetic.SyntheticActions`, built by :mod:`dynapp.apps.demo.runs`).

    Under ``separate`` the recogniser gets the whole budget: PWTP trains alone for
    ``separate_epochs`` = epochs // 4 epochs, then the recogniser for ``cfg.epochs`` epochs.
    """
    representation, rep_kwargs = _representation(cfg, rep, rank, pwtp)
    separate_epochs = max(1, cfg.epochs // 4)
    epochs = cfg.epochs + (separate_epochs if strategy == "separate" and representation == "pwtp" else 0)
    return RunConfig(
        seed=seed,
        data=DataConfig(dataset="synthetic", segments=cfg.segments, frames=cfg.frames, crop_size=cfg.size,
                        num_classes=cfg.num_classes, num_workers=0),
        model=ModelConfig(representation=representation, backbone=cfg.backbone, dropout=0.0,
                          representation_kwargs=rep_kwargs, backbone_kwargs=_backbone_kwargs(cfg)),
        optim=OptimConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=1e-4,
                          warmup_epochs=min(1.0, cfg.epochs / 4), label_smoothing=0.1),
        joint=JointConfig(strategy=strategy, alpha=alpha, separate_epochs=separate_epochs,
                          normalize=normalize, backbone_grad=backbone_grad, enopr_weight=enopr_weight),
        log=LogConfig(out_dir=str(out_dir), csv=True, tensorboard=False, progress=False),
        checkpoint=CheckpointConfig(enabled=False),
    )
