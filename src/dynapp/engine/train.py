"""The training loop: top to bottom, no hidden hooks (torchvision references style).

Recipe of the paper (Appendix A): SGD with momentum, a cosine learning-rate schedule with linear
warm-up (set every optimiser step), label smoothing, gradient clipping, dropout (in the model),
weight decay, classifier learning-rate and weight-decay multipliers (5x), a PWTP learning-rate
multiplier (5x for ViT), BatchNorm frozen except the first layer when fine-tuning, mixed
precision on GPU, gradient accumulation.  PWTP and the recogniser are trained jointly by one of
the strategies of ``dynapp.joint`` (MGDA by default).

``dynapp.engine.run.run_from_config`` is the only place that reads a ``RunConfig``: it builds the
model and the datasets and calls ``train`` with the typed sections the loop needs (``optim``,
``joint``, ``evaluation``, ``log``, ``checkpoint``).  ``train`` builds the pieces of a run once
(``build_loop``: model, optimiser, scaler, joint strategy, schedule; ``Bookkeeping``: logger,
checkpoints, stop signals) and calls ``train_one_epoch`` per epoch, which reads as one optimiser
step: micro-batches, the step's statistics (one all-reduce), the update, the log row, a
checkpoint, the stop checks.  The joint strategy (``dynapp.joint``) is an object whose
``phase``/``backward``/``after_backward`` the loop calls without knowing which strategy runs.

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
  each sample's augmentation only on (seed, epoch, index) (``dataset.set_epoch``), data loaders
  get their own generators (they never draw from the global RNG), and every process's RNG
  states are saved and restored.
* Preemption (``dynapp.engine.preempt``): after SIGTERM, SIGUSR1 or Ctrl-C every process stops after the
  same step, a checkpoint is written and ``Preempted`` is raised (``dynapp train`` exits 75).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from dynapp.config import (
    AMP_DTYPES,
    CheckpointConfig,
    EvalConfig,
    JointConfig,
    LogConfig,
    OptimConfig,
)
from dynapp.data.dataset import worker_start_method
from dynapp.engine.checkpoint import RunCheckpoints
from dynapp.engine.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    get_rank,
    get_world_size,
    is_distributed,
    train_sampler,
)
from dynapp.engine.eval_log import EvalLog
from dynapp.engine.evaluate import evaluate, write_json
from dynapp.engine.log import TrainLogger
from dynapp.engine.preempt import StopSignals, ignore_stop_signals
from dynapp.joint import Plain, build_strategy, theta1_parameters
from dynapp.joint_diagnostics import PWTPMonitor

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "Loop",
    "Bookkeeping",
    "build_loop",
    "recognition_loss",
    "lr_at",
    "build_param_groups",
    "freeze_batchnorm",
    "set_train_mode",
    "build_optimizer",
    "autocast_dtype",
    "prepare_model",
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


@dataclass
class Loop:
    """The pieces every step of a run uses, built once by ``build_loop``."""

    model: nn.Module  # the VideoClassifier, DDP-wrapped under torchrun
    representation: nn.Module  # model.representation (DDP-wrapped where a phase runs it alone)
    criterion: Callable[[Tensor, Tensor], Tensor]  # recognition loss L2 of (logits, labels)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    strategy: Plain  # a dynapp.joint strategy
    lr_of_step: Callable[[int], float]
    steps_per_epoch: int
    accumulation_steps: int = 1
    clip_grad_norm: float = 0.0  # 0: no clipping
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # autocast dtype (CUDA mixed precision), None: full precision
    frozen_bn: list[nn.Module] = field(default_factory=list)  # BatchNorm layers kept in eval mode (fine-tuning)
    monitor: PWTPMonitor | None = None  # PWTP's training diagnostics (dynapp.joint_diagnostics), None without PWTP
    enopr_weight: float = 1.0  # joint.enopr_weight: the strategy's L1 is this times ENoPR (the log keeps ENoPR)


@dataclass
class Bookkeeping:
    """What follows every optimiser step besides the update: the log row, a checkpoint every
    ``every_steps`` steps, and the stop checks (``max_steps``, a stop signal on any process)."""

    logger: TrainLogger
    checkpoints: RunCheckpoints
    stop: StopSignals
    every_steps: int = 0  # 0: checkpoints at epoch ends only
    max_steps: int = 0  # 0: run every epoch


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
# One epoch: micro-batches, then the optimiser step, then its log row, checkpoint and stop checks.


def train_one_epoch(loop: Loop, loader: DataLoader, state: TrainState, books: Bookkeeping) -> bool:
    """Train the optimiser steps left in epoch ``state.epoch``; False if the run stops inside it.

    Each optimiser step: forward and backward of ``loop.accumulation_steps`` micro-batches; the
    statistics of the step summed over all processes (one all-reduce; a NaN/inf loss on any
    process raises ``NonFiniteLossError`` before the update); the joint strategy's gradient; the
    schedule, clipping and update; the log row; a checkpoint every ``books.every_steps`` steps;
    then the stop checks (``books.max_steps``, a stop signal on any process).
    """
    phase = loop.strategy.phase(state.epoch)
    net = loop.model if phase.run_backbone else loop.representation  # separate: PWTP alone on ENoPR
    clock = _StepClock()
    batches = clock.wait(iter, loader)  # starts the workers: counted as waiting for data
    micro: list[Tensor] = []  # the statistics of this step's micro-batches
    while state.batch_in_epoch < loop.steps_per_epoch * loop.accumulation_steps:
        clip, label = clock.wait(next, batches)[:2]
        last = len(micro) + 1 == loop.accumulation_steps
        stats, has_aux = _forward_backward(loop, net, clip, label, step=state.step, sync=last,
                                           run_backbone=phase.run_backbone)
        micro.append(stats)
        state.batch_in_epoch += 1
        if not last:
            continue

        totals, pwtp_means = _step_statistics(micro, loop.monitor, state)  # the step's one all-reduce
        alpha = loop.strategy.after_backward()  # Algorithm 1 for mgda: the strategy sets Theta1's gradient
        lr, grad_norm = _optimizer_step(loop, state)
        state.step += 1
        row = _log_row(totals, state, lr=lr, alpha=alpha, grad_norm=grad_norm, seconds=clock.seconds(),
                       data_seconds=clock.waited, main_loss="rec_loss" if phase.run_backbone else "enopr",
                       has_aux=has_aux)
        _log_step(loop, books.logger, row, pwtp_means)
        micro = []
        if books.every_steps and state.step % books.every_steps == 0:
            _save(books.checkpoints, state)
        if (books.max_steps and state.step >= books.max_steps) or books.stop.should_stop(loop.device):  # collective
            return False
        clock.restart()
    return True


class _StepClock:
    """The seconds of one optimiser step and the part of them spent waiting for the loader."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start, self.waited = time.perf_counter(), 0.0

    def wait(self, fetch: Callable, loader):
        """``fetch(loader)`` (``iter``, ``next``), its time counted as waiting for data."""
        tic = time.perf_counter()
        value = fetch(loader)
        self.waited += time.perf_counter() - tic
        return value

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _forward_backward(loop: Loop, net: nn.Module, clip: Tensor, label, *, step: int, sync: bool,
                      run_backbone: bool) -> tuple[Tensor, bool]:
    """Forward and backward of one micro-batch through the joint strategy.

    Returns the micro-batch's statistics on this process (``_micro_statistics``, still on the
    device) and whether its aux loss applies (alpha and ENoPR; not for RGB).  ``sync=False``:
    DDP keeps the gradient local (a micro-batch before the last of a step).
    """
    clip = clip.to(loop.device, non_blocking=True)  # (N, C, S*T, H, W)
    label = torch.as_tensor(label).to(loop.device, non_blocking=True)
    no_sync = isinstance(net, DistributedDataParallel) and not sync
    amp = loop.amp_dtype is not None  # CUDA mixed precision
    with net.no_sync() if no_sync else contextlib.nullcontext():
        with torch.autocast(loop.device.type, dtype=loop.amp_dtype or torch.float16, enabled=amp):
            out = net(clip)
            logits = out.logits if run_backbone else None
            rec_loss = loop.criterion(logits.float(), label) if logits is not None else None
            aux_loss = out.aux_loss  # None: alpha and ENoPR do not apply (empty log cells)
        stats = _micro_statistics(rec_loss, aux_loss, logits, label)
        l1 = aux_loss if aux_loss is None or loop.enopr_weight == 1.0 else loop.enopr_weight * aux_loss
        loop.strategy.backward(rec_loss, l1, step=step, scale=loop.scaler.scale, divide=loop.accumulation_steps,
                               hyperplanes=getattr(out, "hyperplanes", None))
        if loop.monitor is not None:
            loop.monitor.observe(clip, out)
    return stats, aux_loss is not None


