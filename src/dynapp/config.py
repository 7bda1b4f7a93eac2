"""Run configuration: dataclasses loaded from YAML, dotted ``key=value`` overrides, validation.

Every knob of a training run lives here, grouped as data / model / optim / joint / eval / log /
checkpoint.  A config is only ever read by the one builder (``dynapp.engine.run.run_from_config``),
which turns it into explicit keyword arguments: no module receives a config object.

Errors are one line (``ConfigError``, a ``ValueError``): an unknown key names the closest known
key, a bad value names the key, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dynapp.joint import BACKBONE_GRADS, NORMALIZATIONS, STRATEGIES

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "JointConfig",
    "EvalConfig",
    "LogConfig",
    "CheckpointConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "validate",
    "all_keys",
    "describe_keys",
    "format_config",
]


AMP_DTYPES = ("float16", "bfloat16")  # optim.amp_dtype: torch dtypes of autocast on CUDA


class ConfigError(ValueError):
    """A bad configuration: unknown key or bad value (one-line message)."""


@dataclass
class DataConfig:
    dataset: str = "random"  # folder, list, ucf101, hmdb51, kinetics, minikinetics, ssv1; synthetic (generated actions) or random (noise clips)
    root: str = ""  # the dataset's folder (for list: the folder of the lists, or one list file)
    split: int = 1  # official split (UCF101/HMDB51: 1..3)
    val_fraction: float = 0.2  # folder/list datasets without a validation part: share of each class held out for validation (0: none)
    val_seed: int = 0  # seed of that hold-out (the same files for every run seed)
    segments: int = 4  # S, segments per clip
    frames: int = 8  # T, frames per segment
    sampling: str = "tsn"  # "tsn" (sparse, SS V1/UCF/HMDB) or "dense" (Kinetics)
    crop_size: int = 160  # training crop, pixels (H = W)
    num_classes: int = 0  # classifier outputs (0: the dataset's class count)
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # DataLoader workers, at most the machine's cores
    num_samples: int = 64  # only for dataset "random": number of videos
    flip: bool | None = None  # random horizontal flip in training; null: the dataset's default (dynapp.data.catalog: on, except for ssv1)
    flip_pairs: list = field(default_factory=list)  # pairs of class names a flip swaps, e.g. [[swipe left, swipe right]]
    backend: str = "pyav"  # video decoder: pyav or torchcodec (pip install -e '.[torchcodec]'); the same frames
    decode_device: str = "cpu"  # cuda: NVDEC decoding with torchcodec, in the main process (data.num_workers=0)
    dataset_kwargs: dict = field(default_factory=dict)  # passed to build_dataset as is (scale_size, train_crop, ...)


@dataclass
class ModelConfig:
    representation: str = "pwtp"  # input: pwtp (dynamic appearance), rgb, rgb_diff, dynamic_image, flow_tvl1, flow_farneback, flow_tvnet
    backbone: str = "x3d_xs"  # recogniser: x3d_xs, x3d_m, tsm_resnet50, vit_b16, small2d, small_tsm, small3d
    dropout: float = 0.5  # dropout before the classifier
    pretrained: str | None = None  # backbone weights file (ImageNet or Kinetics); null: random initialisation
    in_channels: int = 3  # channels of the decoded frames (3: RGB)
    init_from: str | None = None  # a dynapp checkpoint whose matching weights start the whole model (fine-tuning)
    representation_kwargs: dict = field(default_factory=dict)  # options of the representation (e.g. PWTP's rank)
    backbone_kwargs: dict = field(default_factory=dict)  # options of the backbone (e.g. widths, arch)
    channels_last: bool = False  # convolution weights (so activations) in channels-last memory format (GPU)
    compile: bool = False  # torch.compile the backbone (nn.Module.compile: state-dict keys unchanged)


@dataclass
class OptimConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 8  # GLOBAL batch: split over processes and accumulation steps
    accumulation_steps: int = 1  # micro-batches per optimiser step (gradient accumulation)
    lr: float = 0.01  # base learning rate, for the global batch_size
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 on convolution and linear weights (not biases or normalisation)
    warmup_epochs: float = 0.0  # linear warm-up, then cosine; stepped every optimiser step
    warmup_start_factor: float = 0.01  # the warm-up starts at this share of lr
    min_lr: float = 0.0  # the cosine schedule ends here
    label_smoothing: float = 0.1  # of the cross-entropy
    clip_grad_norm: float = 20.0  # largest gradient norm (0: no clipping)
    classifier_lr_mult: float = 5.0  # learning-rate multiplier of the classifier
    classifier_wd_mult: float = 5.0  # weight-decay multiplier of the classifier
    representation_lr_mult: float = 1.0  # learning-rate multiplier of the representation (PWTP; ViT recipe: 5)
    representation_wd_mult: float = 1.0  # weight-decay multiplier of the representation (PWTP)
    freeze_bn: bool = False  # freeze every BatchNorm of the backbone except the first (fine-tuning)
    amp: bool = True  # mixed precision; only ever used on CUDA
    amp_dtype: str = "float16"  # float16 (with a GradScaler) | bfloat16 (no scaler needed)


@dataclass
class JointConfig:
    strategy: str = "constant"  # constant (fixed alpha; with alpha 0.5 and backbone_grad full the default, decided by the rule of docs/joint.md) | mgda (Eq. 12; the paper's, see normalize) | mgda_ub | scheduler | separate
    alpha: float = 0.5  # constant strategy: the weight of ENoPR
    gamma: float = 0.2  # scheduler (Eq. 13)
    lam: float = 0.1  # scheduler (Eq. 13)
    separate_epochs: int = 1  # separate: epochs of PWTP on ENoPR alone before it is frozen (they count in optim.epochs)
    normalize: str = "none"  # mgda, mgda_ub: none (Eq. 12 as printed; PWTP may stop learning, a warning says so) | loss+ (Sener & Koltun's normalisation, which lets it learn) | loss | l2 (= alpha 0.5)
    enopr_weight: float = 1.0  # the weight of ENoPR (L1) in every strategy: L1 is w * ENoPR (Eq. 8 has w = 1)
    backbone_grad: str = "full"  # constant, scheduler: Theta2 along grad L2 (full, as Algorithm 1; the default) | (1 - alpha) grad L2 (weighted, Eq. 9 as written)


@dataclass
class EvalConfig:
    every_epochs: int = 1  # evaluate every N epochs (0: only at the end)
    clips: int = 1  # temporal views per video
    crops: int = 1  # spatial views per video
    batch_size: int = 8  # clips per evaluation batch, per process
    crop_size: int = 0  # test crop (paper: 256, 160 for X3D-XS); 0: data.crop_size


@dataclass
class LogConfig:
    out_dir: str = "runs/default"  # the run folder: checkpoints, logs, config.yaml, summary figures
    tensorboard: bool = True  # write TensorBoard events (out_dir/tensorboard)
    csv: bool = True  # write out_dir/train_log.csv
    progress: bool = True  # console progress (a bar on a terminal, lines otherwise)
    every_steps: int = 20  # console: a line every N steps when stdout is not a terminal (a bar on one)


@dataclass
class CheckpointConfig:
    enabled: bool = True  # false: write no checkpoint at all (smoke tests)
    every_steps: int = 0  # also save every N optimiser steps (0: only at epoch ends)
    keep_every_epoch: bool = False  # keep epoch_XXX.pt besides last.pt
    resume: str = "never"  # never | auto (continue if checkpoints/last.pt exists, else start) | always (= --resume)


@dataclass
class RunConfig:
    seed: int = 0  # initial weights, shuffling and augmentation
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = False  # deterministic algorithms only (bitwise repeatable, slower)
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs); for smoke tests
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


RETIRED_SECTIONS = ("debug",)  # sections that configs and checkpoints of older versions carry; ignored


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. ``optim.lr``."""
    keys = []
    for name, tp in _hints(cls).items():
        if _is_dataclass_type(tp):
            keys.extend(all_keys(tp, prefix + name + "."))
        else:
            keys.append(prefix + name)
    return keys


