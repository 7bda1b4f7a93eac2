"""The pre-registered rule that decides dynapp's default joint strategy (docs/joint.md, written before its runs).

Arms: the paper's Eq. 12 (:data:`RULE_BASELINE`, ``mgda`` without normalisation) and at most three
candidates (:data:`RULE_CANDIDATES`, chosen by the exploratory study on seeds 0-2), trained by the
demo's joint study (``dynapp demo --study joint``) on the seeds from :data:`RULE_FIRST_SEED` on,
which no earlier choice used; rows of other seeds are ignored.  On the seeds every arm has in both
settings (at least :data:`RULE_MIN_SEEDS`):

1. **Primary endpoint**: validation accuracy, unbiased training.  For each candidate, the paired
   differences candidate - Eq. 12 over seeds; the candidate passes when the lower bound of the
   paired 95% t-interval exceeds ``RULE_MARGIN`` = +1 point, with Holm's correction over the
   candidates (one-sided p-values of "mean difference <= +1", family-wise level 2.5%, which for a
   single candidate is exactly "the 95% interval's lower bound > +1").
2. **Scene-biased setting**: a passing candidate must be non-inferior: the lower bound of the
   paired 95% t-interval of its difference from Eq. 12 above ``-RULE_NONINFERIORITY`` = -5 points.
   When every arm's mean is within ``RULE_CHANCE_BAND`` = 10 points of chance in this setting, it
   vetoes nothing (every arm is near chance: the comparison is noise).
3. Of the candidates that pass both, the one with the largest mean primary difference wins and
   becomes the default (ties: the earlier in :data:`RULE_CANDIDATES`).  None passes: Eq. 12 stays,
   and the report says so.
"""

from __future__ import annotations

import statistics

from dynapp.apps.demo.stats import holm, paired_t

# (strategy, alpha, MGDA normalisation, backbone gradient) of each arm; names by studies.strategy_name
RULE_BASELINE_ARM = ("mgda", 0.5, "none", "full")
RULE_CANDIDATE_ARMS = (("mgda", 0.5, "loss+", "full"), ("mgda_ub", 0.5, "loss+", "full"),
                       ("constant", 0.5, "none", "full"))
RULE_BASELINE = "mgda"
RULE_CANDIDATES = ("mgda loss+", "mgda_ub loss+", "constant 0.5 full")
RULE_FIRST_SEED = 100  # seeds 0-4 informed earlier choices (budget, the exploratory study)
RULE_MIN_SEEDS = 10
RULE_MARGIN = 1.0  # points: the primary difference's 95% lower bound must exceed this
RULE_NONINFERIORITY = 5.0  # points: the scene-biased difference's 95% lower bound must exceed -this
RULE_CHANCE_BAND = 10.0  # points above chance within which a setting vetoes nothing
RULE_CONFIDENCE = 0.95
PRIMARY, SECONDARY = "unbiased", "biased"


def _table(rows: list[dict], arms: tuple[str, ...]) -> dict[tuple[str, str], dict[int, float]]:
    """{(arm, setting): {seed: validation accuracy}} of the rule's seeds."""
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        if r["strategy"] in arms and r["seed"] >= RULE_FIRST_SEED and r.get("val_accuracy") is not None:
            acc.setdefault((r["strategy"], r["setting"]), {})[int(r["seed"])] = float(r["val_accuracy"])
    return acc


def decide(rows: list[dict], *, chance: float, candidates: tuple[str, ...] = RULE_CANDIDATES,
           baseline: str = RULE_BASELINE) -> dict:
    """The rule on the joint study's rows (``seed``, ``setting``, ``strategy``, ``val_accuracy``).

    ``chance``: the accuracy of guessing (100 / classes, in %).  Returns ``complete`` (enough
    common seeds), ``winner`` (a candidate, ``baseline`` when none passes, None when incomplete),
    ``seeds``, ``chance_clause`` (the scene-biased setting vetoes nothing), ``means`` ({arm:
    {setting: mean}}) and per candidate its ``primary`` and ``secondary`` paired t results,
    ``holm`` (passed the primary endpoint) and ``noninferior``.
    """
    arms = (baseline, *candidates)
    acc = _table(rows, arms)
    keys = [(a, s) for a in arms for s in (PRIMARY, SECONDARY)]
    seeds = sorted(set.intersection(*(set(acc.get(k, {})) for k in keys)))
    out = {"complete": len(seeds) >= RULE_MIN_SEEDS, "seeds": seeds, "winner": None, "baseline": baseline,
           "candidates": {}, "chance": chance, "chance_clause": None,
           "means": {a: {s: (statistics.fmean(acc[a, s][i] for i in seeds) if seeds else None)
                         for s in (PRIMARY, SECONDARY)} for a in arms}}
    if len(seeds) < 2:
        return out

    def diffs(arm: str, setting: str) -> list[float]:
        return [acc[arm, setting][i] - acc[baseline, setting][i] for i in seeds]

    prim = {c: paired_t(diffs(c, PRIMARY), confidence=RULE_CONFIDENCE, margin=RULE_MARGIN) for c in candidates}
    passed = holm({c: prim[c]["p"] for c in candidates}, (1.0 - RULE_CONFIDENCE) / 2.0)
    clause = all(abs(out["means"][a][SECONDARY] - chance) < RULE_CHANCE_BAND for a in arms)
    out["chance_clause"] = clause
    for c in candidates:
        sec = paired_t(diffs(c, SECONDARY), confidence=RULE_CONFIDENCE)
        noninferior = clause or sec["low"] > -RULE_NONINFERIORITY
        out["candidates"][c] = {"primary": prim[c], "secondary": sec, "holm": passed[c], "noninferior": noninferior,
                                "wins": passed[c] and noninferior}
    if out["complete"]:
        winners = [c for c in candidates if out["candidates"][c]["wins"]]
        out["winner"] = max(winners, key=lambda c: (prim[c]["mean"], -candidates.index(c))) if winners else baseline
    return out


def rule_lines(rule: dict) -> list[str]:
    """The rule's outcome as text lines (the demo prints them; docs/joint.md quotes them)."""
    n = len(rule["seeds"])
    if n < 2:
        return [f"default-strategy rule (docs/joint.md): not decided: it needs >= {RULE_MIN_SEEDS} seeds from "
                f"{RULE_FIRST_SEED} on with every arm in both settings (have {n})"]
    head = (f"default-strategy rule (docs/joint.md), {n} seeds ({rule['seeds'][0]}-{rule['seeds'][-1]}): "
            + (f"winner {rule['winner']}" if rule["winner"] not in (None, rule["baseline"])
               else f"no candidate wins, {rule['baseline']} (Eq. 12) stays" if rule["winner"]
               else f"not decided (needs {RULE_MIN_SEEDS} seeds)"))
    lines = [head]
    for c, r in rule["candidates"].items():
        p, s = r["primary"], r["secondary"]
        lines.append(f"  {c:<18} unbiased {p['mean']:+5.1f} [{p['low']:+.1f}, {p['high']:+.1f}] "
                     f"(Holm: {'pass' if r['holm'] else 'fail'}, needs > {RULE_MARGIN:+.0f})  "
                     f"scene-biased {s['mean']:+5.1f} [{s['low']:+.1f}, {s['high']:+.1f}] "
                     f"({'vetoes nothing: every arm near chance' if rule['chance_clause'] else 'non-inferior' if r['noninferior'] else 'inferior'})")
    return lines