def _micro_statistics(rec_loss: Tensor | None, aux_loss: Tensor | None, logits: Tensor | None,
                      label: Tensor) -> Tensor:
    """(rec, enopr, correct, count, non-finite) of one micro-batch on this process, float64 on
    the batch's device (no synchronisation: the step reads them once, after its last micro-batch)."""
    zero = torch.zeros((), dtype=torch.float64, device=label.device)
    rec = rec_loss.detach().double() if rec_loss is not None else zero
    aux = aux_loss.detach().double() if aux_loss is not None else zero
    correct = (logits.argmax(1) == label).sum().double() if logits is not None else zero
    count = torch.full((), float(label.numel()), dtype=torch.float64, device=label.device)
    non_finite = (~torch.isfinite(rec) | ~torch.isfinite(aux)).double()
    return torch.stack([rec, aux, correct, count, non_finite])


def _step_statistics(micro: list[Tensor], monitor: PWTPMonitor | None,
                     state: TrainState) -> tuple[Tensor, Tensor | None]:
    """The statistics of one optimiser step over all processes: one all-reduce of one packed tensor.

    Returns (rec, enopr, correct, count, micro-batches) -- the losses are process means, summed
    micro-batch by micro-batch -- and PWTP's diagnostics (``monitor.take()`` averaged over
    processes; None without PWTP).  A non-finite loss on any process raises
    ``NonFiniteLossError`` (naming the first such micro-batch) before the update.
    """
    world = get_world_size()
    losses = torch.stack(micro)  # (micro-batches, 5): rec, enopr, correct, count, non-finite
    pwtp = monitor.take().to(losses.device) if monitor is not None else losses.new_zeros(0)
    packed = all_reduce_sum(torch.cat([losses.flatten(), pwtp])).cpu()
    total, pwtp_means = packed[:losses.numel()].view(losses.shape), packed[losses.numel():] / world
    bad = [i for i, row in enumerate(total) if row[4] > 0]
    if bad:
        batch = state.batch_in_epoch - len(micro) + bad[0]
        raise NonFiniteLossError(
            f"non-finite loss at step {state.step + 1} (epoch {state.epoch}, batch {batch}); "
            f"run stopped, last good checkpoint: {state.last_checkpoint or 'none written yet'}")
    stats = torch.zeros(5, dtype=torch.float64)
    for row in total:
        stats += torch.tensor([row[0] / world, row[1] / world, row[2], row[3], 1.0], dtype=torch.float64)
    return stats, pwtp_means if monitor is not None else None


