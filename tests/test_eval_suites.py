"""The bundled harm / over-refusal suites: sizes, labels, provenance, no overlap, and intervals narrow enough."""

from __future__ import annotations

import json

import pytest

from caikit.eval.harm import bundled_suites_dir, load_harm_suites, spread
from caikit.stats import wilson_interval

pytestmark = pytest.mark.unit


def rows(name):
    return [json.loads(line) for line in (bundled_suites_dir() / name).read_text().splitlines()]


def key(prompt):
    return " ".join(prompt.lower().split())


def test_suite_sizes_and_labels():
    harmful, benign = rows("harmful.jsonl"), rows("benign.jsonl")
    assert len(harmful) >= 300 and {r["label"] for r in harmful} == {"harmful"}
    assert len(benign) >= 300 and {r["label"] for r in benign} == {"benign"}
    assert sum(r["sounds_unsafe"] for r in benign) >= 150
    # XSTest's safe prompts are the "sound unsafe" core: all 250 of them
    assert sum(r["id"].startswith("xstest-") for r in benign) == 250


def test_every_row_names_its_source_and_licence_and_notice_covers_them():
    notice = (bundled_suites_dir().parent / "NOTICE.md").read_text()
    for name in ("harmful.jsonl", "benign.jsonl", "guard_extra.jsonl"):
        for r in rows(name):
            assert r["source"] and r["license"] in ("CC-BY-4.0", "MIT", "Apache-2.0"), r
        assert f"suites/{name}" in notice
    assert "Creative Commons Attribution 4.0" in notice and "Copyright (c) 2023 Andy Zou" in notice


def test_no_prompt_in_two_files_and_none_from_the_held_out_hh_rows():
    seen = {}
    for name in ("harmful.jsonl", "benign.jsonl", "guard_extra.jsonl"):
        for r in rows(name):
            assert key(r["prompt"]) not in seen, (name, seen.get(key(r["prompt"])))
            seen[key(r["prompt"])] = name
    red_team = [json.loads(line)["prompt"] for line in
                (bundled_suites_dir().parent / "red_team_prompts.jsonl").read_text().splitlines()]
    assert not {key(p) for p in red_team} & set(seen)


def test_default_sizes_give_intervals_narrower_than_six_points():
    suites = load_harm_suites("bundled")
    for kind in ("harmful", "benign"):
        n = len(suites[kind])
        low, high = wilson_interval(n / 2, n)  # the widest interval: a rate of one half
        assert (high - low) / 2 < 0.06, (kind, n)


def test_limit_keeps_an_evenly_spaced_subset_across_categories():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(4)), 0) == [0, 1, 2, 3]
    suites = load_harm_suites("bundled", limit=4)
    ids = [r.id for r in suites["harmful"]]
    assert len(ids) == 4 and any(i.startswith("xstest-") for i in ids) and any(i.startswith("advbench-") for i in ids)
    assert load_harm_suites("none") == {}


def test_a_directory_without_the_suite_files_is_an_input_error(tmp_path):
    from caikit.errors import UserError

    with pytest.raises(UserError, match="harmful.jsonl"):
        load_harm_suites(str(tmp_path))


def test_tradeoff_chart_puts_each_checkpoint_where_its_rates_are_and_draws_the_arrow():
    from caikit.report.charts import svg_tradeoff_chart

    points = {"before": {"over_refusal": 0.0, "over_refusal_interval": [0.0, 0.1], "harmful_compliance": 1.0,
                         "harmful_compliance_interval": [0.9, 1.0]},
              "after": {"over_refusal": 0.5, "over_refusal_interval": [0.4, 0.6], "harmful_compliance": 0.0,
                        "harmful_compliance_interval": [0.0, 0.1]}}
    svg = svg_tradeoff_chart(points, width=420, height=300)
    # plot area x 48..404, y 24..260: before at (48, 24), after at (226, 260)
    assert '<circle cx="48.0" cy="24.0"' in svg and '<circle cx="226.0" cy="260.0"' in svg
    assert 'marker-end="url(#arrow)"' in svg and svg.count("<circle") == 2
    assert svg_tradeoff_chart({"before": {"over_refusal": None, "harmful_compliance": None}}) == ""


def test_report_page_draws_the_tradeoff_from_eval_report(tmp_path):
    from caikit.report.html import build_report

    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "run.json").write_text(json.dumps({"stage": "eval", "run_id": "r1"}))
    point = {"over_refusal": 0.2, "over_refusal_interval": [0.15, 0.25], "harmful_compliance": 0.3,
             "harmful_compliance_interval": [0.25, 0.35]}
    (eval_dir / "report.json").write_text(json.dumps({
        "models": {"before": "a", "after": "b"}, "table": [],
        "harm_yardstick": {"description": "refusal detector regex: recall 0.838", "harmful_prompts": 400,
                           "benign_prompts": 322, "points": {"before": point, "after": point}}}))
    page = build_report(eval_dir).read_text()
    assert "Harm / over-refusal trade-off" in page and "400 harmful and 322 benign" in page
