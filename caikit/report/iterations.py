"""The report's part for `caikit train online-dpo`: its iterations.json as a table and four curves against the
iteration (judge win-rate against the initial policy, KL from it, answer length, diversity), with the
length-growth warnings. Every value reaches the page through `fmt` / `html.escape`."""

from __future__ import annotations

from html import escape

from caikit.report.charts import svg_line_chart
from caikit.report.markup import Raw, missing, table
from caikit.report.sources import Layout, interval_of, is_num, read_json, scan_jsonl

# chart title -> the iterations.json columns it draws
CHARTS = {
    "judge win-rate vs the initial policy": ("win_rate_vs_initial",),
    "KL from the initial policy (nats per answer)": ("kl_from_initial",),
    "answer length (words)": ("mean_length_words",),
    "diversity": ("distinct_1", "distinct_2"),
}


def _win_rate(row: dict) -> Raw:
    interval = interval_of(row.get("win_rate_interval"))
    value = row.get("win_rate_vs_initial")
    cell = escape(f"{value:.3f}") if is_num(value) else "—"
    if interval is not None:
        cell += f'<span class="ci">{interval[0]:.3f}–{interval[1]:.3f}</span>'
    return Raw(cell)


def iterations_part(layout: Layout, max_examples: int) -> str:
    where = layout.dir("online_dpo")
    if where is None:
        return ""
    rows = [r for r in read_json(where / "iterations.json").get("iterations") or [] if isinstance(r, dict)]
    if not rows:
        return missing(f"{layout.rel('online_dpo', 'iterations.json')} is missing or empty: no iteration finished.")
    out = ['<p class="sub">One row per policy: π<sub>0</sub> is the starting policy, π<sub>i</sub> the policy after '
           "i rounds of sampling, judging and DPO, each described by its own answers. The win-rate is the judge's "
           "mean P(π<sub>i</sub>'s answer better than π<sub>0</sub>'s) on the same prompts, both orders averaged, "
           "with its 95 % bootstrap interval beneath; length counts every answer, cut ones included. A judge that "
           "rewards length shows here first: the win-rate rises with the length.</p>"]
    body = []
    for r in rows:
        judge = r.get("judge") if isinstance(r.get("judge"), dict) else {}
        body.append([r.get("iteration"), _win_rate(r), r.get("kl_from_initial"), r.get("mean_length_words"),
                     r.get("length_growth"), r.get("truncated_share"), r.get("distinct_1"), r.get("distinct_2"),
                     r.get("dpo_pairs"), judge.get("gate")])
    out.append(table(["iteration", "win-rate vs π0", "KL from π0", "words per answer", "length × π0",
                      "cut at the limit", "distinct-1", "distinct-2", "DPO pairs", "judge gate"], body,
                     range(0, 9)))
    charts = []
    for title, keys in CHARTS.items():
        series = {k: [(r["iteration"], r[k]) for r in rows if is_num(r.get(k)) and is_num(r.get("iteration"))]
                  for k in keys}
        chart = svg_line_chart(title, {k: v for k, v in series.items() if v}, x_label="iteration")
        if chart:
            charts.append(f"<figure>{chart}</figure>")
    out.append('<div class="plots">' + "".join(charts) + "</div>")
    count, warnings = scan_jsonl(where / "warnings.jsonl", 50)
    if count:
        out.append(f'<p class="warn"><b>{count} warning(s)</b> '
                   f"({escape(layout.rel('online_dpo', 'warnings.jsonl'))}):</p>"
                   + table(["iteration", "kind", "message"],
                           [[w.get("iteration"), w.get("kind"), w.get("message")] for w in warnings], [0]))
    return "".join(out)
