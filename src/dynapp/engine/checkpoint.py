"""Checkpoints: atomic writes, ``weights_only`` loads, RNG states as tensors.

A training checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(weights_only=True)`` reads it: model, optimiser, scaler, schedule position
(step, epoch), the run config (as a dict) and the RNG states of python, numpy, torch and CUDA.
Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
the target with ``os.replace``, so a crash mid-write never corrupts the last good checkpoint;
the next successful save removes the temporary file such a crash leaves behind.

``load_checkpoint`` is the one reader of checkpoint files in dynapp (training resume, ``init_from``,
``dynapp eval``, ``dynapp extract``); ``model_state_dict`` takes the weights out of what it read.
(Backbones read pretrained files with ``dynapp.backbones.weights.read_state_dict``, which also
reads safetensors and the containers of other frameworks.)
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynapp.engine.distributed import (
    all_gather_objects,
    barrier,
    broadcast_buffers,
    get_rank,
    get_world_size,
)

__all__ = [
    "CheckpointError",
    "RunCheckpoints",
    "save_checkpoint",
    "load_checkpoint",
    "strip_module_prefix",
    "model_state_dict",
    "get_rng_state",
    "set_rng_state",
    "state_is_finite",
]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or was refused (one-line message)."""


def get_rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA, if present) generator states as tensors and numbers."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned."""
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_mt"].tolist()), state["python_gauss"]))
    np.random.set_state((
        state["numpy_name"],
        state["numpy_keys"].numpy().astype(np.uint32),
        state["numpy_pos"],
        state["numpy_has_gauss"],
        state["numpy_gauss"],
    ))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def state_is_finite(state: Any) -> bool:
    """True if every floating tensor in a (nested) state dict is finite."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(state_is_finite(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(state_is_finite(v) for v in state)
    return True


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, os.replace).

    Refuses (``CheckpointError``) a state with a non-finite floating tensor, so a NaN
    checkpoint is never written.
    """
    path = Path(path)
    if not state_is_finite(state):
        raise CheckpointError(f"refusing to write {path}: the state holds non-finite values")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # half-written by a process killed mid-write
        try:
            stale.unlink()
        except OSError:
            pass
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    A file whose unpickling would construct arbitrary objects (i.e. could run code) is refused
    with a ``CheckpointError`` saying so; a missing or damaged file also gives a one-line error.
    The messages are dynapp's own: no library internals, and never the advice to load unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:  # torch names the object it refused; its advice to load the file unsafely is not repeated
            raise CheckpointError(
                f"refused to load {path}: it holds a Python object ({found.group(1)}) whose loading would run "
                "code; dynapp only loads checkpoints of tensors, numbers and strings, as dynapp train writes them"
            ) from None
    except Exception:  # damaged or foreign files raise anything (EOFError, KeyError, IndexError, struct.error, ...)
        pass
    raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or a damaged "
                          f"(e.g. truncated) one ({path.stat().st_size} bytes)")


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the ``module.`` prefix of (Distributed)DataParallel removed from its keys."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def model_state_dict(checkpoint: Any) -> dict[str, Any]:
    """The model weights in a loaded checkpoint: the ``"model"`` entry of a dynapp training
    checkpoint, or the checkpoint itself if it is a plain state dict; ``module.`` stripped."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError("the checkpoint is neither a state dict nor a dict with a 'model' entry")
    return strip_module_prefix(state)


class RunCheckpoints:
    """The checkpoints of one training run: ``folder/last.pt`` (and ``epoch_XXX.pt``).

    Each holds ``model``, ``optimizer``, ``scaler``, the position (``step``, ``epoch``,
    ``batch_in_epoch``), ``world_size``, the RNG states of every process (``rng``), ``config``
    (``{}`` unless ``meta`` has one) and the entries of ``meta`` (e.g. ``config``, ``classes``,
    ``total_steps``).  ``save`` and the constructor are collective under torchrun.
    """

    def __init__(self, folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, enabled: bool = True, meta: dict | None = None):
        self.folder, self.last = Path(folder), Path(folder) / "last.pt"
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.enabled, self.meta = enabled, dict(meta or {})
        if get_rank() == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
        barrier()

    def save(self, *, step: int, epoch: int, batch_in_epoch: int, epoch_file: bool = False) -> Path | None:
        """Write ``last.pt`` (and ``epoch_XXX.pt``) on process 0; None when checkpoints are off.

        Every process must call it: BatchNorm statistics of process 0 are broadcast first (also
        when checkpoints are off, so that every process evaluates the same model), and the RNG
        states of all processes are gathered.
        """
        broadcast_buffers(self.model)
        if not self.enabled:
            return None
        rngs = all_gather_objects(get_rng_state())
        if get_rank() == 0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scaler": self.scaler.state_dict(), "step": step, "epoch": epoch,
                     "batch_in_epoch": batch_in_epoch, "world_size": get_world_size(), "config": {}, "rng": rngs,
                     **self.meta}
            save_checkpoint(state, self.last)
            if epoch_file:
                save_checkpoint(state, self.folder / f"epoch_{epoch:03d}.pt")
        barrier()
        return self.last

    def restore(self) -> dict[str, Any]:
        """Load ``last.pt`` into model, optimiser and scaler, restore this process's RNG states
        (when the world size is the same); returns the whole checkpoint (its position, ``meta``)."""
        if not self.last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.last}")
        ck = load_checkpoint(self.last)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        world = get_world_size()
        if len(ck["rng"]) == world:
            set_rng_state(ck["rng"][get_rank()])
        else:
            warnings.warn(f"checkpoint written by {len(ck['rng'])} processes, resuming on {world}: "
                          "RNG states not restored", stacklevel=2)
        return ck
