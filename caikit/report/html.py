"""`caikit report DIR`: one self-contained HTML page a person reads after a run.

DIR is any run directory: a `caikit run` / `caikit demo` layout (RUN/generate, RUN/judge, ...) or a single
stage's own directory (`caikit generate`, `judge`, `eval judge`, `eval`, or a trainer's output); see
caikit/report/sources.py for how it is told apart. The page opens with the verdict (caikit/report/verdict.py):
can the judge's labels, the reward model and the before/after differences be trusted. Every other part is
optional: the page renders what exists, and in a run layout says what is missing.

Model text is untrusted, so every value reaches the page through `html.escape`; the page also carries a
Content-Security-Policy that forbids scripts and network loads. Curves: caikit/report/charts.py.
"""

from __future__ import annotations

import dataclasses
import time
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from caikit.config import option
from caikit.errors import UserError
from caikit.report.charts import curves, svg_tradeoff_chart
from caikit.report.depth import depth_part
from caikit.report.iterations import iterations_part
from caikit.report.markup import Raw, cards, col, fmt, messages, missing, table, text
from caikit.report.principles import constitution_test_part, judge_principles_part
from caikit.report.sources import (
    TRAINERS,
    Layout,
    detect_layout,
    interval_of,
    is_num,
    read_json,
    read_text,
    reward_heldout,
    scan_jsonl,
)
from caikit.report.verdict import describe_heldout, verdict_html
from caikit.store import write_text_atomic

TEMPLATE = Path(__file__).with_name("templates") / "report.html"


@dataclasses.dataclass
class ReportConfig:
    run_dir: str = option(help="a run directory: `caikit run` / `caikit demo` output, or one stage's own "
                               "(generate, judge, eval judge, eval, train ...)")
    out: str = option("", help="where to write the page (default: RUN_DIR/report.html)")
    max_examples: int = option(8, low=0, high=10_000, help="examples shown per section (SL-CAI traces, before/after answers, pairs)")

    def validate(self) -> None:
        if self.max_examples < 0:
            raise UserError("--max-examples must be >= 0")


# ---------------------------------------------------------------- sections

def _header(layout: Layout) -> tuple[str, str]:
    """(the title, the table of stages and their status)."""
    run_config = layout.run_config
    name = run_config.get("name") or layout.root.resolve().name
    rows = []
    for stage in layout.stages.values():
        seconds = f"{fmt(stage.seconds)} s" if is_num(stage.seconds) else "—"
        css = stage.status.replace(" ", "-")
        rows.append(f'<tr><td>{escape(stage.name)}</td><td><span class="status {escape(css)}">{escape(stage.label)}'
                    f'</span></td><td class="num">{seconds}</td>'
                    f'<td><span class="tag">{escape(stage.config_hash)}</span></td></tr>')
    total = sum(s.seconds for s in layout.stages.values() if is_num(s.seconds))
    what = (f"One {next(iter(layout.stages))} stage directory" if layout.kind == "stage"
            else escape(str(run_config.get("description") or "")) + " Run directory")
    title = (f'<header><h1>{escape(str(name))}</h1><p class="sub">{what} <code>{escape(str(layout.root))}</code>'
             f'{f", {total:.0f} s of stage time" if total else ""}.</p></header>')
    out = []
    if rows:
        out.append('<table><thead><tr><th>stage</th><th>status</th><th class="num">time</th>'
                   f"<th>config hash</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if layout.kind == "run" and not layout.state:
        out.append(missing("No state.json: stage status and timings unknown."))
    return title, "".join(out)


def _counts(layout: Layout, max_examples: int) -> str:
    gen, judge = layout.dir("generate"), layout.dir("judge")
    items: list[tuple[str, Any]] = []
    if gen is not None:
        usage, stats = read_json(gen / "usage.json"), read_json(gen / "stats.json")
        traces, _ = scan_jsonl(gen / "traces.jsonl", 0)
        items += [("prompts", stats.get("prompts", usage.get("prompts"))),
                  ("traces", stats.get("traces", usage.get("traces", traces))),
                  ("failures", stats.get("failures", usage.get("failures", scan_jsonl(gen / "failures.jsonl", 0)[0]))),
                  ("SFT examples", stats.get("sft_examples", scan_jsonl(gen / "sft.jsonl", 0)[0])),
                  ("truncated", stats.get("truncated")), ("degenerate", stats.get("degenerate"))]
    stats = read_json(judge / "stats.json") if judge is not None else {}
    if judge is not None:
        items += [("judgments", scan_jsonl(judge / "judgments.jsonl", 0)[0]),
                  ("preference pairs", scan_jsonl(judge / "preferences.jsonl", 0)[0])]
        items += [(("judge " if k == "failures" else "") + k.replace("_", " "), stats[k])
                  for k in ("failures", "ties", "dropped", "position_consistency", "position_consistency_rate")
                  if k in stats and not isinstance(stats[k], (dict, list))]
    if not items:
        return missing("No generate/ or judge/ directory: no data counts.") if layout.kind == "run" else ""
    out = [cards([(k, v) for k, v in items if v is not None])]
    if stats:
        flat = [(f"{k}.{k2}" if isinstance(v, dict) else k, v2)
                for k, v in stats.items() for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])]
        out.append("<details><summary>all judge statistics</summary>" + table(["statistic", "value"], flat, [1])
                   + "</details>")
    return "".join(out)


