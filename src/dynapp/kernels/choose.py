"""Which code computes PWTP: one switch, ``PWTP(impl=...)``, and one rule, :func:`choose_impl`.

Each part of the forward runs either the PyTorch code of :mod:`dynapp.pwtp` ("reference") or the
fused CPU kernel of :mod:`dynapp.kernels.pwtp_cpu` ("cpu_fused").  A blocker says, in words, why
the kernel cannot run a part on a given clip; ``impl="cpu_fused"`` raises it, ``"auto"`` falls
back to the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from dynapp.kernels import pwtp_cpu

__all__ = ["IMPLS", "PWTPImpl", "check_impl", "choose_impl", "choose_relation"]

IMPLS = ("auto", "reference", "cpu_fused")


class PWTPImpl(NamedTuple):
    """What a PWTP forward ran (``PWTP.last_impl``), each "reference" (the PyTorch code of
    :mod:`dynapp.pwtp`) or "cpu_fused" (:mod:`dynapp.kernels.pwtp_cpu`).

    relation:   the relation descriptor, Eq. 3.
    projection: the projection, DA and ENoPR, Eq. 1 and 5-7.
    """

    relation: str
    projection: str


def check_impl(impl: str, rank: int | None = None) -> None:
    """ValueError unless ``impl`` is one of :data:`IMPLS` (and "cpu_fused" has rank D = 1, when given)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
    if impl == "cpu_fused" and rank is not None and rank != 1:
        raise ValueError(f"PWTP(impl='cpu_fused') needs rank D = 1 (the kernel's), got rank={rank}")


def _kernel_blocker(x: torch.Tensor) -> str | None:
    """Why the CPU kernel cannot read this clip at all, or None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return f"the clip is {x.dtype} on {x.device.type}; the kernel takes float32/float64 CPU tensors"
    if not pwtp_cpu.available():  # builds the kernel on first use
        return "the fused CPU kernel is not available (no C++ compiler, or DYNAPP_NO_KERNEL=1)"
    return None


def _relation_blocker(x: torch.Tensor) -> str | None:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return "CPU autocast is on (conv F's features are in low precision)"
    return _kernel_blocker(x)


def _projection_blocker(x: torch.Tensor, rank: int, residual: bool) -> str | None:
    if rank != 1:
        return f"rank D = {rank}; the kernel is for D = 1"
    if x.requires_grad:
        return "the clip requires grad; the kernel gives no gradient for the clip"
    if residual:
        return "return_residual=True; the kernel never builds the residual"
    return _kernel_blocker(x)


def _resolve(impl: str, blocker: Callable[[], str | None]) -> str:
    """"reference" or "cpu_fused" for one part; ``blocker()`` says why the kernel cannot run it, or None."""
    if impl == "reference":
        return "reference"
    reason = blocker()
    if reason is None:
        return "cpu_fused"
    if impl == "cpu_fused":
        raise ValueError(f"PWTP(impl='cpu_fused') cannot run: {reason}")
    return "reference"


def choose_relation(impl: str, x: torch.Tensor) -> str:
    """The relation descriptor's part of :func:`choose_impl` alone (for the hyperplanes without DA)."""
    return _resolve(impl, lambda: _relation_blocker(x))


def choose_impl(impl: str, x: torch.Tensor, rank: int, residual: bool = False) -> PWTPImpl:
    """The rule behind ``PWTP(impl=...)``: which code computes Eq. 3 and Eq. 1, 5-7 on clip ``x``.

    * ``"reference"``: the PyTorch code of :mod:`dynapp.pwtp` for both (any device and dtype; the
      oracle of the tests, and what FLOP counting sees op by op).
    * ``"cpu_fused"``: the fused CPU kernel for both; ValueError naming the reason where it cannot.
    * ``"auto"`` (default): each part fused where it can run, else the reference.  Eq. 3 is fused
      when x is a float32/float64 CPU tensor, CPU autocast is off and the kernel is available;
      Eq. 1, 5-7 when x is a float32/float64 CPU tensor, D = 1, x does not require grad, no
      residual is asked for and the kernel is available.  The kernel is available when it could
      be compiled (a C++ compiler, found once per process; a warning otherwise) and the
      environment variable ``DYNAPP_NO_KERNEL`` is unset, empty or 0.

    A few microseconds: PWTP runs it on every forward.
    """
    check_impl(impl)
    return PWTPImpl(
        relation=choose_relation(impl, x),
        projection=_resolve(impl, lambda: _projection_blocker(x, rank, residual)),
    )
