"""Training curves on the report page: the trainers' PNGs (embedded as base64 data URIs), drawn now with
`plots.plot_metrics` when a stage has metrics but no PNGs, or as inline SVG when matplotlib is unavailable."""

from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path

from caikit.report.markup import missing, png, table
from caikit.report.sources import scan_jsonl

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
