"""PNG curves from a metrics.jsonl: one figure per group of metric keys, raw values plus a smoothed line."""

from __future__ import annotations

import re
from pathlib import Path

from caikit.metrics import read_metrics


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing, so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1.0 - weight) * v
        out.append(avg / (1.0 - weight ** i))
    return out


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "metric"


def plot_metrics(metrics_path: str | Path, out_dir: str | Path,
                 groups: dict[str, list[str]] | None = None) -> list[Path]:
    """Write `out_dir/<group>.png` for each group of keys (default: one PNG per numeric key).

    Keys missing from every row are skipped; returns the paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    numeric = sorted({k for r in rows for k, v in r.items()
                      if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if groups is None:
        groups = {key: [key] for key in numeric}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for title, keys in groups.items():
        series = {}
        for key in keys:
            points = [(r["step"], r[key]) for r in rows
                      if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            if points:
                series[key] = points
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for i, (key, points) in enumerate(series.items()):
            steps, values = zip(*points)
            color = f"C{i}"
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=1)
            ax.plot(steps, smooth(list(values)), color=color, linewidth=2, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(keys[0] if len(keys) == 1 else "value")
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{_safe_name(title)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
