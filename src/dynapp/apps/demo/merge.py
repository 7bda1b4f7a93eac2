"""``dynapp demo --from``: one report from the results.json of several finished demo runs (no training)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dynapp.apps.demo.config import DEMO_BACKBONES
from dynapp.apps.demo.report import config_from_json, finish


def merge_reports(folders: list[str | os.PathLike], *, out: str | os.PathLike, echo=None) -> dict:
    """One report from the results.json of several demo runs of the same benchmark (no training).

    Runs of the first folder's backbone and inputs (distinct seeds, e.g. ``--seed 0``, ``--seed
    1``, ... run in parallel) make the main table; a run with another backbone adds its first
    seed as that backbone's rows of the ``backbones`` study; every folder's studies are kept.
    The seed-0 figures are copied from the first folder.  All folders must share the benchmark
    (everything in the config but inputs, backbone and threads).
    """
    echo = echo or (lambda line: print(line, flush=True))
    if not folders:
        raise ValueError("--from: no folders given")
    loaded = []
    for f in folders:
        path = Path(f) / "results.json"
        if not path.is_file():
            raise ValueError(f"--from: {path} does not exist (not a finished demo run)")
        loaded.append((Path(f), json.loads(path.read_text())))
    cfg = config_from_json(loaded[0][1]["config"])
    bench = lambda c: {k: v for k, v in c.items() if k not in ("inputs", "backbone", "threads", "jobs")}  # noqa: E731
    runs, studies, others, parts = [], {}, {}, []
    for folder, data in loaded:
        if bench(data["config"]) != bench(loaded[0][1]["config"]):
            raise ValueError(f"--from: {folder} is not the same benchmark as {loaded[0][0]} (configs differ)")
        parts.append({"folder": str(folder), "seeds": data["seeds"], "wall_s": data["wall_s"]})
        same_inputs = tuple(data["config"]["inputs"]) == cfg.inputs
        if same_inputs and data["config"]["backbone"] == cfg.backbone:
            seen = {r["seed"] for r in runs}
            if seen & set(data["seeds"]):
                raise ValueError(f"--from: seed(s) {sorted(seen & set(data['seeds']))} of {folder} are already merged")
            runs += data["runs"]
        elif same_inputs:
            others[data["config"]["backbone"]] = data["runs"][0]["results"]
        for name, rows in data["studies"].items():
            if name == "joint":  # run on every seed: the rows of distinct seeds add up (the rule needs ten)
                overlap = {r["seed"] for r in studies.get(name, [])} & {r["seed"] for r in rows}
                if overlap:
                    raise ValueError(f"--from: the joint study of seed(s) {sorted(overlap)} is in two folders")
                studies[name] = studies.get(name, []) + rows
            elif name in studies:
                raise ValueError(f"--from: study {name!r} is in two folders")
            else:
                studies[name] = rows
    if not runs:
        raise ValueError(f"--from: no run of {loaded[0][0]}'s backbone and inputs")
    runs.sort(key=lambda r: r["seed"])
    if others and "backbones" not in studies:
        first = runs[0]["results"]
        rows = []
        for backbone in [cfg.backbone, *sorted(others, key=DEMO_BACKBONES.index)]:
            res = first if backbone == cfg.backbone else others[backbone]
            for rep in cfg.inputs:
                row = {"backbone": backbone, "input": rep}
                for setting in cfg.settings:
                    row[f"acc_{setting}"], row[f"static_{setting}"] = (res[setting][rep]["accuracy"],
                                                                      res[setting][rep]["static_share"])
                rows.append({**row, "params": res[cfg.settings[0]][rep]["params"],
                             "gflops": res[cfg.settings[0]][rep]["gflops"]})
        studies["backbones"] = rows
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {k: v for k, v in loaded[0][1]["figures"].items() if k != "leakage_vs_accuracy"}
    for f in figures.values():
        if (loaded[0][0] / f).resolve() != (out / f).resolve():
            shutil.copyfile(loaded[0][0] / f, out / f)
    return finish(out, cfg, runs, studies, figures, parts, echo)