def _optimizer_step(loop: Loop, state: TrainState) -> tuple[float, float]:
    """The schedule's learning rate, unscaling, clipping and the update; returns (lr, grad norm).

    A non-finite gradient in full precision raises ``NonFiniteLossError`` (a float16 scaler
    skips such a step itself)."""
    lr = loop.lr_of_step(state.step)
    for g in loop.optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
    loop.scaler.unscale_(loop.optimizer)
    params = [p for g in loop.optimizer.param_groups for p in g["params"]]
    max_norm = loop.clip_grad_norm if loop.clip_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not loop.scaler.is_enabled() and not math.isfinite(grad_norm):
        raise NonFiniteLossError(
            f"non-finite gradient at step {state.step + 1} (epoch {state.epoch}); run stopped, "
            f"last good checkpoint: {state.last_checkpoint or 'none written yet'}")
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    return lr, grad_norm


def _log_row(stats: Tensor, state: TrainState, *, lr: float, alpha: float, grad_norm: float, seconds: float,
             data_seconds: float, main_loss: str, has_aux: bool = True) -> dict:
    """The log row of one optimiser step from its summed micro-batch statistics.

    ``samples_per_s`` counts the whole step, waiting for data included; ``data_wait`` is the
    share of it spent waiting for the loader (near 0: the model is the bottleneck; large: the
    run is input-bound -- more workers, or cheaper decoding).

    None for what does not apply (empty log cells): alpha and ENoPR without an aux loss (RGB),
    the recognition loss and accuracy when the backbone did not run (separate: PWTP alone).
    """
    n = stats[4].item()
    rec = main_loss == "rec_loss"
    row = {"step": state.step, "epoch": state.epoch, "lr": lr, "rec_loss": stats[0].item() / n if rec else None,
           "enopr": stats[1].item() / n if has_aux else None, "alpha": alpha if has_aux else None,
           "acc": 100.0 * stats[2].item() / max(stats[3].item(), 1) if rec else None,
           "grad_norm": grad_norm, "samples_per_s": stats[3].item() / max(seconds, 1e-9),
           "data_wait": min(data_seconds / max(seconds, 1e-9), 1.0)}
    row["loss"] = row[main_loss]
    return row


