"""Counts of a `caikit merge` (caikit/commands/merge.py): usage summed over the inputs, the items the inputs set
out to do, and what the shards missing from the inputs held."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from caikit.records import canonical_json
from caikit.rundir import RunDir
from caikit.shard import missing_shards

if TYPE_CHECKING:
    from caikit.commands.merge import ShardRun


def sum_summaries(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise sum of usage summaries: numbers add, flags AND, nested summaries recurse, equal values stay."""
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for d in items for k in d):
        values = [d[k] for d in items if k in d]
        if all(isinstance(v, bool) for v in values):
            out[k] = all(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            total = sum(values)
            out[k] = round(total, 6) if isinstance(total, float) else total
        elif all(isinstance(v, dict) for v in values):
            out[k] = sum_summaries(values)
        else:
            distinct = list({canonical_json(v): v for v in values}.values())
            out[k] = distinct[0] if len(distinct) == 1 else distinct
    return out


def planned_total(runs: list[ShardRun], name: str, field: str) -> int:
    """How many items (prompts / pairs) the inputs set out to do: one count per distinct shard, so a
    shard run twice is not counted twice; an unsharded input stands for the whole set."""
    whole = [r.count(name, field) for r in runs if not r.shard]
    if whole:
        return max(whole)
    per_shard: dict[str, int] = {}
    for r in runs:
        per_shard[r.shard] = max(per_shard.get(r.shard, 0), r.count(name, field))
    return sum(per_shard.values())


def missing_items(runs: list[ShardRun], planned_field: str, own_field: str) -> int | None:
    """Items of the whole set that no input covers: the set's size (recorded by each shard as `planned_field`
    in stats.json) less the items of each distinct shard at hand. 0 when nothing is missing; None when the
    inputs do not record the set's size (runs of an older caikit)."""
    missing = missing_shards([r.shard for r in runs])
    if not missing:
        return 0
    planned = {r.count(RunDir.STATS, planned_field) for r in runs if isinstance(r.json(RunDir.STATS).get(planned_field), int)}
    if len(planned) != 1:
        return None
    covered = planned_total(runs, RunDir.STATS, own_field)
    return max(0, planned.pop() - covered)


def missing_facts(runs: list[ShardRun], missing: int | None, key: str) -> dict[str, Any]:
    shards = missing_shards([r.shard for r in runs])
    return {"missing_shards": shards or [], key: missing} if shards else {}
