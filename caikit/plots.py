"""PNG curves from a metrics.jsonl, drawn only where a curve means something.

- A series needs two points: a metric logged once (`eval_accuracy`, `train_pairs`) is a number for a table
  (`single_values`), never a chart of one invisible point. Beside a curve, a lone point is drawn as a marker.
- A sweep is drawn against its own parameter (the reward probe's cross-validation over `l2`), not against "step".
- A schedule (learning rate, the KL coefficient) is drawn as logged: smoothing a deterministic curve only makes it
  lag. Smoothing is for noisy per-step series (`SMOOTH_MIN_POINTS` points or more), with the raw series visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from caikit.metrics import read_metrics

NOT_SERIES = ("step", "time")
SCHEDULES = ("lr", "learning_rate", "kl_coef", "beta")  # set by the trainer, not measured: never smoothed
SWEEPS = {"l2": ("cv_accuracy", "cv_loss")}  # parameter -> the figures measured at each of its values
SMOOTH_MIN_POINTS = 10


@dataclass
class Series:
    key: str
    points: list[tuple[float, float]]
    smoothed: bool = False


@dataclass
class Chart:
    title: str
    x_label: str
    series: list[Series] = field(default_factory=list)
    log_x: bool = False


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing, so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1.0 - weight) * v
        out.append(avg / (1.0 - weight ** i))
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "metric"


def _numeric_keys(rows: list[dict]) -> list[str]:
    return sorted({k for r in rows for k, v in r.items() if k not in NOT_SERIES and _num(v)})


def _points(rows: list[dict], key: str, x: str = "step") -> list[tuple[float, float]]:
    return [(r[x], r[key]) for r in rows if _num(r.get(key)) and _num(r.get(x))]


def single_values(rows: list[dict]) -> dict[str, float]:
    """Metrics logged once (held-out accuracy, pair counts, a sweep's chosen value): numbers for a table."""
    swept = {k for p, figs in SWEEPS.items() if any(_num(r.get(p)) for r in rows) for k in (p, *figs)}
    out = {}
    for key in _numeric_keys(rows):
        values = [r[key] for r in rows if _num(r.get(key))]
        if len(values) == 1 and key not in swept:
            out[key] = values[0]
    return out


def chart_specs(rows: list[dict], groups: dict[str, list[str]] | None = None) -> list[Chart]:
    """What to draw: one chart per group (default: one per metric), sweeps against their parameter; a chart whose
    series all have fewer than two points is left out (its values belong in `single_values`'s table)."""
    charts: list[Chart] = []
    swept: set[str] = set()
    for param, figures in SWEEPS.items():
        present = [f for f in figures if len(_points(rows, f, x=param)) >= 2]
        if present:
            swept |= {param, *figures}
            charts.append(Chart(f"cross-validation over {param}", param, log_x=True,
                                series=[Series(f, sorted(_points(rows, f, x=param))) for f in present]))
    if groups is None:
        groups = {key: [key] for key in _numeric_keys(rows) if key not in swept}
    for title, keys in groups.items():
        series = [Series(k, _points(rows, k)) for k in keys if k not in swept]
        series = [s for s in series if s.points]
        if not any(len(s.points) >= 2 for s in series):
            continue
        for s in series:
            s.smoothed = len(s.points) >= SMOOTH_MIN_POINTS and s.key not in SCHEDULES
        charts.append(Chart(title, "step", series))
    return charts


def draw(chart: Chart, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, s in enumerate(chart.series):
        xs, ys = zip(*s.points)
        color = f"C{i}"
        if len(s.points) == 1:  # a lone point beside a curve (a final eval): a marker, so it can be seen
            ax.plot(xs, ys, "o", color=color, markersize=6, label=s.key)
        elif s.smoothed:
            ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1, label=f"{s.key} (raw)")
            ax.plot(xs, smooth(list(ys)), color=color, linewidth=2, label=f"{s.key} (smoothed)")
        else:
            ax.plot(xs, ys, color=color, linewidth=1.8, marker="o" if len(xs) <= 20 else None, markersize=3,
                    label=s.key)
    if chart.log_x and all(x > 0 for s in chart.series for x, _ in s.points):
        ax.set_xscale("log")
    ax.set_title(chart.title)
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.series[0].key if len(chart.series) == 1 else "value")
    if len(chart.series) > 1 or any(s.smoothed for s in chart.series):
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_metrics(metrics_path: str | Path, out_dir: str | Path,
                 groups: dict[str, list[str]] | None = None) -> list[Path]:
    """Write `out_dir/<chart>.png` for each chart `chart_specs` finds worth drawing; returns the paths written."""
    rows = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [draw(chart, out_dir / f"{_safe_name(chart.title)}.png") for chart in chart_specs(rows, groups)]
