"""Fault injection for the tests: a NaN loss at a chosen step, a sleep after every step.

``install(nan_at_step=..., sleep_per_step=...)`` replaces two names the training loop looks up
in ``dynapp.engine.train``: ``TrainLogger`` (a subclass that notes each logged step, then
sleeps) and ``recognition_loss`` (the same loss, NaN at step ``nan_at_step``).  Pass pytest's
``monkeypatch.setattr`` as ``setattr`` to undo it after the test.

Run as a script, it installs them and runs the ``dynapp`` command line (also under torchrun):

    python tests/fault_injection.py --sleep-per-step=0.3 train data.dataset=folder ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())


def install(*, nan_at_step: int = 0, sleep_per_step: float = 0.0, setattr: Callable = setattr) -> None:
    """Make the loop's loss NaN at optimiser step ``nan_at_step`` (counted from 1; 0: never) and
    sleep ``sleep_per_step`` seconds after logging every step (before its checkpoint and stop checks)."""
    from dynapp.engine import train

    logged = {"step": 0}  # the last step logged: the step being trained is the next one

    class SlowLogger(train.TrainLogger):
        def __init__(self, *args, start_step: int = 0, **kwargs):
            super().__init__(*args, start_step=start_step, **kwargs)
            logged["step"] = start_step

        def log(self, row: dict) -> None:
            super().log(row)
            logged["step"] = row["step"]
            if sleep_per_step > 0:
                time.sleep(sleep_per_step)

    real_loss = train.recognition_loss

    def recognition_loss(label_smoothing: float):
        loss = real_loss(label_smoothing)

        def with_fault(logits, label):
            value = loss(logits, label)
            return value * float("nan") if logged["step"] + 1 == nan_at_step else value

        return with_fault

    setattr(train, "TrainLogger", SlowLogger)
    setattr(train, "recognition_loss", recognition_loss)


def command(*args: str, sleep_per_step: float = 0.0, nan_at_step: int = 0) -> list[str]:
    """The command line of ``dynapp ARGS`` with these faults (this script's options)."""
    return [sys.executable, SCRIPT, f"--sleep-per-step={sleep_per_step}", f"--nan-at-step={nan_at_step}", *args]


def main(argv: list[str]) -> None:
    """``[--sleep-per-step=S] [--nan-at-step=N] dynapp-arguments...``"""
    options = {}
    while argv and argv[0].startswith("--") and "=" in argv[0] and argv[0][2:].split("=")[0] in (
            "sleep-per-step", "nan-at-step"):
        key, value = argv.pop(0)[2:].split("=", 1)
        options[key.replace("-", "_")] = float(value) if key == "sleep-per-step" else int(value)
    install(**options)
    from dynapp.cli import app

    app(argv, prog_name="dynapp")


if __name__ == "__main__":
    main(sys.argv[1:])