def _usage(layout: Layout, max_examples: int) -> str:
    rows, cost, unknown = [], 0.0, False
    for stage in layout.stages.values():
        u = read_json(stage.path / "usage.json")
        if not u:
            continue
        priced = u.get("price_known", True) is not False and is_num(u.get("cost_usd", 0.0))
        unknown |= not priced
        cost += (u.get("cost_usd") or 0.0) if priced else 0.0
        rows.append([stage.name, u.get("model"), u.get("requests"), u.get("prompt_tokens"), u.get("completion_tokens"),
                     u.get("cached_tokens"), u.get("total_tokens"),
                     f"${u.get('cost_usd') or 0:.4f}" if priced else "unknown price"])
    if not rows:
        return missing("No usage.json in any stage: token usage unknown.") if layout.kind == "run" else ""
    note = f"<p>Estimated cost: <b>${cost:.4f}</b>{' (plus models with no known price)' if unknown else ''}.</p>"
    return note + table(["stage", "model", "requests", "prompt tokens", "completion tokens", "cached tokens",
                         "total tokens", "cost"], rows, range(2, 8))


def _training(layout: Layout, max_examples: int) -> str:
    out = []
    for stage in layout.stages.values():
        stage_dir = layout.dir(stage.name)
        if stage_dir is None or stage.name not in (*TRAINERS, "training"):
            continue
        where = layout.rel(stage.name, "")
        out.append(f"<h3>{escape(stage.name)}</h3>")
        if stage.name == "reward":
            heldout = describe_heldout(reward_heldout(stage_dir))
            out.append(f"<p>{escape(heldout[:1].upper() + heldout[1:])}.</p>")
        steps, rows = scan_jsonl(stage_dir / "metrics.jsonl", 10**9)
        if not rows and not (stage_dir / "plots").is_dir():
            out.append(missing(f"{where}metrics.jsonl is missing or empty: no curves."))
        else:
            keys = sorted({k for r in rows for k, v in r.items() if is_num(v) and k not in ("step", "time")})
            first = lambda k: next((r[k] for r in rows if is_num(r.get(k))), None)  # noqa: E731
            last = lambda k: next((r[k] for r in reversed(rows) if is_num(r.get(k))), None)  # noqa: E731
            if rows:
                out.append(f"<p>{steps} logged steps (last step {fmt(rows[-1].get('step'))}).</p>")
                out.append(table(["metric", "first", "last"], [[k, first(k), last(k)] for k in keys], [1, 2]))
            out.append(curves(stage_dir, where))
        n_warn, warnings = scan_jsonl(stage_dir / "warnings.jsonl", 50)
        if n_warn:
            out.append(f'<p class="warn"><b>{n_warn} training warning(s)</b> (see {escape(where)}warnings.jsonl):</p>'
                       + table(["step", "kind", "message"],
                               [[w.get("step"), w.get("kind"), w.get("message")] for w in warnings], [0]))
        n_samples, samples = scan_jsonl(stage_dir / "samples.jsonl", 10**9)
        if n_samples and max_examples:
            out.append(f"<details><summary>probe answers during training (last {min(max_examples, n_samples)} of "
                       f"{n_samples})</summary>")
            for s in samples[-max_examples:]:
                out.append(f'<div class="example"><div class="meta">step {fmt(s.get("step"))} · score '
                           f'{fmt(s.get("score"))}</div>{messages(s.get("prompt"))}{text(s.get("response"))}</div>')
            out.append("</details>")
    if out or layout.kind == "stage":
        return "".join(out)
    return missing("No sft/, reward/, dpo/ or ppo/ directory: no training ran.")


