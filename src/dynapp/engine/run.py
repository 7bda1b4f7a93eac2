"""The one builder: a ``RunConfig`` turned into datasets, a model and explicit keyword arguments.

``run_from_config`` (``dynapp train``) and ``eval_from_checkpoint`` (``dynapp eval``) are the
only readers of a config; ``build_datasets`` and ``init_model_from`` are their pieces.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from dynapp.config import apply_overrides, config_from_dict, config_to_dict, format_config
from dynapp.data import build_dataset
from dynapp.data.catalog import dataset_entry, has_validation
from dynapp.data.holdout import write_split
from dynapp.engine.checkpoint import load_checkpoint, model_state_dict
from dynapp.engine.distributed import cleanup_distributed, get_rank, init_distributed
from dynapp.engine.evaluate import evaluate, mean_over_splits, write_json
from dynapp.engine.preempt import Preempted
from dynapp.engine.summary import closing_summary, opening_summary, plot_confusion
from dynapp.engine.train import prepare_model, train
from dynapp.model import build_model

__all__ = ["run_from_config", "eval_from_checkpoint", "build_datasets", "describe_split", "init_model_from",
           "class_names", "dataset_options"]


def _num_classes(dataset: Any, configured: int) -> int:
    if configured:
        return configured
    for name in ("num_classes",):
        if hasattr(dataset, name):
            return int(getattr(dataset, name))
    if hasattr(dataset, "classes"):
        return len(dataset.classes)
    raise ValueError("data.num_classes is 0 and the dataset does not say how many classes it has: set data.num_classes")


def class_names(dataset: Any) -> list[str] | None:
    """The class names of a dataset (``dataset.classes``, a list of strings), or None if it has none."""
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def dataset_options(dataset_kwargs: dict, *, backend: str = "pyav", decode_device: str = "cpu") -> dict:
    """``data.dataset_kwargs`` plus the decoding keys ``data.backend`` and ``data.decode_device``.

    Older configs set ``backend`` inside ``dataset_kwargs``: it is used while ``data.backend`` is
    left at its default; two different values are an error.
    """
    kw = dict(dataset_kwargs)
    for key, value, default in (("backend", backend, "pyav"), ("decode_device", decode_device, "cpu")):
        old = kw.pop(key, None)
        if old is not None and value != default and old != value:
            raise ValueError(f"data.{key}={value} and data.dataset_kwargs.{key}={old} disagree: set data.{key} only")
        kw[key] = old if old is not None else value
    return kw


def build_datasets(*, dataset: str, root: str, split: int, segments: int, frames: int, sampling: str, crop_size: int,
                   num_classes: int, in_channels: int, num_samples: int, views: tuple[int, int], seed: int,
                   dataset_kwargs: dict, eval_crop_size: int = 0, backend: str = "pyav",
                   decode_device: str = "cpu", val_fraction: float = 0.0, val_seed: int = 0,
                   flip: bool | None = None, flip_pairs: list | None = None) -> tuple[Dataset, Dataset | None, int]:
    """(train, val, num_classes) for a dataset name (an entry of :data:`dynapp.data.catalog.DATASETS`).

    ``backend`` and ``decode_device`` choose the video decoder (see :func:`dataset_options`).
    A reader's dataset without a validation part of its own holds out ``val_fraction`` of each
    class (``dynapp.data.holdout``); with ``val_fraction=0`` it has no validation set (None),
    never its training videos.  ``flip`` (None: the dataset's default) and ``flip_pairs`` (class
    names a flip swaps) set the training flip; they win over the same keys of ``dataset_kwargs``.
    """
    eval_crop_size = eval_crop_size or crop_size
    entry = dataset_entry(dataset)
    common = dict(split=split, segments=segments, frames=frames, sampling=sampling)
    if entry.generated:  # the run-level sizes a generated dataset may use (random's; synthetic's are in dataset_kwargs)
        common.update({"in_channels": in_channels, "num_samples": num_samples, **dataset_kwargs})
        if num_classes and "num_classes" not in dataset_kwargs:
            common["num_classes"] = num_classes
    else:
        if not str(root).strip():
            raise ValueError(f"data.root: empty; set it to the folder of your {dataset} dataset, e.g. "
                             "data.root=/data/my_videos")
        if not Path(root).exists():
            raise FileNotFoundError(f"data.root: {root} does not exist")
        common.update(val_fraction=val_fraction, val_seed=val_seed,
                      **dataset_options(dataset_kwargs, backend=backend, decode_device=decode_device))
        if flip is not None:
            common["flip"] = flip
        if flip_pairs:
            common["flip_pairs"] = flip_pairs
    train_set = build_dataset(dataset, root, train=True, crop_size=crop_size, seed=seed, **common)
    val_set = None
    if val_fraction > 0 or has_validation(dataset, root, split=split):
        val_set = build_dataset(dataset, root, train=False, crop_size=eval_crop_size, num_clips=views[0],
                                num_crops=views[1], seed=seed, **common)
    return train_set, val_set, _num_classes(train_set, num_classes)


def describe_split(train_set: Dataset, val_set: Dataset | None, *, root: str, val_fraction: float, val_seed: int,
                   out_dir: str | Path, write: bool = True) -> str | None:
    """The one line about where the validation videos come from, when they are not the dataset's
    own: a hold-out (its files written to ``out_dir/split``, a ``list`` dataset) or none at all."""
    if val_set is None:
        return (f"validation: none ({root} has no validation part and data.val_fraction=0): "
                "no accuracy is measured; set data.val_fraction=0.2 to hold out a fifth of each class")
    if not getattr(train_set, "held_out", False):
        return None
    folder = Path(out_dir) / "split"
    if write and get_rank() == 0:
        write_split(folder, train_set.items, val_set.items, train_set.classes)
    return (f"validation: {root} has no validation part, so {len(val_set.items)} of its "
            f"{len(train_set.items) + len(val_set.items)} videos ({val_fraction:g} of each class, seed {val_seed}) "
            f"are held out and never trained on; lists in {folder}")


def init_model_from(model: nn.Module, path: str | Path) -> list[str]:
    """Start ``model`` from the weights of a dynapp checkpoint (or a plain state-dict file).

    Fine-tuning (e.g. Kinetics -> UCF101): every tensor whose name and shape match is copied,
    PWTP included; the rest (the classifier when the class count differs) keeps its fresh
    initialisation.  Returns the names that were not loaded.
    """
    try:
        state = model_state_dict(load_checkpoint(path))
    except ValueError:
        raise ValueError(f"{path} holds no state dict") from None
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    if not usable:
        raise ValueError(f"no tensor of {path} matches the model (is it a checkpoint of another architecture?)")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if get_rank() == 0:
        print(f"initialised {len(usable)} tensors from {path}; kept fresh: {', '.join(skipped) or 'none'}", flush=True)
    return skipped


def run_from_config(cfg, *, resume: bool = False) -> dict:
    """Build everything a ``RunConfig`` describes and train (the only reader of a config)."""
    info = init_distributed(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    finished = False
    # checkpoint.resume=auto: continue if the run folder holds a checkpoint (a requeued job), else start
    resume = resume or cfg.checkpoint.resume == "always" or (
        cfg.checkpoint.resume == "auto" and (Path(cfg.log.out_dir) / "checkpoints" / "last.pt").is_file())
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        d, m, o, j, e = cfg.data, cfg.model, cfg.optim, cfg.joint, cfg.eval
        train_set, val_set, num_classes = build_datasets(
            dataset=d.dataset, root=d.root, split=d.split, segments=d.segments, frames=d.frames, sampling=d.sampling,
            crop_size=d.crop_size, num_classes=d.num_classes, in_channels=m.in_channels, num_samples=d.num_samples,
            views=(e.clips, e.crops), seed=cfg.seed, dataset_kwargs=d.dataset_kwargs, eval_crop_size=e.crop_size,
            backend=d.backend, decode_device=d.decode_device, val_fraction=d.val_fraction, val_seed=d.val_seed,
            flip=d.flip, flip_pairs=d.flip_pairs)
        out_dir = Path(cfg.log.out_dir)
        writes = resume or not (out_dir / "checkpoints" / "last.pt").exists()  # else train() refuses the folder
        line = describe_split(train_set, val_set, root=d.root, val_fraction=d.val_fraction, val_seed=d.val_seed,
                              out_dir=out_dir, write=writes)
        if info.rank == 0:
            if writes:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "config.yaml").write_text(format_config(cfg) + "\n")
            print(opening_summary(cfg, train_set, val_set, num_classes, device=info.device,
                                  config_file=out_dir / "config.yaml"), flush=True)
            if line:
                print(line, flush=True)
        model = build_model(representation=m.representation, backbone=m.backbone, num_classes=num_classes,
                            segments=d.segments, frames=d.frames, in_channels=m.in_channels, dropout=m.dropout,
                            pretrained=m.pretrained, representation_kwargs=dict(m.representation_kwargs),
                            backbone_kwargs=dict(m.backbone_kwargs))
        if m.init_from and not resume:
            init_model_from(model, m.init_from)
        prepare_model(model, channels_last=m.channels_last, compile=m.compile)
        torch.manual_seed(cfg.seed + 1 + info.rank)  # different dropout masks per process
        classes = class_names(train_set)
        result = train(
            model=model, train_dataset=train_set, val_dataset=val_set, optim=o, joint=j, evaluation=e, log=cfg.log,
            checkpoint=cfg.checkpoint, num_workers=d.num_workers, seed=cfg.seed, device=info.device,
            max_steps=cfg.max_steps, resume=resume,
            meta={"config": config_to_dict(cfg), **({"classes": classes} if classes is not None else {})})
        finished = True
        if info.rank == 0:
            bad = [b for ds in (train_set, val_set) if hasattr(ds, "bad_items") for b in ds.bad_items()]
            print(closing_summary(cfg.log.out_dir, result, classes=classes, bad_videos=bad), flush=True)
        return result
    except Preempted:
        finished = True  # every process stopped after the same step: leave the group together
        raise
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        cleanup_distributed(synchronize=finished)  # no barrier on an error path: a peer may be gone


def _parse_views(views: str | None) -> list[str]:
    if not views:
        return []
    parts = views.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"--views must be CLIPSxCROPS with positive integers, e.g. 2x3; got {views!r}")
    return [f"eval.clips={int(parts[0])}", f"eval.crops={int(parts[1])}"]


def eval_from_checkpoint(paths: str | Path | list, *, views: str | None = None, out: str | Path | None = None,
                         overrides: list[str] | None = None) -> dict:
    """Evaluate training checkpoints, each with the config saved in it (its dataset and split).

    ``views`` "CLIPSxCROPS" overrides ``eval.clips``/``eval.crops``.  Several checkpoints (e.g.
    the models of UCF101/HMDB51 splits 1, 2 and 3, each trained on its own split) give every
    result and their mean (``"mean"``), the protocol of Table 3.  Writes JSON to ``out``
    (default: ``eval_<checkpoint name>.json`` beside the first checkpoint) on process 0, and the
    video-level confusion matrix of each checkpoint as a PNG beside it (``confusion_png``).
    """
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if not paths:
        raise ValueError("no checkpoint to evaluate")
    info = init_distributed("auto")
    try:
        results = []
        for path in paths:
            ck = load_checkpoint(path)
            if not isinstance(ck, dict) or "model" not in ck or not ck.get("config"):
                raise ValueError(f"{path} is not a dynapp training checkpoint (no model or config)")
            cfg = config_from_dict(apply_overrides(ck["config"], list(overrides or []) + _parse_views(views)))
            d, m, e = cfg.data, cfg.model, cfg.eval
            _, val_set, num_classes = build_datasets(
                dataset=d.dataset, root=d.root, split=d.split, segments=d.segments, frames=d.frames,
                sampling=d.sampling, crop_size=d.crop_size, num_classes=d.num_classes, in_channels=m.in_channels,
                num_samples=d.num_samples, views=(e.clips, e.crops), seed=cfg.seed, dataset_kwargs=d.dataset_kwargs,
                eval_crop_size=e.crop_size, backend=d.backend, decode_device=d.decode_device,
                val_fraction=d.val_fraction, val_seed=d.val_seed, flip=d.flip,
                flip_pairs=d.flip_pairs)
            if getattr(val_set, "held_out", False) and "val_fraction" not in (ck["config"].get("data") or {}):
                warnings.warn(f"{path} was trained before validation videos were held out: it was trained on every "
                              f"video of {d.root}, so its accuracy on them is not a validation accuracy", stacklevel=2)
            if val_set is None:
                raise ValueError(f"{path}: its run has no validation set ({d.root} has no validation part and "
                                 "data.val_fraction=0); give one with data.root=... or data.val_fraction=0.2")
            model = build_model(representation=m.representation, backbone=m.backbone, num_classes=num_classes,
                                segments=d.segments, frames=d.frames, in_channels=m.in_channels, dropout=m.dropout,
                                pretrained=None, representation_kwargs=dict(m.representation_kwargs),
                                backbone_kwargs=dict(m.backbone_kwargs))
            model.load_state_dict(ck["model"])
            model.to(info.device)
            result = evaluate(model, val_set, device=info.device, batch_size=e.batch_size, num_workers=d.num_workers,
                              amp=cfg.optim.amp and cfg.optim.amp_dtype == "float16" and info.device.type == "cuda")
            result.update(checkpoint=str(path), step=ck.get("step"), views=f"{e.clips}x{e.crops}",
                          dataset=d.dataset, **({"split": d.split} if dataset_entry(d.dataset).splits else {}))
            if info.rank == 0:
                classes = ck.get("classes") or class_names(val_set) or [str(i) for i in range(num_classes)]
                png = Path(out).with_suffix("") if out and len(paths) == 1 else path.with_name(f"eval_{path.stem}")
                result["confusion_png"] = str(plot_confusion(result["confusion"], classes,
                                                             png.with_name(png.name + ".confusion.png")))
            results.append(result)
        if len(results) == 1:
            final = results[0]
        else:
            splits = [r.get("split") for r in results]
            if len(set(splits)) != len(splits):
                warnings.warn(f"checkpoints share splits {splits}: the mean is not the 3-split protocol", stacklevel=2)
            final = {"mean": mean_over_splits(results), "runs": results}
        if info.rank == 0:
            write_json(final, out or paths[0].with_name(f"eval_{paths[0].stem}.json"))
        return final
    finally:
        cleanup_distributed()