def _log_step(loop: Loop, logger: TrainLogger, row: dict, pwtp_means: Tensor | None) -> None:
    """Log one optimiser step: PWTP's diagnostics added to ``row`` (a warning if PWTP froze), then the row."""
    if loop.monitor is not None:  # alpha, |g1|, |g2|, ENoPR's floor, DA's direction
        diagnostics, warning = loop.monitor.end_step(row["alpha"], row["enopr"], loop.strategy.stats, pwtp_means)
        row.update(diagnostics)
        if warning and loop.strategy.pwtp_learns_from_l2:
            logger.print(warning)
    logger.log(row)


# ----------------------------------------------------------------------------------------------
# The whole run.


def train(
    model: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset | None = None,
    *,
    optim: OptimConfig,
    joint: JointConfig | None = None,
    evaluation: EvalConfig | None = None,
    log: LogConfig | None = None,
    checkpoint: CheckpointConfig | None = None,
    num_workers: int = 0,
    seed: int = 0,
    device: torch.device | None = None,
    max_steps: int = 0,
    resume: bool = False,
    meta: dict | None = None,
) -> dict:
    """Train ``model`` (a ``VideoClassifier``) and evaluate it; returns the last evaluation result.

    The config sections (``dynapp.config``; defaults where None) say how: ``optim`` the recipe,
    ``joint`` the strategy (``dynapp.joint.STRATEGIES``), ``evaluation`` when and how to
    evaluate, ``log`` the output folder (``log.out_dir``) and the logs, ``checkpoint`` what to
    save.  ``meta``: extra entries of every checkpoint (the builder stores ``config``, the run
    config as a dict, and ``classes``, the class names of the training set).  ``max_steps``
    (> 0) stops after that many optimiser steps.

    Call inside an initialised process group (``init_distributed``) for multi-process runs.
    Files in ``log.out_dir``: ``checkpoints/last.pt`` (and ``epoch_XXX.pt``), ``checkpoints/best.pt``
    (the best video top-1 of the evaluations), ``train_log.csv``, ``eval_log.csv``, ``tensorboard/``,
    ``eval.json`` (the last evaluation) (``checkpoint.enabled=False``: no checkpoint).  ``resume=True``
    continues from ``checkpoints/last.pt`` exactly (schedule, step counter, sampler epoch and
    position, RNG states).
    """
    joint, evaluation = joint or JointConfig(), evaluation or EvalConfig()
    log, checkpoint = log or LogConfig(), checkpoint or CheckpointConfig()
    device, out_dir = device or torch.device("cpu"), Path(log.out_dir)
    per_process = _per_process_batch(optim.batch_size, optim.accumulation_steps)
    sampler = train_sampler(train_dataset, seed=seed)
    steps_per_epoch = _steps_per_epoch(len(sampler), per_process, optim, len(train_dataset))
    total_steps = optim.epochs * steps_per_epoch

    model.to(device)
    loop = build_loop(model, optim, joint, device=device, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    checkpoints = RunCheckpoints(out_dir / "checkpoints", model=model, optimizer=loop.optimizer, scaler=loop.scaler,
                                 enabled=checkpoint.enabled, meta={"total_steps": total_steps, **(meta or {})})
    state = _resume(checkpoints, total_steps) if resume else _fresh(checkpoints)
    logger = TrainLogger(out_dir, rank=get_rank(), csv_log=log.csv, tensorboard=log.tensorboard,
                         start_step=state.step, progress=log.progress, every_steps=log.every_steps,
                         total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                         checkpoint_dir=checkpoints.folder if checkpoint.enabled else None)
    evals = EvalLog(out_dir, rank=get_rank(), start_step=state.step,
                    last=checkpoints.last if checkpoint.enabled else None)
    result: dict = {}
    stop = StopSignals().install()  # SIGTERM/SIGUSR1/Ctrl-C: finish the step, checkpoint, raise Preempted
    books = Bookkeeping(logger=logger, checkpoints=checkpoints, stop=stop, every_steps=checkpoint.every_steps,
                        max_steps=max_steps)
    try:
        while state.epoch < optim.epochs:
            set_train_mode(model, frozen_bn=loop.frozen_bn,
                           freeze_representation=not loop.strategy.phase(state.epoch).train_theta1)
            loader = _epoch_loader(train_dataset, sampler, state, batch_size=per_process, num_workers=num_workers,
                                   seed=seed, device=device)
            if not train_one_epoch(loop, loader, state, books):
                _stopped_inside_epoch(books, state, total_steps)  # Preempted after a stop signal
                return result
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            _save(checkpoints, state, epoch_file=checkpoint.keep_every_epoch)
            due = evaluation.every_epochs and state.epoch % evaluation.every_epochs == 0
            if val_dataset is not None and (due or state.epoch == optim.epochs):
                result = _validate(model, val_dataset, state, evaluation, num_workers=num_workers, loop=loop)
                _record_evaluation(result, state, logger, evals, out_dir)
        if val_dataset is not None and not result:  # resumed after the last epoch ended: evaluate once
            result = _validate(model, val_dataset, state, evaluation, num_workers=num_workers, loop=loop)
    finally:
        stop.restore()
        logger.close()
    return result


def build_loop(model: nn.Module, optim: OptimConfig, joint: JointConfig, *, device: torch.device,
               steps_per_epoch: int, total_steps: int) -> Loop:
    """The pieces of a run for ``model`` (already on ``device``): the joint strategy, frozen
    BatchNorm, the optimiser, the scaler, the schedule, and the DDP wrappers under torchrun."""
    reduce = all_reduce_mean if is_distributed() else None
    strategy = build_strategy(joint.strategy, theta1_parameters(model), total_steps=total_steps, all_reduce_mean=reduce,
                              **{k: v for k, v in dataclasses.asdict(joint).items() if k not in ("strategy", "enopr_weight")})
    frozen_bn = freeze_batchnorm(model.backbone) if optim.freeze_bn else []
    optimizer = build_optimizer(model, optim)
    amp_dtype = autocast_dtype(optim.amp, optim.amp_dtype, device)
    pwtp_alone = any(not strategy.phase(e).run_backbone for e in range(optim.epochs))  # separate's first phase
    return Loop(
        model=_ddp(model, device),
        representation=_ddp(model.representation, device) if pwtp_alone else model.representation,
        criterion=recognition_loss(optim.label_smoothing), optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),  # bfloat16 needs no scaling
        strategy=strategy, lr_of_step=_schedule(optim, total_steps, steps_per_epoch), steps_per_epoch=steps_per_epoch,
        accumulation_steps=optim.accumulation_steps, clip_grad_norm=optim.clip_grad_norm, device=device,
        amp_dtype=amp_dtype, frozen_bn=frozen_bn, monitor=PWTPMonitor.for_model(model),
        enopr_weight=joint.enopr_weight)


