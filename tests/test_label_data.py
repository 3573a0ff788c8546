"""`caikit label` data: reading sources, the stratified sample, label rows -> preference pairs, merge, and the
agreement statistics (hand-computed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from caikit.errors import UserError
from caikit.cli import main
from caikit.label.rows import (MergeLabelsConfig, answered_items, label_id, latest_answers, merge_label_files,
                               read_labels, run_merge, to_preference_pairs)
from caikit.label.sources import CONFIDENCE_STRATA, LabelItem, confidence_stratum, load_items, select, shown_left
from caikit.label.stats import inter_annotator_agreement, judge_vs_humans

pytestmark = pytest.mark.unit

PROMPT = [{"role": "user", "content": "How do I stay safe online?"}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def label(labeler: str, pair: str, choice: str, ai_p_a: float | None = None, **extra) -> dict:
    """A Label row as `caikit label` writes it (response_a 'A-<pair>', response_b 'B-<pair>')."""
    return {"id": label_id(labeler, pair), "run_id": "", "created_at": "2025-01-01T00:00:00Z", "pair_id": pair,
            "prompt": PROMPT, "response_a": f"A-{pair}", "response_b": f"B-{pair}", "shown_left": "a",
            "choice": choice, "labeler": labeler, "note": "", "source": "src", "ai_p_a": ai_p_a, **extra}


# ---------------------------------------------------------------- sources


def test_sources_judge_run_generate_run_and_pairs_file(tmp_path):
    judge = tmp_path / "judge"
    _jsonl(judge / "judgments.jsonl", [
        {"id": "j2", "pair_id": "q2#0-1", "prompt": PROMPT, "response_a": "x", "response_b": "y", "p_a": 0.3},
        {"id": "j1", "pair_id": "q1#0-1", "prompt": PROMPT, "response_a": "old", "response_b": "y", "p_a": 0.9},
        {"id": "j1", "pair_id": "q1#0-1", "prompt": PROMPT, "response_a": "new", "response_b": "y", "p_a": 0.8}])
    items, kind = load_items(str(judge))
    assert kind == "judge run"
    assert [(i.pair_id, i.response_a, i.ai_p_a) for i in items] == [("q1#0-1", "new", 0.8), ("q2#0-1", "x", 0.3)]

    gen = tmp_path / "gen"
    _jsonl(gen / "traces.jsonl", [
        {"id": "t1", "prompt": PROMPT, "initial_response": "Sure, here is how.", "final_revision": "I'd rather not."},
        {"id": "t2", "prompt": PROMPT, "initial_response": "same", "final_revision": "same "}])  # no comparison
    items, kind = load_items(str(gen))
    assert kind == "generate run"
    assert items == [LabelItem("t1", PROMPT, "I'd rather not.", "Sure, here is how.", None)]

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"id": "h1", "prompt": "hi", "chosen": "hello", "rejected": "go away"}])
    items, kind = load_items(str(pairs))
    assert kind == "pairs file"
    assert items == [LabelItem("h1", [{"role": "user", "content": "hi"}], "hello", "go away", None)]

    with pytest.raises(UserError, match="neither a judge run"):
        load_items(str(tmp_path))
    with pytest.raises(UserError, match="no such file"):
        load_items(str(tmp_path / "missing"))


def test_sample_from_a_judge_run_spreads_over_confidence():
    # a confident judge: 90 pairs at p = 0.95 (stratum 4), 10 near-ties at p = 0.52 (stratum 0)
    items = [LabelItem(f"p{i:03d}", PROMPT, "a", "b", 0.95 if i < 90 else 0.52) for i in range(100)]
    assert confidence_stratum(0.52) == 0 and confidence_stratum(0.95) == 4 and confidence_stratum(0.0) == 4
    assert confidence_stratum(0.7) == 2 and confidence_stratum(0.3) == 2
    picked = select(items, 10, seed=1)
    # strata 1-3 are empty, so the round-robin takes from 0 and 4 in turn: 5 near-ties, where a plain random
    # sample of 10 would expect one
    assert Counter(confidence_stratum(i.ai_p_a) for i in picked) == {0: 5, 4: 5}
    assert select(items, 10, seed=1) == picked  # the same on a restart
    assert len({i.pair_id for i in picked}) == 10
    everything = select(items, 0, seed=1)
    assert sorted(i.pair_id for i in everything) == [i.pair_id for i in items] and everything != items  # shuffled
    assert CONFIDENCE_STRATA == 5


def test_sample_without_judge_scores_is_plain_random():
    items = [LabelItem(f"p{i}", PROMPT, "a", "b") for i in range(20)]
    picked = select(items, 5, seed=3)
    assert len(picked) == 5 and len({i.pair_id for i in picked}) == 5 and select(items, 5, seed=3) == picked


def test_shown_left_is_stable_and_mixed():
    sides = [shown_left(0, "ann", f"p{i}") for i in range(200)]
    assert sides == [shown_left(0, "ann", f"p{i}") for i in range(200)]
    assert 70 < sides.count("a") < 130  # a hash, about half each way
    assert sides != [shown_left(0, "bob", f"p{i}") for i in range(200)]  # another person, another placement


# ---------------------------------------------------------------- rows -> preference pairs, merge


def test_latest_answer_per_label_wins_and_undo_and_skip_drop():
    rows = [label("ann", "p1", "a"), label("ann", "p1", "undo"), label("ann", "p2", "b"), label("ann", "p3", "a"),
            label("ann", "p3", "b"), label("ann", "p4", "skip"), label("ann", "p5", "tie"), label("bob", "p1", "b")]
    assert {(r["labeler"], r["pair_id"], r["choice"]) for r in latest_answers(rows)} == {
        ("ann", "p2", "b"), ("ann", "p3", "b"), ("ann", "p5", "tie"), ("bob", "p1", "b")}
    pairs = to_preference_pairs(rows)
    assert [(p.provenance["labeler"], p.provenance["pair_id"]) for p in pairs] == [
        ("ann", "p2"), ("ann", "p3"), ("bob", "p1")]  # the tie carries no preference
    first = pairs[0].to_dict()
    assert first["prompt"] == PROMPT
    assert first["chosen"] == [{"role": "assistant", "content": "B-p2"}]
    assert first["rejected"] == [{"role": "assistant", "content": "A-p2"}]
    assert first["p_chosen"] == 1.0 and first["source"] == "human" and first["id"] == label_id("ann", "p2")
    assert "margin" not in first and "score" not in first
    assert [i.pair_id for i in answered_items(rows)] == ["p2", "p3", "p5", "p1"]  # what a judge under test scores


def test_read_labels_names_the_file_and_row(tmp_path):
    path = _jsonl(tmp_path / "labels.jsonl", [label("ann", "p1", "a"), {"id": "x", "prompt": "hi"}])
    with pytest.raises(UserError, match=r"labels.jsonl: row 2 is not a label row"):
        read_labels(path)
    path.write_text(json.dumps(label("ann", "p1", "a")) + "\n" + '{"id": "torn', encoding="utf-8")
    assert len(read_labels(path)) == 1  # a torn last line from a crash is not an error


def test_merge_is_checked_concatenation(tmp_path, capsys):
    ann = _jsonl(tmp_path / "ann.jsonl", [label("ann", "p1", "a"), label("ann", "p2", "b")])
    bob = _jsonl(tmp_path / "bob.jsonl", [label("bob", "p1", "b"), label("bob", "p1", "undo")])
    out = tmp_path / "all.jsonl"
    assert run_merge(MergeLabelsConfig(files=[str(ann), str(bob)], out=str(out))) == 0
    assert read_labels(out) == read_labels(ann) + read_labels(bob)
    assert "4 rows from 2 files" in capsys.readouterr().out
    again = _jsonl(tmp_path / "ann-laptop.jsonl", [label("ann", "p2", "a")])
    with pytest.raises(UserError, match="'ann' labelled pair 'p2' here and in"):
        merge_label_files([str(ann), str(again)])
    with pytest.raises(UserError, match="must not be one of the inputs"):
        MergeLabelsConfig(files=[str(ann), str(bob)], out=str(ann)).validate()


# ---------------------------------------------------------------- agreement statistics


def test_inter_annotator_agreement_hand_computed():
    ann = [label("ann", p, c) for p, c in [("p1", "a"), ("p2", "a"), ("p3", "b"), ("p4", "tie"), ("p9", "a")]]
    bob = [label("bob", p, c) for p, c in [("p1", "a"), ("p2", "b"), ("p3", "b"), ("p4", "tie"), ("p5", "skip")]]
    result = inter_annotator_agreement(ann + bob + [label("cy", "p8", "a")])
    # ann a a b tie / bob a b b tie on p1-p4: p_o = 3/4; marginals ann (a .5, b .25, tie .25), bob (a .25, b .5,
    # tie .25): p_e = .125 + .125 + .0625 = .3125; kappa = (.75 - .3125) / (1 - .3125) = 7/11
    ann_bob = result["pairwise"][0]
    assert ann_bob["labelers"] == ["ann", "bob"] and ann_bob["n"] == 4 and ann_bob["agreement"] == 0.75
    assert ann_bob["kappa"] == pytest.approx(7 / 11)
    assert result["pairwise"][1] == {"labelers": ["ann", "cy"], "n": 0, "agreement": None, "kappa": None}
    assert result["labelers"] == 3 and result["overlapping_pairs"] == 4
    assert result["mean_kappa"] == pytest.approx(7 / 11)


def test_judge_vs_humans_hand_computed():
    rows = [label("ann", "p1", "a", 0.8), label("ann", "p2", "b", 0.7), label("ann", "p3", "a", 0.5),
            label("ann", "p4", "tie", 0.2), label("ann", "p5", "b", 0.1), label("ann", "p6", "a", None),
            label("ann", "p7", "skip", 0.9)]
    result = judge_vs_humans(rows)
    # decided answers p1 (judge a: 1), p2 (judge a: 0), p3 (judge tie: 1/2), p5 (judge b: 1) -> 2.5 / 4
    assert result["accuracy"] == 0.625 and result["decided"] == 4 and result["n"] == 5
    assert result["interval"] == pytest.approx((0.2194, 0.9081), abs=1e-4)  # Wilson, 2.5 of 4
    # kappa over p1-p5: humans a b a tie b, judge a a tie b b: p_o = 2/5; both marginals (a .4, b .4, tie .2):
    # p_e = .16 + .16 + .04 = .36; kappa = (.4 - .36) / .64 = 0.0625
    assert result["kappa"] == pytest.approx(0.0625)
    assert result["human_ties"] == 1 and result["judge_ties"] == 1 and result["without_judge"] == 1
    # another judge's p_a, keyed by pair id, in place of the rows' own
    other = judge_vs_humans(rows, p_a={"p1": 0.1, "p2": 0.2})
    assert other["accuracy"] == 0.5 and other["decided"] == 2 and other["without_judge"] == 4


def test_command_errors_are_one_line_exit_2(tmp_path, capsys):
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}])
    for argv, message in [([str(tmp_path / "missing")], "no such file or directory"),
                          ([str(pairs), "--sample", "-1"], "--sample must be >= 0"),
                          ([str(pairs), "--token", "short"], "at least 12 printable characters"),
                          ([str(pairs), "--out", str(tmp_path)], "must be a file"),
                          ([str(pairs), "--out", str(pairs), "--port", "0"], "row 1 is not a label row")]:
        assert main(["label", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
