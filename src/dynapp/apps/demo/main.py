"""``dynapp demo``: every input in every setting, for each seed, then the studies and the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from dynapp.apps.demo.config import INPUTS, DemoConfig, parse_studies
from dynapp.apps.demo.figures import draw_figures
from dynapp.apps.demo.report import finish
from dynapp.apps.demo.pool import Run, Runner
from dynapp.apps.demo.runs import demo_data
from dynapp.apps.demo.studies import run_study


def run_demo(cfg: DemoConfig | None = None, *, out: str | os.PathLike = "runs/demo", seeds: int = 1, seed: int = 0,
             study: str | None = None, echo=None) -> dict:
    """Run the demo and write the report folder; returns the results dict (also results.json)."""
    cfg = cfg or DemoConfig()
    echo = echo or (lambda line: print(line, flush=True))
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    studies_asked = parse_studies(study)
    unknown = set(cfg.inputs) - set(INPUTS)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}; choose from {', '.join(INPUTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    wall = time.perf_counter()
    runs = []
    studies: dict[str, list] = {}

    def done(run: Run, r: dict) -> None:
        echo(f"seed {run.seed} {run.setting:<8} {run.rep:<14} val {r['val_accuracy']:5.1f}%  test {r['accuracy']:5.1f}%  "
             f"train {r['train_s']:.0f} s ({r['steps']} steps)")

    try:
        with Runner(cfg.jobs, cfg.threads) as runner:
            for k in range(seeds):
                s = seed + k
                tic = time.perf_counter()
                data = demo_data(cfg, s)  # rendered on first use and kept (with --jobs, each worker its own)
                main = [Run(cfg, rep, setting, s, out / "runs" / f"seed{s}" / setting / rep)
                        for setting in cfg.settings for rep in cfg.inputs]
                results: dict[str, dict] = {setting: {} for setting in cfg.settings}
                for run, r in zip(main, runner.map(main, done)):
                    results[run.setting][run.rep] = r
                runs.append({"seed": s, "results": results, "seed_s": time.perf_counter() - tic})  # its clips and main runs
                if k == 0:
                    figures = draw_figures(out, cfg, runs[0], data[2])
                if "joint" in studies_asked:  # every seed: the rule of docs/joint.md pairs the arms per seed
                    echo(f"study joint (seed {s}):")
                    studies.setdefault("joint", []).extend(run_study(cfg, "joint", s, out, echo, results, runner))
            for name in studies_asked:
                if name == "joint":
                    continue
                echo(f"study {name} (seed {seed}):")
                studies[name] = run_study(cfg, name, seed, out, echo, runs[0]["results"], runner)
        studies = {name: studies[name] for name in studies_asked}
    finally:
        torch.set_num_threads(old_threads)
    for r in runs:  # drop the models and keep the rest JSON-friendly
        for s in r["results"].values():
            for v in s.values():
                v.pop("_model", None)
    return finish(out, cfg, runs, studies, figures, [{"folder": str(out), "seeds": [r["seed"] for r in runs],
                                                       "wall_s": time.perf_counter() - wall}], echo)
