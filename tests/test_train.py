"""The training loop: schedule, parameter groups, frozen BN, end-to-end runs, NaN stop, exact resume."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import fault_injection
from dynapp.config import load_config
from dynapp.engine.checkpoint import load_checkpoint
from dynapp.engine.run import run_from_config
from dynapp.engine.train import (
    NonFiniteLossError,
    build_param_groups,
    freeze_batchnorm,
    lr_at,
    set_train_mode,
)

# A tiny DA model on generated clips: PWTP (2 segments x 4 frames, 32 px) + a small 2D backbone.
TINY = [
    "data.dataset=random", "data.segments=2", "data.frames=4", "data.crop_size=32", "data.num_samples=8",
    "data.num_workers=0", "model.backbone=small2d", "model.backbone_kwargs.widths=[8,16,16,16]",
    "optim.batch_size=2", "optim.lr=0.05", "log.tensorboard=false", "log.progress=false", "eval.every_epochs=0",
]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lr_schedule_warmup_then_cosine():
    kw = dict(total_steps=100, warmup_steps=10, base_lr=1.0, min_lr=0.0, warmup_start_factor=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(5, **kw) == pytest.approx(0.55)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.5)
    assert lr_at(100, **kw) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    assert lr_at(0, total_steps=10, warmup_steps=0, base_lr=0.3) == pytest.approx(0.3)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.representation = nn.Linear(3, 3)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def test_param_groups_multipliers_and_no_decay_on_biases():
    groups = build_param_groups(_Toy(), weight_decay=1e-3, classifier_lr_mult=5, classifier_wd_mult=5,
                                representation_lr_mult=2, representation_wd_mult=1)
    by = {g["name"]: g for g in groups}
    assert by["head"]["lr_mult"] == 5 and by["head"]["weight_decay"] == pytest.approx(5e-3)
    assert by["head_no_decay"]["weight_decay"] == 0.0 and by["head_no_decay"]["lr_mult"] == 5
    assert by["representation"]["lr_mult"] == 2 and by["representation"]["weight_decay"] == pytest.approx(1e-3)
    assert by["backbone"]["lr_mult"] == 1 and by["backbone"]["weight_decay"] == pytest.approx(1e-3)
    assert all(p.ndim == 1 for p in by["backbone_no_decay"]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(_Toy().parameters()))


def test_freeze_batchnorm_keeps_the_first():
    model = _Toy()
    frozen = freeze_batchnorm(model.backbone)
    first, second = model.backbone[1], model.backbone[3]
    assert frozen == [second]
    set_train_mode(model, frozen_bn=frozen, freeze_representation=False)
    assert first.training and not second.training
    assert first.weight.requires_grad and not second.weight.requires_grad
    running = second.running_mean.clone()
    model.backbone(torch.randn(2, 3, 5, 5))
    assert torch.equal(second.running_mean, running)


def test_end_to_end_mgda_logs_and_checkpoint(tmp_path):
    cfg = load_config(None, TINY + ["optim.epochs=2", f"log.out_dir={tmp_path}", "eval.clips=2", "eval.every_epochs=1",
                                    "data.num_samples=6", "log.tensorboard=true", "joint.strategy=mgda"])
    result = run_from_config(cfg)
    rows = _read_csv(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    for r in rows:  # alpha, ENoPR and the recognition loss on every step
        assert 0.0 <= float(r["alpha"]) <= 1.0
        assert float(r["enopr"]) > 0 and math.isfinite(float(r["rec_loss"]))
    # the schedule: cosine from 0.05 down, per step
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(0.05) and all(b < a for a, b in zip(lrs, lrs[1:]))
    assert result["video"]["count"] == 1 and result["clip"]["count"] == 2
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and ck["epoch"] == 2 and ck["config"]["joint"]["strategy"] == "mgda"
    assert (tmp_path / "eval.json").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_separate_strategy_phases(tmp_path):
    cfg = load_config(None, TINY + ["optim.epochs=2", "joint.strategy=separate", "joint.separate_epochs=1",
                                    "checkpoint.keep_every_epoch=true", f"log.out_dir={tmp_path}"])
    torch.manual_seed(cfg.seed)
    run_from_config(cfg)
    e1 = load_checkpoint(tmp_path / "checkpoints" / "epoch_001.pt")["model"]
    e2 = load_checkpoint(tmp_path / "checkpoints" / "epoch_002.pt")["model"]
    pw = [k for k in e1 if k.startswith("representation.") and e1[k].is_floating_point()]
    bb = [k for k in e1 if k.startswith(("backbone.", "head.")) and e1[k].is_floating_point()]
    assert pw and bb
    # phase 2: PWTP frozen (parameters and BatchNorm statistics), the recogniser moves
    assert all(torch.equal(e1[k], e2[k]) for k in pw)
    assert any(not torch.equal(e1[k], e2[k]) for k in bb)
    rows = _read_csv(tmp_path / "train_log.csv")
    assert {float(r["alpha"]) for r in rows[:4]} == {1.0} and {float(r["alpha"]) for r in rows[4:]} == {0.0}


def test_statistics_are_all_reduced_once_per_optimiser_step(tmp_path, monkeypatch):
    from dynapp.engine import train as loop_module

    sizes = []
    real = loop_module.all_reduce_sum
    monkeypatch.setattr(loop_module, "all_reduce_sum", lambda t: sizes.append(t.numel()) or real(t))
    cfg = load_config(None, TINY + ["optim.epochs=1", "optim.batch_size=4", "optim.accumulation_steps=2",
                                    f"log.out_dir={tmp_path}"])
    run_from_config(cfg)
    steps = len(_read_csv(tmp_path / "train_log.csv"))
    assert steps >= 1 and sizes == [2 * 5 + 8] * steps  # 5 values of each micro-batch, PWTP's 8 diagnostics


def test_nan_loss_stops_cleanly(tmp_path, monkeypatch):
    fault_injection.install(nan_at_step=3, setattr=monkeypatch.setattr)
    cfg = load_config(None, TINY + ["optim.epochs=2", "checkpoint.every_steps=2", f"log.out_dir={tmp_path}"])
    last = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteLossError, match=rf"step 3 .*last good checkpoint: {last}"):
        run_from_config(cfg)
    ck = load_checkpoint(last)
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_loss_cli_message(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dynapp.cli import app

    fault_injection.install(nan_at_step=1, setattr=monkeypatch.setattr)
    res = CliRunner().invoke(app, ["train", *TINY, "optim.epochs=1", f"log.out_dir={tmp_path}"])
    assert res.exit_code == 1
    assert "non-finite loss at step 1 " in res.output and "none written yet" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def _final_params(out_dir: Path) -> dict:
    return load_checkpoint(out_dir / "checkpoints" / "last.pt")["model"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    # 3 epochs of 2 steps; a checkpoint every 3 steps lands mid-epoch, so the resume must restore
    # the position inside the epoch's shuffle as well as the schedule and the RNG (dropout).
    common = TINY + ["data.num_samples=4", "optim.epochs=3", "checkpoint.every_steps=3", "deterministic=true",
                     "model.dropout=0.3", "optim.warmup_epochs=1"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run_from_config(load_config(None, common + [f"log.out_dir={ref_dir}"]))

    cmd = [sys.executable, "-m", "dynapp.cli", "train", *common, f"log.out_dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    slow = fault_injection.command("train", *common, f"log.out_dir={run_dir}", sleep_per_step=0.3)
    proc = subprocess.Popen(slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    log = run_dir / "train_log.csv"
    deadline = time.time() + 90
    while time.time() < deadline:  # kill after step 4: a checkpoint exists at step 3, the next would be 6
        if log.exists() and len(_read_csv(log)) >= 4:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ck["step"] == 3 and ck["batch_in_epoch"] == 1

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    ref, got = _final_params(ref_dir), _final_params(run_dir)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    # the rows the killed run logged after its checkpoint are replaced, not repeated
    assert [int(r["step"]) for r in _read_csv(log)] == list(range(1, 7))
    assert "resumed from" in done.stdout and "at step 3" in done.stdout


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    cfg = load_config(None, TINY + [f"log.out_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_from_config(cfg, resume=True)


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path):
    cfg = load_config(None, TINY + ["optim.epochs=1", "max_steps=1", f"log.out_dir={tmp_path}"])
    run_from_config(cfg)
    with pytest.raises(ValueError, match="--resume"):
        run_from_config(cfg)
    run_from_config(load_config(None, TINY + ["optim.epochs=1", "max_steps=2", f"log.out_dir={tmp_path}"]),
                    resume=True)
    assert [int(r["step"]) for r in _read_csv(tmp_path / "train_log.csv")] == [1, 2]


def test_train_and_eval_cli_on_generated_video_files(tmp_path):
    import json

    import numpy as np
    from typer.testing import CliRunner

    from dynapp.cli import app
    from dynapp.data.encode import write_video

    rng = np.random.default_rng(0)
    root = tmp_path / "videos"
    for i in range(6):  # root/<class>/<video>.mp4, the "folder" layout (1 of 3 per class held out)
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        texture = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
        frames = np.stack([np.roll(texture, (i % 2 + 1) * t, axis=1)[:, :64] for t in range(16)])  # (T, H, W, 3)
        write_video(folder / f"v{i}.mp4", frames)
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "data.dataset=folder", f"data.root={root}", "data.segments=2", "data.frames=4",
                              "data.crop_size=32", "data.num_workers=0", "model.backbone=small2d",
                              "model.backbone_kwargs.widths=[8,8,8,8]", "optim.batch_size=2", "optim.epochs=1",
                              "eval.every_epochs=1", f"log.out_dir={out}", "log.tensorboard=false", "log.progress=false"])
    assert res.exit_code == 0, res.output
    assert len(_read_csv(out / "train_log.csv")) == 2
    res = runner.invoke(app, ["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--views", "2x3",
                              "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["video"]["count"] == 2 and result["clip"]["count"] == 2 * 2 * 3
    assert result["views"] == "2x3" and 0.0 <= result["video"]["top1"] <= 100.0
    bad = runner.invoke(app, ["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--views", "2by3"])
    assert bad.exit_code == 1 and "CLIPSxCROPS" in bad.output


@pytest.mark.parametrize("strategy", ["constant", "scheduler"])
def test_weighted_strategies_log_their_alpha(strategy, tmp_path):
    from dynapp.joint import scheduler_alpha

    cfg = load_config(None, TINY + ["optim.epochs=1", f"joint.strategy={strategy}", "joint.alpha=0.9",
                                    "joint.gamma=0.5", "joint.lam=0.3", "checkpoint.enabled=false",
                                    f"log.out_dir={tmp_path}"])
    run_from_config(cfg)
    alphas = [float(r["alpha"]) for r in _read_csv(tmp_path / "train_log.csv")]
    expected = [0.9] * 4 if strategy == "constant" else [scheduler_alpha(m, 4, gamma=0.5, lam=0.3) for m in range(1, 5)]
    assert alphas == pytest.approx(expected)


def test_init_from_checkpoint_skips_a_different_head(tmp_path):
    from dynapp.engine.run import init_model_from
    from dynapp.model import build_model

    run_from_config(load_config(None, TINY + ["optim.epochs=1", "data.num_classes=4", f"log.out_dir={tmp_path}"]))
    source = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    model = build_model(representation="pwtp", backbone="small2d", num_classes=3, segments=2, frames=4,
                        backbone_kwargs={"widths": [8, 16, 16, 16]})
    skipped = init_model_from(model, tmp_path / "checkpoints" / "last.pt")
    assert skipped == ["head.bias", "head.weight"]
    state = model.state_dict()
    for k, v in source.items():
        if not k.startswith("head."):
            assert torch.equal(state[k], v), k


def test_mgda_normalize_runs_and_logs_alpha(tmp_path):
    cfg = load_config(None, TINY + ["optim.epochs=1", "joint.strategy=mgda", "joint.normalize=loss+", "checkpoint.enabled=false",
                                    f"log.out_dir={tmp_path}"])
    run_from_config(cfg)
    alphas = [float(r["alpha"]) for r in _read_csv(tmp_path / "train_log.csv")]
    assert len(alphas) == 4 and all(0.0 <= a <= 1.0 for a in alphas)


def test_joint_normalize_is_validated():
    from dynapp.config import ConfigError

    with pytest.raises(ConfigError, match="joint.normalize: expected none, l2, loss, loss\\+, got 'max'"):
        load_config(None, ["joint.normalize=max"])
    assert load_config(None, []).joint.normalize == "none"  # with joint.strategy=mgda: the paper's Eq. 12 as printed


def test_checkpoint_carries_class_names(tmp_path):
    # a dataset with class names (the generated actions) stores them; noise clips have none
    named = TINY[1:] + ["data.dataset=synthetic", "data.dataset_kwargs.num_classes=3", "data.dataset_kwargs.num_train=6",
                        "data.dataset_kwargs.num_test=3", "optim.epochs=1", "max_steps=1", f"log.out_dir={tmp_path / 'a'}"]
    run_from_config(load_config(None, named))
    ck = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert ck["classes"] == ["move_left", "move_right", "move_up"]
    run_from_config(load_config(None, TINY + ["optim.epochs=1", "max_steps=1", f"log.out_dir={tmp_path / 'b'}"]))
    assert "classes" not in load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")


def test_separate_under_two_processes_matches_one_process(tmp_path):
    # separate's first phase runs PWTP alone through its own DDP wrapper (DDP averages Theta1's
    # gradient): 2 gloo processes x 2 accumulated micro-batches equal 1 process x 4 micro-batches
    common = TINY[:4] + ["data.num_samples=8", "data.num_workers=0", "model.backbone=small2d",
                         "model.backbone_kwargs.widths=[8,8,8,8]", "model.dropout=0", "optim.batch_size=4",
                         "optim.lr=0.2", "optim.epochs=2", "log.tensorboard=false", "log.progress=false",
                         "eval.every_epochs=0", "device=cpu", "joint.strategy=separate", "checkpoint.keep_every_epoch=true"]
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "dynapp.cli",
           "train", *common, "optim.accumulation_steps=2", f"log.out_dir={ddp_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_from_config(load_config(None, common + ["optim.accumulation_steps=4", f"log.out_dir={one_dir}"]))
    a = load_checkpoint(ddp_dir / "checkpoints" / "epoch_001.pt")["model"]
    b = load_checkpoint(one_dir / "checkpoints" / "epoch_001.pt")["model"]
    compared = [k for k, v in a.items() if v.is_floating_point() and "running_" not in k]
    assert any(k.startswith("representation.") for k in compared)
    for k in compared:  # BatchNorm running statistics are per process
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    # phase 2 (PWTP frozen in eval mode, so its per-process BatchNorm statistics -- process 0's
    # after the broadcast -- shape its output: the recognisers differ slightly, PWTP not at all)
    a2 = load_checkpoint(ddp_dir / "checkpoints" / "epoch_002.pt")["model"]
    assert all(torch.equal(a[k], a2[k]) for k in a if k.startswith("representation."))
    alphas = [float(r["alpha"]) for r in _read_csv(ddp_dir / "train_log.csv")]
    assert alphas == [1.0, 1.0, 0.0, 0.0]


# ---- GPU options: config validation and CPU-checkable plumbing; the rest runs only with CUDA ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_gpu_options_are_validated():
    from dynapp.config import ConfigError

    with pytest.raises(ConfigError, match="optim.amp_dtype: expected float16, bfloat16, got 'float32'"):
        load_config(None, ["optim.amp_dtype=float32"])
    with pytest.raises(ConfigError, match="model.compile: expected true/false"):
        load_config(None, ["model.compile=yes please"])
    cfg = load_config(None, ["optim.amp_dtype=bfloat16", "model.channels_last=true", "model.compile=true"])
    assert (cfg.optim.amp_dtype, cfg.model.channels_last, cfg.model.compile) == ("bfloat16", True, True)
    default = load_config(None, [])
    assert (default.optim.amp_dtype, default.model.channels_last, default.model.compile) == ("float16", False, False)


def test_autocast_dtype_only_on_cuda():
    from dynapp.engine.train import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(True, "float16", cpu) is None and autocast_dtype(True, "bfloat16", cpu) is None
    assert autocast_dtype(False, "float16", torch.device("cuda")) is None
    assert autocast_dtype(True, "float16", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="amp_dtype"):
        autocast_dtype(True, "float32", torch.device("cuda"))


def test_pinned_memory_for_cuda_only():
    from dynapp.engine.distributed import train_sampler
    from dynapp.engine.train import TrainState, _epoch_loader

    data = [(torch.zeros(3), 0)] * 4
    for device, pinned in ((torch.device("cpu"), False), (torch.device("cuda"), True)):
        loader = _epoch_loader(data, train_sampler(data, seed=0), TrainState(), batch_size=2, num_workers=0, seed=0,
                               device=device)
        assert loader.pin_memory is pinned


@pytest.mark.parametrize("backbone", ["small2d", "small3d", "x3d_xs"])
def test_channels_last_gives_the_same_training_step(backbone):
    # channels-last is a memory layout: on CPU too, one SGD step gives the same weights
    from dynapp.config import OptimConfig
    from dynapp.engine.train import build_optimizer, prepare_model
    from dynapp.model import build_model

    kwargs = {"backbone_kwargs": {"widths": [8, 8, 8, 8]}} if backbone.startswith("small") else {}
    clip = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))  # (N, C, S*T, H, W)
    label = torch.tensor([0, 1])
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(representation="pwtp", backbone=backbone, num_classes=2, segments=2, frames=4,
                            dropout=0.0, **kwargs)
        prepare_model(model, channels_last=channels_last)
        formats = {4: torch.channels_last, 5: torch.channels_last_3d} if channels_last else {}
        converted = [p for p in model.parameters() if p.dim() in formats]
        assert all(p.is_contiguous(memory_format=formats[p.dim()]) for p in converted)
        assert converted or not channels_last
        opt = build_optimizer(model, OptimConfig(lr=0.1))
        out = model(clip)
        (nn.functional.cross_entropy(out.logits, label) + out.aux_loss).backward()
        opt.step()
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=1e-5, rtol=1e-4), k


def _cuda_run(tmp_path, *extra):
    cfg = load_config(None, TINY + ["optim.epochs=1", "max_steps=2", "device=cuda", f"log.out_dir={tmp_path}", *extra])
    run_from_config(cfg)
    rows = _read_csv(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2] and all(math.isfinite(float(r["rec_loss"])) for r in rows)
    return load_checkpoint(tmp_path / "checkpoints" / "last.pt")


@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_amp_dtypes(dtype, tmp_path):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    ck = _cuda_run(tmp_path, "optim.amp=true", f"optim.amp_dtype={dtype}")
    assert bool(ck["scaler"]) == (dtype == "float16")  # a GradScaler only for float16
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@cuda
def test_cuda_channels_last_and_compile(tmp_path):
    ck = _cuda_run(tmp_path / "cl", "model.channels_last=true")
    ck2 = _cuda_run(tmp_path / "compiled", "model.compile=true")
    assert ck["model"].keys() == ck2["model"].keys()  # compiling the backbone keeps the state-dict keys
    assert not any("_orig_mod" in k for k in ck2["model"])


@cuda
def test_cuda_matches_cpu_in_full_precision(tmp_path):
    common = TINY + ["optim.epochs=1", "max_steps=2", "optim.amp=false", "deterministic=true", "model.dropout=0"]
    run_from_config(load_config(None, common + ["device=cpu", f"log.out_dir={tmp_path / 'cpu'}"]))
    run_from_config(load_config(None, common + ["device=cuda", f"log.out_dir={tmp_path / 'gpu'}"]))
    a, b = _final_params(tmp_path / "cpu"), _final_params(tmp_path / "gpu")
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k].cpu(), atol=1e-4, rtol=1e-3), k


class _SlowClips(torch.utils.data.Dataset):
    """Items of another dataset, each after a pause: a loader slower than the model."""

    def __init__(self, dataset, seconds: float):
        self.dataset, self.seconds = dataset, seconds

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return self.dataset[i]


def test_the_log_tells_the_share_of_each_step_spent_waiting_for_data(tmp_path):
    from dynapp.config import CheckpointConfig, LogConfig, OptimConfig
    from dynapp.data.noise import RandomClips
    from dynapp.engine.train import train
    from dynapp.model import build_model

    clips = RandomClips(num_videos=6, num_classes=2, segments=2, frames=4, crop_size=32, seed=0)
    waits = {}
    for name, dataset in (("fast", clips), ("slow", _SlowClips(clips, 0.25))):
        torch.manual_seed(0)
        model = build_model(representation="pwtp", backbone="small2d", num_classes=2, segments=2, frames=4,
                            backbone_kwargs={"widths": [8, 16, 16, 16]})
        train(model, dataset, optim=OptimConfig(epochs=1, batch_size=2, lr=0.01),
              log=LogConfig(out_dir=str(tmp_path / name), tensorboard=False, progress=False),
              checkpoint=CheckpointConfig(enabled=False))
        rows = _read_csv(tmp_path / name / "train_log.csv")
        waits[name] = [float(r["data_wait"]) for r in rows]
        assert len(rows) == 3 and all(0.0 <= w <= 1.0 for w in waits[name])
    # the slow loader: 0.5 s of waiting per batch of 2 against a step of a few ms
    assert min(waits["slow"]) > 0.5
    assert max(waits["fast"]) < min(waits["slow"])


def test_enopr_weight_scales_l1_for_the_strategy_and_the_log_keeps_enopr(tmp_path):
    """joint.enopr_weight = w: the strategy sees w * ENoPR (Eq. 12 then picks another alpha), the log ENoPR."""
    logs = {}
    for w in ("1", "100"):
        cfg = load_config(None, TINY + ["optim.epochs=1", "joint.strategy=mgda", f"joint.enopr_weight={w}",
                                        "checkpoint.enabled=false",
                                        f"log.out_dir={tmp_path / w}"])
        run_from_config(cfg)
        logs[w] = _read_csv(tmp_path / w / "train_log.csv")
    # the first step's forward pass is the same: the same ENoPR is logged
    assert float(logs["1"][0]["enopr"]) == pytest.approx(float(logs["100"][0]["enopr"]))
    # a larger L1 has a larger gradient, and min-norm favours the smaller one: alpha never rises
    assert all(float(a["alpha"]) <= float(b["alpha"]) for a, b in zip(logs["100"], logs["1"]))
    assert float(logs["100"][0]["g1_norm"]) == pytest.approx(100 * float(logs["1"][0]["g1_norm"]), rel=1e-4)
    from dynapp.config import ConfigError

    with pytest.raises(ConfigError, match="joint.enopr_weight: expected > 0"):
        load_config(None, ["joint.enopr_weight=0"])
