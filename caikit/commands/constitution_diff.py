"""`caikit constitution diff A B --pairs P --judge SPEC [--out DIR]`: where two constitutions' verdicts part.

Every judge principle of A and B judges every pair on its own, both orders (caikit/principle_matrix.py; a
principle whose instruction is in both is judged once). Each constitution's verdict on a pair is the judge's
pooled verdict with every principle asked: v = sum_k s_k p_k, with s the principles' judge shares
(`judge_weight`, else `weight`) normalised to sum to 1, p_k = P(response a better) under principle k (an
unread judgment counts as 0.5, no side). The verdicts differ when their sides differ (a, b, or no side).

Attribution is exact because the verdict is linear in the principles: with s = 0 for a principle a
constitution lacks,

    v_A - v_B = sum_k (s_A,k - s_B,k) (p_k - 1/2)       (the 1/2 cancels: both shares sum to 1)

so principle k contributes c_k = (s_A,k - s_B,k)(p_k - 1/2) to each pair's difference. A principle's drive is
sum over the differing pairs of c_k * sign(v_A - v_B), divided by the sum of |v_A - v_B|: the share of the
difference it makes (the drives sum to 1; a negative drive pulls the two back together).

Writes DIR/report.json (the rate of differing verdicts with its interval, each constitution's agreement with
the pairs' preferred responses, every principle's drive, the --show pairs that differ most, with their text)
beside the judge's run files, and prints the same briefly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from caikit.commands.constitution_tools import (
    ConstitutionJudgeOptions,
    cell_probability,
    failure_share,
)
from caikit.config import option
from caikit.constitution_checks import read_preferences
from caikit.errors import UserError
from caikit.rundir import RunDir, note
from caikit.stats import wilson_interval


@dataclasses.dataclass
class DiffConfig(ConstitutionJudgeOptions):
    constitutions: list[str] = option([], help="the two constitutions A and B (YAML files or bundled names)",
                                      metadata={"cli": False})
    pairs: str = option("", help="the pairs both judge: caikit label rows, prompt/chosen/rejected, hh-rlhf "
                                 "transcripts (any file the row reader reads)")
    limit: int = option(32, low=0, help="use only the first N distinct pairs (0: all); each costs (distinct judge "
                                        "principles of A and B) x 2 judgments")
    show: int = option(5, low=0, high=1000, help="pairs where the verdicts differ most, shown and kept in the report")
    out: str = option("outputs/constitution-diff", help="output directory: report.json and the judge's run files")

    def validate(self) -> None:
        if len(self.constitutions) != 2:
            raise UserError(f"give two constitutions: caikit constitution diff A B --pairs P (got "
                            f"{len(self.constitutions)})")
        if not self.pairs:
            raise UserError("--pairs FILE is required (the pairs both constitutions judge)")
        ConstitutionJudgeOptions.validate(self)


@dataclasses.dataclass
class Column:
    """One distinct judge instruction and its share in each constitution (0 where absent)."""

    key: str  # the principle id the matrix knows it by
    judge: str
    name: str  # how the report names it: the id, or A:id / B:id when the two differ
    share_a: float = 0.0
    share_b: float = 0.0


def columns_of(a, b) -> list[Column]:
    """The union of A's and B's judge principles, by instruction, with their normalised judge shares."""
    cols: dict[str, Column] = {}
    owners: dict[str, dict[str, str]] = {}
    for side, constitution in (("a", a), ("b", b)):
        pool = constitution.judge_principles
        total = sum(p.judge_share for p in pool)
        for p in pool:
            col = cols.setdefault(p.judge, Column(f"p{len(cols)}", p.judge, ""))
            setattr(col, f"share_{side}", p.judge_share / total)
            owners.setdefault(p.judge, {})[side] = p.id
    for text, col in cols.items():
        ids = owners[text]
        if len(set(ids.values())) == 1 and len(ids) == 2:
            col.name = ids["a"]
        else:
            col.name = " = ".join(f"{side.upper()}:{pid}" for side, pid in ids.items())
    return list(cols.values())


def side_of(v: np.ndarray) -> np.ndarray:
    """+1 response a, -1 response b, 0 no side."""
    return np.sign(np.round(v - 0.5, 12))


def diff_verdicts(p: np.ndarray, share_a: np.ndarray, share_b: np.ndarray) -> dict[str, Any]:
    """p: (n, k) P(a better) per pair and principle; share_*: (k,) normalised shares. -> verdicts, which pairs
    differ, each pair's per-principle contributions c (n, k) and each principle's drive (k,)."""
    v_a, v_b = p @ share_a, p @ share_b
    differ = side_of(v_a) != side_of(v_b)
    contributions = (share_a - share_b)[None, :] * (p - 0.5)  # (n, k); rows sum to v_a - v_b
    gap = v_a - v_b
    total = float(np.abs(gap[differ]).sum())
    drive = (contributions[differ] * np.sign(gap[differ])[:, None]).sum(axis=0) / total if total > 0 else \
        np.zeros(p.shape[1])
    return {"v_a": v_a, "v_b": v_b, "differ": differ, "contributions": contributions, "drive": drive}


def short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_diff(cfg: DiffConfig) -> int:
    from caikit.constitution import Principle, load_constitution
    from caikit.principle_matrix import judge_matrix

    a, b = (load_constitution(c) for c in cfg.constitutions)
    for constitution in (a, b):
        if not constitution.judge_principles:
            raise UserError("has no judge principles to compare", path=str(constitution.path))
    prefs = read_preferences(cfg.pairs, cfg.limit, cfg.seed)
    cols = columns_of(a, b)
    matrix = judge_matrix(cfg.judge_options(), prefs.pairs, [Principle(id=c.key, judge=c.judge) for c in cols],
                          cfg.out, stage="constitution-diff")
    p = np.array([[cell_probability(matrix.cell(pair.id, c.key))[0] for c in cols] for pair in prefs.pairs])
    got = diff_verdicts(p, np.array([c.share_a for c in cols]), np.array([c.share_b for c in cols]))
    n, differ = len(prefs.pairs), got["differ"]
    preferred = prefs.preferred_a()
    labelled = [i for i, side in enumerate(preferred) if side is not None]

    def agreement(v: np.ndarray) -> float | None:
        if not labelled:
            return None
        s = side_of(v[labelled]) * np.array([1 if preferred[i] else -1 for i in labelled])
        return round(float(np.mean((s > 0) + 0.5 * (s == 0))), 4)

    drivers = sorted(({"principle": c.name, "judge": c.judge, "share_a": round(c.share_a, 4),
                       "share_b": round(c.share_b, 4), "drive": round(float(got["drive"][k]), 4)}
                      for k, c in enumerate(cols)), key=lambda d: -d["drive"])
    order = sorted(np.flatnonzero(differ), key=lambda i: -abs(got["v_a"][i] - got["v_b"][i]))[: cfg.show]
    shown = []
    for i in order:
        pair, c = prefs.pairs[i], got["contributions"][i]
        top = int(np.argmax(c * np.sign(got["v_a"][i] - got["v_b"][i])))
        shown.append({"pair_id": pair.id, "prompt": short(pair.prompt[-1]["content"], 300),
                      "response_a": short(pair.response_a, 300), "response_b": short(pair.response_b, 300),
                      "verdict_a": round(float(got["v_a"][i]), 4), "verdict_b": round(float(got["v_b"][i]), 4),
                      "preferred": None if preferred[i] is None else ("a" if preferred[i] else "b"),
                      "driven_by": cols[top].name})
    interval = wilson_interval(int(differ.sum()), n)
    report = {"a": {"name": a.name, "path": str(a.path), "hash": a.hash, "principles": len(a.judge_principles),
                    "agreement_with_pairs": agreement(got["v_a"])},
              "b": {"name": b.name, "path": str(b.path), "hash": b.hash, "principles": len(b.judge_principles),
                    "agreement_with_pairs": agreement(got["v_b"])},
              "pairs": prefs.source, "pairs_used": n, "judge": cfg.judge_label(), "method": matrix.method,
              "differ": int(differ.sum()), "differ_rate": round(float(differ.mean()), 4) if n else None,
              "differ_interval": [round(x, 4) for x in interval] if interval else None,
              "drivers": drivers, "most_different": shown, "judgments": matrix.counts(),
              "failure_share": round(failure_share(matrix), 4), "usage": matrix.usage}
    RunDir(cfg.out).write_json(RunDir.REPORT, report)
    print(format_diff(report))
    if report["failure_share"] > cfg.max_failure_rate:
        note("constitution diff", f"{report['failure_share']:.0%} of the judgments failed (--max-failure-rate "
                                  f"{cfg.max_failure_rate:.0%}): exit 1; rerun to retry them")
        return 1
    note("constitution diff", f"-> {cfg.out}/report.json")
    return 0


def format_diff(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    low_high = report["differ_interval"] or [0, 0]
    lines = [f"A = {a['name']} ({a['principles']} judge principles), B = {b['name']} ({b['principles']})",
             f"verdicts differ on {report['differ']} of {report['pairs_used']} pairs "
             f"({report['differ_rate'] or 0:.1%}, 95 % interval {low_high[0]:.1%} to {low_high[1]:.1%})"]
    if a["agreement_with_pairs"] is not None:
        lines.append(f"agreement with the pairs' preferred responses: A {a['agreement_with_pairs']:.1%}, "
                     f"B {b['agreement_with_pairs']:.1%}")
    if report["differ"]:
        lines.append("what drives the difference (share of |A - B| on the pairs that differ):")
        width = max(len(d["principle"]) for d in report["drivers"])
        lines += [f"  {d['principle'].ljust(width)}  {d['drive']:>+7.1%}   share in A {d['share_a']:.2f}, "
                  f"in B {d['share_b']:.2f}" for d in report["drivers"] if abs(d["drive"]) >= 0.005]
        lines.append("pairs that differ most:")
        lines += [f"  {s['pair_id']}: A {s['verdict_a']:.2f}, B {s['verdict_b']:.2f} (driven by {s['driven_by']}): "
                  f"{short(s['prompt'], 70)}" for s in report["most_different"]]
    return "\n".join(lines)
