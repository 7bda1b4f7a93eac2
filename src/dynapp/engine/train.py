"""The training loop: top to bottom, no hidden hooks (torchvision references style).

Recipe of the paper (Appendix A): SGD with momentum, a cosine learning-rate schedule with linear
warm-up (set every optimiser step), label smoothing, gradient clipping, dropout (in the model),
weight decay, classifier learning-rate and weight-decay multipliers (5x), a PWTP learning-rate
multiplier (5x for ViT), BatchNorm frozen except the first layer when fine-tuning, mixed
precision on GPU, gradient accumulation.  PWTP and the recogniser are trained jointly by one of
the strategies of ``dynapp.joint`` (MGDA by default).

``dynapp.engine.run.run_from_config`` is the only place that reads a ``RunConfig``: it builds the
model and the datasets and calls ``train`` with explicit keyword arguments.

Choices where the paper is silent (documented here):

* Weight decay applies to weights of dimension >= 2 only (convolution and linear weights, "L2
  regularisation to the convolutional and classification layers"); biases and normalisation
  parameters get none.
* ``optim.batch_size`` is the GLOBAL batch (as in Appendix A: "512 (8 samples per GPU)"); each
  process gets ``batch_size / (world_size * accumulation_steps)`` samples per micro-batch.
* Frozen BatchNorm (fine-tuning): every BatchNorm of the backbone except the first is put in
  eval mode with its affine parameters frozen (TSN's partial BN).  PWTP's own BatchNorm is part
  of Theta1 and stays trainable.
* Resume is exact at step granularity: the per-epoch shuffle depends only on ``seed + epoch``,
  data loaders get their own generators (they never draw from the global RNG), and every
  process's RNG states are saved and restored.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from dynapp.engine.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from dynapp.engine.distributed import (
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    get_rank,
    get_world_size,
    is_distributed,
    train_sampler,
)
from dynapp.engine.evaluate import evaluate, write_json
from dynapp.engine.log import TrainLogger
from dynapp.engine.preempt import StopSignals, ignore_stop_signals
from dynapp.joint import MGDAState, backward_joint, combine_theta1_grads, theta1_parameters, weighted_alpha

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "lr_at",
    "build_param_groups",
    "freeze_batchnorm",
    "train_one_epoch",
    "train",
]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient) became NaN/inf; the run stops without writing a checkpoint."""


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done (logs and messages count steps from 1: step k is the k-th)
    epoch: int = 0  # current epoch (finished epochs when batch_in_epoch == 0)
    batch_in_epoch: int = 0  # micro-batches of ``epoch`` already consumed
    last_checkpoint: str = ""


