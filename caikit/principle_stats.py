"""Per-principle attribution of a judge run: which principle judged what, how steadily, how often it decided,
and how often it agreed with people. The one place this table is computed: `caikit judge` puts it in
stats.json, the dataset card and report.html show it, and `caikit constitution stats RUN_DIR` recomputes it
for any judge run after the fact (with more human labels, if given).

Every judgment row carries `per_principle`: for each principle it was judged under, P(response_a better) per
order and averaged. From those, per principle:

  pairs              judgments it took part in
  consistency        share of them where both orders preferred the same response (95 % Wilson interval)
  decided            share where its own pick matched the judgment's (the mean over its principles): with one
                     principle per pair this is 1 by construction, so `with_others` says on how many pairs it
                     shared the decision
  human agreement    where the humans' choice is known -- the gate's human-labelled calibration pairs
                     (response_a is the human's choice there), or `--labels` rows matched by the pair's text --
                     the share of those pairs where its pick was the humans' (a tie counts half), with its interval
"""

from __future__ import annotations

from typing import Any, Iterable

from caikit.records import canonical_json
from caikit.soft_labels import mean, pick
from caikit.stats import wilson_interval


def _rate(successes: float, n: int) -> dict[str, Any]:
    interval = wilson_interval(successes, n)
    return {"n": n, "rate": successes / n if n else None, "interval": list(interval) if interval else None}


def entries(judgment: dict[str, Any]) -> list[dict[str, Any]]:
    """A judgment's per-principle results; an old row without them counts as one entry per principle id with the
    judgment's own figures (they are the same when one principle judged it)."""
    rows = judgment.get("per_principle")
    if isinstance(rows, list) and rows:
        return [r for r in rows if isinstance(r, dict) and r.get("principle_id") and r.get("p_a") is not None]
    ids = judgment.get("principle_ids") or []
    return [{"principle_id": pid, "p_a": judgment.get("p_a"), "position_consistent":
             judgment.get("position_consistent")} for pid in ids[:1] if len(ids) == 1]


def _pair_key(prompt: Any, first: str, second: str) -> str:
    return canonical_json([prompt, first, second])


def human_sides(judgments: Iterable[dict[str, Any]], labelled: Iterable[Any]) -> list[tuple[dict[str, Any], str]]:
    """(judgment, 'a' | 'b': the response people preferred) for each judgment whose pair is in `labelled`
    (prompts.LabelledPair rows: messages, chosen, rejected), matched by the conversation and both texts, in
    either order."""
    preferred: dict[str, str] = {}
    for row in labelled:
        preferred[_pair_key(row.messages, row.chosen, row.rejected)] = "a"
        preferred[_pair_key(row.messages, row.rejected, row.chosen)] = "b"
    out = []
    for j in judgments:
        side = preferred.get(_pair_key(j.get("prompt"), j.get("response_a"), j.get("response_b")))
        if side:
            out.append((j, side))
    return out


def principle_table(judgments: list[dict[str, Any]], human: Iterable[tuple[dict[str, Any], str]] = ()
                    ) -> list[dict[str, Any]]:
    """One row per principle id (sorted): see the module docstring. `human`: (judgment,
    side people preferred) pairs, from `human_sides` or the gate's calibration judgments (side 'a')."""
    rows: dict[str, dict[str, Any]] = {}

    def row(pid: str) -> dict[str, Any]:
        return rows.setdefault(pid, {"pairs": 0, "consistent": [], "decided": [], "with_others": 0,
                                     "confidence": [], "human": []})

    for j in judgments:
        mine = entries(j)
        overall = pick(j["p_a"]) if j.get("p_a") is not None else None
        for e in mine:
            r = row(e["principle_id"])
            r["pairs"] += 1
            if e.get("position_consistent") is not None:
                r["consistent"].append(bool(e["position_consistent"]))
            r["confidence"].append(abs(e["p_a"] - 0.5) * 2)
            if overall is not None:
                r["decided"].append(pick(e["p_a"]) == overall)
            r["with_others"] += len(mine) > 1
    for j, side in human:
        for e in entries(j):
            choice = pick(e["p_a"])
            row(e["principle_id"])["human"].append(0.5 if choice is None else float(choice.lower() == side))
    table = []
    for pid, r in sorted(rows.items()):
        table.append({"principle_id": pid, "pairs": r["pairs"],
                      "position_consistency": _rate(sum(r["consistent"]), len(r["consistent"])),
                      "decided": _rate(sum(r["decided"]), len(r["decided"])), "with_others": r["with_others"],
                      "mean_confidence": mean(r["confidence"]),
                      "human_agreement": _rate(sum(r["human"]), len(r["human"])) if r["human"] else None})
    return table


def table_text(table: list[dict[str, Any]]) -> str:
    """The table as text for a terminal."""
    if not table:
        return "no per-principle results in this run"
    width = max(len("principle"), *(len(r["principle_id"]) for r in table))

    def pct(rate: dict[str, Any] | None) -> str:
        if not rate or rate["rate"] is None:
            return "n/a"
        lo, hi = rate["interval"]
        return f"{rate['rate']:.0%} [{lo:.0%}-{hi:.0%}]"

    lines = [f"{'principle'.ljust(width)}  {'pairs':>5}  {'consistency':<16} {'decided':<16} {'with others':>11}  "
             "human agreement"]
    for r in table:
        human = r["human_agreement"]
        lines.append(f"{r['principle_id'].ljust(width)}  {r['pairs']:>5}  {pct(r['position_consistency']):<16} "
                     f"{pct(r['decided']):<16} {r['with_others']:>11}  "
                     + (f"{pct(human)} on {human['n']}" if human else "no labels"))
    return "\n".join(lines)


def of_run(path, labelled: Iterable[Any] = ()) -> dict[str, Any]:
    """The table of a run directory's judgments (judgments.jsonl, and calibration/judgments.jsonl: the gate's
    human-labelled pairs), with `labelled` pairs matched as human choices; {"principles": [...], counts}."""
    from pathlib import Path

    from caikit.rundir import RunDir
    from caikit.store import JsonlFile, latest_by_id, read_json

    path = Path(path)
    judgments = list(latest_by_id(JsonlFile(path / RunDir.JUDGMENTS).iter()).values())
    calibration = list(latest_by_id(JsonlFile(path / RunDir.CALIBRATION / RunDir.JUDGMENTS).iter()).values())
    stage = (read_json(path / RunDir.RUN) or {}).get("stage")
    # `caikit eval judge` judges human-labelled pairs with the people's choice as response_a
    human = [(j, "a") for j in (judgments if stage == "eval-judge" else calibration)]
    labelled = list(labelled)
    if labelled:
        human += human_sides(judgments, labelled)
    return {"judgments": len(judgments), "human_labelled": len(human), "principles": principle_table(judgments, human)}