def _with_interval(value: Any, interval: Any, signed: bool = False) -> Raw:
    """A table cell: the value, and its 95 % interval beneath it."""
    pair = interval_of(interval)
    span = "" if pair is None else f"{pair[0]:+.3f} to {pair[1]:+.3f}" if signed else f"{pair[0]:.3f}–{pair[1]:.3f}"
    return Raw(fmt(value) + (f'<span class="ci">{span}</span>' if span else ""))


def _noise_cell(row: dict) -> Raw:
    """The row's verdict, its first words ("beyond noise" / "within noise") in bold: facts, not colours (the
    verdict box says which of them matter)."""
    head, _, rest = str(row.get("verdict") or "no interval").partition(": ")
    if row.get("beyond_noise") is None:
        return Raw(f'<span class="missing">{escape(head)}</span>')
    return Raw(f'<span class="noise">{escape(head)}</span><span class="ci">{escape(rest)}</span>')


def _eval(layout: Layout, max_examples: int) -> str:
    eval_dir = layout.dir("eval")
    if eval_dir is None and layout.kind == "stage":
        return ""
    report = read_json(eval_dir / "report.json") if eval_dir is not None else {}
    out = []
    if report:
        models = report.get("models") or {}
        if isinstance(models, dict) and models:
            out.append("<p>" + " · ".join(f"{escape(str(k))}: <code>{escape(str(v))}</code>"
                                          for k, v in models.items()) + "</p>")
        rows = []
        for r in report.get("table") or []:
            if isinstance(r, dict):
                b, a = r.get("before"), r.get("after")
                change = a - b if is_num(a) and is_num(b) else None
                if "interval" in r:  # a win-rate: one number, P(after better), with its interval under "after"
                    cells = [b, _with_interval(a, r.get("interval")), None]
                else:
                    cells = [_with_interval(b, r.get("interval_before")), _with_interval(a, r.get("interval_after")),
                             _with_interval(change, r.get("interval_change"), signed=True)]
                rows.append([r.get("metric"), *cells, _noise_cell(r) if "beyond_noise" in r else None, r.get("note")])
        out.append('<p class="sub">Each figure carries its 95 % interval beneath it (Student\'s t over prompts, '
                   "Wilson for refusal rates); a win-rate's interval is of P(after better), beyond noise when it "
                   "excludes 0.5; a change is beyond noise when its paired interval excludes 0; with fewer than "
                   "10 pairs there is no verdict (too few pairs to tell).</p>")
        out.append(table(["metric", "before", "after", "change", "noise", "note"], rows, [1, 2, 3]))
        yardstick = report.get("harm_yardstick")
        if isinstance(yardstick, dict) and isinstance(yardstick.get("points"), dict):
            chart = svg_tradeoff_chart(yardstick["points"])
            if chart:
                out.append(f'<h3 id="harm-tradeoff">Harm / over-refusal</h3><figure class="chart">{chart}'
                           f'<figcaption>{escape(str(yardstick.get("description", "")))}; '
                           f'{yardstick.get("harmful_prompts")} harmful and {yardstick.get("benign_prompts")} '
                           "benign requests; bars are 95 % Wilson intervals.</figcaption></figure>")
        extra = {k: v for k, v in report.items() if k not in ("models", "table", "harm_yardstick")}
        for key, value in extra.items():
            pairs = value.items() if isinstance(value, dict) else [(key, value)]
            out.append(f"<details><summary>{escape(key)}</summary>" + table(["", "value"], pairs, [1]) + "</details>")
    else:
        out.append(missing("No eval/report.json: the before/after evaluation has not run."))
    n, samples = scan_jsonl(eval_dir / "samples.jsonl", max_examples) if eval_dir is not None else (0, [])
    if samples:
        out.append(f'<h3 id="before-after">Before / after answers ({len(samples)} of {n})</h3>')
        for s in samples:
            p = s.get("judge_p_after")
            meta = f'<span class="tag">{escape(str(s.get("kind", "")))}</span>'
            meta += f" · judge P(after is better) = {fmt(p)}" if p is not None else ""
            out.append(f'<article class="example before-after"><div class="meta">{meta}</div>'
                       f'{messages(s.get("prompt"))}<div class="cols">{col("before", text(s.get("before")))}'
                       f'{col("after", text(s.get("after")))}</div></article>')
    return "".join(out)


