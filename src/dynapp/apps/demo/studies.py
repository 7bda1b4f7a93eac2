"""The demo's optional studies (``--study``).

joint: PWTP with every arm of :data:`~dynapp.apps.demo.config.JOINT_STRATEGIES` (the arms of the
pre-registered rule, :mod:`dynapp.apps.demo.rule`: Eq. 12 and its candidates) in every setting,
with validation and test accuracy (run on every seed: the rule reads them; the seed's ``pwtp`` run
is reused for the arm that is the default strategy);
frames: the T x D grid of Table 4b on the unbiased data; backbones: every input in every setting
with each of :data:`~dynapp.apps.demo.config.DEMO_BACKBONES` (the demo's own backbone's rows are
that seed's main results).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dynapp.apps.demo.config import DEMO_BACKBONES, JOINT_STRATEGIES, STUDIES, DemoConfig
from dynapp.apps.demo.pool import Run, Runner


def strategy_name(strategy: str, alpha: float, normalize: str, backbone_grad: str = "weighted") -> str:
    """``constant 0.5``, ``constant 0.5 full`` (the backbone on the full grad L2), ``mgda loss+``, ..."""
    full = backbone_grad == "full" and strategy in ("constant", "scheduler")
    return (strategy + (f" {alpha}" if strategy == "constant" else "") + (f" {normalize}" if normalize != "none" else "")
            + (" full" if full else ""))


def _joint_study(cfg: DemoConfig, seed: int, out: Path, echo, first: dict, runner: Runner) -> list[dict]:
    """PWTP with every joint-training strategy in every setting (validation and test accuracy)."""
    arms = [(setting, arm, strategy_name(*arm)) for setting in cfg.settings for arm in JOINT_STRATEGIES]
    reused = {}  # (setting, name) -> the seed's pwtp run when it was trained with this (the default) strategy
    for setting, _, name in arms:
        main = first.get(setting, {}).get("pwtp")
        if main is not None and main.get("val_accuracy") is not None and strategy_name(*main["joint"]) == name:
            reused[setting, name] = main
    trained = [(setting, arm, name) for setting, arm, name in arms if (setting, name) not in reused]
    todo = [Run(cfg, "pwtp", setting, seed, out / "study" / "joint" / f"seed{seed}" / setting / name.replace(" ", "_"),
                dict(zip(("strategy", "alpha", "normalize", "backbone_grad"), arm)))
            for setting, arm, name in trained]

    def row(setting: str, name: str, r: dict) -> dict:
        echo(f"  seed {seed} {setting:<8} {name:<18} val {r['val_accuracy']:5.1f}%  test {r['accuracy']:5.1f}%  "
             f"ENoPR {r['enopr']:.4f}  static share {r['static_share']:.3f}  "
             f"alpha mean {r['alpha_mean']:.2f} end {r['alpha_end']:.2f}" + ("  (the pwtp run)" if (setting, name) in reused else ""))
        return {"seed": seed, "setting": setting, "strategy": name, "val_accuracy": r["val_accuracy"],
                "accuracy": r["accuracy"], "enopr": r["enopr"], "static_share": r["static_share"],
                "alpha_mean": r["alpha_mean"], "alpha_end": r["alpha_end"]}

    rows = {key: row(*key, r) for key, r in reused.items()}

    order = iter(trained)

    def done(run: Run, r: dict) -> None:  # a line as each run finishes (runs finish in their order)
        setting, _, name = next(order)
        rows[setting, name] = row(setting, name, r)

    runner.map(todo, done)
    return [rows[setting, name] for setting, _, name in arms]


def _frames_study(cfg: DemoConfig, seed: int, out: Path, echo, first: dict, runner: Runner) -> list[dict]:
    """PWTP on the unbiased data for each T (frames per segment) and D (rank) at the same S*T."""
    total = cfg.segments * cfg.frames
    grid = [(T, D) for T in (4, 8) for D in (1, 2, 3) if D < T and not total % T]
    todo = [Run(replace(cfg, frames=T, segments=total // T, settings=("unbiased",)), "pwtp", "unbiased", seed,
                out / "study" / f"T{T}_D{D}", {"rank": D}) for T, D in grid]
    rows = []  # no choice is made on this study's test accuracy
    for (T, D), r in zip(grid, runner.map(todo)):
        rows.append({"T": T, "D": D, "S": total // T, "accuracy": r["accuracy"], "enopr": r["enopr"],
                     "gflops": r["gflops"]})
        echo(f"  T={T} D={D} S={total // T}: acc {r['accuracy']:.1f}%  ENoPR {r['enopr']:.4f}")
    return rows


def _backbones_study(cfg: DemoConfig, seed: int, out: Path, echo, first: dict, runner: Runner) -> list[dict]:
    """Every input in every setting with each demo backbone (``first``: the demo backbone's results)."""
    others = [b for b in DEMO_BACKBONES if b != cfg.backbone]
    todo = [Run(replace(cfg, backbone=b), rep, setting, seed, out / "study" / "backbones" / b / setting / rep)
            for b in others for rep in cfg.inputs for setting in cfg.settings]
    results = {cfg.backbone: first}
    for run, r in zip(todo, runner.map(todo)):
        results.setdefault(run.cfg.backbone, {}).setdefault(run.setting, {})[run.rep] = r
        echo(f"  {run.cfg.backbone:<9} {run.setting:<8} {run.rep:<14} acc {r['accuracy']:5.1f}%  "
             f"static share {r['static_share']:.3f}")
    rows = []
    for backbone in DEMO_BACKBONES:
        for rep in cfg.inputs:
            row = {"backbone": backbone, "input": rep}
            for setting in cfg.settings:
                r = results[backbone][setting][rep]
                row[f"acc_{setting}"], row[f"static_{setting}"] = r["accuracy"], r["static_share"]
            rows.append({**row, "params": r["params"], "gflops": r["gflops"]})
    return rows


_STUDIES = {"joint": _joint_study, "frames": _frames_study, "backbones": _backbones_study}


def run_study(cfg: DemoConfig, study: str, seed: int, out: Path, echo, first: dict,
              runner: Runner | None = None) -> list[dict]:
    """Study ``study`` (one of :data:`~dynapp.apps.demo.config.STUDIES`) on seed ``seed``
    (:func:`dynapp.apps.demo.runs.demo_data`); ``first``: that seed's results;
    ``runner``: where its runs train (default: one after another in this process)."""
    if study not in _STUDIES:
        raise ValueError(f"unknown study {study!r}; choose from {', '.join(STUDIES)}")
    return _STUDIES[study](cfg, seed, out, echo, first, runner or Runner())
