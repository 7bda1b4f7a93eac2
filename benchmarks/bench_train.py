"""Time per training step: DA against RGB like for like, MGDA against a constant alpha, and whether
training is input-bound.

* **DA over RGB** (``da_over_rgb``): the same backbone and the same number of frames into it --
  X3D-XS with 4 RGB frames against 4 DA frames from 4 x 8 (S=4, T=8), TSM-R50 with 8 RGB frames
  against 8 DA frames from 8 x 6 -- one full step each (forward, loss, backward, SGD step).
  DA's step is joint training with a constant alpha (one backward of alpha ENoPR + (1 - alpha)
  cross-entropy); the paper counts +0.5% FLOPs for DA on TSM.  Goal: ``da_over_rgb <= 1.05``.
* **MGDA over constant** (``mgda_over_constant``): the DA step with MGDA (Eq. 12, Algorithm 1:
  one extra backward of ENoPR through PWTP alone) against the constant-alpha step.  Target <= 1.10.
* **Input-bound** (``input_bound``): training DA X3D-XS on generated H.264 videos
  (``--input-workers`` loader workers, uint8 clips, TSN, multi-scale crop, flip) against the same
  step on a batch already in memory.  Two fed figures, in alternating rounds with the in-memory
  one: the benchmark's step fed by a DataLoader (the loader alone), and end to end,
  ``dynapp train`` itself in a subprocess (its loop and logging, a fresh loader per epoch, worker
  start included; its second epoch, the first warms the process up), whose samples/s and share
  of time waiting for data (``data_wait``) come from its ``train_log.csv``: overall, and the
  median step between epoch starts (what an epoch of thousands of steps sees).  Input-bound when
  that median step waits for data more than 5% of its time.  On a CPU the loader's workers and
  the model share the cores, so a fed step can be slower than the step in memory without waiting.

Each step is the one of ``dynapp.engine.train`` (the ``dynapp.joint`` strategy's ``backward`` and
``after_backward``, gradient clipping, SGD); the clips are uint8 ``(N, 3, S*T, H, W)`` as the Dataset makes them, so
normalisation on the device is included.  The compared steps run in alternating rounds after
warm-up steps (machine load hits them alike); medians are reported.  ``--device cuda``,
``--compile`` (``torch.compile`` of the backbone), ``--amp bf16|fp16`` (autocast; fp16 with a
GradScaler) and ``--channels-last`` change how the step runs, not what is printed.  Prints a table,
then one JSON line::

    {"ms_per_step": {"x3d_xs": {"rgb": .., "da": .., "da_mgda": ..}, "tsm_resnet50": {..}},
     "da_over_rgb": {..}, "mgda_over_constant": {..}, "g1_backward_ms": {..}, "input_bound": {..}, "config": {..}}

Example: ``.venv/bin/python benchmarks/bench_train.py`` (defaults: 112 px, batch 2, CPU; on a GPU
``--device cuda --crop 224 --batch 8 --amp bf16``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench_data import make_videos  # benchmarks/bench_data.py: the same generated videos
from dynapp.data import build_dataset
from dynapp.engine.train import build_param_groups
from dynapp.joint import build_strategy, theta1_parameters
from dynapp.model import build_model

# backbone -> (RGB segments, DA segments, DA frames per segment): the same frames into the backbone
PAIRS = {"x3d_xs": (4, 4, 8), "tsm_resnet50": (8, 8, 6)}
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def to_channels_last(model: nn.Module) -> nn.Module:
    """4-D weights to channels_last, 5-D ones to channels_last_3d (X3D)."""
    for p in model.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        elif p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model


def build(representation: str, backbone: str, segments: int, frames: int, args, device) -> nn.Module:
    model = build_model(representation=representation, backbone=backbone, num_classes=args.classes,
                        segments=segments, frames=frames, dropout=0.5).to(device)
    if args.channels_last:
        to_channels_last(model)
    if args.compile:
        model.backbone = torch.compile(model.backbone)
    return model.train()


def make_step(model: nn.Module, strategy: str, device: torch.device, amp: str, alpha: float = 0.5):
    """One training step on a given batch, as the loop does it; returns ``step(clip, label)``."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(build_param_groups(model, weight_decay=1e-4, classifier_lr_mult=5, classifier_wd_mult=5),
                                lr=1e-3, momentum=0.9)
    joint = build_strategy(strategy, theta1_parameters(model), total_steps=1, alpha=alpha)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    dtype = AMP[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step(clip: torch.Tensor, label: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(clip)
            rec = criterion(out.logits.float(), label)
        joint.backward(rec, out.aux_loss, step=0, scale=scaler.scale)
        joint.after_backward()  # MGDA: Theta1's gradient by Eq. 12, on the scaled gradients
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 20.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    tic = time.perf_counter()
    fn()
    sync(device)
    return 1000.0 * (time.perf_counter() - tic)


def batch(segments: int, frames: int, args, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (args.batch, 3, segments * frames, args.crop, args.crop), dtype=torch.uint8, generator=g)
    label = torch.randint(0, args.classes, (args.batch,), generator=g)
    return clip.to(device), label.to(device)  # (N, C, S*T, H, W) uint8, as the Dataset gives it


def compare(steps: dict, inputs: dict, args, device) -> dict[str, list[float]]:
    """ms of each step in alternating rounds after warm-up."""
    for _ in range(args.warmup):
        for name, step in steps.items():
            step(*inputs[name])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(list(steps)))
        for name in order:
            times[name].append(timed(lambda name=name: steps[name](*inputs[name]), device))
    return times


def input_bound(args, device) -> dict:
    """Training DA X3D-XS on generated videos against its step on a batch in memory.

    Alternating rounds of three passes over the videos: the benchmark's step fed by a DataLoader,
    the same step on one batch kept in memory, and one epoch of ``dynapp train`` (a subprocess).
    """
    S, T = PAIRS["x3d_xs"][1:]
    model = build("pwtp", "x3d_xs", S, T, args, device)
    step = make_step(model, "constant", device, args.amp)
    with tempfile.TemporaryDirectory() as tmp:
        make_videos(Path(tmp), args.input_videos, 150, 240, 320)
        ds = build_dataset("folder", tmp, train=True, segments=S, frames=T, crop_size=args.crop)
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.input_workers,
                            persistent_workers=args.input_workers > 0, pin_memory=device.type == "cuda",
                            drop_last=True)
        memory = next(iter(loader))
        mem = (memory[0].to(device), memory[1].to(device))

        def fed_pass() -> float:
            n, tic = 0, time.perf_counter()
            for clip, label, _ in loader:
                step(clip.to(device, non_blocking=True), label.to(device, non_blocking=True))
                n += clip.shape[0]
            sync(device)
            return n / (time.perf_counter() - tic)

        def memory_pass() -> float:
            n, tic = 0, time.perf_counter()
            for _ in range(len(loader)):
                step(*mem)
                n += mem[0].shape[0]
            sync(device)
            return n / (time.perf_counter() - tic)

        fed_pass()  # warm-up: starts the workers
        passes = {"fed": fed_pass, "alone": memory_pass, "train": lambda: train_epoch(Path(tmp), S, T, args)}
        results: dict[str, list] = {name: [] for name in passes}
        for r in range(args.input_rounds):
            for name in (list(passes) if r % 2 == 0 else list(reversed(list(passes)))):
                results[name].append(passes[name]())
    f, a = statistics.median(results["fed"]), statistics.median(results["alone"])
    steps = [row for rows in results["train"] for row in rows]  # (samples, seconds, seconds waiting for data)
    samples, seconds, waited = (sum(row[i] for row in steps) for i in range(3))
    e2e = samples / seconds  # epoch starts included
    between = [row for rows in results["train"] for row in rows[1:]]  # the steps after each epoch's first
    steady = statistics.median(row[0] / row[1] for row in between)
    steady_wait = statistics.median(row[2] / row[1] for row in between)
    return {"model": "da x3d_xs", "workers": args.input_workers, "fed_samples_per_s": round(f, 2),
            "in_memory_samples_per_s": round(a, 2), "fed_over_in_memory": round(f / a, 3),
            "train_samples_per_s": round(e2e, 2), "train_data_wait": round(waited / seconds, 3),
            "train_steady_samples_per_s": round(steady, 2), "train_steady_data_wait": round(steady_wait, 4),
            "train_over_in_memory": round(e2e / a, 3), "train_steady_over_in_memory": round(steady / a, 3),
            "train_steps": len(steps), "input_bound": steady_wait > 0.05}


