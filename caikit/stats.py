"""Intervals and agreement statistics for judges, reward models and before/after tables. Pure functions.

Every rate caikit reports beside a decision (is the judge better than chance? does the trained model beat the
starting one by more than noise?) comes with an interval from here, so the same numbers mean the same thing in
`caikit judge`, `caikit eval`, the dataset card and `report.html`.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95 % Wilson score interval for a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001, Eq. 4).

    `successes` may be fractional (a tie counted as half). None when n == 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def cohens_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels over the same items: (p_o - p_e) / (1 - p_e) (Cohen 1960, Eq. 1).

    None when there are no items, or when chance agreement is 1 (both raters gave one label throughout)."""
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def binomial_upper_tail(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided exact binomial test's p-value for k successes or more
    (summed in log space, so n in the thousands neither overflows nor underflows)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
             + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def bootstrap_interval(values: Sequence[float], statistic: Callable[[Sequence[float]], float] | None = None, *,
                       resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic` (default: the mean) over `values` (Efron & Tibshirani 1993,
    ch. 13), seeded so a report is reproducible. None for fewer than 2 values. Too narrow at small n: for a mean,
    use `t_interval`; for a proportion, `wilson_interval`; this is for statistics neither fits (a pooled ratio)."""
    if len(values) < 2:
        return None
    statistic = statistic or (lambda xs: math.fsum(xs) / len(xs))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1.0 - level) / 2
    low = draws[int(math.floor(tail * (resamples - 1)))]
    high = draws[int(math.ceil((1.0 - tail) * (resamples - 1)))]
    return low, high


MIN_PAIRS = 10  # below this many paired prompts no interval is trusted for a verdict: "too few pairs to tell"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Press et al., Numerical Recipes, 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _beta_inc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on its CDF,
    F(t) = 1 - I_{df/(df+t²)}(df/2, 1/2) / 2 for t > 0)."""
    if not 0.5 <= p < 1.0:
        raise ValueError("p must be in [0.5, 1)")
    low, high = 0.0, 1e4
    for _ in range(200):
        mid = (low + high) / 2
        if 1.0 - 0.5 * _beta_inc(df / 2.0, 0.5, df / (df + mid * mid)) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student's t interval for a mean: x̄ ± t_{n-1} s/√n (Student 1908). For paired prompts, give it the per-prompt
    differences. Unlike the percentile bootstrap, whose intervals are too narrow at small n (they use the plug-in
    variance and normal tails: coverage 0.91 at n = 10 for a nominal 0.95), it holds its level at small n for
    roughly symmetric data. None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    centre = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (n - 1))
    half = t_quantile(1.0 - (1.0 - level) / 2, n - 1) * sd / math.sqrt(n)
    return centre - half, centre + half


def excludes(interval: tuple[float, float] | None, value: float) -> bool:
    """Does the interval lie wholly on one side of `value` (an effect beyond noise)?"""
    return interval is not None and (interval[0] > value or interval[1] < value)


def shorter_wins_accuracy(pairs: Sequence[tuple[str, str]]) -> tuple[float, int]:
    """The length-only baseline on (chosen, rejected) pairs: accuracy of "prefer the shorter reply" (ties half).

    Judges and reward models that favour length look good on data where length happens to carry the label;
    every accuracy caikit reports stands beside this one on the same pairs. Returns (accuracy, n)."""
    if not pairs:
        return math.nan, 0
    score = sum(1.0 if len(c) < len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in pairs)
    return score / len(pairs), len(pairs)


def longer_preferred_rate(choices: Sequence[tuple[str, str, float]]) -> float | None:
    """How often p > 0.5 picks the longer of (a, b): `choices` are (response_a, response_b, p_a); pairs of
    equal length or with p exactly 0.5 are left out. None when nothing is left."""
    picks = [(len(a) > len(b)) == (p > 0.5) for a, b, p in choices if len(a) != len(b) and p != 0.5]
    return sum(picks) / len(picks) if picks else None


def pairwise_verdict(accuracy: float, interval: tuple[float, float] | None, baseline: float) -> str:
    """Plain words for a held-out pairwise accuracy (a reward model's or a judge's) beside the length-only
    baseline on the same pairs: usable only when the 95 % interval lies above chance and the accuracy
    beats "prefer the shorter reply"."""
    if interval is None:
        return "not measured: no held-out pairs"
    if interval[1] < 0.5:
        return "weak: worse than chance on the held-out pairs"
    if interval[0] <= 0.5:
        return "weak: the held-out interval includes 0.5"
    if not accuracy > baseline:
        return "weak: not better than preferring the shorter reply"
    return "usable"
