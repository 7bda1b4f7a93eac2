"""Training-budget probe behind the demo's defaults (docs/demo.md).

Trains ONE motion-aware input (RGB difference by default: cheap and parameter-free) on the
unbiased synthetic data for several candidate sizes, and prints its test accuracy and time.
The demo's default is the cheapest candidate where this input is well above chance within the
budget; which input wins the demo plays no part in the choice.

    .venv/bin/python benchmarks/probe_demo.py [--input rgb_diff] [--candidates NAME ...]

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

from dynapp.apps.demo import DemoConfig, build_demo_data, train_and_evaluate

CANDIDATES = {
    "k4_32px_960_e12": dict(num_classes=4, size=32, num_train=960, epochs=12),
    "k4_32px_960_e6": dict(num_classes=4, size=32, num_train=960, epochs=6),
    "k6_32px_960_e12": dict(num_classes=6, size=32, num_train=960, epochs=12),
    "k8_32px_960_e12": dict(num_classes=8, size=32, num_train=960, epochs=12),
    "k8_32px_960_e12_shake1": dict(num_classes=8, size=32, num_train=960, epochs=12, shake=1.0),
    "k8_32px_480_e12": dict(num_classes=8, size=32, num_train=480, epochs=12),
    "k8_48px_960_e12": dict(num_classes=8, size=48, num_train=960, epochs=12),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default="rgb_diff")
    p.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.candidates:
            cfg = replace(DemoConfig(), settings=("unbiased",), **CANDIDATES[name])
            tic = time.perf_counter()
            train_sets, test = build_demo_data(cfg, a.seed)
            r = train_and_evaluate(cfg, a.input, train_sets["unbiased"], test, out_dir=Path(tmp) / name, seed=a.seed)
            rows.append({"candidate": name, "input": a.input, "accuracy": round(r["accuracy"], 1),
                         "chance": round(100 / cfg.num_classes, 1), "train_s": round(r["train_s"], 1),
                         "total_s": round(time.perf_counter() - tic, 1), "steps": r["steps"]})
            print(f"{name:<26} {a.input:<14} acc {r['accuracy']:5.1f}% (chance {100 / cfg.num_classes:.1f}%)  "
                  f"train {r['train_s']:.0f} s  total {rows[-1]['total_s']:.0f} s  {r['steps']} steps", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
