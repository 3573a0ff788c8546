"""Preference pairs the --data sources label both ways, and the rule that settles them (`--on-conflict`)."""

from __future__ import annotations

from typing import Any

from caikit.errors import UserError

CONFLICT_RULES = ("human", "drop", "keep")


def resolve_conflicts(sourced: list[tuple[int, Any]], rule: str) -> tuple[list, dict]:
    """Pairs the --data sources label both ways (the same prompt and the same two responses, chosen in a row of
    one source and rejected in a row of another, e.g. a judge run and a person's labels), settled by `rule`.
    `sourced`: (source index, pair) in input order; a source's own mirror-image rows, with no other source
    involved, are its own data and left as they are.
      human  the side people chose wins where the human labels agree (`source: human` rows; rows saying the
             other side are left out); anything else is dropped -- the default
      drop   every row of such a pair is left out
      keep   every row kept (their gradients pull against each other; counted all the same)
    Mirror-image rows in one batch cancel each other's DPO gradient exactly, so a contradiction is never
    trained on unseen. Returns (kept pairs in input order, counts)."""
    from caikit.records import canonical_json
    from caikit.rows import text_of

    if rule not in CONFLICT_RULES:
        raise UserError(f"--on-conflict must be one of {' | '.join(CONFLICT_RULES)}, got {rule!r}")
    pairs = [p for _, p in sourced]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        sides = sorted([text_of(p.chosen).strip(), text_of(p.rejected).strip()])
        groups.setdefault(canonical_json([p.prompt, sides]), []).append(i)
    counts = {"rule": rule, "pairs": 0, "human_won": 0, "dropped_pairs": 0, "kept_both_ways": 0, "rows_dropped": 0}
    dropped: set[int] = set()
    for members in groups.values():
        winners = {text_of(pairs[i].chosen).strip() for i in members}
        if len(winners) < 2 or len({sourced[i][0] for i in members}) < 2:
            continue
        counts["pairs"] += 1
        if rule == "keep":
            counts["kept_both_ways"] += 1
            continue
        human = {text_of(pairs[i].chosen).strip() for i in members if pairs[i].source == "human"}
        if rule == "human" and len(human) == 1:
            counts["human_won"] += 1
            out = [i for i in members if text_of(pairs[i].chosen).strip() not in human]
        else:
            counts["dropped_pairs"] += 1
            out = members
        dropped.update(out)
        counts["rows_dropped"] += len(out)
    kept = [p for i, p in enumerate(pairs) if i not in dropped]
    return kept, (counts if counts["pairs"] else {})
