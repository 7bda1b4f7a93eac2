"""What makes joint training work: the exploratory study of docs/joint.md (seeds 0-2, validation accuracy).

Trains DA (PWTP + ``small_tsm``) on the demo's UNBIASED clips of each seed with one factor changed
at a time from a reference arm and prints the VALIDATION accuracy (never the test clips'), ENoPR
against its constant-A floor, DA's static share and where alpha ends.  The factors: the joint
strategy (Eq. 12 as printed, Eq. 12 on Sener and Koltun's ``loss+``-normalised gradients,
MGDA-UB ``loss+``, a constant 0.5 with the backbone on the full recognition gradient, separate
training with the recogniser on the whole budget), PWTP's grid of hyperplanes at the demo's 32-pixel
frames (conv F's k / s: 9 / 8 gives a 4 x 4 grid, 5 / 4 an 8 x 8 one, 3 / 2 a 16 x 16 one), the
weight of ENoPR (1, 10, 100), what PWTP sees (ImageNet-normalised pixels or [0, 1]) and the
classifier's initial std (0.001, 0.01).  Not every combination: the arms answer what pins alpha
and which setting trains DA best.  Every choice this study informs is confirmed on other seeds
(benchmarks/confirm_joint.py).

    PYTHONPATH=src .venv/bin/python benchmarks/explore_joint.py --out runs/explore_joint [--jobs 2]

Writes ``rows.jsonl`` (a line per finished run, with alpha per epoch, so an interrupted study keeps
its runs and a rerun skips them), ``rows.csv`` (the per-seed rows) and ``alpha.png`` (alpha per
epoch of every arm that computes it, mean over seeds); prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

from dynapp.apps.demo.config import DemoConfig
from dynapp.apps.demo.pool import Run, Runner

_MGDA = dict(strategy="mgda", normalize="none", alpha=0.5, backbone_grad="full")
_LOSSP = dict(_MGDA, normalize="loss+")
# arm -> train_and_evaluate's keyword arguments; the first is the reference (Eq. 12, k 9 / s 8)
ARMS = {
    "mgda": _MGDA,
    "mgda loss+": _LOSSP,
    "mgda_ub loss+": dict(_MGDA, strategy="mgda_ub", normalize="loss+"),
    "constant 0.5 full": dict(_MGDA, strategy="constant"),
    "separate (full budget)": dict(_MGDA, strategy="separate"),
    "mgda k5s4": dict(_MGDA, pwtp={"kernel_size": 5, "stride": 4}),
    "mgda k3s2": dict(_MGDA, pwtp={"kernel_size": 3, "stride": 2}),
    "mgda loss+ k5s4": dict(_LOSSP, pwtp={"kernel_size": 5, "stride": 4}),
    "mgda loss+ k3s2": dict(_LOSSP, pwtp={"kernel_size": 3, "stride": 2}),
    "mgda ENoPR x10": dict(_MGDA, enopr_weight=10.0),
    "mgda ENoPR x100": dict(_MGDA, enopr_weight=100.0),
    "mgda pixels [0,1]": dict(_MGDA, pwtp={"pixels": "unit"}),
    "mgda head std 0.01": dict(_MGDA, head_std=0.01),
}
SEEDS = (0, 1, 2)


def _per_epoch(values: list[float], epochs: int) -> list[float]:
    """The mean of each epoch's share of a per-step series."""
    n = len(values)
    if n == 0:
        return []
    edges = [round(i * n / epochs) for i in range(epochs + 1)]
    return [statistics.fmean(values[a:b]) for a, b in zip(edges, edges[1:]) if b > a]


