"""From judgments to preference pairs, and what the judgments say about the judge. Shared by `caikit judge`,
`caikit merge` and the calibration gate, so a merged run and an unsharded one derive the same files.

- `revision_pairs`: the SL-CAI run's (final revision, initial answer) pairs to judge, leaving out traces
  with a side that cannot be a preference side (a revision or an initial answer cut at --max-tokens, a
  degenerate revision) unless asked to keep them; a kept cut side is marked on the pair, its judgment and
  its preference's provenance.
- `build_preferences`: one pair per group (prompt): chosen/rejected = best/worst by mean win probability,
  with p_chosen = the judge's soft label.
- `judge_stats`: position consistency, confidence, ties, length bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caikit.errors import UserError
from caikit.records import PreferencePair, idempotency_key
from caikit.rundir import RunDir
from caikit.shard import select_shard
from caikit.soft_labels import best_and_worst, bounded_option, mean, win_scores
from caikit.stages.judge import Pair, pair_id, split_pair_id
from caikit.stats import longer_preferred_rate
from caikit.store import JsonlFile, latest_by_id

SOURCES = {"revision": "revision-vs-initial", "samples": "judged-samples"}


def revision_pairs(from_dir: str, limit: int, shard: str = "", *, keep_truncated: bool = False,
                   keep_degenerate: bool = False, sizes: dict[str, int] | None = None
                   ) -> tuple[list[Pair], dict[str, int]]:
    """(final revision = response 0, initial response = 1) per trace of the first `limit` in shard `shard`,
    and the counts of traces left out: revision unchanged, revision cut at --max-tokens, initial answer cut
    at --max-tokens, degenerate (per shard, so merged shards add up)."""
    path = Path(from_dir) / RunDir.TRACES
    if not path.exists():
        raise UserError("no traces.jsonl here: not a caikit generate run directory (or every prompt failed: see "
                        "its failures.jsonl and rerun caikit generate)", path=from_dir)
    # by id, not file order: traces.jsonl is in completion order, which differs from run to run
    traces = sorted(latest_by_id(JsonlFile(path).iter()).values(), key=lambda trace: trace["id"])
    traces = traces[:limit] if limit else traces
    planned = len(traces)
    traces = select_shard(traces, shard, lambda trace: trace["id"])
    if sizes is not None:  # the whole set's size and this shard's: what caikit merge checks coverage with
        sizes |= {"planned_items": planned, "items": len(traces)}
    pairs: list[Pair] = []
    skipped = {"revision_unchanged": 0, "truncated": 0, "truncated_initial": 0, "degenerate": 0}
    for trace in traces:
        revision, initial = trace.get("final_revision", ""), trace.get("initial_response", "")
        prompt = trace.get("prompt")
        if not (isinstance(revision, str) and isinstance(initial, str) and isinstance(prompt, list) and prompt
                and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in prompt)):
            raise UserError(f"trace {trace['id']}: prompt must be chat messages and final_revision / "
                            "initial_response text (was the file edited by hand?)", path=str(path))
        if not trace.get("rounds") or revision.strip() == initial.strip():
            skipped["revision_unchanged"] += 1
            continue
        if trace.get("truncated") and not keep_truncated:
            skipped["truncated"] += 1
            continue
        initial_cut = initial_truncated(trace)
        if initial_cut and not keep_truncated:
            skipped["truncated_initial"] += 1
            continue
        if trace.get("degenerate") and not keep_degenerate:
            skipped["degenerate"] += 1
            continue
        cut = (0,) * bool(trace.get("truncated")) + (1,) * initial_cut
        pairs.append(Pair(pair_id(trace["id"], 0, 1), trace["prompt"], revision, initial, cut))
    return pairs, skipped


def initial_truncated(trace: dict[str, Any]) -> bool:
    """Was the trace's initial answer cut at --max-tokens? Traces written before `initial_truncated` existed
    say so in their stop reasons."""
    return bool(trace.get("initial_truncated")) or (trace.get("stop_reasons") or {}).get("answer") == "length"


def build_preferences(judgments: list[dict[str, Any]], *, source: str, min_margin: float, run_id: str,
                      provenance: dict[str, Any]) -> tuple[list[PreferencePair], dict[str, int]]:
    """One pair per group (prompt): chosen/rejected = best/worst response by mean win probability s.

    p_chosen = 0.5 + (s_chosen - s_rejected) / 2, which is the judge's P(chosen better) for a single
    comparison (both orders and principles averaged) and stays in [0.5, 1] for a group of samples. A group
    is a tie when p_chosen == 0.5 and is dropped when p_chosen - 0.5 is below `min_margin`. A side cut at
    the token limit (kept only with --keep-truncated) is named in the provenance (`cut_at_max_tokens`) and
    counted (`with_cut_side`).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for j in judgments:
        groups.setdefault(split_pair_id(j["pair_id"])[0], []).append(j)
    preferences, counts = [], {"groups": len(groups), "ties": 0, "dropped_below_min_margin": 0, "chosen_first": 0,
                               "with_cut_side": 0}
    for group, items in groups.items():
        texts: dict[int, str] = {}
        comparisons, cut = [], set()
        for j in items:
            _, i, k = split_pair_id(j["pair_id"])
            texts[i], texts[k] = j["response_a"], j["response_b"]
            comparisons.append((i, k, j["p_a"]))
            cut.update(c for c in j.get("cut_responses") or () if isinstance(c, int))
        scores = win_scores(comparisons, max(texts) + 1)
        picked = best_and_worst(scores)
        if picked is None:
            continue
        best, worst = picked
        p_chosen = 0.5 + (scores[best] - scores[worst]) / 2
        if p_chosen == 0.5:
            counts["ties"] += 1
            continue
        if p_chosen - 0.5 < min_margin - 1e-12:
            counts["dropped_below_min_margin"] += 1
            continue
        counts["chosen_first"] += best == 0  # for revision pairs: the revision won
        cut_sides = [side for side, index in (("chosen", best), ("rejected", worst)) if index in cut]
        counts["with_cut_side"] += bool(cut_sides)
        preferences.append(PreferencePair(
            id=idempotency_key("preference", run_id, group), run_id=run_id, prompt=items[0]["prompt"],
            chosen=[{"role": "assistant", "content": texts[best]}],
            rejected=[{"role": "assistant", "content": texts[worst]}],
            p_chosen=p_chosen, source=source,
            provenance={**provenance, "group_id": group, "chosen_index": best, "rejected_index": worst,
                        "win_rates": {"chosen": scores[best], "rejected": scores[worst]}, "comparisons": len(items),
                        "judgment_ids": [j["id"] for j in items],
                        "principle_ids": sorted({p for j in items for p in j["principle_ids"]}),
                        **({"cut_at_max_tokens": cut_sides} if cut_sides else {})}))
    return preferences, counts


