"""The demo's report: the summary table, results.json and report.md."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from dynapp.apps.demo.compare import interval, primary_lines, primary_statistic
from dynapp.apps.demo.config import DEFAULT_JOINT, DemoConfig
from dynapp.apps.demo.figures import leakage_figure
from dynapp.apps.demo.rule import decide, rule_lines
from dynapp.apps.demo.studies import strategy_name


def _mean_sd(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], cfg: DemoConfig) -> list[dict]:
    """One row per input: mean (and spread over seeds) of each setting's accuracy and static share, and the costs."""
    rows = []
    for rep in cfg.inputs:
        row = {"input": rep}
        for s in cfg.settings:
            for key, name in (("accuracy", "acc"), ("static_share", "static")):
                row[f"{name}_{s}"], row[f"{name}_{s}_sd"] = _mean_sd([r["results"][s][rep][key] for r in runs])
        first = cfg.settings[0]
        for key in ("enopr", "static_share", "weight_sum", "train_s"):
            row[key], row[f"{key}_sd"] = _mean_sd([r["results"][first][rep][key] for r in runs])
        one = runs[0]["results"][first][rep]
        row.update(params=one["params"], gflops=one["gflops"], steps=one["steps"])
        rows.append(row)
    return rows


def joint_summary(rows: list[dict]) -> list[dict]:
    """The joint study per (strategy, setting), in the study's order: mean and sd over seeds of the
    validation and test accuracy, and the means of alpha's last tenth, the static share and ENoPR."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["setting"]), []).append(r)
    out = []
    for (strategy, setting), rs in groups.items():
        val, val_sd = _mean_sd([r["val_accuracy"] for r in rs])
        test, test_sd = _mean_sd([r["accuracy"] for r in rs])
        out.append({"strategy": strategy, "setting": setting, "seeds": len(rs), "val": val, "val_sd": val_sd,
                    "test": test, "test_sd": test_sd, "alpha_end": _mean_sd([r["alpha_end"] for r in rs])[0],
                    "static_share": _mean_sd([r["static_share"] for r in rs])[0],
                    "enopr": _mean_sd([r["enopr"] for r in rs])[0]})
    return out


def _fmt(v, sd=None, digits=1, seeds=1):
    if v is None:
        return "-"
    s = f"{v:.{digits}f}"
    return f"{s} ± {sd:.{digits}f}" if seeds > 1 and sd is not None else s


def format_table(rows: list[dict], *, chance: float, seeds: int = 1, markdown: bool = False) -> str:
    """The demo table (text or Markdown): accuracy and static share side by side per setting."""
    head = ["input", "acc unbiased %", "static share unbiased", "acc scene-biased %", "static share scene-biased",
            "ENoPR", "weight sum", "params", "GFLOPs", "train s"]
    body = []
    for r in rows:
        body.append([
            r["input"], _fmt(r.get("acc_unbiased"), r.get("acc_unbiased_sd"), 1, seeds),
            _fmt(r.get("static_unbiased"), r.get("static_unbiased_sd"), 3, seeds),
            _fmt(r.get("acc_biased"), r.get("acc_biased_sd"), 1, seeds),
            _fmt(r.get("static_biased"), r.get("static_biased_sd"), 3, seeds),
            _fmt(r["enopr"], r["enopr_sd"], 4, seeds),
            _fmt(r["weight_sum"], r["weight_sum_sd"], 4, seeds), f"{r['params']:,}", f"{r['gflops']:.4f}",
            _fmt(r["train_s"], r["train_s_sd"], 0, seeds)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines) + f"\n\nChance: {chance:.1f}%."
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body] + [f"chance: {chance:.1f}%"])


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}"



def finish(out: Path, cfg: DemoConfig, runs: list[dict], studies: dict, figures: dict, parts: list[dict], echo) -> dict:
    """Summarise, draw the static-share figure, write results.json and report.md; returns the payload."""
    figures = {**figures, **leakage_figure(out, cfg, runs, studies)}
    wall_s = sum(p["wall_s"] for p in parts)
    rows = summarise(runs, cfg)
    chance = 100.0 / cfg.num_classes
    echo(format_table(rows, chance=chance, seeds=len(runs)))
    echo(f"wall time {wall_s:.0f} s; report in {out / 'report.md'}")
    payload = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
               "seeds": [r["seed"] for r in runs], "chance": chance, "summary": rows, "runs": runs,
               "studies": studies, "wall_s": wall_s, "parts": parts, "machine": _machine(), "torch": torch.__version__,
               "threads": cfg.threads, "jobs": cfg.jobs, "figures": figures}
    if "joint" in studies:
        payload["joint_rule"] = decide(studies["joint"], chance=chance)
        for line in rule_lines(payload["joint_rule"]):
            echo(line)
    payload["primary"] = primary_statistic(runs, studies, cfg.settings)
    if payload["primary"]:
        echo("DA - max(rgb, dynamic_image), test accuracy points, mean over seeds [95% paired t-interval over seeds]:")
        for line in primary_lines(payload["primary"]):
            echo("  " + line)
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    if studies.get("joint"):
        write_rows_csv(studies["joint"], out / "joint_rows.csv")
    _write_report(out, cfg, rows, payload, len(runs), figures, studies)
    return payload


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """The joint study's per-seed rows (seed, setting, strategy, validation and test accuracy, ...) as CSV."""
    keys = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["seed"], r["setting"] != "unbiased", r["strategy"])):
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})