def recognition_loss(label_smoothing: float) -> Callable[[Tensor, Tensor], Tensor]:
    """L2, the recognition loss of (logits, labels): cross-entropy with label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _save(checkpoints: RunCheckpoints, state: TrainState, *, epoch_file: bool = False) -> None:
    """Checkpoint the run at ``state`` (collective); remember the file for error messages."""
    path = checkpoints.save(step=state.step, epoch=state.epoch, batch_in_epoch=state.batch_in_epoch,
                            epoch_file=epoch_file)
    if path is not None:
        state.last_checkpoint = str(path)


def _stopped_inside_epoch(books: Bookkeeping, state: TrainState, total_steps: int) -> None:
    """The run stopped after ``state.step`` (``max_steps`` or a stop signal): checkpoint that step
    (unless it was just saved); after a stop signal print one line and raise ``Preempted``."""
    if not (books.every_steps and state.step % books.every_steps == 0):
        _save(books.checkpoints, state)
    if books.stop.stopped:
        checkpoints = books.checkpoints
        error = books.stop.error(state.step, total_steps, checkpoints.last if checkpoints.enabled else None)
        books.logger.print(str(error))
        raise error


def _validate(model: nn.Module, val_dataset: Dataset, state: TrainState, evaluation: EvalConfig, *,
              num_workers: int, loop: Loop) -> dict:
    """Evaluate ``model`` on ``val_dataset`` (every process takes a share); the result names the epoch and step."""
    result = evaluate(model, val_dataset, device=loop.device, batch_size=evaluation.batch_size,
                      num_workers=num_workers, amp=loop.amp_dtype == torch.float16)
    return {**result, "epoch": state.epoch, "step": state.step}


def _record_evaluation(result: dict, state: TrainState, logger: TrainLogger, evals: EvalLog, out_dir: Path) -> None:
    """On process 0: ``eval.json``, TensorBoard, ``eval_log.csv`` and ``best.pt``, and one console line."""
    if get_rank() != 0:
        return
    write_json(result, out_dir / "eval.json")
    logger.log_eval(result, state.step)
    best = evals.add(result, epoch=state.epoch, step=state.step)
    print(f"epoch {state.epoch} step {state.step}: clip top1 {result['clip']['top1']:.2f} "
          f"video top1 {result['video']['top1']:.2f}{' (best so far)' if best else ''}", flush=True)


def autocast_dtype(amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run: ``amp_dtype`` ("float16" | "bfloat16") on CUDA, None (full
    precision) without ``amp`` or off CUDA.  bfloat16 on a GPU without it is a one-line error."""
    if not amp or device.type != "cuda":
        return None
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {amp_dtype!r}")
    if amp_dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ValueError("optim.amp_dtype=bfloat16: this GPU has no bfloat16; use float16")
    return getattr(torch, amp_dtype)


