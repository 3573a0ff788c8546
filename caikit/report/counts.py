"""The per-stage counts of the report's verdict: which stage dropped too much of its work to be shown green.

A stage that fails nothing can still lose most of its items: answers cut at max tokens, revisions that changed
nothing, traces the judge skipped. More than DROPPED_SHARE of a stage's items dropped turns its row amber, with the
count in words.
"""

from __future__ import annotations

from html import escape

from caikit.report.markup import table
from caikit.report.sources import is_num

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