def config_from_json(d: dict) -> DemoConfig:
    return DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})



def _write_report(out: Path, cfg: DemoConfig, rows, payload, seeds, figures, studies) -> None:
    chance = payload["chance"]
    lines = [
        "# dynapp demo report", "",
        f"Same-scene synthetic actions ({cfg.num_classes} motion classes, {cfg.num_scenes} shared scenes, "
        f"{cfg.size}x{cfg.size} px, {cfg.segments} segments x {cfg.frames} frames, {cfg.num_train} training / "
        f"{cfg.num_val} validation / {cfg.num_test} test clips, {cfg.epochs} epochs of batch {cfg.batch_size}; {cfg.moving_distractors} swaying "
        f"distractors, actor half-size {cfg.actor_scale[0]}-{cfg.actor_scale[1]} of the frame, shake {cfg.shake} px); "
        f"backbone {cfg.backbone} for every input; PWTP trained jointly with the default strategy, "
        f"{strategy_name(*DEFAULT_JOINT)} (pwtp_remove: PWTP(static='remove')).  Scene-biased setting: training scene from the class's group with "
        f"probability {cfg.scene_bias}; test scenes uncorrelated.  Seeds: {payload['seeds']}"
        + (" (mean ± sd)." if seeds > 1 else "."), "",
        format_table(rows, chance=chance, seeds=seeds, markdown=True), "",
        "Columns: accuracy on the uncorrelated test clips after training on unbiased / scene-biased data, "
        "each beside the static share of that model's input = fraction of the input's energy that comes from "
        "the temporal mean of each pixel (dynapp.leakage, on the test clips; RGB difference is 0 by "
        "construction); ENoPR (Eq. 7) of the test clips, weight sum = mean per-pixel sum of the temporal "
        "weights and training time: unbiased models; params and GFLOPs (multiply-adds) per view.", "",
        f"Wall time {payload['wall_s']:.0f} s on {payload['machine']}, torch {payload['torch']}, "
        f"{payload.get('jobs', 1)} run(s) at a time of {payload['threads']} thread(s)"
        + ("." if len(payload["parts"]) == 1 else "; merged from " + ", ".join(
            f"{p['folder']} (seeds {p['seeds']}, {p['wall_s']:.0f} s)" for p in payload["parts"]) + "."), "",
    ]
    if payload["primary"]:
        lines += ["## DA against the better of RGB and the dynamic image", "",
                  "Test accuracy, mean over seeds; diff = DA - the baseline with the higher mean (rgb or "
                  "dynamic_image), with the 95% paired t-interval of the per-seed differences "
                  "(dynapp.apps.demo.compare).", "",
                  "| setting | DA arm | DA % | better baseline | its % | diff | 95% interval | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['arm']} | {r['da']:.1f} | {r['baseline']} | {r['baseline_acc']:.1f} | "
                  f"{r['diff']:+.1f} | {interval(r)} | {r['seeds']} |"
                  for r in payload["primary"]] + [""]
    titles = {"examples": "Example test clips (one per class, same scene)", "da_frames": "Frame average, dynamic appearance, its static leakage and leak-free DA (first segment, one test clip per class)",
              "curves": "Training curves", "alpha": "The joint strategy's alpha over training",
              "enopr_vs_loss": "ENoPR against the recognition loss", "confusion": "Confusion matrices (rows: true class)",
              "leakage_vs_accuracy": "Scene-biased accuracy against static share"}
    for key, f in figures.items():
        lines += [f"## {titles[key]}", "", f"![{key}]({f})", ""]
    about = {"joint": "PWTP with each joint-training strategy, every setting, every seed; val_accuracy on the "
                      "validation clips (the only accuracy any choice may use), accuracy on the test clips; "
                      "alpha_mean / alpha_end: the mean of alpha over training / over its last tenth."
                      + (" " + " ".join(rule_lines(payload["joint_rule"])) if "joint_rule" in payload else ""),
             "frames": "PWTP on the unbiased data, first seed.",
             "backbones": "Every input with each backbone, every setting, first seed; static_*: static share."}
    if studies.get("joint"):
        lines += ["## Study: joint, mean ± sd over seeds", "",
                  "| strategy | setting | seeds | val acc % | test acc % | alpha (last tenth) | static share | ENoPR |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in joint_summary(studies["joint"]):
            lines.append(f"| {r['strategy']} | {r['setting']} | {r['seeds']} | {_fmt(r['val'], r['val_sd'], 1, 2)} | "
                         f"{_fmt(r['test'], r['test_sd'], 1, 2)} | {_fmt(r['alpha_end'], None, 2)} | "
                         f"{_fmt(r['static_share'], None, 3)} | {_fmt(r['enopr'], None, 4)} |")
        lines.append("")
    for name, rows_ in studies.items():
        keys = list(rows_[0]) if rows_ else []
        cell = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        lines += [f"## Study: {name}", "", about[name], "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows_] + [""]
    (out / "report.md").write_text("\n".join(lines))

