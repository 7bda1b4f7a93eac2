"""The demo's runs, in this process or in worker processes (``--jobs``).

A run is a :class:`Run`: the demo config, the input, the setting, the seed and the joint-training
keyword arguments; nothing else.  Each process builds (and keeps) the seed's generated clips
itself (:func:`dynapp.apps.demo.runs.demo_data`), so only the small :class:`Run` and the
result (with its small trained model) cross process boundaries.  Every run seeds its own weights
and every clip is a function of (seed, index), so the results do not depend on ``jobs`` or on
which process trained which run.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynapp.apps.demo.config import DemoConfig


@dataclass
class Run:
    """One training run of the demo: ``cfg.backbone`` on input ``rep`` trained on ``setting``'s
    clips of ``seed``; ``options``: train_and_evaluate's joint-training and rank keyword arguments."""

    cfg: DemoConfig
    rep: str
    setting: str
    seed: int
    out_dir: Path
    options: dict = field(default_factory=dict)


def train_run(run: Run) -> dict:
    """Train and evaluate ``run`` on its seed's clips (validation and test)."""
    from dynapp.apps.demo.runs import demo_data, train_and_evaluate

    train_sets, val_set, test_set = demo_data(run.cfg, run.seed)
    return train_and_evaluate(run.cfg, run.rep, train_sets[run.setting], test_set, val_set=val_set,
                              out_dir=Path(run.out_dir), seed=run.seed, **run.options)


def _start_worker(threads: int) -> None:
    torch.set_num_threads(max(1, threads))


class Runner:
    """``map(runs)`` trains runs in order in this process (``jobs`` = 1) or ``jobs`` at a time in
    worker processes (started once, by spawn, each with ``threads`` torch threads); use it as a
    context manager so the workers stop with it."""

    def __init__(self, jobs: int = 1, threads: int = 1):
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.jobs, self.threads = jobs, threads
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        if self.jobs > 1:
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            self.pool = None

    def map(self, runs: Sequence[Run], done: Callable[[Run, dict], None] | None = None) -> list[dict]:
        """The results of ``runs`` in their order; ``done(run, result)`` is called for each, in that order."""
        results = []
        if self.pool is None:
            for run in runs:
                results.append(train_run(run))
                if done:
                    done(run, results[-1])
            return results
        futures = [self.pool.submit(train_run, run) for run in runs]
        for run, future in zip(runs, futures):
            results.append(future.result())
            if done:
                done(run, results[-1])
        return results
