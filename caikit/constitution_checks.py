"""What `caikit constitution test` concludes from a principle matrix: pure functions, no I/O.

- `case_pairs`: every judge case of a constitution as a judge pair, the better reply on a seeded side (so the
  shared sample has no side that is usually right and two independent principles agree half the time);
- `principle_rows`: per principle, accuracy on its own cases with a 95 % Wilson interval, position
  consistency, mean confidence and the share of unreadable answers over every pair it judged, and whether it
  fails its cases or cannot be applied;
- `principle_relations`: for each two principles, how often their verdicts agree on the pairs both decided:
  redundant at >= 90 % agreement, conflicting when they disagree more often than a coin would (an exact
  one-sided binomial test, Bonferroni-corrected over the principle pairs).

A principle's *verdict* on a pair is the response it prefers in both orders; a pair it judges differently
in the two orders (or an exact tie) gives no verdict, so a judge that picks by position decides nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from caikit.records import idempotency_key
from caikit.soft_labels import mean, pick
from caikit.stages.judge import Pair, pair_id
from caikit.stats import binomial_upper_tail, wilson_interval


@dataclass(frozen=True)
class CaseRef:
    """Where a judge pair came from: a principle's case (its line in the file) and which side is better."""

    principle_id: str
    index: int  # 1-based position among the principle's cases
    line: int
    better_is_a: bool


def case_pairs(constitution, seed: int = 0) -> tuple[list[Pair], list[tuple[str, CaseRef]]]:
    """Every distinct judge case as a Pair (id `case:<principle>:<i>#0-1`, named after its first use), and each
    case of each principle as (pair id, CaseRef): a case two principles share is one pair of the shared sample."""
    pairs: dict[str, Pair] = {}
    refs = []
    for principle in constitution.principles:
        for i, case in enumerate(principle.cases, 1):
            if case.kind != "judge":
                continue
            text = idempotency_key("case", case.prompt, case.better, case.worse)
            coin = random.Random(int(idempotency_key("case-side", seed, text)[-8:], 16))
            better_is_a = coin.random() < 0.5
            if text not in pairs:
                a, b = (case.better, case.worse) if better_is_a else (case.worse, case.better)
                pairs[text] = Pair(f"case:{principle.id}:{i}#0-1", case.prompt, a, b)
            refs.append((pairs[text].id, CaseRef(principle.id, i, case.line, better_is_a)))
    return list(pairs.values()), refs


@dataclass
class Preferences:
    """Preference pairs read for a constitution command. Each distinct pair is judged once, its responses on a
    side drawn by a seeded coin (so response_a is not always the preferred one, and labellers who disagree
    share one judgment); `choices` holds one (pair index, chose response_a) per person's label."""

    pairs: list[Pair]
    choices: list[tuple[int, bool]]
    source: dict[str, Any]

    def preferred_a(self) -> list[bool | None]:
        """Per pair, the majority's side: True for response_a, None for a tie between labellers."""
        votes = [0] * len(self.pairs)
        for i, chose_a in self.choices:
            votes[i] += 1 if chose_a else -1
        return [None if v == 0 else v > 0 for v in votes]


def read_preferences(path: str, limit: int = 0, seed: int = 0) -> Preferences:
    """Preferences from `path` (see caikit.rows.read_pairs for the layouts); the first `limit` distinct pairs."""
    from caikit.rows import read_pairs, text_of
    from caikit.rundir import note

    loaded = read_pairs(path)
    pairs: list[Pair] = []
    index: dict[str, int] = {}
    choices: list[tuple[int, bool]] = []
    beyond: set[str] = set()
    for row in loaded.items:
        chosen, rejected = text_of(row.chosen), text_of(row.rejected)
        key = idempotency_key("preference-pair", row.prompt, sorted([chosen, rejected]))
        if key not in index:
            if limit and len(pairs) >= limit:
                beyond.add(key)
                continue
            a_first = random.Random(f"{seed}:{key}").random() < 0.5
            a, b = (chosen, rejected) if a_first else (rejected, chosen)
            index[key] = len(pairs)
            pairs.append(Pair(pair_id(key[-16:], 0, 1), row.prompt, a, b))
        i = index[key]
        choices.append((i, pairs[i].response_a == chosen))
    if beyond:
        note("constitution", f"{path}: the first {len(pairs)} of {len(pairs) + len(beyond)} distinct pairs used "
                             "(--limit; 0 uses all)")
    return Preferences(pairs, choices, {**loaded.summary(), "distinct_pairs": len(pairs) + len(beyond),
                                        "pairs_used": len(pairs)})


def verdict(cell) -> str | None:
    """'A' / 'B' when both orders prefer the same response; None otherwise (or unread)."""
    return pick(cell.p_a) if cell.readable and cell.consistent else None


def _rate(successes: float, n: int) -> dict[str, Any]:
    interval = wilson_interval(successes, n)
    return {"n": n, "rate": successes / n if n else None, "interval": list(interval) if interval else None}


def case_outcomes(matrix, refs: list[tuple[str, CaseRef]]) -> list[dict[str, Any]]:
    """One row per judge case, judged by its own principle: p(better), right (1 / 0.5 for a tie / 0), status."""
    rows = []
    for pid, ref in refs:
        cell = matrix.cell(pid, ref.principle_id)
        p_better = None if cell.p_a is None else (cell.p_a if ref.better_is_a else 1.0 - cell.p_a)
        right = None if p_better is None else 1.0 if p_better > 0.5 else 0.5 if p_better == 0.5 else 0.0
        rows.append({"principle_id": ref.principle_id, "kind": "judge", "case": ref.index, "line": ref.line,
                     "status": cell.status, "p_better": p_better, "consistent": cell.consistent, "right": right})
    return rows


