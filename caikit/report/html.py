"""`caikit report RUN_DIR`: one self-contained HTML page a person reads after a run.

Every part of a run directory is optional: the page renders what exists and says what is missing.
Model text is untrusted, so every value reaches the page through `html.escape`; the page also carries
a Content-Security-Policy that forbids scripts and network loads. Curves are the trainers' PNGs
(embedded as base64 data URIs), drawn now with `plots.plot_metrics` when a stage has metrics but no
PNGs, or as inline SVG when matplotlib is unavailable.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import tempfile
import time
from html import escape
from pathlib import Path
from string import Template
from typing import Any, Iterable

from caikit.config import option
from caikit.errors import UserError

STAGES = ("generate", "judge", "sft", "reward", "dpo", "ppo", "eval")
TRAIN_STAGES = ("sft", "reward", "dpo", "ppo")
# Metrics drawn first when we have to chart a stage ourselves (at most SVG_METRICS of them).
MAIN_METRICS = ("loss", "eval_loss", "reward_accuracy", "reward_margin", "score", "kl", "kl_coef", "entropy")
SVG_METRICS = 4
TEMPLATE = Path(__file__).with_name("templates") / "report.html"


@dataclasses.dataclass
class ReportConfig:
    run_dir: str = option(help="run directory written by caikit run / caikit demo")
    out: str = option("", help="where to write the page (default: RUN_DIR/report.html)")
    max_examples: int = option(8, help="examples shown per section (SL-CAI traces, before/after answers, pairs)")

    def validate(self) -> None:
        if self.max_examples < 0:
            raise UserError("--max-examples must be >= 0")


# ---------------------------------------------------------------- reading (tolerant of partial runs)

def _read_json(path: Path) -> dict:
    """A JSON object, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _scan_jsonl(path: Path, keep: int) -> tuple[int, list[dict]]:
    """(number of distinct rows, the latest version of the first `keep` of them); torn lines are skipped.

    Rows with an `id` are deduplicated by it (append-only stores may supersede a row).
    """
    seen: set[str] = set()
    kept: dict[Any, dict] = {}
    count = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                key = str(row.get("id", f"#{i}"))
                if key not in seen:
                    seen.add(key)
                    count += 1
                    if len(kept) < keep:
                        kept[key] = row
                elif key in kept:
                    kept[key] = row
    except OSError:
        return 0, []
    return count, list(kept.values())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(_read_text(path) or "")
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------- small HTML pieces