def _traces(layout: Layout, max_examples: int) -> str:
    gen = layout.dir("generate")
    if gen is None and layout.kind == "stage":
        return ""
    n, traces = scan_jsonl(gen / "traces.jsonl", max_examples) if gen is not None else (0, [])
    if not traces:
        return missing(f"No {layout.rel('generate', 'traces.jsonl')}: no critique/revision examples.")
    out = [f"<p>{len(traces)} of {n} traces. Each round reads the answer on the left, critiques it under one "
           "principle, and rewrites it.</p>"]
    for t in traces:
        model = t.get("backend", {}).get("model", "") if isinstance(t.get("backend"), dict) else ""
        out.append(f'<article class="example trace"><div class="meta">prompt <span class="tag">'
                   f'{escape(str(t.get("prompt_id", "")))}</span>{" · " + escape(str(model)) if model else ""}</div>'
                   + messages(t.get("prompt")))
        answer, heading = t.get("initial_response", ""), "initial answer"
        rounds = t.get("rounds") if isinstance(t.get("rounds"), list) else []
        for i, r in enumerate(rounds):
            r = r if isinstance(r, dict) else {}
            request = (f'<details><summary>critique request</summary>{text(r["critique_request"])}</details>'
                       if r.get("critique_request") else "")
            principle = f'critique · <span class="tag">{escape(str(r.get("principle_id", "?")))}</span>'
            out.append(f'<div class="cols">{col(heading, text(answer))}'
                       f'{col(principle, request + text(r.get("critique")))}'
                       f'{col(f"revision {i + 1}", text(r.get("revision")))}</div>')
            answer, heading = r.get("revision", ""), f"revision {i + 1}"
        if not rounds:
            out.append(f'<div class="cols">{col(heading, text(answer))}</div>')
        out.append("</article>")
    return "".join(out)


def _pairs(layout: Layout, max_examples: int) -> str:
    judge = layout.dir("judge")
    n, pairs = scan_jsonl(judge / "preferences.jsonl", max_examples) if judge is not None else (0, [])
    if not pairs:
        return ""
    out = [f"<details{' open' if layout.kind == 'stage' else ''}><summary>preference pairs ({len(pairs)} of {n})"
           "</summary>"]
    def last_turn(turns: Any) -> Any:
        return turns[-1].get("content") if isinstance(turns, list) and turns and isinstance(turns[-1], dict) else turns

    for p in pairs:
        out.append(f'<article class="example pair"><div class="meta">{escape(str(p.get("source", "")))} · judge '
                   f'P(chosen better) {fmt(p.get("p_chosen"))}</div>{messages(p.get("prompt"))}<div class="cols">'
                   f'{col("chosen", text(last_turn(p.get("chosen"))))}'
                   f'{col("rejected", text(last_turn(p.get("rejected"))))}'
                   "</div></article>")
    return "".join(out) + "</details>"


