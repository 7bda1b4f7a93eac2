"""The demo study's training budget, set by convergence on the validation split (docs/demo.md).

The rule, written down before its runs: train each candidate input with the demo's backbone and
recipe for each budget B in 6, 12, 24, 48 epochs (one run per budget: the learning-rate schedule
ends at B) on seeds 0 and 1 in the unbiased setting.  best(B) is the highest mean validation
accuracy over the inputs at budget B.  The budget is the first B whose next budget gains less than
2 points (best(next) - best(B) < 2); 48 if every step gains 2 or more.  No test accuracy is read.

The inputs are those that can be the best one: rgb, dynamic_image, and DA with the two joint
strategies under which the recognition loss trains PWTP (constant 0.5 and MGDA-UB loss+, both with
the backbone on the full recognition gradient); docs/joint.md.

    PYTHONPATH=src .venv/bin/python benchmarks/calibrate_budget.py --seed 0 --out runs/budget &
    PYTHONPATH=src .venv/bin/python benchmarks/calibrate_budget.py --seed 1 --out runs/budget
    PYTHONPATH=src .venv/bin/python benchmarks/calibrate_budget.py --report --out runs/budget

Each run appends one JSON line to ``<out>/runs.jsonl`` (a finished run is not trained again, so
an interrupted calibration resumes); ``--report`` prints the table and, as the last line, one
JSON line with the budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from dynapp.apps.demo import DemoConfig, build_demo_data, build_demo_val, train_and_evaluate

BUDGETS = (6, 12, 24, 48)
SEEDS = (0, 1)
GAIN = 2.0  # points of validation accuracy
# name -> (demo input, joint-training keyword arguments)
ARMS = {
    "rgb": ("rgb", {}),
    "dynamic_image": ("dynamic_image", {}),
    "DA constant 0.5 full": ("pwtp", dict(strategy="constant", alpha=0.5, backbone_grad="full")),
    "DA mgda_ub loss+": ("pwtp", dict(strategy="mgda_ub", normalize="loss+", backbone_grad="full")),
}


def choose_budget(rows: list[dict], budgets=BUDGETS, gain: float = GAIN, arms=tuple(ARMS), seeds=SEEDS) -> dict:
    """The rule above on ``rows`` ({arm, epochs, seed, val_accuracy}): best(B) (None until every
    arm has a run of every seed at B) and the budget (None while the rule needs a missing best(B))."""
    acc: dict[int, dict[str, dict[int, float]]] = {b: {a: {} for a in arms} for b in budgets}
    for r in rows:
        if r["epochs"] in acc and r["arm"] in arms and r["seed"] in seeds:
            acc[r["epochs"]][r["arm"]][r["seed"]] = r["val_accuracy"]
    best = {b: (max(statistics.fmean(v.values()) for v in per.values())
                if all(len(v) == len(seeds) for v in per.values()) else None) for b, per in acc.items()}
    budget = None
    for b, nxt in zip(budgets, budgets[1:]):
        if best[b] is None or best[nxt] is None:
            break
        if best[nxt] - best[b] < gain:
            budget = b
            break
    else:
        budget = budgets[-1] if all(v is not None for v in best.values()) else None
    return {"best": best, "budget": budget}


def _done(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def calibrate(seed: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    cfg = DemoConfig(settings=("unbiased",))
    train_sets, test = build_demo_data(cfg, seed)
    val = build_demo_val(cfg, seed)
    for epochs in BUDGETS:
        for arm, (rep, kw) in ARMS.items():
            if any(r["arm"] == arm and r["epochs"] == epochs and r["seed"] == seed for r in _done(log)):
                continue
            tic = time.perf_counter()
            r = train_and_evaluate(replace(cfg, epochs=epochs), rep, train_sets["unbiased"], test, val_set=val, seed=seed,
                                   out_dir=out / f"seed{seed}" / f"e{epochs}" / arm.replace(" ", "_"), **kw)
            row = {"arm": arm, "epochs": epochs, "seed": seed, "val_accuracy": round(r["val_accuracy"], 2),
                   "train_s": round(r["train_s"], 1), "total_s": round(time.perf_counter() - tic, 1)}
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def report(out: Path) -> None:
    rows = _done(out / "runs.jsonl")
    print(f"| input | {' | '.join(f'{b} ep' for b in BUDGETS)} |")
    print(f"|---|{'---|' * len(BUDGETS)}")
    for arm in ARMS:
        cells = []
        for b in BUDGETS:
            v = [r["val_accuracy"] for r in rows if r["arm"] == arm and r["epochs"] == b]
            cells.append(f"{statistics.fmean(v):.1f} ({len(v)})" if v else "")
        print(f"| {arm} | {' | '.join(cells)} |")
    rule = choose_budget(rows)
    print("best(B): " + ", ".join(f"{b} ep {v:.1f}" for b, v in rule["best"].items() if v is not None))
    print(json.dumps({"benchmark": "calibrate_budget", **{f"best_{b}": v for b, v in rule["best"].items()},
                      "budget": rule["budget"], "runs": len(rows)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, choices=SEEDS, default=0)
    p.add_argument("--out", default="runs/budget")
    p.add_argument("--report", action="store_true", help="print the table and the budget from <out>/runs.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.report:
        report(Path(a.out))
    else:
        calibrate(a.seed, Path(a.out))


if __name__ == "__main__":
    main()
