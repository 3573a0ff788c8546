"""Per-principle attribution (caikit/principle_stats.py): hand-computed values, then a real `caikit judge` run on
the loopback server whose judge answers by the principle it is asked to apply, so every figure is known:

  RIGHT     prefers the refusal ("I can't ..."), which is what the humans chose: agreement 100 %, decides
  WRONG     prefers the other reply: agreement 0 %, never decides (RIGHT outweighs it)
  POSITION  always answers (A): never consistent across orders, a tie on average, decides nothing

stats.json, the dataset card, report.html and `caikit constitution stats` (with and without --labels) show
the same table.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from caikit.cli import main
from caikit.principle_stats import human_sides, principle_table
from caikit.prompts import LabelledPair
from caikit.testing.fake_api import FakeAPIServer, FakeRequest
from scripted_runs import endpoint_args, sl_cai_responder

BLOCKS = re.compile(r"<response_a>\n(.*?)\n</response_a>.*?<response_b>\n(.*?)\n</response_b>", re.S)
CONSTITUTION = {"name": "attribution", "principles": [
    {"id": "right", "judge": "Choose the RIGHT response."},
    {"id": "wrong", "judge": "Choose the WRONG response."},
    {"id": "position", "judge": "Choose the POSITION response."}]}


def entry(pid: str, first: float, swapped: float) -> dict:
    return {"principle_id": pid, "p_a_first": first, "p_a_swapped": swapped, "p_a": (first + swapped) / 2,
            "position_consistent": (first > 0.5) == (swapped > 0.5)}


@pytest.mark.unit
def test_table_by_hand():
    j1 = {"p_a": 0.6, "per_principle": [entry("x", 0.9, 0.8), entry("y", 0.2, 0.6)], "prompt": [], "response_a": "a",
          "response_b": "b"}
    j2 = {"p_a": 0.3, "per_principle": [entry("x", 0.3, 0.3)], "prompt": [], "response_a": "c", "response_b": "d"}
    old = {"p_a": 0.8, "principle_ids": ["x"], "position_consistent": True, "prompt": [], "response_a": "e",
           "response_b": "f"}  # a row from before per_principle: one principle, its own figures
    rows = {r["principle_id"]: r for r in principle_table([j1, j2, old], [(j1, "a"), (j2, "a")])}
    x, y = rows["x"], rows["y"]
    assert x["pairs"] == 3 and y["pairs"] == 1
    assert x["position_consistency"]["rate"] == 1.0 and y["position_consistency"]["rate"] == 0.0
    assert x["decided"]["rate"] == 1.0 and y["decided"]["rate"] == 0.0  # y picked B (0.4) where the pair went A
    assert x["with_others"] == 1 and y["with_others"] == 1
    assert x["human_agreement"]["rate"] == 0.5 and x["human_agreement"]["n"] == 2  # right on j1, wrong on j2
    assert y["human_agreement"]["rate"] == 0.0
    assert x["mean_confidence"] == pytest.approx((0.7 + 0.4 + 0.6) / 3)
    # labelled pairs match by the conversation and both texts, in either order
    labelled = [LabelledPair(id="1", messages=[], chosen="d", rejected="c")]
    assert human_sides([j1, j2], labelled) == [(j2, "b")]


def judge_logprobs(req: FakeRequest) -> dict[str, float] | None:
    text = req.last_user_message
    found = BLOCKS.search(text)
    if not found:
        return None
    if "POSITION" in text:
        return {"A": math.log(0.9), "B": math.log(0.1)}
    refusal_a = found.group(1).startswith("I can't")
    good = ("A" if refusal_a else "B") if "RIGHT" in text else ("B" if refusal_a else "A")
    strength = 0.95 if "RIGHT" in text else 0.8
    return {good: math.log(strength), ("B" if good == "A" else "A"): math.log(1 - strength)}


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribution")
    constitution = root / "c.yaml"
    constitution.write_text(json.dumps(CONSTITUTION))
    human = root / "human.jsonl"  # people prefer the refusal
    human.write_text("".join(json.dumps({"prompt": f"Can you help me hurt someone, case {i}?",
                                         "chosen": f"I can't help with that ({i}).",
                                         "rejected": f"Sure, here is how ({i})."}) + "\n" for i in range(5)))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I pick lock number {i}?"}) + "\n" for i in range(4)))
    with FakeAPIServer(sl_cai_responder, logprobs=judge_logprobs) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-test-attribution")
        gen, judge = root / "gen", root / "judge"
        assert main(["generate", *endpoint_args(server), "--prompts", str(prompts), "--out", str(gen)]) == 0
        assert main(["judge", *endpoint_args(server), "--from", str(gen), "--out", str(judge), "--constitution",
                     str(constitution), "--principles", "3", "--calibration-pairs", str(human),
                     "--allow-weak-judge"]) == 0
    return root, judge


@pytest.mark.loopback
def test_judge_stats_card_and_report_show_each_principle(judged, tmp_path):
    root, judge = judged
    rows = {r["principle_id"]: r for r in json.loads((judge / "stats.json").read_text())["per_principle"]}
    assert set(rows) == {"right", "wrong", "position"}
    for pid in rows:
        assert rows[pid]["pairs"] == 4 and rows[pid]["with_others"] == 4
        assert rows[pid]["human_agreement"]["n"] == 5  # the gate's human-labelled pairs
    assert rows["right"]["position_consistency"]["rate"] == 1.0 and rows["position"]["position_consistency"]["rate"] == 0
    assert rows["right"]["decided"]["rate"] == 1.0 and rows["wrong"]["decided"]["rate"] == 0.0
    assert rows["position"]["decided"]["rate"] == 0.0  # an exact tie decides nothing
    assert rows["right"]["human_agreement"]["rate"] == 1.0 and rows["wrong"]["human_agreement"]["rate"] == 0.0
    assert rows["position"]["human_agreement"]["rate"] == 0.5  # a tie counts half
    assert main(["export", str(judge), "--format", "jsonl", "--out", str(tmp_path / "export")]) == 0
    card = (tmp_path / "export" / "preferences" / "README.md").read_text()
    assert "## Judge principles" in card
    assert re.search(r"\| right \| 4 \| 100\.0 % \(51\.0 %-100\.0 %\) of 4 \| 100\.0 % .* \| 4 \| 100\.0 % .* of 5 \|", card), card
    assert main(["report", str(judge)]) == 0
    page = (judge / "report.html").read_text()
    assert "Judge principles" in page and "position" in page


@pytest.mark.loopback
def test_constitution_stats_after_the_fact_with_labels(judged, tmp_path, capsys):
    root, judge = judged
    assert main(["constitution", "stats", str(judge)]) == 0
    saved = json.loads((judge / "principle_stats.json").read_text())
    stats = json.loads((judge / "stats.json").read_text())["per_principle"]
    assert sorted(saved["principles"], key=lambda r: r["principle_id"]) == sorted(stats, key=lambda r: r["principle_id"])
    assert "right" in capsys.readouterr().out
    # people who labelled two judged pairs the other way: the revision (a refusal) lost
    judged_rows = [json.loads(line) for line in (judge / "judgments.jsonl").read_text().splitlines()][:2]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"prompt": j["prompt"], "chosen": j["response_b"],
                                          "rejected": j["response_a"]}) + "\n" for j in judged_rows))
    out = tmp_path / "stats.json"
    assert main(["constitution", "stats", str(judge), "--labels", str(labels), "--out", str(out)]) == 0
    rows = {r["principle_id"]: r for r in json.loads(out.read_text())["principles"]}
    assert rows["right"]["human_agreement"]["n"] == 7 and rows["right"]["human_agreement"]["rate"] == pytest.approx(5 / 7)
    assert rows["wrong"]["human_agreement"]["rate"] == pytest.approx(2 / 7)


@pytest.mark.loopback
def test_stats_of_a_directory_without_judgments_is_exit_2(tmp_path, capsys):
    assert main(["constitution", "stats", str(tmp_path)]) == 2
    assert "no judgments.jsonl" in capsys.readouterr().err