def _failures(layout: Layout, max_examples: int) -> str:
    out = []
    for stage in layout.stages.values():
        d = layout.dir(stage.name)
        n, failures = scan_jsonl(d / "failures.jsonl", max_examples) if d is not None else (0, [])
        if n:
            out.append(f'<p class="warn">{escape(stage.name)}: {n} item(s) failed after retries '
                       f"(first {len(failures)}):</p>" + table(["item", "attempts", "error"],
                                      [[f.get("prompt_id", f.get("pair_id", f.get("id"))), f.get("attempts"),
                                        f.get("error")] for f in failures], [1]))
    return "".join(out)


def _config(layout: Layout, max_examples: int) -> str:
    files = [] if layout.kind == "stage" else [("run config", layout.root / "config.yaml")]
    files += [(f"{s.name} config", s.path / "config.yaml") for s in layout.stages.values()]
    out = []
    for label, path in files:
        content = read_text(path)
        if content is not None:
            opened = " open" if label == "run config" else ""
            out.append(f"<details{opened}><summary>{escape(label)} "
                       f"({escape(str(path.relative_to(layout.root)))})</summary>"
                       f'<pre class="config">{escape(content)}</pre></details>')
    if out or layout.kind == "stage":
        return "".join(out)
    return missing("No config.yaml in the run directory.")


# ---------------------------------------------------------------- page

SECTIONS = [
    ("counts", "Data", (_counts, _failures)),
    ("usage", "Token usage and cost", (_usage,)),
    ("training", "Training", (_training,)),
    ("iterations", "Online DPO iterations", (iterations_part,)),
    ("eval", "Evaluation: before vs after", (_eval,)),
    ("principles", "Constitution principles", (constitution_test_part, judge_principles_part)),
    ("depth", "Depth: how deep did the alignment go?", (depth_part,)),
    ("examples", "Critique and revision examples", (_traces, _pairs)),
    ("config", "Configuration", (_config,)),
]


def build_report(run_dir: str | Path, out: str | Path | None = None, max_examples: int = 8) -> Path:
    """Write the HTML report of `run_dir` (default `run_dir/report.html`) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("not a run directory", path=str(run_dir))
    layout = detect_layout(run_dir)
    if not layout.stages and not layout.run_config and not layout.state:
        raise UserError("nothing to report: no caikit run here (no run.json, state.json, config.yaml, metrics.jsonl "
                        "or stage directory)", path=str(run_dir))
    sections = []
    for key, title, parts in SECTIONS:
        html = []
        for part in parts:
            try:
                html.append(part(layout, max_examples))
            except Exception as e:  # noqa: BLE001 -- one malformed file must not cost the whole page
                html.append(missing(f"could not render this part ({type(e).__name__}: {e})"))
        if any(html):  # one stage's own directory leaves out the sections it has nothing for
            sections.append((key, title, "".join(html)))
    try:
        verdict = verdict_html(layout)
    except Exception as e:  # noqa: BLE001
        verdict = missing(f"could not work out the verdict ({type(e).__name__}: {e})")
    nav = "<nav>" + "".join(f'<a href="#{key}">{escape(title)}</a>'
                            for key, title in [("verdict", "Verdict")] * bool(verdict) + [s[:2] for s in sections])
    title, stages = _header(layout)
    body = [title, verdict, stages, nav + "</nav>"]
    body += [f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections]
    title = f"caikit report: {layout.run_config.get('name') or run_dir.resolve().name}"
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=escape(str(title)), body="".join(body), generated=escape(time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    path = Path(out) if out else run_dir / "report.html"
    write_text_atomic(path, page)
    return path


def report_command(cfg: ReportConfig) -> int:
    path = build_report(cfg.run_dir, cfg.out or None, cfg.max_examples)
    print(f"caikit report: wrote {path}")
    return 0
