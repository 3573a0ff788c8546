"""Rows -> unpaired (prompt, completion, desirable?) examples for KTO, in the three layouts it reads."""

from __future__ import annotations

import pytest

from caikit.errors import UserError
from caikit.train.data import unpaired_examples

pytestmark = pytest.mark.unit

USER = [{"role": "user", "content": "Say hi."}]


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_three_layouts_by_hand():
    rows = [
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},  # TRL's unpaired layout, strings
        {"prompt": USER, "completion": said("Go away."), "label": 0},  # conversational, 0/1 label
        {"prompt": "Say hi.", "chosen": "Hello!", "rejected": "No.", "p_chosen": 0.9},  # a pair
        # labelling-page rows: the latest row per id wins; a/b pick the desirable response; the rest are dropped
        {"id": "p1", "prompt": USER, "response_a": "Hey.", "response_b": "Hm.", "choice": "a"},
        {"id": "p2", "prompt": USER, "response_a": "Yo.", "response_b": "Hello there.", "choice": "b"},
        {"id": "p1", "prompt": USER, "response_a": "Hey.", "response_b": "Hm.", "choice": "b"},
        {"id": "p3", "prompt": USER, "response_a": "A", "response_b": "B", "choice": "tie"},
        {"id": "p4", "prompt": USER, "response_a": "A", "response_b": "B", "choice": "skip"},
        {"id": "p5", "prompt": USER, "response_a": "A", "response_b": "B", "choice": "a"},
        {"id": "p5", "prompt": USER, "response_a": "A", "response_b": "B", "choice": "undo"},
    ]
    examples, counts = unpaired_examples(rows, "rows.jsonl")
    got = [(e["prompt"], e["completion"][0]["content"], e["label"]) for e in examples]
    assert got == [(USER, "Hi!", True), (USER, "Go away.", False), (USER, "Hello!", True), (USER, "No.", False),
                   (USER, "Hm.", True), (USER, "Hey.", False),  # p1's second row (b) replaced its first (a)
                   (USER, "Hello there.", True), (USER, "Yo.", False)]
    assert counts == {"tie": 1, "skip": 1, "undo": 1, "superseded": 2}
    assert all(e["completion"][0]["role"] == "assistant" for e in examples)


@pytest.mark.parametrize("rows,message", [
    ([], "empty"),
    ([{"prompt": "p", "completion": "c", "label": "yes"}], "row 1: 'label' must be true or false"),
    ([{"prompt": "p", "completion": "c", "label": True}, {"text": "t"}], "row 2 is neither"),
    ([{"completion": "c", "label": True}], "missing column 'prompt'"),
    ([{"id": "x", "prompt": USER, "response_a": "A", "response_b": "B", "choice": "maybe"}], "'choice' must be"),
])
def test_bad_rows_are_one_line_errors_naming_the_file(rows, message):
    with pytest.raises(UserError, match=message) as info:
        unpaired_examples(rows, "rows.jsonl")
    assert "rows.jsonl" in str(info.value) and "\n" not in str(info.value)
