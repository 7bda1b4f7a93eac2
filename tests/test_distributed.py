"""Multi-process training and evaluation under torchrun (gloo on CPU), and the samplers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster_util import (ENV, assert_bitwise_equal, final_model, read_csv, torchrun, torchrun_workers, train_args,
                          wait_for_rows)
from dynapp.engine.checkpoint import load_checkpoint
from dynapp.config import load_config
from dynapp.engine.distributed import ExactShardSampler, all_reduce_mean, get_world_size, train_sampler
from dynapp.engine.evaluate import average_views, classification_metrics, mean_over_splits
from dynapp.engine.run import eval_from_checkpoint, run_from_config


@pytest.mark.parametrize("length,world", [(7, 2), (9, 3), (2, 4), (10, 1)])
def test_exact_shard_sampler_covers_every_item_once(length, world):
    shards = [list(ExactShardSampler(length, rank=r, world_size=world)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(length))
    assert [len(ExactShardSampler(length, rank=r, world_size=world)) for r in range(world)] == [len(s) for s in shards]


def test_single_process_helpers_are_identity():
    t = torch.tensor([1.0, 2.0])
    assert get_world_size() == 1 and all_reduce_mean(t) is t
    s = train_sampler(list(range(10)), seed=3)
    s.set_epoch(2)
    order = list(s)
    assert sorted(order) == list(range(10))
    s.set_epoch(2)
    assert list(s) == order  # the shuffle depends only on seed + epoch


def test_average_views_deduplicates_and_averages():
    ids = torch.tensor([0, 1, 2, 3, 1])  # item 1 gathered twice
    vids = torch.tensor([0, 0, 1, 1, 0])
    labels = torch.tensor([1, 1, 0, 0, 1])
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    clip_p, clip_l, video_p, video_l, videos = average_views(ids, vids, labels, probs)
    assert clip_p.shape[0] == 4 and videos.tolist() == [0, 1]
    assert torch.allclose(video_p, torch.tensor([[0.4, 0.6], [0.6, 0.4]], dtype=torch.float64))
    assert video_l.tolist() == [1, 0]
    clip = classification_metrics(clip_p, clip_l)
    video = classification_metrics(video_p, video_l)
    assert clip["top1"] == pytest.approx(50.0) and video["top1"] == pytest.approx(100.0)
    assert clip["count"] == 4 and video["count"] == 2
    with pytest.raises(ValueError, match="different labels"):
        average_views(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), probs[:2])


def test_mean_class_accuracy_and_split_mean():
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = classification_metrics(scores, torch.tensor([0, 0, 0, 1]))
    assert m["top1"] == pytest.approx(100.0) and m["mean_class"] == pytest.approx(100.0)
    # 3 of class 0 (all right) and 1 of class 1 (wrong): top-1 75, mean class (100 + 0) / 2 = 50
    m2 = classification_metrics(scores, torch.zeros(4, dtype=torch.long))
    m3 = classification_metrics(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1]))
    assert m2["top1"] == pytest.approx(75.0)
    assert m3["top1"] == pytest.approx(75.0) and m3["mean_class"] == pytest.approx(50.0)
    mean = mean_over_splits([{"clip": m, "video": m}, {"clip": m3, "video": m3}])
    assert mean["video"]["top1"] == pytest.approx(87.5) and mean["video"]["mean_class"] == pytest.approx(75.0)
    assert mean["splits"] == 2 and mean["clip"]["count"] == 8


# Per-process micro-batch 1 in both runs, so BatchNorm sees the same samples: a global batch of 4
# as 2 processes x 2 accumulated micro-batches (DDP's no_sync path, g1 summed over micro-batches
# then averaged over processes) versus 1 process x 4 micro-batches.  DistributedSampler puts item
# 2k on rank 0 and 2k+1 on rank 1; the single process takes items 0-3 for its first step too.
COMMON = [
    "data.dataset=random", "data.segments=2", "data.frames=4", "data.crop_size=32", "data.num_samples=12",
    "data.num_workers=0", "model.backbone=small2d", "model.backbone_kwargs.widths=[8,16,16,16]", "model.dropout=0",
    "optim.batch_size=4", "optim.lr=0.2", "optim.epochs=1", "log.tensorboard=false", "log.progress=false",
    "eval.clips=3", "eval.every_epochs=1", "device=cpu", "joint.strategy=mgda",  # alpha by Eq. 12: it varies
]


def _alphas(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [row["alpha"] for row in csv.DictReader(f)]


def test_two_process_gloo_matches_one_process(tmp_path):
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "dynapp.cli", "train", *COMMON, "optim.accumulation_steps=2", f"log.out_dir={ddp_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_from_config(load_config(None, COMMON + ["optim.accumulation_steps=4", f"log.out_dir={one_dir}"]))

    a = load_checkpoint(ddp_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(one_dir / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 3 and a["world_size"] == 2 and b["world_size"] == 1
    init = load_config(None, COMMON)
    moved = 0
    for name, p in a["model"].items():
        if not p.is_floating_point() or "running_" in name:  # BN running stats are per process
            continue
        assert torch.allclose(p, b["model"][name], atol=1e-5, rtol=0), name
        moved += 1
    assert moved > 10 and init.optim.lr > 0

    # both processes logged the same alpha, which is the single-process alpha
    alpha0, alpha1 = _alphas(ddp_dir / "train_log.csv"), _alphas(ddp_dir / "train_log.rank1.csv")
    assert len(alpha0) == 3 and alpha0 == alpha1
    single = [float(x) for x in _alphas(one_dir / "train_log.csv")]
    assert [float(x) for x in alpha0] == pytest.approx(single, abs=1e-4)
    assert len({round(float(x), 6) for x in alpha0}) > 1  # alpha actually varies (MGDA, not a constant)

    # evaluation on 2 processes: 3 videos x 3 views = 9 items (odd, so padding would show)
    result = json.loads((ddp_dir / "eval.json").read_text())
    assert result["video"]["count"] == 3 and result["clip"]["count"] == 9
    # and it equals a 1-process evaluation of the same weights
    again = eval_from_checkpoint(ddp_dir / "checkpoints" / "last.pt", out=tmp_path / "again.json")
    for level in ("clip", "video"):
        for k in ("top1", "mean_class", "count"):
            assert again[level][k] == pytest.approx(result[level][k]), (level, k)


def test_two_process_mgda_ub_and_diagnostics_match_one_process(tmp_path):
    # MGDA-UB averages the Gram entries of the hyperplane gradients over processes, the diagnostics
    # average theirs: 2 processes x 2 micro-batches give the alpha, weights and log of 1 x 4
    from dynapp.joint_diagnostics import DIAGNOSTICS

    extra = ["joint.strategy=mgda_ub", "joint.normalize=loss+", "eval.every_epochs=0", "checkpoint.keep_every_epoch=false"]
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "dynapp.cli", "train", *COMMON, *extra, "optim.accumulation_steps=2", f"log.out_dir={ddp_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_from_config(load_config(None, COMMON + extra + ["optim.accumulation_steps=4", f"log.out_dir={one_dir}"]))
    a = load_checkpoint(ddp_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(one_dir / "checkpoints" / "last.pt")["model"]
    for name, p in a.items():
        if p.is_floating_point() and "running_" not in name:
            assert torch.allclose(p, b[name], atol=1e-5, rtol=0), name

    def log(path):
        with open(path, newline="") as f:
            return [{k: float(r[k]) for k in ("alpha", *DIAGNOSTICS)} for r in csv.DictReader(f)]

    rank0, rank1, single = log(ddp_dir / "train_log.csv"), log(ddp_dir / "train_log.rank1.csv"), log(one_dir / "train_log.csv")
    assert len(rank0) == len(single) == 3 and rank0 == rank1  # every process logs the same numbers
    for r0, r in zip(rank0, single):
        for k, v in r.items():
            assert r0[k] == pytest.approx(v, rel=1e-3, abs=1e-5), k
    assert all(0.001 <= r["alpha"] <= 0.999 for r in rank0)


# Real clips (tests/cluster_util.py: H.264 files, multi-scale crops and flips, 2 loader workers per
# process), 2 epochs of 2 steps, global batch 4 as 2 processes x 2 micro-batches or 1 x 4.
def _real(clips, out, *extra):
    return train_args(clips, out, "model.dropout=0", "optim.batch_size=4", "optim.epochs=2", "data.num_workers=2",
                      "eval.clips=2", "joint.strategy=mgda", *extra)


@pytest.fixture(scope="module")
def ddp_real(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_real")
    proc = subprocess.run(torchrun(*_real(clips, out, "optim.accumulation_steps=2")), capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_gloo_processes_match_one_on_real_clips_with_augmentation(clips, ddp_real, tmp_path):
    one = tmp_path / "one"
    run_from_config(load_config(None, _real(clips, one, "optim.accumulation_steps=4")))
    a, b = load_checkpoint(ddp_real / "checkpoints" / "last.pt"), load_checkpoint(one / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["world_size"] == 2 and b["world_size"] == 1
    floats = [k for k, v in a["model"].items() if v.is_floating_point() and "running_" not in k]
    assert len(floats) > 10
    for k in floats:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5, rtol=0), k
    alpha0, alpha1 = _alphas(ddp_real / "train_log.csv"), _alphas(ddp_real / "train_log.rank1.csv")
    assert len(alpha0) == 4 and alpha0 == alpha1  # every process takes the same alpha ...
    assert [float(x) for x in alpha0] == pytest.approx([float(x) for x in _alphas(one / "train_log.csv")], abs=1e-5)
    # ... and evaluation on 2 processes scores each of the 3 videos (x 2 views) exactly once
    two_eval, one_eval = (json.loads((d / "eval.json").read_text()) for d in (ddp_real, one))
    assert two_eval["video"]["count"] == 3 and two_eval["clip"]["count"] == 6
    for level in ("clip", "video"):
        for k in ("top1", "mean_class", "count"):
            assert two_eval[level][k] == pytest.approx(one_eval[level][k]), (level, k)


def test_preempting_one_torchrun_process_stops_all_at_the_same_step(clips, ddp_real, tmp_path):
    # SIGUSR1 to rank 1 only: the collective check makes rank 0 stop after the same step, both
    # exit 75, one line on rank 0; checkpoint.resume=auto under torchrun ends where ddp_real did.
    run = tmp_path / "run"
    # no loader workers here (ddp_real had 2 per process): the result does not depend on them
    args = _real(clips, run, "optim.accumulation_steps=2", "checkpoint.resume=auto", "data.num_workers=0")
    proc = subprocess.Popen(torchrun(*args, sleep_per_step=0.5), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for_rows(proc, run / "train_log.csv", 2)
    workers = torchrun_workers(proc.pid)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "exitcode  : 75" in err, err[-3000:]
    lines = [line for line in out.splitlines() if "preempted" in line]
    assert len(lines) == 1 and lines[0].startswith("preempted (a stop signal sent to another process): stopped after")
    step = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    last = [int(read_csv(run / name)[-1]["step"]) for name in ("train_log.csv", "train_log.rank1.csv")]
    assert last == [step, step] and 2 <= step < 4

    done = subprocess.run(torchrun(*args), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_bitwise_equal(final_model(ddp_real), final_model(run))
    for name in ("train_log.csv", "train_log.rank1.csv"):
        assert [r["alpha"] for r in read_csv(run / name)] == [r["alpha"] for r in read_csv(ddp_real / name)]