def _comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the source of a config class."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        found = re.match(r"^\s+(\w+):[^#]*#\s*(.+)$", line)
        if found:
            out[found.group(1)] = found.group(2).strip()
    return out


def describe_keys(cfg: RunConfig | None = None) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, one-line meaning)`` of every key, values from ``cfg`` (default: the defaults)."""
    cfg = cfg if cfg is not None else RunConfig()
    rows = []

    def walk(obj: Any, prefix: str) -> None:
        meanings = _comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + f.name + ".")
            else:
                rows.append((prefix + f.name, value, meanings.get(f.name, "")))

    walk(cfg, "")
    return rows


def format_config(cfg: RunConfig | None = None) -> str:
    """Every key as YAML (``section:`` then ``  key: value  # meaning``): it loads back with ``--config``."""
    lines, section = [], None
    for key, value, meaning in describe_keys(cfg):
        head, _, name = key.rpartition(".")
        if head != section:
            if head:
                lines.append(f"{head}:")
            section = head
        text = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000).strip()[1:-1].strip()
        indent = "  " if head else ""
        lines.append(f"{indent}{text}" + (f"  # {meaning}" if meaning else ""))
    return "\n".join(lines)


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:  # "key=" on the command line
            raise ConfigError(f"{key}: empty; expected a string")
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, list):
            return list(value)
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown(prefix + str(key), all_keys())
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, prefix + key + ".")
        else:
            kwargs[key] = _coerce(prefix + key, value, tp)
    return cls(**kwargs)


