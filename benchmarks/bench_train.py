"""Time per training step: joint training with MGDA versus a constant alpha, same model and batch.

The step is the one of ``dynapp.engine.train.train_one_epoch``: forward, the joint backward (the
``backward`` of the ``dynapp.joint`` strategy), for MGDA the combination of the Theta1 gradients
(its ``after_backward``: Eq. 12, Algorithm 1), gradient clipping and the SGD step.  ``constant``
does one backward of the weighted objective; ``mgda`` does one backward of the recognition loss plus a backward of ENoPR
through PWTP alone.  The two strategies are timed in alternating rounds (so machine load hits
both alike) after warm-up steps; medians are reported.  Prints a table, then one JSON line::

    {"ms_per_step": {"constant": ..., "mgda": ...}, "g1_backward_ms": ..., "mgda_over_constant": ..., "config": {...}}

Target: mgda_over_constant <= 1.10.
Example: ``.venv/bin/python benchmarks/bench_train.py`` (defaults: DA X3D-XS, S=4 segments of
T=8 frames, 112 px, batch 2, CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from dynapp.engine.train import build_param_groups
from dynapp.joint import build_strategy, theta1_parameters
from dynapp.model import build_model


def make_step(model: nn.Module, strategy: str, clip: torch.Tensor, label: torch.Tensor, alpha: float = 0.5):
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.SGD(build_param_groups(model, weight_decay=1e-4, classifier_lr_mult=5, classifier_wd_mult=5),
                                lr=1e-3, momentum=0.9)
    joint = build_strategy(strategy, theta1_parameters(model), total_steps=1, alpha=alpha)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step() -> float:
        out = model(clip)
        rec = criterion(out.logits, label)
        joint.backward(rec, out.aux_loss, step=0)
        a = joint.after_backward()
        torch.nn.utils.clip_grad_norm_(params, 20.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return a

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="x3d_xs", help="x3d_xs, small3d, small2d, ...")
    parser.add_argument("--segments", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=174)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; each times one step of each")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone=args.backbone, num_classes=args.classes,
                        segments=args.segments, frames=args.frames, dropout=0.5)
    model.train()
    clip = torch.randn(args.batch, 3, args.segments * args.frames, args.crop, args.crop)  # (N, C, S*T, H, W)
    label = torch.randint(0, args.classes, (args.batch,))
    steps = {s: make_step(model, s, clip, label) for s in ("constant", "mgda")}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {s: [] for s in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(list(steps)))
        for s in order:
            tic = time.perf_counter()
            steps[s]()
            times[s].append(1000.0 * (time.perf_counter() - tic))
    # the extra work of MGDA on its own: the backward of ENoPR through PWTP alone (after a forward)
    theta1 = theta1_parameters(model)
    g1_ms = []
    for _ in range(args.rounds):
        aux = model.representation(clip).aux_loss
        tic = time.perf_counter()
        torch.autograd.grad(aux, theta1)
        g1_ms.append(1000.0 * (time.perf_counter() - tic))
    med = {s: statistics.median(v) for s, v in times.items()}
    ratio = med["mgda"] / med["constant"]
    n1 = sum(p.numel() for p in theta1_parameters(model))
    n = sum(p.numel() for p in model.parameters())
    print(f"DA {args.backbone}: S={args.segments} T={args.frames} crop={args.crop} batch={args.batch} "
          f"threads={torch.get_num_threads()} Theta1={n1} params, model={n} params, CPU")
    print(f"{'strategy':<10} {'median ms/step':>15} {'min':>9} {'max':>9}")
    for s in steps:
        print(f"{s:<10} {med[s]:>15.1f} {min(times[s]):>9.1f} {max(times[s]):>9.1f}")
    print(f"{'(g1 only)':<10} {statistics.median(g1_ms):>15.1f} {min(g1_ms):>9.1f} {max(g1_ms):>9.1f}"
          "   backward of ENoPR through PWTP alone")
    print(f"mgda / constant = {ratio:.3f} (target <= 1.10)")
    config = {k: getattr(args, k) for k in ("backbone", "segments", "frames", "crop", "batch", "rounds")}
    config["threads"] = torch.get_num_threads()
    print(json.dumps({"ms_per_step": {s: round(v, 2) for s, v in med.items()},
                      "g1_backward_ms": round(statistics.median(g1_ms), 2), "mgda_over_constant": round(ratio, 4),
                      "config": config}))


if __name__ == "__main__":
    main()