def _fmt(value: Any) -> str:
    """A number or value as short escaped text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, ensure_ascii=False))
    return escape(str(value))


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(header: list[str], rows: Iterable[list[Any]], numeric: Iterable[int] = ()) -> str:
    """Cells are formatted with `_fmt` (escaped); columns in `numeric` are right-aligned."""
    numeric = set(numeric)
    cls = lambda j: ' class="num"' if j in numeric else ""  # noqa: E731
    head = "".join(f"<th{cls(j)}>{escape(h)}</th>" for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(j)}>{_fmt(v)}</td>" for j, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(items: list[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{_fmt(v)}</div><div class="k">{escape(k)}</div></div>'
        for k, v in items) + "</div>"


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _text(value: Any) -> str:
    """Untrusted text (model output, errors), escaped, whitespace kept."""
    value = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f'<pre class="text">{escape(value)}</pre>'


def _messages(messages: Any) -> str:
    """A chat prompt; the system turn is folded away, other turns are labelled with their role."""
    if not isinstance(messages, list):
        return _text(messages or "")
    parts = []
    for m in messages:
        m = m if isinstance(m, dict) else {"role": "?", "content": m}
        turn = f'<span class="role">{escape(str(m.get("role", "?")))}</span>{_text(m.get("content", ""))}'
        parts.append(f"<details><summary>system prompt</summary>{turn}</details>"
                     if m.get("role") == "system" else turn)
    return '<div class="prompt">' + "".join(parts) + "</div>"


def _col(title_html: str, body: str) -> str:
    return f'<div class="col"><h4>{title_html}</h4>{body}</div>'


def _png(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def svg_line_chart(title: str, series: dict[str, list[tuple[float, float]]],
                   width: int = 480, height: int = 220) -> str:
    """An inline SVG line chart of (step, value) points; one polyline per series, shared axes.

    Plot area: x in [48, width - 12], y in [24, height - 28] pixels; the smallest value sits on the
    bottom edge, the largest on the top one (a flat series is drawn across the middle).
    """
    points = [p for pts in series.values() for p in pts]
    if not points:
        return ""
    left, right, top, bottom = 48.0, width - 12.0, 24.0, height - 28.0
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: left + (x - x0) / (x1 - x0) * (right - left)  # noqa: E731
    sy = lambda y: bottom - (y - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
    colours = ("#2f5fa7", "#c0392b", "#1f7a44", "#9a6400")
    lines, legend = [], []
    for i, (name, pts) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{coords}"/>')
        legend.append(f'<text x="{right:.0f}" y="{14 + 13 * i}" text-anchor="end" fill="{colour}" '
                      f'font-size="11">{escape(name)}</text>')
    label = 'font-size="10" fill="#5d6778"'
    axes = (f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#aab2c0"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#aab2c0"/>'
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" {label}>{y1:.3g}</text>'
            f'<text x="{left - 4}" y="{bottom}" text-anchor="end" {label}>{y0:.3g}</text>'
            f'<text x="{left}" y="{bottom + 14}" {label}>{x0:g}</text>'
            f'<text x="{right}" y="{bottom + 14}" text-anchor="end" {label}>{x1:g}</text>'
            f'<text x="{(left + right) / 2}" y="{bottom + 24}" text-anchor="middle" {label}>step</text>')
    heading = f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">{heading}{axes}{"".join(lines)}{"".join(legend)}</svg>')


# ---------------------------------------------------------------- sections

def _header(run_dir: Path, run_config: dict, state: dict) -> str:
    name = run_config.get("name") or run_dir.resolve().name
    stages = state.get("stages", {}) if isinstance(state.get("stages"), dict) else {}
    planned = run_config.get("stages") if isinstance(run_config.get("stages"), dict) else {}
    rows = []
    for stage in STAGES:
        info = stages.get(stage) if isinstance(stages.get(stage), dict) else None
        if info is not None:
            status = str(info.get("status", "?"))
        elif (run_dir / stage).is_dir():
            status = "present"
        elif stage in planned:
            status = "not run"
        else:
            continue
        seconds = info.get("seconds") if info else None
        rows.append(f'<tr><td>{escape(stage)}</td><td><span class="status {escape(status)}">{escape(status)}'
                    f'</span></td><td class="num">{_fmt(seconds) + " s" if _is_num(seconds) else "—"}</td>'
                    f'<td><span class="tag">{escape(str((info or {}).get("config_hash", "")))}</span></td></tr>')
    total = sum(s.get("seconds", 0) for s in stages.values() if isinstance(s, dict) and _is_num(s.get("seconds")))
    out = [f"<header><h1>{escape(str(name))}</h1>",
           f'<p class="sub">{escape(str(run_config.get("description") or ""))} Run directory '
           f'<code>{escape(str(run_dir))}</code>{f", {total:.0f} s of stage time" if total else ""}.</p></header>']
    if rows:
        out.append('<table><thead><tr><th>stage</th><th>status</th><th class="num">time</th>'
                   f"<th>config hash</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if not state:
        out.append(_missing("No state.json: stage status and timings unknown."))
    return "".join(out)


def _counts(run_dir: Path, max_examples: int) -> str:
    gen, judge = run_dir / "generate", run_dir / "judge"
    usage = _read_json(gen / "usage.json")
    items: list[tuple[str, Any]] = []
    if gen.is_dir():
        traces, _ = _scan_jsonl(gen / "traces.jsonl", 0)
        items += [("prompts", usage.get("prompts")), ("traces", usage.get("traces", traces)),
                  ("failures", usage.get("failures", _scan_jsonl(gen / "failures.jsonl", 0)[0])),
                  ("SFT examples", _scan_jsonl(gen / "sft.jsonl", 0)[0])]
    stats = _read_json(judge / "stats.json")
    if judge.is_dir():
        items += [("judgments", _scan_jsonl(judge / "judgments.jsonl", 0)[0]),
                  ("preference pairs", _scan_jsonl(judge / "preferences.jsonl", 0)[0])]
        items += [(k.replace("_", " "), stats[k]) for k in ("ties", "dropped", "position_consistency")
                  if k in stats and not isinstance(stats[k], (dict, list))]
    if not items:
        return _missing("No generate/ or judge/ directory: no data counts.")
    out = [_cards([(k, v) for k, v in items if v is not None])]
    if stats:
        flat = [(f"{k}.{k2}" if isinstance(v, dict) else k, v2)
                for k, v in stats.items() for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])]
        out.append("<details><summary>all judge statistics</summary>" + _table(["statistic", "value"], flat, [1])
                   + "</details>")
    return "".join(out)


def _usage(run_dir: Path, max_examples: int) -> str:
    rows, cost, unknown = [], 0.0, False
    for stage in STAGES:
        u = _read_json(run_dir / stage / "usage.json")
        if not u:
            continue
        priced = u.get("price_known", True) is not False and _is_num(u.get("cost_usd", 0.0))
        unknown |= not priced
        cost += (u.get("cost_usd") or 0.0) if priced else 0.0
        rows.append([stage, u.get("model"), u.get("requests"), u.get("prompt_tokens"), u.get("completion_tokens"),
                     u.get("cached_tokens"), u.get("total_tokens"),
                     f"${u.get('cost_usd') or 0:.4f}" if priced else "unknown price"])
    if not rows:
        return _missing("No usage.json in any stage: token usage unknown.")
    note = f"<p>Estimated cost: <b>${cost:.4f}</b>{' (plus models with no known price)' if unknown else ''}.</p>"
    return note + _table(["stage", "model", "requests", "prompt tokens", "completion tokens", "cached tokens",
                          "total tokens", "cost"], rows, range(2, 8))


def _curves(stage_dir: Path) -> str:
    pngs = sorted((stage_dir / "plots").glob("*.png"))
    if pngs:
        return '<div class="plots">' + "".join(_png(p, p.stem) for p in pngs) + "</div>"
    metrics = stage_dir / "metrics.jsonl"
    if not metrics.is_file():
        return _missing(f"{stage_dir.name}/plots/ has no PNG and there is no metrics.jsonl to draw.")
    try:
        from caikit.plots import plot_metrics

        with tempfile.TemporaryDirectory(prefix="caikit-report-") as tmp:
            drawn = plot_metrics(metrics, tmp)
            return '<div class="plots">' + "".join(_png(p, p.stem) for p in sorted(drawn)) + "</div>"
    except Exception:  # noqa: BLE001 -- no matplotlib, or it choked on odd rows: draw the main metrics ourselves
        pass
    rows = _scan_jsonl(metrics, 10**9)[1]
    keys = [k for k in MAIN_METRICS if any(_is_num(r.get(k)) for r in rows)]
    keys += sorted({k for r in rows for k, v in r.items() if _is_num(v) and k not in ("step", "time", *keys)})
    charts = [svg_line_chart(k, {k: [(r["step"], r[k]) for r in rows if _is_num(r.get(k)) and _is_num(r.get("step"))]})
              for k in keys[:SVG_METRICS]]
    return '<div class="plots">' + "".join(f"<figure>{c}</figure>" for c in charts if c) + "</div>"


def _training(run_dir: Path, max_examples: int) -> str:
    out = []
    for stage in TRAIN_STAGES:
        stage_dir = run_dir / stage
        if not stage_dir.is_dir():
            continue
        out.append(f"<h3>{escape(stage)}</h3>")
        metrics = stage_dir / "metrics.jsonl"
        steps, rows = _scan_jsonl(metrics, 10**9)
        if not rows and not (stage_dir / "plots").is_dir():
            out.append(_missing(f"{stage}/metrics.jsonl is missing or empty: no curves."))
        else:
            keys = sorted({k for r in rows for k, v in r.items() if _is_num(v) and k not in ("step", "time")})
            first = lambda k: next((r[k] for r in rows if _is_num(r.get(k))), None)  # noqa: E731
            last = lambda k: next((r[k] for r in reversed(rows) if _is_num(r.get(k))), None)  # noqa: E731
            if rows:
                out.append(f"<p>{steps} logged steps (last step {_fmt(rows[-1].get('step'))}).</p>")
                out.append(_table(["metric", "first", "last"], [[k, first(k), last(k)] for k in keys], [1, 2]))
            out.append(_curves(stage_dir))
        n_warn, warnings = _scan_jsonl(stage_dir / "warnings.jsonl", 50)
        if n_warn:
            out.append(f'<p class="warn"><b>{n_warn} training warning(s)</b> (see {escape(stage)}/warnings.jsonl):</p>'
                       + _table(["step", "kind", "message"],
                                [[w.get("step"), w.get("kind"), w.get("message")] for w in warnings], [0]))
        n_samples, samples = _scan_jsonl(stage_dir / "samples.jsonl", 10**9)
        if n_samples and max_examples:
            out.append(f"<details><summary>probe answers during training (last {min(max_examples, n_samples)} of "
                       f"{n_samples})</summary>")
            for s in samples[-max_examples:]:
                out.append(f'<div class="example"><div class="meta">step {_fmt(s.get("step"))} · score '
                           f'{_fmt(s.get("score"))}</div>{_messages(s.get("prompt"))}{_text(s.get("response"))}</div>')
            out.append("</details>")
    return "".join(out) or _missing("No sft/, reward/, dpo/ or ppo/ directory: no training ran.")


def _eval(run_dir: Path, max_examples: int) -> str:
    report = _read_json(run_dir / "eval" / "report.json")
    out = []
    if report:
        models = report.get("models") or {}
        if isinstance(models, dict) and models:
            out.append("<p>" + " · ".join(f"{escape(str(k))}: <code>{escape(str(v))}</code>"
                                          for k, v in models.items()) + "</p>")
        rows = []
        for r in _list(report.get("table")):
            if isinstance(r, dict):
                b, a = r.get("before"), r.get("after")
                rows.append([r.get("metric"), b, a, a - b if _is_num(a) and _is_num(b) else None, r.get("note")])
        out.append(_table(["metric", "before", "after", "change", "note"], rows, [1, 2, 3]))
        extra = {k: v for k, v in report.items() if k not in ("models", "table")}
        for key, value in extra.items():
            pairs = value.items() if isinstance(value, dict) else [(key, value)]
            out.append(f"<h3>{escape(key)}</h3>" + _table(["", "value"], pairs, [1]))
    else:
        out.append(_missing("No eval/report.json: the before/after evaluation has not run."))
    n, samples = _scan_jsonl(run_dir / "eval" / "samples.jsonl", max_examples)
    if samples:
        out.append(f'<h3 id="before-after">Before / after answers ({len(samples)} of {n})</h3>')
        for s in samples:
            p = s.get("judge_p_after")
            meta = f'<span class="tag">{escape(str(s.get("kind", "")))}</span>'
            meta += f" · judge P(after is better) = {_fmt(p)}" if p is not None else ""
            out.append(f'<article class="example before-after"><div class="meta">{meta}</div>'
                       f'{_messages(s.get("prompt"))}<div class="cols">{_col("before", _text(s.get("before")))}'
                       f'{_col("after", _text(s.get("after")))}</div></article>')
    return "".join(out)


def _traces(run_dir: Path, max_examples: int) -> str:
    n, traces = _scan_jsonl(run_dir / "generate" / "traces.jsonl", max_examples)
    if not traces:
        return _missing("No generate/traces.jsonl: no critique/revision examples.")
    out = [f"<p>{len(traces)} of {n} traces. Each round reads the answer on the left, critiques it under one "
           "principle, and rewrites it.</p>"]
    for t in traces:
        model = t.get("backend", {}).get("model", "") if isinstance(t.get("backend"), dict) else ""
        out.append(f'<article class="example trace"><div class="meta">prompt <span class="tag">'
                   f'{escape(str(t.get("prompt_id", "")))}</span>{" · " + escape(str(model)) if model else ""}</div>'
                   + _messages(t.get("prompt")))
        answer, heading = t.get("initial_response", ""), "initial answer"
        for i, r in enumerate(_list(t.get("rounds"))):
            r = r if isinstance(r, dict) else {}
            request = (f'<details><summary>critique request</summary>{_text(r["critique_request"])}</details>'
                       if r.get("critique_request") else "")
            principle = f'critique · <span class="tag">{escape(str(r.get("principle_id", "?")))}</span>'
            out.append(f'<div class="cols">{_col(heading, _text(answer))}'
                       f'{_col(principle, request + _text(r.get("critique")))}'
                       f'{_col(f"revision {i + 1}", _text(r.get("revision")))}</div>')
            answer, heading = r.get("revision", ""), f"revision {i + 1}"
        if not _list(t.get("rounds")):
            out.append(f'<div class="cols">{_col(heading, _text(answer))}</div>')
        out.append("</article>")
    return "".join(out)


def _pairs(run_dir: Path, max_examples: int) -> str:
    n, pairs = _scan_jsonl(run_dir / "judge" / "preferences.jsonl", max_examples)
    if not pairs:
        return ""
    out = [f"<details><summary>preference pairs ({len(pairs)} of {n})</summary>"]
    last_turn = lambda m: m[-1].get("content") if _list(m) and isinstance(m[-1], dict) else m  # noqa: E731
    for p in pairs:
        out.append(f'<article class="example pair"><div class="meta">{escape(str(p.get("source", "")))} · judge P(chosen better) '
                   f'{_fmt(p.get("p_chosen"))}</div>{_messages(p.get("prompt"))}<div class="cols">'
                   f'{_col("chosen", _text(last_turn(p.get("chosen"))))}'
                   f'{_col("rejected", _text(last_turn(p.get("rejected"))))}'
                   "</div></article>")
    return "".join(out) + "</details>"


def _failures(run_dir: Path, max_examples: int) -> str:
    n, failures = _scan_jsonl(run_dir / "generate" / "failures.jsonl", max_examples)
    if not n:
        return ""
    return (f'<p class="warn">{n} prompt(s) failed after retries (first {len(failures)}):</p>'
            + _table(["prompt", "attempts", "error"], [[f.get("prompt_id"), f.get("attempts"), f.get("error")]
                                                        for f in failures], [1]))


def _config(run_dir: Path, max_examples: int) -> str:
    out = []
    for label, path in [("run config", run_dir / "config.yaml")] + [
            (f"{s} config", run_dir / s / "config.yaml") for s in STAGES]:
        text = _read_text(path)
        if text is not None:
            opened = " open" if label == "run config" else ""
            out.append(f"<details{opened}><summary>{escape(label)} "
                       f"({escape(str(path.relative_to(run_dir)))})</summary>"
                       f'<pre class="config">{escape(text)}</pre></details>')
    return "".join(out) or _missing("No config.yaml in the run directory.")


# ---------------------------------------------------------------- page

def build_report(run_dir: str | Path, out: str | Path | None = None, max_examples: int = 8) -> Path:
    """Write the HTML report of `run_dir` (default `run_dir/report.html`) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError("not a run directory", path=str(run_dir))
    run_config = _read_yaml(run_dir / "config.yaml")
    sections = [
        ("counts", "Data", (_counts, _failures)),
        ("usage", "Token usage and cost", (_usage,)),
        ("training", "Training", (_training,)),
        ("eval", "Evaluation: before vs after", (_eval,)),
        ("examples", "Critique and revision examples", (_traces, _pairs)),
        ("config", "Configuration", (_config,)),
    ]
    nav = "<nav>" + "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections) + "</nav>"
    body = [_header(run_dir, run_config, _read_json(run_dir / "state.json")), nav]
    for key, title, parts in sections:
        body.append(f'<section id="{key}"><h2>{escape(title)}</h2>')
        for part in parts:
            try:
                body.append(part(run_dir, max_examples))
            except Exception as e:  # noqa: BLE001 -- one malformed file must not cost the whole page
                body.append(_missing(f"could not render this part ({type(e).__name__}: {e})"))
        body.append("</section>")
    title = f"caikit report: {run_config.get('name') or run_dir.resolve().name}"
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=escape(str(title)), body="".join(body), generated=escape(time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    path = Path(out) if out else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def report_command(cfg: ReportConfig) -> int:
    path = build_report(cfg.run_dir, cfg.out or None, cfg.max_examples)
    print(f"caikit report: wrote {path}")
    return 0
