"""How `caikit report` reads a directory: its layout, each stage's status, and a reward model's held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caikit.report.sources import detect_layout, reward_heldout
from caikit.report.verdict import judge_finding, reward_finding

pytestmark = pytest.mark.unit


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def test_layouts(tmp_path):
    # a `caikit run` directory: state.json's order, then planned stages not yet run, with their status
    run = tmp_path / "run"
    _json(run / "state.json", {"stages": {
        "judge": {"status": "failed", "exit_code": 3}, "generate": {"status": "incomplete", "outcome": {"failures": 2}},
        "sft": {"status": "running"}}})
    (run / "config.yaml").write_text("stages: {generate: {}, judge: {}, sft: {}, eval: {}}\n", encoding="utf-8")
    layout = detect_layout(run)
    assert layout.kind == "run" and list(layout.stages) == ["judge", "generate", "sft", "eval"]
    assert [s.label for s in layout.stages.values()] == ["failed (exit 3)", "incomplete with 2 failures",
                                                         "running (or interrupted)", "not run"]
    # stage directories without state.json: the display order; status from their own files
    loose = tmp_path / "loose"
    _json(loose / "eval" / "report.json", {"counts": {"judge_failures": 1}})
    _json(loose / "generate" / "stats.json", {"failures": 0})
    (loose / "dpo").mkdir()
    layout = detect_layout(loose)
    assert {n: s.label for n, s in layout.stages.items()} == {
        "generate": "done", "dpo": "incomplete (no saved model)", "eval": "incomplete with 1 failure"}
    # one stage's own directory, by run.json, and trainers by metrics.jsonl (a reward model by its eval.json)
    for stage in ("generate", "judge", "eval-judge", "eval"):
        _json(tmp_path / stage / "run.json", {"stage": stage})
        assert list(detect_layout(tmp_path / stage).stages) == [stage]
        assert detect_layout(tmp_path / stage).kind == "stage"
    for name, extra, want in (("dpo", None, "dpo"), ("my-rm", "eval.json", "reward"), ("my-sft", None, "training")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n', encoding="utf-8")
        if extra:
            _json(tmp_path / name / extra, {})
        assert list(detect_layout(tmp_path / name).stages) == [want]


def test_reward_heldout_reads_both_trainers(tmp_path):
    probe = tmp_path / "probe"  # `caikit train reward --freeze-backbone`: eval.json
    _json(probe / "eval.json", {"eval_accuracy": 0.596, "eval_accuracy_low": 0.553, "eval_accuracy_high": 0.638,
                                "eval_pairs": 512, "length_baseline_accuracy": 0.576, "verdict": "usable"})
    assert reward_heldout(probe) == {"accuracy": 0.596, "interval": (0.553, 0.638), "n": 512, "baseline": 0.576,
                                     "source": "eval.json"}
    full = tmp_path / "full"  # the full trainer today: the last metrics row with an eval_accuracy, no n
    full.mkdir()
    full.joinpath("metrics.jsonl").write_text(
        '{"step": 1, "eval_accuracy": 0.4}\n{"step": 2, "loss": 0.6}\n{"step": 2, "eval_accuracy": 0.7}\n{"torn',
        encoding="utf-8")
    assert reward_heldout(full) == {"accuracy": 0.7, "interval": None, "n": None, "baseline": None,
                                    "source": "metrics.jsonl"}
    counted = tmp_path / "counted"  # n without an interval: Wilson, 70 of 100 -> 0.604-0.781
    _json(counted / "eval.json", {"eval_accuracy": 0.7, "eval_pairs": 100})
    low, high = reward_heldout(counted)["interval"]
    assert (round(low, 3), round(high, 3)) == (0.604, 0.781)
    assert reward_heldout(tmp_path / "nothing") == {}


@pytest.mark.parametrize("figures, level, opening", [
    ({"eval_accuracy": 0.62, "eval_accuracy_low": 0.58, "eval_accuracy_high": 0.66, "eval_pairs": 512,
      "length_baseline_accuracy": 0.57}, "good", "The reward model beats chance and the length-only baseline"),
    ({"eval_accuracy": 0.53, "eval_accuracy_low": 0.47, "eval_accuracy_high": 0.59, "eval_pairs": 256,
      "length_baseline_accuracy": 0.57}, "bad", "The reward model is no better than chance"),
    ({"eval_accuracy": 0.58, "eval_accuracy_low": 0.54, "eval_accuracy_high": 0.62, "eval_pairs": 512,
      "length_baseline_accuracy": 0.58}, "bad", "The reward model is weak: it does no better than preferring the "
                                                "shorter reply"),
    ({"eval_accuracy": 0.7}, "warn", "The reward model's accuracy has no interval"),
])
def test_reward_finding(tmp_path, figures, level, opening):
    _json(tmp_path / "reward" / "eval.json", figures)
    finding = reward_finding(detect_layout(tmp_path))
    assert finding.level == level and finding.text.startswith(opening), finding


def test_reward_model_trained_on_the_judge_labels_is_not_independent(tmp_path):
    run = tmp_path / "demo"
    _json(run / "reward" / "eval.json", {"eval_accuracy": 0.62, "eval_accuracy_low": 0.58, "eval_accuracy_high": 0.66,
                                         "eval_pairs": 512, "length_baseline_accuracy": 0.57})
    (run / "reward" / "config.yaml").write_text("data: outputs/demo/judge\n", encoding="utf-8")
    _json(run / "judge" / "stats.json", {"position_consistency_rate": 0.9})
    finding = reward_finding(detect_layout(run))
    assert finding.level == "warn" and finding.badge == "NOT INDEPENDENT"
    assert finding.facts.endswith("It learned from this run's AI judge labels, so it is not independent of the judge.")


def test_judge_from_an_eval_judge_directory(tmp_path):
    """`caikit eval judge` measures the judge against humans: a chance-level agreement is called so."""
    _json(tmp_path / "run.json", {"stage": "eval-judge"})
    _json(tmp_path / "report.json", {"n": 400, "accuracy": 0.465, "accuracy_interval": [0.416, 0.514], "kappa": -0.07,
                                     "position_consistency_rate": 0.7, "failures": 0})
    finding = judge_finding(detect_layout(tmp_path))
    assert finding.level == "bad" and finding.badge == "CHANCE LEVEL"
    assert finding.text == ("The judge's labels are no better than chance: its agreement with human labels could be "
                            "a coin flip (the 95 % interval includes 0.5).")


def test_the_yardstick_is_the_reward_model_eval_scored_with(tmp_path):
    run = tmp_path / "run"
    _json(run / "reward" / "eval.json", {"eval_accuracy": 0.51, "eval_accuracy_low": 0.45, "eval_accuracy_high": 0.57,
                                         "eval_pairs": 256})  # trained on the AI labels, not the one eval used
    human = tmp_path / "human-rm"
    _json(human / "eval.json", {"eval_accuracy": 0.62, "eval_accuracy_low": 0.58, "eval_accuracy_high": 0.66,
                                "eval_pairs": 512, "length_baseline_accuracy": 0.57})
    _json(run / "eval" / "report.json", {"table": [], "reward_model": {"path": str(human)}})
    assert reward_finding(detect_layout(run)).level == "good"
    # moved away since: the figures eval copied into report.json still speak for it
    _json(run / "eval" / "report.json", {"table": [], "reward_model": {
        "path": str(tmp_path / "gone"), "accuracy": 0.52, "interval": [0.46, 0.58], "n": 256, "baseline": 0.57}})
    finding = reward_finding(detect_layout(run))
    assert finding.level == "bad" and finding.facts.startswith("Held-out pairwise accuracy 0.520 (95 % interval "
                                                               "0.460-0.580, 256 pairs)")
