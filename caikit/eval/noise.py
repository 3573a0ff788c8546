"""Rows of `caikit eval`'s before/after table, each with its 95 % interval and whether the change exceeds its noise.

The two models answer the same prompts, so every comparison is paired, and the unit that is resampled is the
prompt (a pair of answers):

  win-rate      one number, the mean over pairs of the judge's P(after better). `interval`: Student's t
                interval of that mean over pairs; beyond noise when it excludes 0.5 (no difference).
  rate / mean   refusal rates (Wilson intervals per side: they are proportions), mean reward and length
                (t interval per side). `interval_change`: t interval of the per-prompt differences
                after_i - before_i (a paired t interval); beyond noise when it excludes 0. The paired change is
                used rather than "do the two sides' intervals overlap": overlap ignores the pairing, which removes
                the between-prompt variation both sides share, and is conservative by about sqrt(2) in the width.
  KL            before is 0 by definition; `interval_after` (= `interval_change`) bootstraps over answers (a
                pooled per-token ratio is not a mean of per-prompt values).

Why t and Wilson, not the percentile bootstrap: at small n the bootstrap's intervals are too narrow (coverage
0.91 at n = 10 for a nominal 0.95; tests/test_silent_round3b.py measures it). And below MIN_PAIRS (10) paired
prompts no interval is trusted for a verdict at all: the row says "too few pairs to tell".
  distinct-n    corpus statistics get no interval: a bootstrap resample repeats answers, which itself
                lowers distinct-n and raises the identical-answer share, so the interval would not mean noise.

Every bootstrap is seeded (--seed), so a report is reproducible. `verdict` says the same in plain words.

`role` tells the report's verdict box what a row is for, and `better` which way is good:
  aim     what the training set out to change (harmlessness): a change within noise is no result
  guard   a side effect to watch for (helpfulness, over-refusal): no change is fine, a change the wrong way is not
  watch   informative either way (red-team refusals: a harmless answer need not be a refusal)
Rows without a role (KL, length, distinct-n) are shown in the table only.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from caikit.stats import MIN_PAIRS, bootstrap_interval, excludes, t_interval, wilson_interval

RESAMPLES = 2000


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


def noise_verdict(interval: tuple[float, float] | None, null: float, what: str, n: int) -> tuple[bool | None, str]:
    """(beyond_noise, plain words) for an interval of `what` against the value meaning "no difference"."""
    if interval is None:
        return None, f"not measured: {n} pair{'s' if n != 1 else ''}, too few for an interval"
    if n < MIN_PAIRS:
        return None, (f"too few pairs to tell: {n} pair{'s' if n != 1 else ''} (at least {MIN_PAIRS} are needed "
                      "before an interval says whether a change is beyond noise)")
    lo, hi = interval
    span = f"{lo:+.3f} to {hi:+.3f}" if null == 0 else f"{lo:.3f}-{hi:.3f}"
    if excludes(interval, null):
        return True, f"beyond noise: the 95 % interval of {what} ({span}, {n} pairs) excludes {null:g}"
    return False, f"within noise: the 95 % interval of {what} ({span}, {n} pairs) includes {null:g}"


def row(metric: str, before: float | None, after: float | None, note: str, **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "before": _rounded(before), "after": _rounded(after), "note": note, **extra}


def win_rate_row(metric: str, p_after: list[float], note: str, seed: int, *, role: str) -> dict[str, Any]:
    """A win-rate: mean P(after better) over the judged pairs (before = 1 - after), bootstrapped over pairs."""
    p = mean(p_after) if p_after else None
    interval = t_interval(p_after)
    beyond, verdict = noise_verdict(interval, 0.5, "P(after better)", len(p_after))
    return row(metric, None if p is None else 1 - p, p, note, n=len(p_after), interval=_pair(interval),
               beyond_noise=beyond, verdict=verdict, role=role, better="higher")


def paired_row(metric: str, before: list, after: list, note: str, seed: int, *,
               statistic: Callable[[Sequence], float] = mean, proportion: bool = False,
               role: str | None = None, better: str | None = None) -> dict[str, Any]:
    """before[i], after[i]: the two models' values on prompt i (0/1 for a rate when `proportion`)."""
    n = len(before)
    if not n:
        return row(metric, None, None, note, n=0, interval_before=None, interval_after=None, interval_change=None,
                   beyond_noise=None, verdict="not measured", role=role, better=better)
    if proportion:  # Wilson 1927: better than the bootstrap for a proportion near 0 or 1 at small n
        sides = [wilson_interval(math.fsum(values), n) for values in (before, after)]
    elif statistic is mean:
        sides = [t_interval(values) for values in (before, after)]
    else:
        sides = [bootstrap_interval(values, statistic, seed=seed, resamples=RESAMPLES) for values in (before, after)]
    if statistic is mean:  # the mean change is the mean of the per-prompt changes: a paired t interval
        change = t_interval([a - b for b, a in zip(before, after)])
    else:
        change = bootstrap_interval(list(zip(before, after)),
                                    lambda s: statistic([a for _, a in s]) - statistic([b for b, _ in s]),
                                    seed=seed, resamples=RESAMPLES)
    beyond, verdict = noise_verdict(change, 0.0, "the change after - before", n)
    return row(metric, statistic(before), statistic(after), note, n=n, interval_before=_pair(sides[0]),
               interval_after=_pair(sides[1]), interval_change=_pair(change), beyond_noise=beyond, verdict=verdict,
               role=role, better=better)


def kl_row(metric: str, value: float | None, samples: list, statistic: Callable[[Sequence], float], note: str,
           seed: int) -> dict[str, Any]:
    """KL(after || before): 0 before by definition; `samples` are per-answer terms that `statistic` pools."""
    interval = bootstrap_interval(samples, statistic, seed=seed, resamples=RESAMPLES) if samples else None
    if value is None or not samples:
        beyond, verdict = None, "not measured" if value is None else "no interval: no per-answer terms (see note)"
    else:
        beyond, verdict = noise_verdict(interval, 0.0, "the KL", len(samples))
    return row(metric, 0.0 if value is not None else None, value, note, n=len(samples), interval_before=None,
               interval_after=_pair(interval), interval_change=_pair(interval), beyond_noise=beyond, verdict=verdict,
               role=None, better=None)


def descriptive_row(metric: str, before: float | None, after: float | None, note: str, n: int) -> dict[str, Any]:
    return row(metric, before, after, note, n=n, interval_before=None, interval_after=None, interval_change=None,
               beyond_noise=None, verdict="descriptive: a corpus statistic has no bootstrap interval "
                                          "(resampling repeats answers, which itself changes it)",
               role=None, better=None)