def flag_outcomes(flags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per critique case from its FlagCheck record (or its failure): p_yes > 0.5 means flagged."""
    return [{"principle_id": f["principle_id"], "kind": "critique", "case": f["case"], "line": f["line"],
             "status": f["status"], "p_yes": f.get("p_yes"),
             "right": None if f.get("p_yes") is None else 1.0 if f["p_yes"] > 0.5 else 0.5 if f["p_yes"] == 0.5
             else 0.0} for f in flags]


def _accuracy(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Right answers over the cases answered or unreadable (an unreadable case counts as wrong); cases whose
    requests failed are left out (they are retried on the next run)."""
    counted = [o for o in outcomes if o["status"] in ("ok", "unreadable")]
    return {**_rate(sum(o["right"] or 0.0 for o in counted), len(counted)),
            "unreadable": sum(o["status"] == "unreadable" for o in counted)}


def principle_rows(principles: list, matrix, outcomes: list[dict[str, Any]], *, min_accuracy: float
                   ) -> list[dict[str, Any]]:
    """Per principle: its cases' accuracy (judge and critique), and over every pair it judged: position
    consistency, mean confidence, unreadable share; `fails` and `cannot_apply` (reasons, in words)."""
    rows = []
    for p in principles:
        mine = [o for o in outcomes if o["principle_id"] == p.id]
        row: dict[str, Any] = {"id": p.id, "judge_cases": None, "critique_cases": None, "judged": 0,
                               "position_consistency": None, "mean_confidence": None, "unreadable_share": None}
        for kind in ("judge", "critique"):
            of_kind = [o for o in mine if o["kind"] == kind]
            if of_kind:
                row[f"{kind}_cases"] = _accuracy(of_kind)
        if p.judge and p.id in matrix.principle_ids:
            cells = [c for c in matrix.column(p.id) if c.status in ("ok", "unreadable")]
            read = [c for c in cells if c.readable]
            row["judged"] = len(cells)
            row["position_consistency"] = _rate(sum(bool(c.consistent) for c in read), len(read))
            row["mean_confidence"] = mean(c.confidence for c in read)
            row["unreadable_share"] = (len(cells) - len(read)) / len(cells) if cells else None
        fails = [f"{kind} cases {row[f'{kind}_cases']['rate']:.0%} < {min_accuracy:.0%}"
                 for kind in ("judge", "critique") if row[f"{kind}_cases"] and row[f"{kind}_cases"]["n"]
                 and row[f"{kind}_cases"]["rate"] < min_accuracy]
        cannot = []
        consistency = row["position_consistency"]
        # at chance: the interval reaches 0.5 -- judged by the point estimate alone on fewer than 10 pairs, where
        # even a perfect record's interval does
        if consistency and consistency["n"] and (consistency["rate"] <= 0.5 or consistency["n"] >= 10
                                                 and consistency["interval"][0] <= 0.5):
            cannot.append(f"position consistency {consistency['rate']:.0%} is not above chance "
                          f"(95 % interval reaches {consistency['interval'][0]:.0%})")
        cases = row["judge_cases"]
        if cases and cases["n"] and cases["rate"] <= 0.5:
            cannot.append(f"its own cases are right {cases['rate']:.0%} of the time, no better than a coin")
        if row["unreadable_share"] is not None and row["unreadable_share"] >= 0.5:
            cannot.append(f"{row['unreadable_share']:.0%} of its answers were unreadable")
        row["fails"], row["cannot_apply"] = fails, cannot
        row["status"] = ("fails its cases" if fails else "cannot be applied" if cannot
                         else "passes" if row["judge_cases"] or row["critique_cases"] else "no cases")
        rows.append(row)
    return rows


def principle_relations(matrix, principle_ids: list[str], *, redundant_at: float = 0.9, alpha: float = 0.05,
                        min_shared: int = 10) -> list[dict[str, Any]]:
    """Every two principles' agreement on the pairs both gave a verdict on. `redundant`: agreement >=
    `redundant_at` on at least `min_shared` pairs. `conflicting`: the disagreements are more than a coin gives,
    p = P(X >= disagreements), X ~ Binomial(n, 1/2), below alpha / (number of principle pairs) (Bonferroni)."""
    verdicts = {pid: [None if (c := matrix.get(p.id, pid)) is None else verdict(c) for p in matrix.pairs]
                for pid in principle_ids}
    tests = max(1, len(principle_ids) * (len(principle_ids) - 1) // 2)
    out = []
    for i, first in enumerate(principle_ids):
        for second in principle_ids[i + 1:]:
            both = [(x, y) for x, y in zip(verdicts[first], verdicts[second]) if x is not None and y is not None]
            n, agree = len(both), sum(x == y for x, y in both)
            p_value = binomial_upper_tail(n - agree, n) if n else None
            out.append({"principles": [first, second], "shared": n, "agreement": agree / n if n else None,
                        "conflict_p": p_value,
                        "redundant": n >= min_shared and agree / n >= redundant_at,
                        "conflicting": n >= min_shared and p_value is not None and p_value < alpha / tests})
    return out
