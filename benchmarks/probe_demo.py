"""Training-budget and headroom probe behind the demo's defaults (docs/demo.md).

Trains every input (``--inputs``, default the four the paper compares: rgb, rgb_diff,
dynamic_image, pwtp) with the demo's backbone on the UNBIASED synthetic data for each candidate
benchmark, and prints the VALIDATION accuracies (never the test clips': a benchmark chosen on
them would bias the study that reports them) and the training time.  The rule (docs/demo.md)
looks only at learnability and headroom -- the best input's accuracy, whichever input it is,
in [60, 90)%, and RGB at least twice chance; then the fewest steps -- never at which input is
best.

    PYTHONPATH=src .venv/bin/python benchmarks/probe_demo.py [--backbone small_tsm] [--candidates NAME ...]

Prints a table and, as the last line, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from dynapp.apps.demo import INPUTS, DemoConfig, build_demo_data, build_demo_val, train_and_evaluate

# Overrides of the old default (8 classes, 32 px, 960 clips, 12 epochs, static distractors only).
CANDIDATES = {
    "base": dict(),
    "small": dict(actor_scale=(0.05, 0.08)),
    "shake1": dict(shake=1.0),
    "small_e6": dict(actor_scale=(0.05, 0.08), epochs=6),
    "move2": dict(moving_distractors=2),
    "small_move2_e6": dict(actor_scale=(0.05, 0.08), moving_distractors=2, epochs=6),
    "move1_e6": dict(moving_distractors=1, epochs=6),  # the default since the probe
}
OLD_DEFAULT = dict(actor_scale=(0.09, 0.14), moving_distractors=0, shake=0.0, epochs=12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", default=",".join(INPUTS[:4]))
    p.add_argument("--backbone", default="small_tsm")
    p.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    inputs = [n for n in a.inputs.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.candidates:
            cfg = replace(DemoConfig(), settings=("unbiased",), backbone=a.backbone, **{**OLD_DEFAULT, **CANDIDATES[name]})
            tic = time.perf_counter()
            train_sets, test = build_demo_data(cfg, a.seed)
            val = build_demo_val(cfg, a.seed)
            for rep in inputs:
                r = train_and_evaluate(cfg, rep, train_sets["unbiased"], test, val_set=val,
                                       out_dir=Path(tmp) / name / rep, seed=a.seed)
                rows.append({"candidate": name, "backbone": a.backbone, "input": rep, "val_accuracy": round(r["val_accuracy"], 1),
                             "chance": round(100 / cfg.num_classes, 1), "train_s": round(r["train_s"], 1),
                             "total_s": round(time.perf_counter() - tic, 1), "steps": r["steps"]})
                print(f"{name:<16} {a.backbone:<9} {rep:<14} val acc {r['val_accuracy']:5.1f}% (chance {100 / cfg.num_classes:.1f}%)  "
                      f"train {r['train_s']:.0f} s  {r['steps']} steps", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