# ----------------------------------------------------------------------------------------------
# Pure pieces: schedule, parameter groups, BatchNorm freezing.


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0,
          warmup_start_factor: float = 0.01) -> float:
    """Learning rate of optimiser step ``step`` (from 0): linear warm-up, then cosine to ``min_lr``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def build_param_groups(model: nn.Module, *, weight_decay: float, classifier_lr_mult: float = 1.0,
                       classifier_wd_mult: float = 1.0, representation_lr_mult: float = 1.0,
                       representation_wd_mult: float = 1.0) -> list[dict]:
    """SGD parameter groups: (representation | backbone | head) x (decayed | not decayed).

    Each group carries ``lr_mult`` (applied by the schedule) and its own ``weight_decay``.
    ``model.head`` is the classifier, ``model.representation`` Theta1; the rest is the backbone.
    """
    head = {id(p) for p in model.head.parameters()} if hasattr(model, "head") else set()
    rep = {id(p) for p in model.representation.parameters()} if hasattr(model, "representation") else set()
    mults = {"representation": (representation_lr_mult, representation_wd_mult), "backbone": (1.0, 1.0),
             "head": (classifier_lr_mult, classifier_wd_mult)}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head else "representation" if id(p) in rep else "backbone"
        buckets.setdefault((part, p.ndim >= 2), []).append(p)
    groups = []
    for (part, decay), params in buckets.items():
        lr_mult, wd_mult = mults[part]
        groups.append({"params": params, "name": f"{part}{'' if decay else '_no_decay'}", "lr_mult": lr_mult,
                       "weight_decay": weight_decay * wd_mult if decay else 0.0})
    return groups


_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def freeze_batchnorm(module: nn.Module, *, keep_first: bool = True) -> list[nn.Module]:
    """Freeze the BatchNorm layers of ``module`` (statistics and affine), except the first one.

    Returns the frozen layers: call ``.eval()`` on them after every ``model.train()``.
    """
    bns = [m for m in module.modules() if isinstance(m, _BN)]
    frozen = bns[1:] if keep_first else bns
    for m in frozen:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, *, frozen_bn: list[nn.Module], freeze_representation: bool) -> None:
    """``model.train()`` but keep frozen BatchNorm (and a frozen representation) in eval mode."""
    model.train()
    for m in frozen_bn:
        m.eval()
    if freeze_representation:
        model.representation.eval()


class _SkipSampler(Sampler[int]):
    """The first ``skip`` indices of ``sampler`` removed (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


# ----------------------------------------------------------------------------------------------
# One epoch.


def train_one_epoch(
    *,
    model: nn.Module,
    ddp_model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    steps_this_epoch: int,
    total_steps: int,
    lr_of_step: Callable[[int], float],
    strategy: str,
    alpha: float,
    gamma: float,
    lam: float,
    normalize: str,
    phase: str,
    accumulation_steps: int,
    label_smoothing: float,
    clip_grad_norm: float,
    device: torch.device,
    amp: bool,
    logger: TrainLogger | None,
    save: Callable[[], None],
    checkpoint_every: int,
    max_steps: int,
    nan_at_step: int = 0,
    sleep_per_step: float = 0.0,
    stop: StopSignals | None = None,
) -> bool:
    """Train ``steps_this_epoch`` optimiser steps; returns False if ``max_steps`` or ``stop`` stopped it.

    ``phase``: "joint" (the strategy's step), "pwtp" (separate training, ENoPR only, backbone not
    run) or "recogniser" (separate training, Theta1 frozen).
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    theta1 = theta1_parameters(model)
    mgda_state = MGDAState(theta1)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    world = get_world_size()
    stats = torch.zeros(5, dtype=torch.float64)  # rec, enopr, correct, count, micro-batches
    micro = 0
    tic = time.perf_counter()
    it = iter(loader)
    while state.batch_in_epoch < steps_this_epoch * accumulation_steps:
        clip, label = next(it)[:2]
        clip = clip.to(device, non_blocking=True)  # (N, C, S*T, H, W)
        label = torch.as_tensor(label).to(device, non_blocking=True)
        last_micro = micro + 1 == accumulation_steps
        sync = contextlib.nullcontext() if last_micro or ddp_model is model else ddp_model.no_sync()
        # alpha of the weighted strategies is known before the backward pass
        if strategy in ("constant", "scheduler"):
            alpha = weighted_alpha(strategy, step=state.step, total_steps=total_steps, alpha=alpha, gamma=gamma, lam=lam)
        with sync:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                if phase == "pwtp":
                    rec_loss, aux_loss = None, model.representation(clip).aux_loss
                    logits = None
                else:
                    out = ddp_model(clip)
                    logits, aux_loss = out.logits, out.aux_loss
                    rec_loss = criterion(logits.float(), label)
            if state.step + 1 == nan_at_step and rec_loss is not None:
                rec_loss = rec_loss * float("nan")  # fault injection (tests)
            main = aux_loss if phase == "pwtp" else rec_loss
            has_aux = aux_loss is not None  # alpha and ENoPR apply (empty log cells otherwise)
            # one small all-reduce: logging statistics and whether any process saw a non-finite loss
            finite = bool(torch.isfinite(main)) and (aux_loss is None or bool(torch.isfinite(aux_loss)))
            local = torch.tensor([
                float(rec_loss.detach()) if rec_loss is not None else 0.0,
                float(aux_loss.detach()) if aux_loss is not None else 0.0,
                float((logits.argmax(1) == label).sum()) if logits is not None else 0.0,
                float(label.numel()),
                0.0 if finite else 1.0,
            ], dtype=torch.float64)
            local = all_reduce_sum(local.to(device)).cpu()
            if local[4] > 0:
                raise NonFiniteLossError(
                    f"non-finite loss at step {state.step + 1} (epoch {state.epoch}, batch {state.batch_in_epoch}); "
                    f"run stopped, last good checkpoint: {state.last_checkpoint or 'none written yet'}")
            stats += torch.tensor([local[0] / world, local[1] / world, local[2], local[3], 1.0], dtype=torch.float64)
            if phase == "pwtp":
                scaler.scale(aux_loss / accumulation_steps).backward()
            else:
                backward_joint(strategy if phase == "joint" else "plain", rec_loss=rec_loss,
                               aux_loss=aux_loss if phase == "joint" else None, theta1=theta1, alpha=alpha,
                               scale=scaler.scale, divide=accumulation_steps, mgda_state=mgda_state)
        state.batch_in_epoch += 1
        micro += 1
        if not last_micro:
            continue
        micro = 0

        # ---- optimiser step (Algorithm 1 for mgda) ----
        if phase == "joint" and strategy == "mgda" and theta1 and mgda_state.g1 is not None:
            alpha = combine_theta1_grads(theta1, mgda_state, all_reduce_mean=all_reduce_mean if is_distributed() else None,
                                         normalize=normalize)
        elif phase == "pwtp":
            alpha = 1.0
            for p in theta1:  # the representation ran outside DDP: average its gradient here
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad))
        elif phase == "recogniser":
            alpha = 0.0
            for p in theta1:  # Theta1 is frozen after separate pre-training
                p.grad = None
        elif phase == "joint" and strategy == "mgda":
            alpha = float("nan")  # no Theta1 / no aux loss: plain training
        lr = lr_of_step(state.step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm > 0 else float("inf")))
        if not amp and not math.isfinite(grad_norm):
            raise NonFiniteLossError(
                f"non-finite gradient at step {state.step + 1} (epoch {state.epoch}); run stopped, "
                f"last good checkpoint: {state.last_checkpoint or 'none written yet'}")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1

        toc = time.perf_counter()
        n = stats[4].item()
        row = {"step": state.step, "epoch": state.epoch, "lr": lr,
               "rec_loss": stats[0].item() / n if phase != "pwtp" else None,
               "enopr": stats[1].item() / n if has_aux else None, "alpha": alpha if has_aux else None,
               "acc": 100.0 * stats[2].item() / max(stats[3].item(), 1) if phase != "pwtp" else None,
               "grad_norm": grad_norm, "samples_per_s": stats[3].item() / max(toc - tic, 1e-9)}
        row["loss"] = row["enopr"] if phase == "pwtp" else row["rec_loss"]
        if logger is not None:
            logger.log(row)
        stats.zero_()
        if sleep_per_step > 0:
            time.sleep(sleep_per_step)
        tic = time.perf_counter()
        if checkpoint_every and state.step % checkpoint_every == 0:
            save()
        if max_steps and state.step >= max_steps:
            return False
        if stop is not None and stop.should_stop(device):  # collective: every process stops after this step
            return False
    return True


# ----------------------------------------------------------------------------------------------
# The whole run.


def train(
    *,
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    out_dir: str | Path,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.01,
    min_lr: float = 0.0,
    label_smoothing: float = 0.1,
    clip_grad_norm: float = 20.0,
    classifier_lr_mult: float = 5.0,
    classifier_wd_mult: float = 5.0,
    representation_lr_mult: float = 1.0,
    representation_wd_mult: float = 1.0,
    freeze_bn: bool = False,
    amp: bool = True,
    accumulation_steps: int = 1,
    strategy: str = "mgda",
    alpha: float = 0.5,
    gamma: float = 0.2,
    lam: float = 0.1,
    separate_epochs: int = 1,
    normalize: str = "none",
    num_workers: int = 0,
    eval_every_epochs: int = 1,
    eval_batch_size: int = 8,
    checkpoint_every_steps: int = 0,
    keep_every_epoch: bool = False,
    save_checkpoints: bool = True,
    csv_log: bool = True,
    tensorboard: bool = True,
    progress: bool = True,
    log_every_steps: int = 20,
    seed: int = 0,
    device: torch.device | None = None,
    max_steps: int = 0,
    resume: bool = False,
    config: dict | None = None,
    classes: list[str] | None = None,
    nan_at_step: int = 0,
    sleep_per_step: float = 0.0,
) -> dict:
    """Train ``model`` (a ``VideoClassifier``) and evaluate it; returns the last evaluation result.

    Call inside an initialised process group (``init_distributed``) for multi-process runs.
    Files in ``out_dir``: ``checkpoints/last.pt`` (and ``epoch_XXX.pt``), ``train_log.csv``,
    ``tensorboard/``, ``eval.json`` (``save_checkpoints=False``: no checkpoint).  ``resume=True`` continues from ``checkpoints/last.pt``
    exactly (schedule, step counter, sampler epoch and position, RNG states).
    ``classes``: the class names of the training set (``classes[label]``), stored in every
    checkpoint (key ``"classes"``, absent when None) so that a loaded model can name its predictions.
    """
    rank, world = get_rank(), get_world_size()
    device = device or torch.device("cpu")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    per_process = batch_size // (world * accumulation_steps)
    if per_process < 1 or per_process * world * accumulation_steps != batch_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of world_size {world} x accumulation_steps "
                         f"{accumulation_steps}")
    amp = amp and device.type == "cuda"
    if strategy == "separate" and not theta1_parameters(model):
        raise ValueError("joint.strategy=separate needs a representation with parameters and an aux loss (pwtp)")

    model.to(device)
    frozen_bn = freeze_batchnorm(model.backbone) if freeze_bn else []
    optimizer = torch.optim.SGD(
        build_param_groups(model, weight_decay=weight_decay, classifier_lr_mult=classifier_lr_mult,
                           classifier_wd_mult=classifier_wd_mult, representation_lr_mult=representation_lr_mult,
                           representation_wd_mult=representation_wd_mult),
        lr=lr, momentum=momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    ddp_model = model
    if is_distributed():
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = train_sampler(train_dataset, seed=seed)
    batches_per_epoch = len(sampler) // per_process
    steps_per_epoch = batches_per_epoch // accumulation_steps
    if steps_per_epoch < 1:
        raise ValueError(f"the training set ({len(train_dataset)} items) is smaller than one global batch ({batch_size})")
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(warmup_epochs * steps_per_epoch)

    def lr_of_step(step: int) -> float:
        return lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=lr, min_lr=min_lr,
                     warmup_start_factor=warmup_start_factor)

    state = TrainState()
    last_path = ckpt_dir / "last.pt"
    if not resume and last_path.exists():
        raise ValueError(f"{last_path} exists: add --resume (or checkpoint.resume=auto) to continue that run, "
                         "or choose another log.out_dir")
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        ck = load_checkpoint(last_path)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        state = TrainState(step=ck["step"], epoch=ck["epoch"], batch_in_epoch=ck["batch_in_epoch"],
                           last_checkpoint=str(last_path))
        if ck.get("total_steps") not in (None, total_steps):
            warnings.warn(f"resuming with {total_steps} total steps, the checkpoint had {ck['total_steps']}: "
                          "the schedule differs", stacklevel=2)
        if len(ck["rng"]) == world:
            set_rng_state(ck["rng"][rank])
        else:
            warnings.warn(f"checkpoint written by {len(ck['rng'])} processes, resuming on {world}: "
                          "RNG states not restored", stacklevel=2)
        if rank == 0:
            print(f"resumed from {last_path} at step {state.step} (epoch {state.epoch})", flush=True)

    def save(epoch_file: bool = False) -> None:
        broadcast_buffers(model)  # BatchNorm statistics of process 0 everywhere (collective)
        if not save_checkpoints:
            return
        rngs = all_gather_objects(get_rng_state())  # collective: every process calls save()
        if rank == 0:
            ck_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                        "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                        "total_steps": total_steps, "world_size": world, "config": config or {}, "rng": rngs}
            if classes is not None:
                ck_state["classes"] = list(classes)
            save_checkpoint(ck_state, last_path)
            if epoch_file:
                save_checkpoint(ck_state, ckpt_dir / f"epoch_{state.epoch:03d}.pt")
        state.last_checkpoint = str(last_path)
        barrier()

    logger = TrainLogger(out_dir, rank=rank, csv_log=csv_log, tensorboard=tensorboard, start_step=state.step,
                         progress=progress, every_steps=log_every_steps, total_steps=total_steps,
                         steps_per_epoch=steps_per_epoch, checkpoint_dir=ckpt_dir if save_checkpoints else None)
    result: dict = {}
    stop = StopSignals().install()  # SIGTERM/SIGUSR1: finish the step, checkpoint, raise Preempted
    try:
        finished = True
        while state.epoch < epochs:
            epoch = state.epoch
            phase = "joint"
            if strategy == "separate":
                phase = "pwtp" if epoch < separate_epochs else "recogniser"
            set_train_mode(model, frozen_bn=frozen_bn, freeze_representation=phase == "recogniser")
            sampler.set_epoch(epoch)
            if hasattr(train_dataset, "set_epoch"):
                train_dataset.set_epoch(epoch)  # per-sample augmentation keyed by (seed, epoch, index)
            loader = DataLoader(
                train_dataset, batch_size=per_process, drop_last=True, num_workers=num_workers,
                sampler=_SkipSampler(sampler, state.batch_in_epoch * per_process),
                pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=ignore_stop_signals,
                generator=torch.Generator().manual_seed(seed * 100_003 + epoch * 1_009 + rank))
            finished = train_one_epoch(
                model=model, ddp_model=ddp_model, loader=loader, optimizer=optimizer, scaler=scaler, state=state,
                steps_this_epoch=steps_per_epoch, total_steps=total_steps, lr_of_step=lr_of_step, strategy=strategy,
                alpha=alpha, gamma=gamma, lam=lam, normalize=normalize, phase=phase, accumulation_steps=accumulation_steps,
                label_smoothing=label_smoothing, clip_grad_norm=clip_grad_norm, device=device, amp=amp, logger=logger,
                save=save, checkpoint_every=checkpoint_every_steps, max_steps=max_steps,
                nan_at_step=nan_at_step, sleep_per_step=sleep_per_step, stop=stop)
            if not finished:
                if not (checkpoint_every_steps and state.step % checkpoint_every_steps == 0):
                    save()
                if stop.stopped:
                    error = stop.error(state.step, total_steps, last_path if save_checkpoints else None)
                    logger.print(str(error))
                    raise error
                break
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            save(epoch_file=keep_every_epoch)
            due = eval_every_epochs and (state.epoch % eval_every_epochs == 0)
            if val_dataset is not None and (due or state.epoch == epochs):
                result = evaluate(model, val_dataset, device=device, batch_size=eval_batch_size,
                                  num_workers=num_workers, amp=amp)
                result.update(epoch=state.epoch, step=state.step)
                if rank == 0:
                    write_json(result, out_dir / "eval.json")
                    logger.log_eval(result, state.step)
                    print(f"epoch {state.epoch} step {state.step}: clip top1 {result['clip']['top1']:.2f} "
                          f"video top1 {result['video']['top1']:.2f}", flush=True)
        if finished and val_dataset is not None and not result:
            # resumed after the last epoch ended (nothing left to train): evaluate once
            result = evaluate(model, val_dataset, device=device, batch_size=eval_batch_size, num_workers=num_workers,
                              amp=amp)
            result.update(epoch=state.epoch, step=state.step)
    finally:
        stop.restore()
        logger.close()
    return result
