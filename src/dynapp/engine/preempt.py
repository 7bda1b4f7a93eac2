"""Preemption: SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) stop a run at a step that every process agrees on.

Clusters warn a job before killing it: SLURM sends SIGTERM at the time limit or on preemption
(and any signal chosen with ``#SBATCH --signal=USR1@120`` that long before), Kubernetes sends
SIGTERM and waits ``terminationGracePeriodSeconds``.  During training the handler only records
the signal; after each optimiser step the loop asks :meth:`StopSignals.should_stop`, a tiny
all-reduce, so that every process stops after the SAME step even when only one of them was
signalled (or they were signalled at different moments).  The loop then writes a checkpoint,
rank 0 prints one line, and every process exits with :data:`EXIT_PREEMPTED`.

Ctrl-C is a preemption too: the first one prints that the run stops after its step, a second
one stops at once (``KeyboardInterrupt``; the last checkpoint written stays the one to resume).

DataLoader workers ignore these signals (:func:`ignore_stop_signals` is their
``worker_init_fn``): a signal sent to the whole process group must not kill a worker under the
main process's feet; the main process shuts them down itself.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch

from dynapp.engine.distributed import all_reduce_sum, get_rank

__all__ = ["EXIT_PREEMPTED", "STOP_SIGNALS", "Preempted", "StopSignals", "ignore_stop_signals"]

EXIT_PREEMPTED = 75  # EX_TEMPFAIL of sysexits.h: "a temporary failure, run it again"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a stop signal after writing a checkpoint; run it again to continue."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


class StopSignals:
    """Record SIGTERM/SIGUSR1/SIGINT while installed (a context manager); restore the old handlers after.

    A second SIGINT raises ``KeyboardInterrupt`` (a second Ctrl-C stops at once).

    Outside the main thread (where Python cannot install handlers) nothing is installed and
    :meth:`should_stop` only reports what other processes received.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: list[str] = []  # names, in order of arrival, on this process
        self.stopped = False  # set once should_stop() returned True
        self._previous: dict[int, object] = {}

    def _record(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        again = name == "SIGINT" and "SIGINT" in self.received
        self.received.append(name)  # the loop acts on it at the next step (recorded before anything can interrupt)
        if again:
            raise KeyboardInterrupt
        if name == "SIGINT" and get_rank() == 0:
            print("\nCtrl-C: the run stops after this step and writes a checkpoint (Ctrl-C again: stop at once)",
                  file=sys.stderr, flush=True)

    def install(self) -> StopSignals:
        """Install the handlers (main thread only); :meth:`restore` puts the previous ones back."""
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    __enter__ = install

    def __exit__(self, *exc) -> None:
        self.restore()

    def should_stop(self, device: torch.device | str = "cpu") -> bool:
        """Collective (every process calls it at the same step): did any process get a signal?"""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        self.stopped = bool(all_reduce_sum(flag).item() > 0)
        return self.stopped

    def error(self, step: int, total_steps: int, checkpoint: str | Path | None) -> Preempted:
        """The one-line :class:`Preempted` of a run stopped after ``step`` (print it on rank 0)."""
        name = self.received[0] if self.received else "a stop signal sent to another process"
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (checkpoint.enabled=false)"
        return Preempted(f"preempted ({name}): stopped after step {step} of {total_steps}, {where}; continue with "
                         f"--resume or checkpoint.resume=auto (exit code {EXIT_PREEMPTED})", step=step)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of training DataLoaders: workers leave stop signals to the main process."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
