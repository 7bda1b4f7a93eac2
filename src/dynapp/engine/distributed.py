"""Data-parallel plumbing for ``torchrun``: process group, reductions and samplers.

One code path for one process and for many: ``init_distributed`` reads the ``torchrun`` variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); without them (or with ``WORLD_SIZE=1``) no process
group is created and every helper degrades to the identity.  Backend: NCCL on GPU, gloo on CPU.

Samplers: training uses ``torch.utils.data.DistributedSampler`` for every world size (also 1), so
the shuffle of an epoch depends only on ``seed + epoch`` and a resumed or a single-process run
sees the same global order.  Evaluation uses ``ExactShardSampler``: rank r takes items
r, r + W, r + 2W, ... with no padding, so every item is scored exactly once; the gathered scores
are also de-duplicated by item index.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_gather_objects",
    "barrier",
    "broadcast_buffers",
    "train_sampler",
    "ExactShardSampler",
]


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one; pick the device.

    ``device``: "auto" (CUDA if available), "cpu" or "cuda".  With CUDA, process ``LOCAL_RANK``
    uses GPU ``LOCAL_RANK``.  Returns (rank, world_size, local_rank, device).
    """
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but CUDA is not available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                **({"device_id": dev} if use_cuda else {}))
    return DistInfo(rank, world, local_rank, dev)


def cleanup_distributed(synchronize: bool = True) -> None:
    """Leave the process group (no-op for one process).

    ``synchronize``: first wait for every rank (a barrier), so that no rank tears gloo down while
    a peer's connection is still in use: gloo then aborts that peer with "terminate called
    without an active exception" (seen about once in eight two-process runs without it).  Pass
    False on an error path, where a peer may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if synchronize and dist.get_world_size() > 1:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (a new tensor; ``t`` itself for one process)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over processes (a new tensor; ``t`` itself for one process)."""
    if not is_distributed():
        return t
    return all_reduce_sum(t) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` for one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer (BatchNorm running statistics) of ``module`` from process ``src``.

    DDP broadcasts buffers at the start of each forward, so after the last training step every
    process holds statistics updated by its own batch; call this before evaluating or saving.
    """
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf.data, src)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def train_sampler(dataset, *, seed: int, shuffle: bool = True, drop_last: bool = True) -> DistributedSampler:
    """The training sampler for any world size; call ``.set_epoch(epoch)`` every epoch."""
    return DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=shuffle,
                              seed=seed, drop_last=drop_last)


class ExactShardSampler(Sampler[int]):
    """Evaluation sampler: rank r of W gets items r, r + W, ... (no padding, no duplicates)."""

    def __init__(self, dataset_or_length, *, rank: int | None = None, world_size: int | None = None):
        self.length = dataset_or_length if isinstance(dataset_or_length, int) else len(dataset_or_length)
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
