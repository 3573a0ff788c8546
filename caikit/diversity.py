"""Diversity of a set of responses: distinct-n, share of identical responses, mean length.

Used every PPO step as the mode-collapse monitor and by `caikit eval` on before/after samples.
Responses are either strings (split on whitespace) or token-id sequences (used as they are).
"""

from __future__ import annotations

from typing import Sequence, Union

Response = Union[str, Sequence[int]]


def _units(response: Response) -> list:
    return response.split() if isinstance(response, str) else list(response)


def distinct_n(responses: Sequence[Response], n: int) -> float:
    """Unique n-grams / all n-grams, pooled over the set (Li et al. 2016, "distinct-n").

    1.0 when no n-gram repeats anywhere; near 0 when every response says the same thing.
    Returns 0.0 when no response has n units.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    total, unique = 0, set()
    for response in responses:
        units = _units(response)
        grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def identical_share(responses: Sequence[Response]) -> float:
    """Share of responses that have an exact duplicate elsewhere in the set (whitespace-normalised).

    0.0 when all differ, 1.0 when every response repeats another (all the same: full mode collapse).
    """
    if not responses:
        return 0.0
    keys = [" ".join(r.split()) if isinstance(r, str) else tuple(r) for r in responses]
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return sum(1 for key in keys if counts[key] > 1) / len(keys)


def mean_length(responses: Sequence[Response]) -> float:
    """Mean units per response (whitespace words for strings, tokens for id sequences)."""
    if not responses:
        return 0.0
    return sum(len(_units(r)) for r in responses) / len(responses)


def diversity_metrics(responses: Sequence[Response]) -> dict[str, float]:
    """The monitor set: distinct_1, distinct_2, identical_share, mean_length."""
    return {
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "identical_share": identical_share(responses),
        "mean_length": mean_length(responses),
    }