def prepare_model(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """GPU options of a model, in place: ``channels_last`` puts every 4-D weight in
    ``torch.channels_last`` and every 5-D one in ``torch.channels_last_3d`` (convolutions then
    run, and return, channels-last); ``compile`` compiles the backbone (``nn.Module.compile``, so
    the state-dict keys stay the same and PWTP's own backward for MGDA is untouched)."""
    if channels_last:
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dim() in formats:
                t.data = t.data.contiguous(memory_format=formats[t.dim()])
    if compile:
        model.backbone.compile()
    return model


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum over ``build_param_groups`` (the recipe's multipliers and weight decay)."""
    groups = build_param_groups(model, weight_decay=optim.weight_decay, classifier_lr_mult=optim.classifier_lr_mult,
                                classifier_wd_mult=optim.classifier_wd_mult,
                                representation_lr_mult=optim.representation_lr_mult,
                                representation_wd_mult=optim.representation_wd_mult)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)


def _schedule(optim: OptimConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
    return functools.partial(lr_at, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=optim.lr,
                             min_lr=optim.min_lr, warmup_start_factor=optim.warmup_start_factor)


def _per_process_batch(batch_size: int, accumulation_steps: int) -> int:
    """The micro-batch of one process: the global ``batch_size`` / (world size x accumulation)."""
    world = get_world_size()
    per_process = batch_size // (world * accumulation_steps)
    if per_process < 1 or per_process * world * accumulation_steps != batch_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of world_size {world} x accumulation_steps "
                         f"{accumulation_steps}")
    return per_process


def _steps_per_epoch(sampled: int, per_process: int, optim: OptimConfig, dataset_size: int) -> int:
    """Optimiser steps per epoch: the ``sampled`` items of one process in whole micro-batches and steps."""
    steps = sampled // per_process // optim.accumulation_steps
    if steps < 1:
        raise ValueError(f"the training set ({dataset_size} items) is smaller than one global batch "
                         f"({optim.batch_size})")
    return steps


def _epoch_loader(dataset: Dataset, sampler, state: TrainState, *, batch_size: int, num_workers: int, seed: int,
                  device: torch.device) -> DataLoader:
    """The loader of epoch ``state.epoch`` from micro-batch ``state.batch_in_epoch`` on (exact resume)."""
    sampler.set_epoch(state.epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(state.epoch)  # per-sample augmentation keyed by (seed, epoch, index); workers copy it
    return DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                      sampler=_SkipSampler(sampler, state.batch_in_epoch * batch_size),
                      pin_memory=device.type == "cuda", persistent_workers=False, worker_init_fn=ignore_stop_signals,
                      multiprocessing_context=worker_start_method(dataset, num_workers),
                      generator=torch.Generator().manual_seed(seed * 100_003 + state.epoch * 1_009 + get_rank()))


def _fresh(checkpoints: RunCheckpoints) -> TrainState:
    if checkpoints.last.exists():
        raise ValueError(f"{checkpoints.last} exists: add --resume (or checkpoint.resume=auto) to continue that run, "
                         "or choose another log.out_dir")
    return TrainState()


def _resume(checkpoints: RunCheckpoints, total_steps: int) -> TrainState:
    ck = checkpoints.restore()
    state = TrainState(step=ck["step"], epoch=ck["epoch"], batch_in_epoch=ck["batch_in_epoch"],
                       last_checkpoint=str(checkpoints.last))
    if ck.get("total_steps") not in (None, total_steps):
        warnings.warn(f"resuming with {total_steps} total steps, the checkpoint had {ck['total_steps']}: "
                      "the schedule differs", stacklevel=3)
    if get_rank() == 0:
        print(f"resumed from {checkpoints.last} at step {state.step} (epoch {state.epoch})", flush=True)
    return state


def _ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped by ``DistributedDataParallel`` under torchrun (``module`` itself on one process)."""
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
