"""Agreement over label rows: between people, and between the AI judge and people. Pure functions.

Both read the latest answer per (labeller, pair) from rows as `caikit label` writes them (see rows.py):
choices a | b | tie count; skips and undone labels do not. `caikit eval judge --pairs labels.jsonl` and the
judge's quality gate call these, so the same numbers mean the same thing everywhere.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping

from caikit.label.rows import latest_answers
from caikit.stats import cohens_kappa, wilson_interval


def answers_by_labeler(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """labeller -> pair id -> that person's latest choice (a | b | tie)."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for row in latest_answers(rows):
        out[row.get("labeler", "")][row["pair_id"]] = row["choice"]
    return dict(out)


def inter_annotator_agreement(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """For each two labellers, on the pairs both answered: how many, raw agreement and Cohen's kappa over the
    categories a / b / tie; and the mean of those kappas (Light's kappa, Light 1971) where there are >= 2.

    Returns {"labelers", "overlapping_pairs" (answered by >= 2 people), "pairwise": [{labelers, n, agreement,
    kappa}], "mean_kappa"}; agreement and kappa are None where they are undefined (no shared pairs; one
    category throughout, for kappa)."""
    people = answers_by_labeler(rows)
    pairwise = []
    for first, second in combinations(sorted(people), 2):
        shared = sorted(people[first].keys() & people[second].keys())
        a = [people[first][p] for p in shared]
        b = [people[second][p] for p in shared]
        pairwise.append({"labelers": [first, second], "n": len(shared),
                         "agreement": sum(x == y for x, y in zip(a, b)) / len(shared) if shared else None,
                         "kappa": cohens_kappa(a, b)})
    answered: dict[str, int] = defaultdict(int)
    for answers in people.values():
        for pair_id in answers:
            answered[pair_id] += 1
    kappas = [p["kappa"] for p in pairwise if p["kappa"] is not None]
    return {"labelers": len(people), "overlapping_pairs": sum(n >= 2 for n in answered.values()),
            "pairwise": pairwise, "mean_kappa": sum(kappas) / len(kappas) if kappas else None}


def verdict(p_a: float) -> str:
    """The judge's soft label as a choice: a when P(a better) > 0.5, b when < 0.5, tie at exactly 0.5."""
    return "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"


def judge_vs_humans(rows: Iterable[dict[str, Any]], p_a: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The AI judge against people, one comparison per person's latest answer on a pair the judge scored.

    `p_a` maps pair id -> the judge's P(response_a better), response_a as in the label rows; by default the
    `ai_p_a` the rows carry (pairs from a judge run). Accuracy counts the answers that pick a side: 1 when
    the judge picks the same, 1/2 when the judge has no preference, 0 otherwise, with a 95 % Wilson interval.
    Cohen's kappa compares all answers, ties included, with the judge's verdict (a | b | tie).

    Returns {"n" (answers compared), "decided" (of them a or b), "human_ties", "judge_ties", "accuracy",
    "interval", "kappa", "without_judge" (answers on pairs the judge did not score)}."""
    humans, judge, without = [], [], 0
    for row in latest_answers(rows):
        p = p_a.get(row["pair_id"]) if p_a is not None else row.get("ai_p_a")
        if p is None:
            without += 1
            continue
        humans.append(row["choice"])
        judge.append(verdict(p))
    scores = [1.0 if j == h else 0.5 if j == "tie" else 0.0 for h, j in zip(humans, judge) if h != "tie"]
    accuracy = sum(scores) / len(scores) if scores else None
    return {"n": len(humans), "decided": len(scores), "human_ties": humans.count("tie"),
            "judge_ties": judge.count("tie"), "accuracy": accuracy,
            "interval": wilson_interval(sum(scores), len(scores)), "kappa": cohens_kappa(humans, judge),
            "without_judge": without}
