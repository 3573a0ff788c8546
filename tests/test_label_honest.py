"""What a labeller needs to know on the page: a response cut at the token limit is marked as cut, a judge that
failed its quality gate is said so beside its revealed verdict, and an undo says what it undid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caikit.label.session import LabelSession
from caikit.label.sources import judge_gate_status, load_items, select, shown_left

pytestmark = pytest.mark.unit

PROMPT = [{"role": "user", "content": "How do I stay safe online?"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def generate_run(root: Path) -> Path:
    return _jsonl(root / "gen" / "traces.jsonl", [
        {"id": "t1", "prompt": PROMPT, "initial_response": "Use a password manager and", "final_revision": "Use a "
         "password manager.", "stop_reasons": {"answer": "length", "critique 1": "stop", "revision 1": "stop"}},
        {"id": "t2", "prompt": PROMPT, "initial_response": "Never.", "final_revision": "Turn on two-factor auth and",
         "truncated": True, "stop_reasons": {"answer": "stop", "revision 1": "length"}}]).parent


def test_cut_responses_are_marked_on_the_side_they_are_shown(tmp_path):
    items, _ = load_items(str(generate_run(tmp_path)))
    assert [(i.pair_id, i.cut_a, i.cut_b) for i in items] == [("t1", False, True), ("t2", True, False)]
    session = LabelSession(items, tmp_path / "labels.jsonl", labeler="ann", source="gen")
    for item in items:
        pair = session.state()["pair"]
        left_is_a = shown_left(0, "ann", item.pair_id) == "a"
        assert (pair["left_cut"], pair["right_cut"]) == ((item.cut_a, item.cut_b) if left_is_a else
                                                        (item.cut_b, item.cut_a))
        assert pair["left" if (left_is_a == item.cut_a) else "right"].endswith("and")  # the cut text is the marked one
        session.answer(item.pair_id, "tie")
    session.close()


def test_a_judge_run_reads_cut_flags_from_the_generate_run_it_judged(tmp_path):
    gen = generate_run(tmp_path)
    judge = tmp_path / "judge"
    _jsonl(judge / "judgments.jsonl", [{"id": "j1", "pair_id": "t2#0", "prompt": PROMPT, "p_a": 0.7,
                                        "response_a": "Turn on two-factor auth and", "response_b": "Never."}])
    (judge / "config.yaml").write_text(f"from_dir: {gen}\n")
    (judge / "gate.json").write_text(json.dumps({"status": "allowed-weak"}))
    (item,), _ = load_items(str(judge))
    assert (item.cut_a, item.cut_b) == (True, False)
    assert judge_gate_status(judge) == "allowed-weak" and judge_gate_status(tmp_path) == ""


def test_reveal_says_the_judge_failed_its_gate_and_undo_says_what_it_undid(tmp_path):
    judge = tmp_path / "judge"
    _jsonl(judge / "judgments.jsonl", [{"id": f"j{i}", "pair_id": f"q{i}", "prompt": PROMPT, "p_a": 0.9,
                                        "response_a": f"a{i}", "response_b": f"b{i}"} for i in range(2)])
    items = select(load_items(str(judge))[0], 0, 0)
    session = LabelSession(items, tmp_path / "labels.jsonl", labeler="ann", source=str(judge), reveal=True,
                           judge_gate="failed")
    first = items[0].pair_id
    session.answer(first, "left")
    assert session.state()["last"]["judge_gate"] == "failed" and "ai_p_left" in session.state()["last"]
    assert session.undo()
    undone = session.state()["undone"]
    assert undone == {"pair_id": first, "choice": "left", "position": 1}
    assert session.state()["last"] is None and session.state()["pair"]["pair_id"] == first
    session.answer(first, "right")
    assert session.state()["undone"] is None  # said once, gone with the next answer
    session.close()


def test_the_page_shows_cut_marks_gate_words_and_undo_text():
    page = (Path(__file__).resolve().parents[1] / "caikit" / "label" / "page.html").read_text(encoding="utf-8")
    for needle in ('id="left-cut"', 'id="right-cut"', "next.pair.left_cut", '"failed": "this judge failed its quality',
                   "Undone: your answer on pair ", "showLast(next.last, next.undone)"):
        assert needle in page
