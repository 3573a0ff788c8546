"""The report's parts for constitution principles: a judge run's per-principle table (stats.json, or the
principle_stats.json `caikit constitution stats` writes, which may hold more human labels) and a `caikit
constitution test` run's report.json (per principle, the redundant and conflicting pairs). Every value reaches
the page through `fmt` / `html.escape`."""

from __future__ import annotations

from html import escape
from typing import Any

from caikit.report.markup import Raw, table
from caikit.report.sources import Layout, interval_of, is_num, read_json


def _rate(value: Any) -> Raw:
    """A rate with its 95 % interval beneath it and its n; a dash when there is none."""
    if not isinstance(value, dict) or not is_num(value.get("rate")):
        return Raw("—")
    cell = escape(f"{value['rate']:.0%}")
    interval = interval_of(value.get("interval"))
    if interval is not None:
        cell += f'<span class="ci">{interval[0]:.0%}–{interval[1]:.0%} of {escape(str(value.get("n")))}</span>'
    return Raw(cell)


def judge_principles_part(layout: Layout, max_examples: int) -> str:
    judge = layout.dir("judge")
    if judge is None:
        return ""
    saved = read_json(judge / "principle_stats.json")
    rows = saved.get("principles") or read_json(judge / "stats.json").get("per_principle") or []
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return ""
    source = "principle_stats.json" if saved.get("principles") else "stats.json"
    out = [f'<h3>Judge principles</h3><p class="sub">Each principle\'s own verdicts in this judge run '
           f"({escape(layout.rel('judge', source))}): pairs it judged, how often both orders agreed, how often its "
           "pick was the judgment's (with one principle per pair that is every pair), and how often it picked what "
           "people picked, where human choices are known.</p>"]
    out.append(table(["principle", "pairs", "position consistency", "decided the pair", "shared with others",
                      "agreement with people"],
                     [[r.get("principle_id"), r.get("pairs"), _rate(r.get("position_consistency")),
                       _rate(r.get("decided")), r.get("with_others"),
                       _rate(r.get("human_agreement")) if r.get("human_agreement") else "no human labels"]
                      for r in rows], [1, 2, 3, 4, 5]))
    return "".join(out)


def _cases(value: Any) -> Raw:
    if not isinstance(value, dict) or not value.get("n"):
        return Raw("—")
    return _rate(value)


def constitution_test_part(layout: Layout, max_examples: int) -> str:
    where = layout.dir("constitution-test")
    report = read_json(where / "report.json") if where is not None else {}
    rows = [r for r in report.get("principles") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    out = [f'<p class="verdict">{escape(str(report.get("verdict", "")))}</p>',
           f'<p class="sub">Constitution <code>{escape(str(report.get("constitution")))}</code> tested with the judge '
           f'<code>{escape(str(report.get("judge")))}</code> ({escape(str(report.get("method")))}, both orders, one '
           "principle per judgment). Accuracy is on the principle's own cases; consistency, confidence and unreadable "
           f"answers are over every pair it judged. A principle fails below {escape(str(report.get('min_accuracy')))} "
           "accuracy.</p>"]
    out.append(table(["principle", "judge cases", "critique cases", "position consistency", "mean confidence",
                      "unreadable", "verdict"],
                     [[r.get("id"), _cases(r.get("judge_cases")), _cases(r.get("critique_cases")),
                       _rate(r.get("position_consistency")), r.get("mean_confidence"), r.get("unreadable_share"),
                       "; ".join([str(r.get("status")), *(r.get("fails") or []), *(r.get("cannot_apply") or [])])]
                      for r in rows], [1, 2, 3, 4, 5]))
    relations = [r for r in report.get("relations") or [] if isinstance(r, dict) and (r.get("redundant")
                                                                                      or r.get("conflicting"))]
    if relations:
        out.append("<h3>Redundant and conflicting principles</h3>")
        out.append(table(["principles", "relation", "pairs both decided", "agreement", "p (disagreement by chance)"],
                         [[" and ".join(map(str, r.get("principles") or [])),
                           "redundant" if r.get("redundant") else "conflicting", r.get("shared"), r.get("agreement"),
                           r.get("conflict_p")] for r in relations[: max(max_examples, 1) * 4]], [2, 3, 4]))
    return "".join(out)