def train_epoch(videos: Path, segments: int, frames: int, args) -> list[tuple[float, float, float]]:
    """``dynapp train`` on ``videos`` in a subprocess: the model, strategy, batch and torch threads
    of the in-memory step, ``--input-workers`` loader workers, two epochs.  Returns the steps of the
    second (the first warms up the fresh process) from ``train_log.csv`` as (samples, seconds,
    seconds waiting for data)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONWARNINGS="ignore")
    amp_dtype = "bfloat16" if args.amp == "bf16" else "float16"
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "dynapp.cli", "train", "data.dataset=folder", f"data.root={videos}",
               "model.representation=pwtp", "model.backbone=x3d_xs", f"data.segments={segments}",
               f"data.frames={frames}", f"data.crop_size={args.crop}", f"data.num_workers={args.input_workers}",
               f"optim.batch_size={args.batch}", "optim.epochs=2", "joint.strategy=constant", "eval.every_epochs=0",
               "eval.batch_size=8", "log.tensorboard=false", "log.progress=false", "checkpoint.enabled=false",
               f"device={args.device}", f"log.out_dir={out}", f"optim.amp={str(args.amp != 'none').lower()}",
               f"optim.amp_dtype={amp_dtype}", f"model.compile={str(args.compile).lower()}",
               f"model.channels_last={str(args.channels_last).lower()}"]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(Path(out) / "train_log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    steps = []
    for row in rows[len(rows) // 2:]:
        seconds = args.batch / float(row["samples_per_s"])
        steps.append((args.batch, seconds, seconds * float(row["data_wait"])))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=174)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; each times one step of each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--amp", default="none", choices=list(AMP))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--input-workers", type=int, default=1, help="DataLoader workers of the input-bound check")
    parser.add_argument("--input-videos", type=int, default=16, help="0 skips the input-bound check")
    parser.add_argument("--input-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    ms: dict = {}
    out: dict = {"ms_per_step": ms, "da_over_rgb": {}, "mgda_over_constant": {}, "g1_backward_ms": {}}
    print(f"device={device} crop={args.crop} batch={args.batch} threads={torch.get_num_threads()} amp={args.amp} "
          f"compile={args.compile} channels_last={args.channels_last}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} (shared machine: compare rows of one run)")
    print(f"{'backbone':<13} {'step':<9} {'frames in':<10} {'median ms':>10} {'min':>9} {'max':>9}")
    for backbone in args.pairs:
        s_rgb, s_da, t_da = PAIRS[backbone]
        rgb = build("rgb", backbone, s_rgb, 1, args, device)
        da = build("pwtp", backbone, s_da, t_da, args, device)
        steps = {"rgb": make_step(rgb, "constant", device, args.amp), "da": make_step(da, "constant", device, args.amp),
                 "da_mgda": make_step(da, "mgda", device, args.amp)}
        inputs = {"rgb": batch(s_rgb, 1, args, device), "da": batch(s_da, t_da, args, device)}
        inputs["da_mgda"] = inputs["da"]
        times = compare(steps, inputs, args, device)
        med = {k: statistics.median(v) for k, v in times.items()}
        # the extra work of MGDA on its own: the backward of ENoPR through PWTP alone (after a forward)
        theta1 = theta1_parameters(da)
        g1 = []
        for _ in range(args.rounds):
            aux = da.representation(inputs["da"][0]).aux_loss
            g1.append(timed(lambda aux=aux: torch.autograd.grad(aux, theta1), device))
        ms[backbone] = {k: round(v, 2) for k, v in med.items()}
        out["da_over_rgb"][backbone] = round(med["da"] / med["rgb"], 4)
        out["mgda_over_constant"][backbone] = round(med["da_mgda"] / med["da"], 4)
        out["g1_backward_ms"][backbone] = round(statistics.median(g1), 2)
        desc = {"rgb": f"{s_rgb} RGB", "da": f"{s_da} DA ({s_da}x{t_da})", "da_mgda": f"{s_da} DA, MGDA"}
        for k in steps:
            print(f"{backbone:<13} {k:<9} {desc[k]:<10} {med[k]:>10.1f} {min(times[k]):>9.1f} {max(times[k]):>9.1f}")
        print(f"{backbone:<13} da / rgb = {out['da_over_rgb'][backbone]:.3f} (goal <= 1.05), mgda / constant = "
              f"{out['mgda_over_constant'][backbone]:.3f} (target <= 1.10), g1 backward {out['g1_backward_ms'][backbone]:.1f} ms")
        del rgb, da, steps, inputs
    if args.input_videos:
        out["input_bound"] = ib = input_bound(args, device)
        print(f"input-bound check, DA X3D-XS, {ib['workers']} loader worker(s): {ib['in_memory_samples_per_s']:.2f} "
              f"samples/s on a batch in memory; fed by the loader {ib['fed_samples_per_s']:.2f} (ratio "
              f"{ib['fed_over_in_memory']:.2f}); `dynapp train` end to end {ib['train_samples_per_s']:.2f} with "
              f"epoch starts (ratio {ib['train_over_in_memory']:.2f}, {100 * ib['train_data_wait']:.0f}% of its time "
              f"waiting for data), {ib['train_steady_samples_per_s']:.2f} between them (ratio "
              f"{ib['train_steady_over_in_memory']:.2f}, {100 * ib['train_steady_data_wait']:.1f}% waiting for data: "
              f"{'input-bound' if ib['input_bound'] else 'not input-bound'})")
    config = {k: getattr(args, k) for k in ("crop", "batch", "rounds", "device", "compile", "amp", "channels_last")}
    config.update(threads=torch.get_num_threads(), cpus=os.cpu_count(), load_average=round(os.getloadavg()[0], 1))
    if device.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(device)
    out["config"] = config
    print(json.dumps(out))


if __name__ == "__main__":
    main()