def config_from_dict(data: dict | None) -> RunConfig:
    """A validated ``RunConfig`` from a nested dict (as read from YAML); missing keys keep defaults.

    Sections of older versions (``RETIRED_SECTIONS``) are ignored, so their ``config.yaml`` files
    and checkpoints still load."""
    cfg = _build(RunConfig, {k: v for k, v in (data or {}).items() if k not in RETIRED_SECTIONS})
    validate(cfg)
    return cfg


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML scalars)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    known = all_keys()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        # a key inside a free-form dict (e.g. model.representation_kwargs.rank) is allowed
        is_known = key in known or any(key.startswith(k + ".") for k in known if k.endswith("_kwargs"))
        if not is_known:
            raise _unknown(key, known)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or defaults when ``path`` is None), apply overrides, validate."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, list(overrides or []))
    return config_from_dict(data)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_decoding(d: DataConfig) -> None:
    """data.backend and data.decode_device (whether torchcodec and CUDA are there is checked when
    a dataset is built: a saved config stays loadable on any machine)."""
    from dynapp.data.decode import BACKENDS, decode_device

    _check(d.backend in BACKENDS, f"data.backend: expected {' or '.join(BACKENDS)}, got {d.backend!r}")
    try:
        cuda = decode_device(d.decode_device).type == "cuda"
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    _check(not cuda or d.backend == "torchcodec", "data.decode_device: cuda needs data.backend=torchcodec")
    _check(not cuda or d.num_workers == 0, "data.decode_device: cuda decodes in the main process, set "
           "data.num_workers=0 (CUDA cannot start in forked DataLoader workers)")


