"""What went wrong inside the stages, for the report's verdict: failures, dropped items, and the collapse and
reward-hacking monitors `caikit eval` ran on the before/after answers.

A stage that fails nothing can still lose most of its items: answers cut at max tokens, revisions that changed
nothing, traces the judge skipped. More than DROPPED_SHARE of a stage's items dropped turns its row amber, with the
count in words.
"""

from __future__ import annotations

from html import escape

from caikit.report.finding import Finding
from caikit.report.markup import table
from caikit.report.sources import Layout, is_num, read_json, stage_counts

COUNTS = "Failures and dropped items"  # the finding that the page shows as a table
MONITORS = "Collapse and reward hacking"
SERIOUS = ("distinct_collapse", "kl_explosion", "prompt_copying")  # red; a length change alone is amber

DROPPED_SHARE = 0.10  # a stage that dropped (cut, degenerate, skipped) more than this share of its items is amber


def dropped(c: dict) -> tuple[int, int, str] | None:
    """(items dropped, items the stage had, what they are) for one stage_counts row; None where it cannot say.
    Generate drops prompts (truncated or degenerate revisions); judge skips traces before judging (pairs + skipped
    = traces it read); eval's truncated answers are out of both models' answers (2 per pair)."""
    n = sum(c[k] for k in ("truncated", "degenerate", "skipped") if is_num(c.get(k)))
    if not is_num(c.get("of")) or not n:
        return None
    if c["stage"] == "judge":
        return int(n), int(c["of"] + n), "traces"
    if c["stage"].startswith("eval"):
        return int(n), int(2 * c["of"]), "answers"
    return int(n), int(c["of"]), str(c.get("unit") or "items")


def over_dropped(c: dict) -> bool:
    share = dropped(c)
    return share is not None and share[1] > 0 and share[0] / share[1] > DROPPED_SHARE


def counts_grid(counts: list[dict]) -> str:
    """The per-stage counts table; a stage that dropped more than DROPPED_SHARE of its items is an amber row that
    says so in words."""
    grid = table(["stage", "failures", "truncated", "degenerate", "skipped", "of"],
                 [[c["stage"], c["failures"], c["truncated"], c["degenerate"],
                   f"{c['skipped']} ({c['why']})" if c.get("why") else c["skipped"],
                   f"{c['of']} {c['unit']}" if is_num(c.get("of")) else None] for c in counts], [1, 2, 3])
    head, _, body = grid.partition("<tbody>")
    rows = body.removesuffix("</tbody></table>").split("</tr>")[:-1]
    out = []
    for c, row in zip(counts, rows):
        if over_dropped(c):
            n, total, unit = dropped(c)
            row = row.replace("<tr>", '<tr class="v-warn">', 1) + (
                f'</tr><tr class="v-warn"><td colspan="6">{escape(c["stage"])} dropped {n} of {total} {escape(unit)} '
                f"({100 * n / total:.0f} %): more than {DROPPED_SHARE:.0%}</td>")
        out.append(row + "</tr>")
    return f"{head}<tbody>{''.join(out)}</tbody></table>"


def counts_finding(layout: Layout) -> Finding | None:
    counts = stage_counts(layout)
    if not counts:
        return None
    parts = []
    for c in counts:
        items = [f"{c[k]} {'failure' if k == 'failures' and c[k] == 1 else k}"
                 for k in ("failures", "truncated", "degenerate", "skipped") if is_num(c.get(k))]
        why = f" ({c['why']})" if c.get("why") else ""
        parts.append(f"{c['stage']} {', '.join(items) or 'no counts recorded'}{why}")
    failed = sum(c["failures"] for c in counts if is_num(c.get("failures")))
    empty = [c for c in counts if is_num(c.get("of")) and c["of"] > 0 and is_num(c.get("failures"))
             and c["failures"] >= c["of"]]
    if empty:  # a stage whose every item failed: nothing came out of it, whatever --max-failure-rate allowed
        said = ", ".join(f"{c['stage']} ({c['failures']} of {c['of']} {c['unit']} failed)" for c in empty)
        return Finding(COUNTS, "bad", f"Nothing came out: every item failed in {said}.", "NOTHING CAME OUT",
                       "; ".join(parts) + ".")
    heavy = [(c["stage"], *dropped(c)) for c in counts if over_dropped(c)]
    words = "; ".join(f"{stage} dropped {n} of {total} {unit} ({100 * n / total:.0f} %)"
                      for stage, n, total, unit in heavy)
    if failed:
        text = f"{failed} item{'s' if failed != 1 else ''} failed." + (f" Also: {words}." if words else "")
    else:
        text = (f"Nothing failed, but more than {DROPPED_SHARE:.0%} was dropped: {words}." if words
                else "Nothing failed.")
    badge = f"{failed} FAILURE{'S' if failed != 1 else ''}" if failed else ("DROPPED" if heavy else "")
    return Finding(COUNTS, "warn" if failed or heavy else "good", text, badge, "; ".join(parts) + ".")


def monitors_finding(layout: Layout) -> Finding | None:
    """What the mode-collapse and reward-hacking monitors found between the starting and the trained model's answers
    (`caikit eval`'s report.json "monitors"); None when no eval ran them."""
    eval_dir = layout.dir("eval")
    report = read_json(eval_dir / "report.json") if eval_dir is not None else {}
    fired = report.get("monitors")
    if not isinstance(fired, list):
        return None
    fired = [m for m in fired if isinstance(m, dict)]
    if not fired:
        return Finding(MONITORS, "good", "No sign of mode collapse or reward hacking in the trained model's answers:",
                       facts="distinct-n, KL per response, answer length and prompt copying are within bounds.")
    serious = any(m.get("kind") in SERIOUS for m in fired)
    kinds = ", ".join(str(m.get("kind", "?")).replace("_", " ") for m in fired)
    return Finding(MONITORS, "bad" if serious else "warn", f"The trained model shows signs of {kinds}:",
                   "COLLAPSE" if serious else "LENGTH", "; ".join(str(m.get("message", "")) for m in fired) + ".")