def judge_stats(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Position consistency, confidence, ties and length bias of a set of judgments."""
    both = [j for j in judgments if j.get("position_consistent") is not None]
    return {"judged": len(judgments),
            "position_consistency_rate": mean(float(j["position_consistent"]) for j in both),
            "position_checked": len(both),
            "mean_abs_margin": mean(abs(j["p_a"] - 0.5) for j in judgments),
            "exact_ties": sum(j["p_a"] == 0.5 for j in judgments),
            # an option missing from the top-k log-probs: its probability bounded by the smallest listed one
            "bounded_by_top_k": sum(any(bounded_option(r.get("logprobs")) for r in j.get("raw") or []
                                        if isinstance(r, dict)) for j in judgments),
            "longer_preferred_rate": longer_preferred_rate([(j["response_a"], j["response_b"], j["p_a"])
                                                            for j in judgments])}


def planned_order(judgments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Judgments in the order `caikit judge` plans its pairs (a group's pairs by (i, j), as
    round_robin_pairs lists them), not in the order they finished: preference provenance lists them."""
    groups: dict[str, int] = {}
    for j in judgments:
        groups.setdefault(split_pair_id(j["pair_id"])[0], len(groups))

    def planned(j: dict[str, Any]) -> tuple[int, int, int]:
        group, a, b = split_pair_id(j["pair_id"])
        return groups[group], a, b

    return sorted(judgments, key=planned)


def preference_stats(source: str, identity: dict[str, Any], judgments: list[dict[str, Any]], preferences: list,
                     counts: dict[str, int], *, pairs: int, failures: int, min_margin: float,
                     skipped: dict[str, Any], human: list[tuple[dict[str, Any], str]] = ()) -> dict[str, Any]:
    """stats.json of a judge run (and of a merged one). `human`: (judgment, side people preferred), for each
    principle's agreement with people (caikit/principle_stats.py)."""
    from caikit.principle_stats import principle_table

    stats = {"source": source, "method": identity.get("method"), "swap": identity.get("swap"),
             "principles": identity.get("principles"), "pairs": pairs, **judge_stats(judgments),
             "failures": failures, "preferences": len(preferences),
             **{k: v for k, v in counts.items() if k != "chosen_first"}, "min_margin": min_margin, "skipped": skipped}
    stats["per_principle"] = principle_table(judgments, human)
    if source == SOURCES["revision"]:
        stats["revision_preferred_rate"] = counts["chosen_first"] / len(preferences) if preferences else None
    return stats
