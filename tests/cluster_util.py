"""Helpers of the cluster tests (resume, preemption, world size): a tiny folder dataset of real
H.264 clips, and ``dynapp train`` run as a real process that can be killed or signalled."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fault_injection
from dynapp.data.encode import write_video
from dynapp.engine.checkpoint import load_checkpoint

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def write_clips(root: Path, *, train_per_class: int = 4, val_per_class: tuple[int, ...] = (2, 1),
                seed: int = 0) -> Path:
    """``root/{train,val}/<class>/vN.mp4``: 2 classes, 16 frames of 40 x 48 textures that move
    left or right (H.264); 3 validation videos (an odd count, so a padded shard would show)."""
    rng = np.random.default_rng(seed)
    for split, counts in (("train", (train_per_class, train_per_class)), ("val", val_per_class)):
        for label, count in enumerate(counts):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                texture = rng.integers(0, 256, (40, 96, 3), dtype=np.uint8)
                step = 2 if label == 0 else -2
                frames = np.stack([np.roll(texture, step * t, axis=1)[:, :48] for t in range(16)])  # (T, H, W, 3)
                write_video(folder / f"v{i}.mp4", frames)
    return root


def train_args(root: Path, out_dir: Path, *extra: str) -> list[str]:
    """A DA run (PWTP + small2d, MGDA) with augmentation (multi-scale crops, flips) and dropout."""
    return ["data.dataset=folder", f"data.root={root}", "data.segments=2", "data.frames=4", "data.crop_size=32",
            "model.backbone=small2d", "model.backbone_kwargs.widths=[8,8,8,8]", "model.dropout=0.3",
            "optim.batch_size=2", "optim.epochs=3", "optim.lr=0.05", "optim.warmup_epochs=1",
            "checkpoint.every_steps=3", "deterministic=true", "eval.every_epochs=1", "log.tensorboard=false",
            "log.progress=false", "device=cpu", f"log.out_dir={out_dir}", *extra]


def cli(*args: str, sleep_per_step: float = 0.0) -> list[str]:
    """``dynapp train ARGS``; ``sleep_per_step`` > 0: with a sleep after every step (tests/fault_injection.py)."""
    if sleep_per_step:
        return fault_injection.command("train", *args, sleep_per_step=sleep_per_step)
    return [sys.executable, "-m", "dynapp.cli", "train", *args]


def torchrun(*args: str, nproc: int = 2, sleep_per_step: float = 0.0) -> list[str]:
    """``dynapp train ARGS`` under torchrun; ``sleep_per_step`` as in :func:`cli`."""
    program = fault_injection.command("train", *args, sleep_per_step=sleep_per_step)[1:] if sleep_per_step else [
        "-m", "dynapp.cli", "train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", *program]


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wait_for_rows(proc: subprocess.Popen, log: Path, rows: int, timeout: float = 180) -> None:
    """Wait until ``log`` holds ``rows`` rows of the running ``proc``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(read_csv(log)) >= rows:
            return
        if proc.poll() is not None:
            out = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the run ended early (rc {proc.returncode}): {out[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{log} did not reach {rows} rows in {timeout} s")


def wait_for_text(proc: subprocess.Popen, text: str, timeout: float = 180) -> None:
    """Read ``proc``'s stderr line by line until ``text`` appears."""
    deadline = time.time() + timeout
    for line in proc.stderr:
        if text in line:
            return
        if time.time() > deadline:
            break
    proc.kill()
    pytest.fail(f"{text!r} never appeared (rc {proc.poll()})")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)


def final_model(out_dir: Path) -> dict:
    return load_checkpoint(out_dir / "checkpoints" / "last.pt")["model"]


def assert_bitwise_equal(ref: dict, got: dict) -> None:
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"{len(differ)} of {len(ref)} tensors differ: {differ[:5]}"


LOGGED = ("step", "epoch", "lr", "loss", "rec_loss", "enopr", "alpha", "acc", "grad_norm")  # all but samples/s


def assert_same_rows(ref: list[dict], got: list[dict]) -> None:
    """The same training log, value for value (no repeated or missing step)."""
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        assert {k: a[k] for k in LOGGED} == {k: b[k] for k in LOGGED}, a["step"]


def torchrun_workers(pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the worker processes of the torchrun process ``pid`` (Linux /proc)."""
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{child}/environ").read_bytes().split(b"\0") if b"=" in kv)
        if b"RANK" in env:
            out[int(env[b"RANK"])] = int(child)
    return out