def validate(cfg: RunConfig) -> None:
    """Value checks across the whole config (one-line ``ConfigError`` on the first failure)."""
    d, m, o, j, e = cfg.data, cfg.model, cfg.optim, cfg.joint, cfg.eval
    _check(cfg.device in ("auto", "cpu", "cuda"), f"device: expected auto, cpu or cuda, got {cfg.device!r}")
    _check(cfg.max_steps >= 0, f"max_steps: must be >= 0, got {cfg.max_steps}")
    _check(d.segments >= 1, f"data.segments: must be >= 1, got {d.segments}")
    _check(d.frames >= 1, f"data.frames: must be >= 1, got {d.frames}")
    _check(d.sampling in ("tsn", "dense"), f"data.sampling: expected tsn or dense, got {d.sampling!r}")
    _check(d.crop_size >= 8, f"data.crop_size: must be >= 8, got {d.crop_size}")
    _check(d.num_classes >= 0, f"data.num_classes: must be >= 0, got {d.num_classes}")
    _check(d.num_workers >= 0, f"data.num_workers: must be >= 0, got {d.num_workers}")
    _check(d.split in (1, 2, 3), f"data.split: expected 1, 2 or 3, got {d.split}")
    _check_decoding(d)
    _check(0.0 <= d.val_fraction < 1.0, f"data.val_fraction: must be in [0, 1), got {d.val_fraction}")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout: must be in [0, 1), got {m.dropout}")
    _check(o.epochs >= 1, f"optim.epochs: must be >= 1, got {o.epochs}")
    _check(o.batch_size >= 1, f"optim.batch_size: must be >= 1, got {o.batch_size}")
    _check(o.accumulation_steps >= 1, f"optim.accumulation_steps: must be >= 1, got {o.accumulation_steps}")
    _check(o.lr > 0, f"optim.lr: must be > 0, got {o.lr}")
    _check(0.0 <= o.momentum < 1.0, f"optim.momentum: must be in [0, 1), got {o.momentum}")
    _check(o.weight_decay >= 0, f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    _check(0 <= o.warmup_epochs <= o.epochs, f"optim.warmup_epochs: must be in [0, epochs={o.epochs}], got {o.warmup_epochs}")
    _check(0 < o.warmup_start_factor <= 1, f"optim.warmup_start_factor: must be in (0, 1], got {o.warmup_start_factor}")
    _check(0 <= o.min_lr <= o.lr, f"optim.min_lr: must be in [0, lr], got {o.min_lr}")
    _check(0.0 <= o.label_smoothing < 1.0, f"optim.label_smoothing: must be in [0, 1), got {o.label_smoothing}")
    _check(o.clip_grad_norm >= 0, f"optim.clip_grad_norm: must be >= 0 (0 disables), got {o.clip_grad_norm}")
    _check(o.amp_dtype in AMP_DTYPES, f"optim.amp_dtype: expected {', '.join(AMP_DTYPES)}, got {o.amp_dtype!r}")
    for name in ("classifier_lr_mult", "classifier_wd_mult", "representation_lr_mult", "representation_wd_mult"):
        _check(getattr(o, name) >= 0, f"optim.{name}: must be >= 0, got {getattr(o, name)}")
    _check(j.strategy in STRATEGIES, f"joint.strategy: expected {', '.join(STRATEGIES)}, got {j.strategy!r}")
    _check(j.normalize in NORMALIZATIONS,
           f"joint.normalize: expected {', '.join(NORMALIZATIONS)}, got {j.normalize!r}")
    _check(j.enopr_weight > 0, f"joint.enopr_weight: expected > 0, got {j.enopr_weight}")
    _check(j.backbone_grad in BACKBONE_GRADS,
           f"joint.backbone_grad: expected {', '.join(BACKBONE_GRADS)}, got {j.backbone_grad!r}")
    _check(0.0 <= j.alpha <= 1.0, f"joint.alpha: must be in [0, 1], got {j.alpha}")
    _check(0.0 < j.gamma < 1.0, f"joint.gamma: must be in (0, 1), got {j.gamma}")
    _check(0.0 < j.lam < 1.0, f"joint.lam: must be in (0, 1), got {j.lam}")
    _check(0 <= j.separate_epochs < o.epochs or j.strategy != "separate",
           f"joint.separate_epochs: must be in [0, epochs={o.epochs}), got {j.separate_epochs}")
    _check(e.every_epochs >= 0, f"eval.every_epochs: must be >= 0, got {e.every_epochs}")
    _check(e.clips >= 1 and e.crops >= 1, f"eval.clips and eval.crops: must be >= 1, got {e.clips}, {e.crops}")
    _check(e.crop_size == 0 or e.crop_size >= 8, f"eval.crop_size: must be 0 or >= 8, got {e.crop_size}")
    _check(e.batch_size >= 1, f"eval.batch_size: must be >= 1, got {e.batch_size}")
    _check(bool(cfg.log.out_dir), "log.out_dir: must not be empty")
    _check(cfg.checkpoint.every_steps >= 0, f"checkpoint.every_steps: must be >= 0, got {cfg.checkpoint.every_steps}")
    _check(cfg.checkpoint.resume in ("never", "auto", "always"),
           f"checkpoint.resume: expected never, auto or always, got {cfg.checkpoint.resume!r}")
    _check(cfg.log.every_steps >= 1, f"log.every_steps: must be >= 1, got {cfg.log.every_steps}")


def config_to_dict(cfg: RunConfig) -> dict:
    """A plain nested dict (YAML/JSON/``weights_only``-safe) of a config."""
    return dataclasses.asdict(cfg)


__all__.append("config_to_dict")
