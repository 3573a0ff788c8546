"""Training curves on the report page: the trainers' PNGs (embedded as base64 data URIs), drawn now with
`plots.plot_metrics` when a stage has metrics but no PNGs, or as inline SVG when matplotlib is unavailable."""

from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path

from caikit.report.markup import missing, png, table
from caikit.report.sources import is_num, scan_jsonl

SVG_METRICS = 4  # charts drawn as inline SVG when matplotlib is unavailable


def svg_line_chart(title: str, series: dict[str, list[tuple[float, float]]],
                   width: int = 480, height: int = 220, x_label: str = "step") -> str:
    """An inline SVG line chart of (x, value) points (x: `x_label`); one polyline per series, shared axes.

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
            f'<text x="{(left + right) / 2}" y="{bottom + 24}" text-anchor="middle" {label}>{escape(x_label)}</text>')
    heading = f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">{heading}{axes}{"".join(lines)}{"".join(legend)}</svg>')


def once_table(metrics: Path) -> str:
    """The metrics a stage logged once (held-out accuracy, pair counts), as numbers: one point is not a chart."""
    from caikit.plots import single_values

    values = single_values(scan_jsonl(metrics, 10**9)[1]) if metrics.is_file() else {}
    if not values:
        return ""
    return "<h4>Measured once</h4>" + table(["metric", "value"], [[k, v] for k, v in values.items()], numeric=[1])


def curves(stage_dir: Path, where: str) -> str:
    """The stage's curves and its once-measured figures; `where` names its directory on the page (e.g. "dpo/")."""
    metrics = stage_dir / "metrics.jsonl"
    pngs = sorted((stage_dir / "plots").glob("*.png"))
    if pngs:
        return '<div class="plots">' + "".join(png(p, p.stem) for p in pngs) + "</div>" + once_table(metrics)
    if not metrics.is_file():
        return missing(f"{where}plots/ has no PNG and there is no metrics.jsonl to draw.")
    try:
        from caikit.plots import plot_metrics

        with tempfile.TemporaryDirectory(prefix="caikit-report-") as tmp:
            drawn = plot_metrics(metrics, tmp)
            return ('<div class="plots">' + "".join(png(p, p.stem) for p in sorted(drawn)) + "</div>"
                    + once_table(metrics))
    except Exception:  # noqa: BLE001 -- no matplotlib, or it choked on odd rows: the same charts as inline SVG
        pass
    from caikit.plots import chart_specs

    charts = chart_specs(scan_jsonl(metrics, 10**9)[1])
    svgs = [svg_line_chart(c.title, {s.key: s.points for s in c.series}, x_label=c.x_label)
            for c in charts[:SVG_METRICS]]
    return '<div class="plots">' + "".join(f"<figure>{c}</figure>" for c in svgs if c) + "</div>" + once_table(metrics)


def svg_tradeoff_chart(points: dict[str, dict], width: int = 420, height: int = 300) -> str:
    """The harm / over-refusal trade-off: one point per checkpoint (x = over-refusal rate on the benign suite,
    y = harmful-compliance rate on the harmful suite, both 0-1, lower is better for both), each with its 95 %
    Wilson interval as error bars, and an arrow from the first checkpoint to the next ("before" -> "after").

    `points`: {checkpoint: {"over_refusal", "over_refusal_interval", "harmful_compliance",
    "harmful_compliance_interval"}} in order. Plot area x in [48, width - 16], y in [24, height - 40]."""
    usable = {k: p for k, p in points.items() if is_num(p.get("over_refusal")) and is_num(p.get("harmful_compliance"))}
    if not usable:
        return ""
    left, right, top, bottom = 48.0, width - 16.0, 24.0, height - 40.0
    sx = lambda x: left + x * (right - left)  # noqa: E731
    sy = lambda y: bottom - y * (bottom - top)  # noqa: E731
    label = 'font-size="10" fill="#5d6778"'
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#aab2c0"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" {label}>1</text>',
             f'<text x="{left - 4}" y="{bottom}" text-anchor="end" {label}>0</text>',
             f'<text x="{right}" y="{bottom + 14}" text-anchor="end" {label}>1</text>',
             f'<text x="{left}" y="{bottom + 14}" {label}>0</text>',
             f'<text x="{(left + right) / 2}" y="{bottom + 28}" text-anchor="middle" {label}>over-refusal rate '
             f'(benign suite) →</text>',
             f'<text x="12" y="{(top + bottom) / 2}" text-anchor="middle" {label} transform="rotate(-90 12 '
             f'{(top + bottom) / 2})">harmful-compliance rate →</text>']
    colours = ("#9a6400", "#2f5fa7", "#1f7a44", "#c0392b")
    coords = []
    for i, (name, p) in enumerate(usable.items()):
        x, y = sx(p["over_refusal"]), sy(p["harmful_compliance"])
        colour = colours[i % len(colours)]
        for lo_hi, horizontal in ((p.get("over_refusal_interval"), True), (p.get("harmful_compliance_interval"), False)):
            if lo_hi and len(lo_hi) == 2 and all(is_num(v) for v in lo_hi):
                if horizontal:
                    parts.append(f'<line x1="{sx(lo_hi[0]):.1f}" y1="{y:.1f}" x2="{sx(lo_hi[1]):.1f}" y2="{y:.1f}" '
                                 f'stroke="{colour}" stroke-width="1"/>')
                else:
                    parts.append(f'<line x1="{x:.1f}" y1="{sy(lo_hi[0]):.1f}" x2="{x:.1f}" y2="{sy(lo_hi[1]):.1f}" '
                                 f'stroke="{colour}" stroke-width="1"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
        parts.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" font-size="11" fill="{colour}">{escape(name)}</text>')
        coords.append((x, y))
    for (x0, y0), (x1, y1) in zip(coords, coords[1:]):
        parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#5d6778" '
                     f'stroke-dasharray="4 3" marker-end="url(#arrow)"/>')
    marker = ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
              'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#5d6778"/></marker></defs>')
    title = "Harm / over-refusal trade-off (lower left is better)"
    heading = f'<text x="{left}" y="14" font-size="12" font-weight="600">{escape(title)}</text>'
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">{marker}{heading}{"".join(parts)}</svg>')
