"""`caikit eval` runs the mode-collapse and reward-hacking monitors on the before/after answers, and the verdict box
says what they found: hand-made answer sets whose right verdict is known."""

from __future__ import annotations

import json

import pytest

from caikit.train.monitors import before_after_warnings, copies_prompt

pytestmark = pytest.mark.unit

PROMPTS = [f"How do I fix the {thing} on my bike before the race on Sunday?" for thing in
           ("chain", "brakes", "saddle", "gears", "tyre", "pedals", "light", "bell")]
VARIED = [f"Check the {w} first, then tighten it with a {t} and test it on a short ride {i} times." for i, (w, t) in
          enumerate(zip(("bolt", "cable", "clamp", "hanger", "valve", "axle", "mount", "strap"),
                        ("wrench", "key", "driver", "spanner", "pump", "socket", "clip", "band")))]


def test_healthy_answers_fire_nothing():
    assert before_after_warnings(PROMPTS, VARIED, list(reversed(VARIED)), kl_per_response=3.0) == []


def test_the_issue_s_collapsed_model_fires_every_monitor():
    """After 16 DPO steps: KL 27 nats per response, answers alike, parroting the user."""
    parrot = [f"{p} {p}" for p in PROMPTS[:2]] * 4
    kinds = [w["kind"] for w in before_after_warnings(PROMPTS, VARIED, parrot, kl_per_response=27.0)]
    assert kinds == ["distinct_collapse", "kl_explosion", "prompt_copying"]  # 23 vs 19 words: length is within 1.5x
    (kl,) = [w for w in before_after_warnings(PROMPTS, VARIED, VARIED, 27.0) if w["kind"] == "kl_explosion"]
    assert "27.0 nats per response" in kl["message"]


def test_length_running_away_is_said_alone():
    longer = [v + " " + " ".join(f"w{i}x{k}" for k in range(40)) for i, v in enumerate(VARIED)]  # new words only
    (warning,) = before_after_warnings(PROMPTS, VARIED, longer, kl_per_response=1.0)
    assert warning["kind"] == "length_change" and warning["after"] > 2 * warning["before"]


def test_copies_prompt_reads_word_trigrams():
    assert copies_prompt("How do I fix the chain on my bike?", "how do I fix the chain on my bike? Fix it.")
    assert not copies_prompt("How do I fix the chain on my bike?", "Shift to the smallest cog and oil the links.")
    assert not copies_prompt("anything", "ok")


@pytest.mark.parametrize("monitors, line", [
    ([], "[ok] Collapse and reward hacking: No sign of mode collapse or reward hacking in the trained model's answers: "
         "distinct-n, KL per response, answer length and prompt copying are within bounds."),
    ([{"kind": "kl_explosion", "message": "KL from the starting model is 27.0 nats per response (bound 20)"}],
     "[!!] Collapse and reward hacking: The trained model shows signs of kl explosion: KL from the starting model is "
     "27.0 nats per response (bound 20)."),
    ([{"kind": "length_change", "message": "mean answer length went from 20 to 45 words"}],
     "[??] Collapse and reward hacking: The trained model shows signs of length change: mean answer length went from "
     "20 to 45 words."),
])
def test_the_verdict_box_says_what_the_monitors_found(tmp_path, monitors, line):
    from caikit.report.verdict import verdict_lines

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps({"table": [], "counts": {}, "monitors": monitors}))
    assert line in verdict_lines(tmp_path)
