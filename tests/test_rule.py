"""The pre-registered rule that decides the default joint strategy, and its statistics, on constructed tables."""

from __future__ import annotations

import math

import pytest

from dynapp.apps.demo.rule import (RULE_BASELINE, RULE_CANDIDATES, RULE_FIRST_SEED, RULE_MIN_SEEDS, decide,
                                   rule_lines)
from dynapp.apps.demo.stats import holm, paired_t, t_cdf, t_quantile

CHANCE = 12.5
# a per-seed wobble with mean 0 and sd about 1.5, the same for every arm unless a test says otherwise
WOBBLE = [1.2, -0.8, 2.1, -1.9, 0.4, -0.3, 1.7, -2.2, 0.9, -1.1]


@pytest.mark.parametrize("p, nu, t", [(0.975, 1, 12.706), (0.975, 4, 2.776), (0.975, 9, 2.262), (0.975, 30, 2.042),
                                      (0.995, 9, 3.250), (0.95, 9, 1.833), (0.99, 2, 6.965)])
def test_t_quantile_against_tables(p, nu, t):
    assert t_quantile(p, nu) == pytest.approx(t, abs=1e-3)
    assert t_cdf(t_quantile(p, nu), nu) == pytest.approx(p, abs=1e-9)
    assert t_quantile(1 - p, nu) == pytest.approx(-t, abs=1e-3)


def test_paired_t_interval_and_p_value():
    r = paired_t([1.0, 2.0, 3.0, 4.0, 5.0], margin=1.0)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert (r["mean"], r["n"]) == (3.0, 5) and r["low"] == pytest.approx(3 - half) and r["high"] == pytest.approx(3 + half)
    # the lower bound exceeds the margin exactly when the one-sided p is below 2.5%
    assert r["low"] > 1.0 and r["p"] < 0.025
    r2 = paired_t([1.0, 2.0, 3.0, 4.0, 5.0], margin=1.1)
    assert r2["low"] < 1.1 and r2["p"] > 0.025
    assert paired_t([2.0, 2.0, 2.0], margin=1.0)["p"] == 0.0  # no spread, above the margin
    with pytest.raises(ValueError):
        paired_t([1.0])


def test_holm_step_down():
    assert holm({"a": 0.001, "b": 0.02, "c": 0.03}, 0.05) == {"a": True, "b": True, "c": True}
    # the second smallest fails alpha / 2: it and every later one are kept
    assert holm({"a": 0.01, "b": 0.03, "c": 0.04}, 0.05) == {"a": True, "b": False, "c": False}
    assert holm({"a": 0.03, "b": 0.001}, 0.025) == {"a": False, "b": True}
    assert holm({"a": 0.02, "b": 0.001}, 0.025) == {"a": True, "b": True}


def _rows(means: dict, seeds=None, wobble=None):
    """Rows of the joint study: ``means[arm][setting]`` plus a per-seed wobble shared by all arms."""
    seeds = list(seeds if seeds is not None else range(RULE_FIRST_SEED, RULE_FIRST_SEED + RULE_MIN_SEEDS))
    rows = []
    for arm, per in means.items():
        for setting, m in per.items():
            w = (wobble or {}).get((arm, setting), WOBBLE)
            rows += [{"seed": s, "setting": setting, "strategy": arm, "val_accuracy": m + w[i % len(w)],
                      "accuracy": 99.0} for i, s in enumerate(seeds)]
    return rows


def _means(**changes):
    base = {a: {"unbiased": 50.0, "biased": 40.0} for a in (RULE_BASELINE, *RULE_CANDIDATES)}
    return {**base, **changes}


def test_rule_a_win():
    win = RULE_CANDIDATES[1]
    rule = decide(_rows(_means(**{win: {"unbiased": 80.0, "biased": 41.0}})), chance=CHANCE)
    assert rule["complete"] and rule["winner"] == win
    c = rule["candidates"][win]
    assert c["holm"] and c["noninferior"] and c["primary"]["low"] > 1.0 and c["primary"]["mean"] == pytest.approx(30.0)
    assert "winner " + win in rule_lines(rule)[0]


def test_rule_a_loss_stays_with_eq12():
    # a candidate 1.5 points better on average, but its interval reaches below +1: no win
    noisy = {(RULE_CANDIDATES[0], "unbiased"): [w * 3 for w in reversed(WOBBLE)]}
    rule = decide(_rows(_means(**{RULE_CANDIDATES[0]: {"unbiased": 51.5, "biased": 40.0}}), wobble=noisy), chance=CHANCE)
    assert rule["complete"] and rule["winner"] == RULE_BASELINE
    assert not rule["candidates"][RULE_CANDIDATES[0]]["holm"]
    assert "no candidate wins" in rule_lines(rule)[0]


