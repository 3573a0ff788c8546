"""The report's charts mean what they show: drawn from a scripted metrics set holding every kind of metric a trainer
logs (noisy per-step series, a schedule, a periodic eval, once-logged figures, the reward probe's l2 sweep), each
rendered chart has a visible line, once-logged numbers go to a table, the sweep is drawn against l2, and the
schedule is drawn as logged."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import pytest

from caikit.plots import chart_specs, single_values

pytestmark = pytest.mark.unit


def scripted_rows() -> list[dict]:
    rows = [{"step": 0, "time": 0.0, "train_pairs": 96}]  # a fact about the run, logged once
    rows += [{"step": s, "time": float(s), "l2": l2, "cv_accuracy": 0.55 + 0.01 * s, "cv_loss": 0.69 - 0.01 * s}
             for s, l2 in enumerate((0.01, 0.1, 1.0, 10.0))]
    for s in range(1, 31):
        row = {"step": s, "time": float(s), "loss": 0.7 - 0.01 * s + 0.05 * math.sin(3 * s),
               "lr": 1e-5 * min(1.0, s / 5) * (30 - s) / 25}
        if s % 10 == 0:
            row["eval_loss"] = 0.65 - 0.01 * s
        rows.append(row)
    rows.append({"step": 30, "time": 31.0, "eval_accuracy": 0.61, "eval_accuracy_low": 0.55, "eval_pairs": 420})
    return rows


def test_what_is_charted_and_what_is_a_number():
    rows = scripted_rows()
    charts = {c.title: c for c in chart_specs(rows, {"loss": ["loss", "eval_loss"], "learning_rate": ["lr"],
                                                     "accuracy": ["accuracy", "eval_accuracy"]})}
    assert set(charts) == {"cross-validation over l2", "loss", "learning_rate"}  # accuracy: one point, no chart
    sweep = charts["cross-validation over l2"]
    assert sweep.x_label == "l2" and [x for x, _ in sweep.series[0].points] == [0.01, 0.1, 1.0, 10.0]
    (lr,) = charts["learning_rate"].series
    assert not lr.smoothed  # a schedule is never smoothed
    loss, eval_loss = charts["loss"].series
    assert loss.smoothed and not eval_loss.smoothed and len(eval_loss.points) == 3
    assert single_values(rows) == {"train_pairs": 96, "eval_accuracy": 0.61, "eval_accuracy_low": 0.55,
                                   "eval_pairs": 420}
    default = {c.title for c in chart_specs(rows)}  # one chart per metric, the way the report draws a stage
    assert default == {"cross-validation over l2", "loss", "lr", "eval_loss"}


def _drawn_pixels(png_bytes: bytes) -> int:
    """Pixels of matplotlib's series colours (C0, C1) in the image: 0 for an empty axis."""
    import matplotlib.image as mpimg
    import numpy as np

    image = mpimg.imread(io.BytesIO(png_bytes), format="png")[..., :3]
    count = 0
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        target = np.array(rgb) / 255.0
        count += int((np.abs(image - target).max(axis=-1) < 0.12).sum())
    return count


def test_no_chart_on_the_report_page_is_empty(tmp_path):
    pytest.importorskip("matplotlib")
    from caikit.report.charts import curves

    stage = tmp_path / "reward"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scripted_rows()))
    html = curves(stage, "reward/")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4  # the sweep, loss, lr, eval_loss; none for the once-logged figures
    for data in images:
        assert _drawn_pixels(base64.b64decode(data)) > 200, "an empty chart"
    assert "Measured once" in html and "eval_accuracy" in html and "420" in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert "train_pairs" not in captions and "eval_accuracy" not in captions


def test_a_stage_that_dropped_over_a_tenth_is_amber_with_the_count_in_words(tmp_path):
    """The issue's demo: nothing failed, but 23 of 32 eval answers were cut and the judge skipped 24 of 32 traces."""
    from caikit.report.sources import detect_layout
    from caikit.report.verdict import verdict_html, verdict_lines

    def write(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    write(tmp_path / "generate" / "stats.json", {"prompts": 32, "failures": 0, "truncated": 2, "degenerate": 1})
    write(tmp_path / "judge" / "stats.json", {"pairs": 8, "failures": 0,
                                              "skipped": {"revision_unchanged": 4, "truncated": 20}})
    write(tmp_path / "eval" / "report.json", {"n": 16, "table": [], "counts": {
        "judged_pairs": 16, "judge_failures": 0, "truncated_answers_before": 12, "truncated_answers_after": 11}})
    lines = verdict_lines(tmp_path)
    assert lines[-1].startswith("[??] Failures and dropped items: Nothing failed, but more than 10% was dropped: "
                                "judge dropped 24 of 32 traces (75 %); eval dropped 23 of 32 answers (72 %).")
    page = verdict_html(detect_layout(tmp_path))
    amber = re.findall(r'<tr class="v-warn">(.*?)</tr>', page)
    assert len(amber) == 4  # judge and eval: the row and its sentence; generate (3 of 32, 9 %) stays plain
    assert any("judge dropped 24 of 32 traces (75 %): more than 10%" in row for row in amber)
    assert not any("<td>generate</td>" in row for row in amber)
