"""Soft preference labels from a judge: option log-probs -> p(A), order swaps, votes, clamps, rankings.

All functions are pure. `p_a` is always "the probability that the response shown as (A) is better",
except in `swap_average`, `position_consistent` and the ranking helpers, where it refers to the
pair's response_a whatever position it was shown in.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

OPTIONS = ("A", "B")
# Key, beside the options, of the smallest log-prob a provider listed in its top-k list (OpenAI's top_logprobs):
# an option absent from that list is at most that likely, not impossible.
TOP_K_FLOOR = "top_k_floor"
_DECORATION = " \t\n()[]*.:_\"'"


def normalise_option(token: str) -> str:
    """' A', 'A', '(A', ' (A)', '**A**' -> 'A'. Case is kept: a lone 'a' is the article, not option (A)."""
    return token.strip(_DECORATION)


def logsumexp(values: Iterable[float]) -> float:
    values = [v for v in values if v != -math.inf]
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def option_logprob(logprobs: dict[str, float], option: str) -> float:
    """Total log-prob of `option` over every token spelling of it (' A' and 'A' are both option A)."""
    return logsumexp(lp for token, lp in logprobs.items() if normalise_option(token) == option)


def soft_label(logprobs: dict[str, float], options: Sequence[str] = OPTIONS) -> float | None:
    """p(A) = softmax over the two options' log-probs (CAI paper: normalised option probabilities).

    `logprobs` may be keyed by option ('A', 'B', as `Backend.option_logprobs` returns) or by raw
    tokens (' A', '(B', as in OpenAI top_logprobs). Returns None when neither option was ranked.

    An option missing from a top-k list (`TOP_K_FLOOR` given) is not certain to be wrong: its probability
    is bounded by the smallest listed one, and that bound is what it gets. The label is then the least
    confident one the list allows (never exactly 0 or 1, so epsilon = 1 - p_chosen stays above 0 in cDPO
    and the reward model's soft loss); `bounded_option` tells which judgments took it.
    """
    lp_a, lp_b = (option_logprob(logprobs, o) for o in options)
    if lp_a == -math.inf and lp_b == -math.inf:
        return None
    floor = _floor(logprobs)
    if lp_b == -math.inf:
        if floor is None:
            return 1.0
        lp_b = min(floor, lp_a)
    if lp_a == -math.inf:
        if floor is None:
            return 0.0
        lp_a = min(floor, lp_b)
    return 1.0 / (1.0 + math.exp(lp_b - lp_a))  # = e^a / (e^a + e^b), stable for large gaps


def _floor(logprobs: dict[str, float]) -> float | None:
    value = logprobs.get(TOP_K_FLOOR)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def bounded_option(logprobs: dict[str, float | None] | None, options: Sequence[str] = OPTIONS) -> str | None:
    """The option whose probability `soft_label` bounded by the top-k list's smallest (absent from the list
    while the other was listed), or None."""
    if not isinstance(logprobs, dict) or _floor(logprobs) is None:
        return None
    finite = {k: (-math.inf if v is None else v) for k, v in logprobs.items() if k != TOP_K_FLOOR
              and (v is None or isinstance(v, (int, float)))}
    missing = [o for o in options if option_logprob(finite, o) == -math.inf]
    return missing[0] if len(missing) == 1 else None


def vote_share(choices: Sequence[str], option: str = "A") -> float:
    """Fraction of votes for `option`: p(A) from k sampled answers."""
    if not choices:
        raise ValueError("no votes")
    return sum(c == option for c in choices) / len(choices)


def clamp(p: float, floor: float) -> float:
    """Clamp p to [floor, 1 - floor]; the CAI paper clamps CoT labels to [0.4, 0.6] (floor=0.4)."""
    if floor <= 0:
        return p
    low, high = min(floor, 1 - floor), max(floor, 1 - floor)
    return min(max(p, low), high)


def swap_average(p_a_first: float | None, p_a_swapped: float | None) -> float:
    """Mean of the orders that were judged. `p_a_swapped` is already 1 - p(B shown first is better)."""
    judged = [p for p in (p_a_first, p_a_swapped) if p is not None]
    if not judged:
        raise ValueError("neither order was judged")
    return sum(judged) / len(judged)


def pick(p_a: float) -> str | None:
    """Which response a probability prefers: 'A', 'B', or None for an exact tie."""
    return "A" if p_a > 0.5 else "B" if p_a < 0.5 else None


def position_consistent(p_a_first: float | None, p_a_swapped: float | None) -> bool | None:
    """Both orders prefer the same response (None when only one order was judged)."""
    if p_a_first is None or p_a_swapped is None:
        return None
    first = pick(p_a_first)
    return first is not None and first == pick(p_a_swapped)


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return math.fsum(values) / len(values) if values else None  # exact sum: the same whatever the order


def weighted_mean(values: Iterable[tuple[float | None, float]]) -> float | None:
    """Sum(w * v) / Sum(w) over the (value, weight) pairs whose value is not None; None when no weight is left."""
    kept = [(v, w) for v, w in values if v is not None]
    total = sum(w for _, w in kept)
    return math.fsum(v * w for v, w in kept) / math.fsum(w for _, w in kept) if total > 0 else None


def win_scores(comparisons: Iterable[tuple[int, int, float]], n: int) -> list[float | None]:
    """Mean win probability of each of `n` responses over its comparisons.

    comparisons: (i, j, p) with p = P(response i better than response j). None for an unjudged response.
    """
    wins: list[list[float]] = [[] for _ in range(n)]
    for i, j, p in comparisons:
        wins[i].append(p)
        wins[j].append(1.0 - p)
    return [mean(w) for w in wins]


def best_and_worst(scores: Sequence[float | None]) -> tuple[int, int] | None:
    """Indices of the highest and lowest scored responses (first index wins ties); None if < 2 scored."""
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda t: (t[0], -t[1]))[1]
    worst = min(scored, key=lambda t: (t[0], t[1]))[1]
    return best, worst


def round_robin_pairs(n: int, neighbours: int) -> list[tuple[int, int]]:
    """Pairs to judge among n responses: all n(n-1)/2 when neighbours <= 0 or covers everyone, else
    each response against its next `neighbours` responses around a circle (n * neighbours pairs)."""
    if neighbours <= 0 or 2 * neighbours >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = set()
    for i in range(n):
        for d in range(1, neighbours + 1):
            j = (i + d) % n
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def bradley_terry(comparisons: Iterable[tuple[int, int, float]], n: int, *, prior: float = 1.0,
                  iterations: int = 200, tol: float = 1e-10) -> list[float | None]:
    """Bradley–Terry log-strengths s_i of `n` responses from soft comparisons, P(i beats j) = σ(s_i − s_j),
    centred on their mean; None for a response never compared.

    comparisons: (i, j, p) with p = P(response i better than response j), soft wins counted as fractions.
    The maximum-likelihood strengths come from Hunter's (2004) MM iteration π_i ← W_i / Σ_j n_ij / (π_i + π_j)
    (Zermelo 1929). `prior` > 0 lets each response also meet a virtual opponent of strength 1 that many times
    with a draw: a response that wins every comparison then gets a large finite strength instead of an
    infinite one (prior = 0 is the plain MLE, rescaled each round as it has no anchor)."""
    comparisons = [(i, j, p) for i, j, p in comparisons]
    judged = {k for i, j, _ in comparisons for k in (i, j)}
    wins = [prior / 2] * n  # W_i: soft wins, the virtual draws included
    for i, j, p in comparisons:
        wins[i] += p
        wins[j] += 1.0 - p
    strength = [1.0] * n
    for _ in range(iterations):
        denominators = [prior / (strength[k] + 1.0) for k in range(n)]
        for i, j, _ in comparisons:
            share = 1.0 / (strength[i] + strength[j])
            denominators[i] += share
            denominators[j] += share
        new = [max(wins[k], 1e-300) / denominators[k] if k in judged else 1.0 for k in range(n)]
        if prior <= 0:  # no anchor: only ratios are identified, keep the geometric mean of the judged at 1
            centre = math.exp(mean(math.log(new[k]) for k in judged) or 0.0)
            new = [v / centre for v in new]
        change = max((abs(math.log(new[k]) - math.log(strength[k])) for k in judged), default=0.0)
        strength = new
        if change < tol:
            break
    logs = {k: math.log(strength[k]) for k in judged}
    centre = mean(logs.values()) or 0.0
    return [logs[k] - centre if k in logs else None for k in range(n)]
