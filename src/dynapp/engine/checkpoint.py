"""Checkpoints: atomic writes, ``weights_only`` loads, RNG states as tensors.

A training checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(weights_only=True)`` reads it: model, optimiser, scaler, schedule position
(step, epoch), the run config (as a dict) and the RNG states of python, numpy, torch and CUDA.
Writing goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over
the target with ``os.replace``, so a crash mid-write never corrupts the last good checkpoint;
the next successful save removes the temporary file such a crash leaves behind.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
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
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refused to load {path}: it holds objects whose unpickling would run code "
            f"(torch.load weights_only=True rejected it: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