def _row(arm: str, seed: int, r: dict, epochs: int) -> dict:
    log = r["log"]
    floor = [x["enopr_floor"] for x in log if not math.isnan(x.get("enopr_floor", math.nan))]
    alphas = [x["alpha"] for x in log if not math.isnan(x.get("alpha", math.nan))]
    tail = max(1, len(log) // 10)
    return {"arm": arm, "seed": seed, "val_accuracy": r["val_accuracy"], "enopr": r["enopr"],
            "enopr_floor_end": statistics.fmean(floor[-tail:]) if floor else None,
            "static_share": r["static_share"], "alpha_mean": r["alpha_mean"], "alpha_end": r["alpha_end"],
            "train_s": r["train_s"], "alpha_per_epoch": _per_epoch(alphas, epochs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/explore_joint")
    p.add_argument("--arms", nargs="*", default=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    done = {(r["arm"], r["seed"]) for r in map(json.loads, rows_file.read_text().splitlines())} if rows_file.exists() else set()
    cfg = replace(DemoConfig(), settings=("unbiased",))
    todo = [(arm, s) for s in a.seeds for arm in a.arms if (arm, s) not in done]
    runs = [Run(cfg, "pwtp", "unbiased", s, out / "runs" / f"seed{s}" / arm.replace(" ", "_"), ARMS[arm]) for arm, s in todo]
    order = iter(todo)
    tic = time.perf_counter()

    def finished(run: Run, r: dict) -> None:
        arm, seed = next(order)
        row = _row(arm, seed, r, cfg.epochs)
        with open(rows_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"seed {seed} {arm:<24} val {row['val_accuracy']:5.1f}%  ENoPR {row['enopr']:.3f} "
              f"(floor {row['enopr_floor_end'] or math.nan:.3f})  static {row['static_share']:.3f}  "
              f"alpha end {row['alpha_end'] if row['alpha_end'] is not None else math.nan:.2f}  "
              f"{row['train_s']:.0f} s  [{time.perf_counter() - tic:.0f} s]", flush=True)

    with Runner(a.jobs, 1) as runner:
        runner.map(runs, finished)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    write_csv(rows, out / "rows.csv")
    alpha_figure(rows, out / "alpha.png")
    summary = summarize(rows)
    print("\n| arm | validation % (mean ± sd) | per seed | ENoPR / floor | static share | alpha end |")
    print("|---|---|---|---|---|---|")
    for arm, s in summary.items():
        print(f"| {arm} | {s['mean']:.1f} ± {s['sd']:.1f} | {' / '.join(f'{v:.1f}' for v in s['per_seed'])} | "
              f"{s['enopr']:.3f} / {s['floor']:.3f} | {s['static_share']:.3f} | {s['alpha_end']} |")
    print(json.dumps({"study": "explore_joint", "seeds": a.seeds, "wall_s": round(time.perf_counter() - tic),
                      "val_accuracy": {arm: round(s["mean"], 2) for arm, s in summary.items()}}))


def write_csv(rows: list[dict], path: Path) -> None:
    """The per-seed rows (alpha per epoch left out), in :data:`ARMS` order then by seed."""
    keys = [k for k in rows[0] if k != "alpha_per_epoch"]
    order = {arm: i for i, arm in enumerate(ARMS)}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (order.get(r["arm"], len(order)), r["seed"])):
            w.writerow({k: (f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for k in keys})


def alpha_figure(rows: list[dict], path: Path) -> None:
    """Alpha per epoch, mean over seeds, of every arm whose alpha is chosen each step (mgda, mgda_ub)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in ARMS:
        if not ARMS[arm]["strategy"].startswith("mgda"):
            continue
        series = [r["alpha_per_epoch"] for r in rows if r["arm"] == arm and r["alpha_per_epoch"]]
        if not series:
            continue
        n = min(len(s) for s in series)
        mean = [statistics.fmean(s[i] for s in series) for i in range(n)]
        ax.plot(range(1, n + 1), mean, label=arm, lw=2 if arm in ("mgda", "mgda loss+") else 1)
    ax.set(xlabel="epoch", ylabel="alpha (mean of the epoch's steps, mean over seeds)", ylim=(-0.02, 1.02),
           title="Where Eq. 12 puts alpha (weight of ENoPR), demo data, unbiased")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(rows: list[dict]) -> dict:
    """Per arm (in :data:`ARMS` order): mean, sd and per-seed validation accuracy and the diagnostics."""
    out = {}
    for arm in ARMS:
        rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        acc = [r["val_accuracy"] for r in rs]
        ends = [r["alpha_end"] for r in rs if r["alpha_end"] is not None]

        def mean(key: str) -> float:
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.fmean(vals) if vals else math.nan

        out[arm] = {"mean": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "per_seed": acc, "seeds": [r["seed"] for r in rs], "enopr": mean("enopr"),
                    "floor": mean("enopr_floor_end"), "static_share": mean("static_share"),
                    "alpha_end": " / ".join(f"{v:.2f}" for v in ends) if ends else "-"}
    return out


if __name__ == "__main__":
    main()