def test_rule_holm_over_candidates():
    # two candidates just above the margin: alone each would pass at 2.5%, Holm needs the smaller p below 1.25%
    spread = {(c, "unbiased"): WOBBLE[::-1] for c in RULE_CANDIDATES}
    means = _means(**{c: {"unbiased": 53.5, "biased": 40.0} for c in RULE_CANDIDATES})
    rule = decide(_rows(means, wobble=spread), chance=CHANCE)
    ps = [rule["candidates"][c]["primary"]["p"] for c in RULE_CANDIDATES]
    assert all(p < 0.025 for p in ps) and min(ps) > 0.025 / len(RULE_CANDIDATES)
    assert rule["winner"] == RULE_BASELINE


def test_rule_non_inferiority_failure():
    c = RULE_CANDIDATES[0]
    # far better unbiased, 10 points worse scene-biased where the arms are well above chance: vetoed
    rule = decide(_rows(_means(**{c: {"unbiased": 80.0, "biased": 30.0}})), chance=CHANCE)
    assert rule["chance_clause"] is False
    assert rule["candidates"][c]["holm"] and not rule["candidates"][c]["noninferior"]
    assert rule["winner"] == RULE_BASELINE
    # 3 points worse, interval above -5: non-inferior, it wins
    rule = decide(_rows(_means(**{c: {"unbiased": 80.0, "biased": 37.0}})), chance=CHANCE)
    assert rule["candidates"][c]["noninferior"] and rule["winner"] == c


def test_rule_chance_level_setting_vetoes_nothing():
    c = RULE_CANDIDATES[2]
    means = {a: {"unbiased": 50.0, "biased": 20.0} for a in (RULE_BASELINE, *RULE_CANDIDATES)}
    means[c] = {"unbiased": 80.0, "biased": 14.0}  # 6 points lower, but every arm within 10 of chance
    rule = decide(_rows(means), chance=CHANCE)
    assert rule["chance_clause"] is True and rule["candidates"][c]["secondary"]["low"] < -5.0
    assert rule["winner"] == c
    assert "vetoes nothing" in rule_lines(rule)[1 + RULE_CANDIDATES.index(c)]


def test_rule_largest_primary_difference_wins_and_seeds():
    means = _means(**{RULE_CANDIDATES[0]: {"unbiased": 70.0, "biased": 40.0},
                      RULE_CANDIDATES[1]: {"unbiased": 75.0, "biased": 40.0}})
    assert decide(_rows(means), chance=CHANCE)["winner"] == RULE_CANDIDATES[1]
    # fewer than the rule's seeds decide nothing
    few = decide(_rows(means, seeds=range(RULE_FIRST_SEED, RULE_FIRST_SEED + RULE_MIN_SEEDS - 1)), chance=CHANCE)
    assert not few["complete"] and few["winner"] is None
    # seeds below RULE_FIRST_SEED (used for earlier choices) are never read
    old = decide(_rows(means, seeds=range(RULE_MIN_SEEDS)), chance=CHANCE)
    assert old["seeds"] == [] and old["winner"] is None and "not decided" in rule_lines(old)[0]
    # test accuracy is never read: the rows carry accuracy 99 for every arm
    assert decide(_rows(_means()), chance=CHANCE)["winner"] == RULE_BASELINE


def test_rule_names_are_the_demo_arms():
    """The rule's names are the joint study's arm names, Eq. 12 first (what the demo trains is what the rule reads)."""
    from dynapp.apps.demo.config import JOINT_STRATEGIES
    from dynapp.apps.demo.rule import RULE_BASELINE_ARM, RULE_CANDIDATE_ARMS
    from dynapp.apps.demo.studies import strategy_name

    assert strategy_name(*RULE_BASELINE_ARM) == RULE_BASELINE == "mgda" and RULE_BASELINE_ARM[2] == "none"
    assert tuple(strategy_name(*a) for a in RULE_CANDIDATE_ARMS) == RULE_CANDIDATES and len(RULE_CANDIDATES) <= 3
    assert JOINT_STRATEGIES == (RULE_BASELINE_ARM, *RULE_CANDIDATE_ARMS)
