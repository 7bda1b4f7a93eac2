"""Paired t-intervals over seeds and Holm's step-down procedure, for the demo's comparisons.

Student's t distribution from the regularised incomplete beta function (its continued fraction,
evaluated by the modified Lentz method), so the demo needs no statistics package: for ``nu``
degrees of freedom, ``P(T <= t) = 1 - I_x(nu / 2, 1 / 2) / 2`` with ``x = nu / (nu + t^2)``
(t >= 0).  The quantile inverts the CDF by bisection.  Checked against published t tables in the
tests (t_{0.975, 4} = 2.776, t_{0.975, 9} = 2.262, ...).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["t_cdf", "t_quantile", "paired_t", "holm"]


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, nu: float) -> float:
    """P(T <= t) for Student's t with ``nu`` > 0 degrees of freedom."""
    if nu <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {nu}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _incomplete_beta(nu / 2.0, 0.5, nu / (nu + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, nu: float) -> float:
    """The t with ``t_cdf(t, nu) = p`` (0 < p < 1), by bisection to 1e-10."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, nu)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, nu) < p:
        hi *= 2.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, nu) < p else (lo, mid)
    return 0.5 * (lo + hi)


def paired_t(diffs: Sequence[float], *, confidence: float = 0.95, margin: float = 0.0) -> dict:
    """The paired t-interval of the mean of ``diffs`` (one difference per seed, n >= 2).

    Returns ``mean``, ``sd``, ``n``, the two-sided ``confidence`` interval ``low`` / ``high``
    (``mean -+ t_{(1 + confidence) / 2, n - 1} sd / sqrt(n)``) and ``p``, the one-sided p-value of
    ``mean <= margin`` (small when the mean difference exceeds ``margin``): the lower bound of the
    two-sided interval exceeds ``margin`` exactly when ``p < (1 - confidence) / 2``.
    """
    d = [float(v) for v in diffs]
    n = len(d)
    if n < 2:
        raise ValueError(f"a paired t-interval needs at least 2 seeds, got {n}")
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * se
    if se > 0:
        p = 1.0 - t_cdf((mean - margin) / se, n - 1)
    else:  # every seed gives the same difference
        p = 0.0 if mean > margin else 1.0
    return {"mean": mean, "sd": sd, "n": n, "low": mean - half, "high": mean + half, "p": p}


def holm(pvalues: dict[str, float], alpha: float) -> dict[str, bool]:
    """Holm's step-down procedure at family-wise level ``alpha``: {name: rejected}.

    The p-values are taken in increasing order; the j-th (from 0) of m is rejected while
    ``p <= alpha / (m - j)``; the first that is not stops the procedure (it and all later ones
    are kept).  Ties keep the given order.
    """
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(order)
    rejected = {k: False for k in pvalues}
    for j, k in enumerate(order):
        if pvalues[k] > alpha / (m - j):
            break
        rejected[k] = True
    return rejected
