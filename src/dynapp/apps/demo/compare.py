"""The study's primary statistic: DA minus the better of RGB and the dynamic image (docs/demo.md).

For each DA arm (the joint study's strategies, and the ``pwtp`` / ``pwtp_remove`` inputs of the
main table) and each setting: ``diff = mean_seeds(DA) - max(mean_seeds(rgb), mean_seeds(dynamic_image))``
on the test clips, with the 95% paired t-interval over seeds of ``DA_seed - best_seed``, where
``best`` is the baseline with the higher mean (the choice of the maximum is not part of the
interval).  ``bootstrap_diff`` gives the percentile bootstrap, maximum included, for comparison:
with 5 seeds it has only 126 distinct resamples and is about a third narrower than the
t-interval, so the t-interval is the one reported.  Test accuracy is reported here, never used
for a choice.
"""

from __future__ import annotations

import numpy as np

from dynapp.apps.demo.stats import paired_t

BASELINES = ("rgb", "dynamic_image")
RESAMPLES = 10000


def bootstrap_diff(da: np.ndarray, baselines: np.ndarray, *, resamples: int = RESAMPLES,
                   seed: int = 0) -> tuple[float, float, float]:
    """``(diff, low, high)``: ``mean(da) - max_b mean(baselines[b])`` and its 95% percentile interval
    over ``resamples`` paired resamples of the seeds.  ``da`` (n,), ``baselines`` (B, n), seed-aligned."""
    da, baselines = np.asarray(da, dtype=float), np.asarray(baselines, dtype=float)
    n = da.shape[0]
    diff = float(da.mean() - baselines.mean(1).max())
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (R, n) seed indices
    stats = da[idx].mean(1) - baselines[:, idx].mean(2).max(0)
    low, high = np.percentile(stats, [2.5, 97.5])
    return diff, float(low), float(high)


def _per_seed(runs: list[dict], studies: dict, settings) -> dict[tuple[str, str], dict[int, float]]:
    """{(arm, setting): {seed: test accuracy}} for the main inputs and the joint study's arms."""
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for run in runs:
        for setting in settings:
            for rep, r in run["results"].get(setting, {}).items():
                acc.setdefault((rep, setting), {})[run["seed"]] = r["accuracy"]
    for row in studies.get("joint", []):
        acc.setdefault((f"pwtp {row['strategy']}", row["setting"]), {})[row["seed"]] = row["accuracy"]
    return acc


def primary_statistic(runs: list[dict], studies: dict, settings) -> list[dict]:
    """One row per DA arm and setting: its mean test accuracy, the better baseline's, the
    difference and its paired t-interval, over the seeds that every one of them has."""
    acc = _per_seed(runs, studies, settings)
    rows = []
    arms = sorted({a for a, _ in acc if a.startswith("pwtp")}, key=lambda a: (a.count(" "), a))
    for setting in settings:
        if any((b, setting) not in acc for b in BASELINES):
            continue
        for arm in arms:
            if (arm, setting) not in acc:
                continue
            seeds = sorted(set(acc[arm, setting]).intersection(*(acc[b, setting] for b in BASELINES)))
            if not seeds:
                continue
            da = np.array([acc[arm, setting][s] for s in seeds])
            base = np.array([[acc[b, setting][s] for s in seeds] for b in BASELINES])
            b = int(base.mean(1).argmax())
            best, diff = BASELINES[b], float(da.mean() - base[b].mean())
            low = high = None  # one seed: no spread
            if len(seeds) >= 2:
                t = paired_t(da - base[b])
                low, high = t["low"], t["high"]
            rows.append({"arm": arm, "setting": setting, "seeds": len(seeds), "da": float(da.mean()),
                         "baseline": best, "baseline_acc": float(base.mean(1).max()), "diff": diff,
                         "ci_low": low, "ci_high": high})
    return rows


def interval(r: dict) -> str:
    """``[-5.0, -1.2]``, or a note when one seed gives no spread."""
    return "(one seed: no interval)" if r["ci_low"] is None else f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"


def primary_lines(rows: list[dict]) -> list[str]:
    """The rows as text lines, e.g. ``unbiased pwtp ... -3.1 [-5.0, -1.2] (5 seeds)``."""
    return [f"{r['setting']:<8} {r['arm']:<26} DA {r['da']:5.1f}%  - {r['baseline']} {r['baseline_acc']:5.1f}% = "
            f"{r['diff']:+5.1f} {interval(r)}" + (f" ({r['seeds']} seeds)" if r["seeds"] > 1 else "") for r in rows]
