"""Exact resume anywhere: kill -9 a real `dynapp train` (real H.264 clips, augmentation, dropout,
0/1/2 loader workers) at any step, or while it writes a checkpoint, and continue it: the final
weights equal an uninterrupted run's bitwise, and the training log has every step once, with
the same values."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from torch.utils.data import DataLoader

from cluster_util import (
    ENV,
    assert_bitwise_equal,
    assert_same_rows,
    cli,
    final_model,
    kill,
    read_csv,
    train_args,
    wait_for_rows,
    wait_for_text,
)
from dynapp.config import load_config
from dynapp.data import build_dataset
from dynapp.engine.checkpoint import load_checkpoint
from dynapp.engine.run import run_from_config

TOTAL = 12  # 8 training clips / batch 2 = 4 steps per epoch, 3 epochs


def test_augmentation_is_a_function_of_seed_epoch_and_index(clips):
    ds = build_dataset("folder", clips / "train", train=True, segments=2, frames=4, crop_size=32, seed=3)
    ds.set_epoch(1)
    alone = torch.stack([ds[i][0] for i in range(len(ds))])
    for workers in (0, 2):  # any worker count, any order: the same clip for the same item
        loader = DataLoader(ds, batch_size=3, num_workers=workers, sampler=list(reversed(range(len(ds)))))
        got = torch.cat([clip for clip, _, _ in loader]).flip(0)
        assert torch.equal(got, alone), workers
    ds.set_epoch(2)
    assert not torch.equal(ds[0][0], alone[0])  # a new epoch, new crops and flips
    other = build_dataset("folder", clips / "train", train=True, segments=2, frames=4, crop_size=32, seed=4)
    other.set_epoch(1)
    assert not all(torch.equal(other[i][0], alone[i]) for i in range(len(ds)))  # another seed
    with pytest.raises(ValueError, match="seed"):
        build_dataset("folder", clips / "train", train=True, segments=2, frames=4, seed=-1)


@pytest.mark.parametrize("workers,kill_after", [(0, 4), (1, 5), (2, 7)])
def test_kill9_anywhere_then_resume_is_bitwise_exact(clips, reference, tmp_path, workers, kill_after):
    # Checkpoints every 3 steps and at epoch ends (4, 8): a kill after step 5 resumes from the
    # epoch-end checkpoint (step 4, whose evaluation ran before the kill), after 7 from step 6
    # (inside epoch 2); the steps after the checkpoint are trained and logged again.
    run = tmp_path / "run"
    args = train_args(clips, run, f"data.num_workers={workers}")
    proc = subprocess.Popen(cli(*args, sleep_per_step=0.2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_rows(proc, run / "train_log.csv", kill_after)
    kill(proc)
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")  # loadable, and not the end
    assert 3 <= stopped["step"] < TOTAL

    resume = ["--resume"] if workers == 0 else ["checkpoint.resume=auto"]
    done = subprocess.run(cli(*args, *resume), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at step {stopped['step']}" in done.stdout
    assert_bitwise_equal(final_model(reference), final_model(run))
    assert_same_rows(read_csv(reference / "train_log.csv"), read_csv(run / "train_log.csv"))
    assert json.loads((run / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())


# Runs `dynapp train` with torch.save slowed down: the second checkpoint (the epoch end, step 4)
# is written half-way, then the process hangs there until it is killed.
HANG_IN_SAVE = """
import io, sys, time
import torch
real_save, calls = torch.save, []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        print("HALF-WRITTEN", file=sys.stderr, flush=True)
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from dynapp.cli import app
app(sys.argv[1:], prog_name="dynapp")
"""


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(clips, reference, tmp_path):
    import sys

    run = tmp_path / "run"
    args = train_args(clips, run, "data.num_workers=2")
    proc = subprocess.Popen([sys.executable, "-c", HANG_IN_SAVE, "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_text(proc, "HALF-WRITTEN")
    kill(proc)
    ckpts = run / "checkpoints"
    leftovers = [p.name for p in ckpts.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.tmp-")  # the half-written file
    assert load_checkpoint(ckpts / "last.pt")["step"] == 3  # the previous checkpoint, intact

    done = subprocess.run(cli(*args, "checkpoint.resume=auto"), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_bitwise_equal(final_model(reference), final_model(run))
    assert_same_rows(read_csv(reference / "train_log.csv"), read_csv(run / "train_log.csv"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # the next save removed the leftover


def test_resume_auto_starts_without_a_checkpoint_and_continues_with_one(clips, tmp_path):
    # checkpoint.resume=auto on an empty folder starts; on a finished run it only evaluates again
    args = train_args(clips, tmp_path, "data.num_workers=0", "optim.epochs=1", "eval.every_epochs=0",
                      "checkpoint.resume=auto")
    first = run_from_config(load_config(None, args))
    again = run_from_config(load_config(None, args))
    assert again == first and len(read_csv(tmp_path / "train_log.csv")) == 4
    with pytest.raises(ValueError, match="checkpoint.resume"):
        load_config(None, args + ["checkpoint.resume=maybe"])

