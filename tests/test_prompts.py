"""Prompt and labelled-pair loading: every file format, hh-rlhf transcripts, limits, row-numbered errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re

import pytest

from caikit.errors import UserError
from caikit.prompts import (bundled_benign_prompts_path, bundled_prompts_path, load_labelled_pairs, load_prompts,
                            parse_hh_transcript)

HH = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how do I bake bread?\n\nAssistant:  Knead it. "
USER = [{"role": "user", "content": "How do I boil an egg?"}]


def sha16(messages) -> str:
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def at(path, rest: str) -> str:
    """A regex for `PATH` + rest, the path taken literally."""
    return "^" + re.escape(str(path)) + rest


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_parse_hh_transcript():
    assert parse_hh_transcript(HH) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "how do I bake bread?"},
        {"role": "assistant", "content": "Knead it."},
    ]
    assert parse_hh_transcript("Human: q\n\nAssistant:") == [{"role": "user", "content": "q"},
                                                            {"role": "assistant", "content": ""}]
    with pytest.raises(ValueError, match="text before the first"):
        parse_hh_transcript("preamble\n\nHuman: q")
    with pytest.raises(ValueError, match="no 'Human:' turn"):
        parse_hh_transcript("just text")


# --- formats ---------------------------------------------------------------------------------------


def test_jsonl_prompt_shapes(tmp_path):
    conversation = [{"role": "system", "content": "be brief"}, *USER, {"role": "assistant", "content": "Boil it."}]
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "How do I boil an egg?"},
        {"id": 42, "prompt": [{"role": "user", "content": "Name a prime.", "name": "x"}]},
        {"messages": conversation},  # final assistant turn dropped
        {"chosen": HH, "rejected": HH.replace("Knead it.", "No.")},  # hh-rlhf
        {"prompt": HH},  # hh transcript held in a prompt column
        "What is 2 + 2?",
    ])
    rows = load_prompts(path)
    assert [r.messages for r in rows] == [
        USER,
        [{"role": "user", "content": "Name a prime."}],
        conversation[:2],
        parse_hh_transcript(HH)[:3],
        # same conversation as the hh row: same id, so it is kept once
        [{"role": "user", "content": "What is 2 + 2?"}],
    ]
    assert [r.id for r in rows] == [sha16(USER), "42", sha16(conversation[:2]), sha16(parse_hh_transcript(HH)[:3]),
                                    sha16([{"role": "user", "content": "What is 2 + 2?"}])]
    assert [r.source_index for r in rows] == [0, 1, 2, 3, 5]


def test_json_csv_parquet_and_gz_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    two_turns = [*USER, {"role": "assistant", "content": "Boil it."}, {"role": "user", "content": "How long?"}]
    expected = [USER, two_turns]

    (tmp_path / "p.json").write_text(json.dumps([{"prompt": USER[0]["content"]}, {"messages": two_turns}]))
    (tmp_path / "s.json").write_text(json.dumps([USER[0]["content"]]))
    with open(tmp_path / "p.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "messages"])
        writer.writerow([USER[0]["content"], ""])
        writer.writerow(["", json.dumps(two_turns)])
    pq.write_table(pa.Table.from_pylist([{"messages": USER}, {"messages": two_turns}]), tmp_path / "p.parquet")
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write(json.dumps({"prompt": USER[0]["content"]}) + "\n\n" + json.dumps({"messages": two_turns}) + "\n")

    for name in ("p.json", "p.csv", "p.parquet", "p.jsonl.gz"):
        rows = load_prompts(tmp_path / name)
        assert [r.messages for r in rows] == expected, name
        assert [r.id for r in rows] == [sha16(USER), sha16(two_turns)], name
    assert [r.messages for r in load_prompts(tmp_path / "s.json")] == [USER]


def test_duplicates_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": "c"}])
    assert [r.messages[0]["content"] for r in load_prompts(path)] == ["a", "b", "c"]
    assert [r.source_index for r in load_prompts(path)] == [0, 1, 3]
    assert [r.messages[0]["content"] for r in load_prompts(path, limit=2)] == ["a", "b"]
    assert load_prompts(path, limit=0) == []


def test_hh_rlhf_test_split(shared_data):
    path = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    rows = load_prompts(path)
    # 1,800 rows; two conversations appear twice, so 1,798 distinct prompts
    assert len(rows) == 1798 and rows[-1].source_index == 1799
    first = rows[0]
    assert first.source_index == 0 and len(first.messages) == 5
    assert first.messages[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first.messages[-1] == {"role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert all(r.messages[-1]["role"] == "user" for r in rows)
    assert [r.id for r in load_prompts(path, limit=3)] == [r.id for r in rows[:3]]


# --- bad input -------------------------------------------------------------------------------------------


def test_errors_name_file_and_row(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}"}) for i in range(6)] + ['{"prompt": "oops"']
    bad_json = tmp_path / "prompts.jsonl"
    bad_json.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=at(bad_json, r":7: invalid JSON: ")):
        load_prompts(bad_json)

    no_column = tmp_path / "prompts.csv"
    no_column.write_text("question,answer\nhi,there\n")
    with pytest.raises(UserError, match=at(no_column, r": no 'prompt' or 'messages' column$")):
        load_prompts(no_column)

    empty_cell = tmp_path / "cells.csv"
    empty_cell.write_text("prompt\nfirst\nsecond\n   \n")
    with pytest.raises(UserError, match=at(empty_cell, r":4: empty prompt$")):
        load_prompts(empty_cell)

    ends_with_assistant = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "ok"}, {"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    with pytest.raises(UserError, match=at(ends_with_assistant, r":2: the conversation must end with a user turn$")):
        load_prompts(ends_with_assistant)

    bad_role = tmp_path / "r.json"
    bad_role.write_text(json.dumps([{"prompt": "ok"}, {"messages": [{"role": "human", "content": "hi"}]}]))
    with pytest.raises(UserError, match=at(bad_role, r": item 2: 'messages' message 1 must be \{role: ")):
        load_prompts(bad_role)

    no_key = write_jsonl(tmp_path / "k.jsonl", [{"text": "hi"}])
    with pytest.raises(UserError, match=at(no_key, r":1: no 'prompt' or 'messages' column$")):
        load_prompts(no_key)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=at(empty, r": empty file: no prompts$")):
        load_prompts(empty)

    # one object in a .json file is a one-row JSON Lines file (what `datasets`' to_json writes); a scalar is not rows
    one_object = tmp_path / "obj.json"
    one_object.write_text('{"prompt": "hi"}')
    assert [r.messages for r in load_prompts(one_object)] == [[{"role": "user", "content": "hi"}]]
    scalar = tmp_path / "scalar.json"
    scalar.write_text('"hi"')
    with pytest.raises(UserError, match=at(scalar, r": expected a JSON list or JSON Lines of objects, got str$")):
        load_prompts(scalar)

    with pytest.raises(UserError, match=r"unsupported file type 'p.txt' \(use \.jsonl"):
        (tmp_path / "p.txt").write_text("hi\n")
        load_prompts(tmp_path / "p.txt")
    with pytest.raises(UserError, match=at(tmp_path / 'missing.jsonl', r": no such file$")):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read gzip"):
        load_prompts(tmp_path / "bad.jsonl.gz")


def test_parquet_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "fine"}, {"prompt": "also fine"}, {"prompt": ""}]),
                   tmp_path / "p.parquet")
    with pytest.raises(UserError, match=at(tmp_path / 'p.parquet', r": row 3: empty prompt$")):
        load_prompts(tmp_path / "p.parquet")


# --- labelled pairs ---------------------------------------------------------------------------------------


def test_labelled_pairs_from_hh_rlhf(shared_data):
    pairs = load_labelled_pairs(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    assert len(pairs) == 1800
    first = pairs[0]
    assert first.messages == load_prompts(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", limit=1)[0].messages
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.rejected.startswith("There are lots of funny things you can do with pens")
    assert all(p.messages[-1]["role"] == "user" for p in pairs)
    # row 86: the human-preferred reply is empty; kept as the data says
    assert pairs[86].chosen == "" and pairs[86].rejected == "Sure, the address is ..."
    # row 1254: chosen spans two assistant turns after the shared prefix
    assert pairs[1254].messages[-1]["content"] == "Isn't that drag kings?"
    assert pairs[1254].chosen.endswith("\n\nI think they call them that because")
    assert len(load_labelled_pairs(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", limit=5)) == 5


def test_labelled_pairs_prompt_chosen_rejected(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "How do I boil an egg?", "chosen": "Simmer it 8 minutes.", "rejected": "No."},
        {"id": "trl-explicit", "prompt": USER,
         "chosen": [{"role": "assistant", "content": "Eight minutes."}],
         "rejected": [{"role": "assistant", "content": "Ask someone else."}]},
        {"chosen": [*USER, {"role": "assistant", "content": "Simmer."}],  # TRL implicit prompt
         "rejected": [*USER, {"role": "assistant", "content": "Fry."}]},
    ])
    pairs = load_labelled_pairs(path)
    assert [(p.messages, p.chosen, p.rejected) for p in pairs] == [
        (USER, "Simmer it 8 minutes.", "No."), (USER, "Eight minutes.", "Ask someone else."),
        (USER, "Simmer.", "Fry.")]
    assert pairs[1].id == "trl-explicit"
    assert pairs[0].id == sha16([USER, "Simmer it 8 minutes.", "No."])


def test_labelled_pair_errors(tmp_path):
    diverging = write_jsonl(tmp_path / "d.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d",
         "rejected": "\n\nHuman: a\n\nAssistant: X\n\nHuman: c\n\nAssistant: e"}])
    with pytest.raises(UserError, match=at(diverging, r":1: 'chosen' and 'rejected' must share the conversation")):
        load_labelled_pairs(diverging)
    missing = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q"}])
    with pytest.raises(UserError, match=at(missing, r":2: expected 'chosen' and 'rejected'")):
        load_labelled_pairs(missing)


# --- bundled prompt sets ---------------------------------------------------------------------------------


def test_bundled_prompts_come_from_hh_rlhf(shared_data):
    rows = load_prompts(bundled_prompts_path())
    assert len(rows) == 50 and [r.id for r in rows[:2]] == ["rt-001", "rt-002"]
    hh = [json.loads(line) for line in gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt")]
    raw = [json.loads(line) for line in bundled_prompts_path().read_text().splitlines()]
    for row, item in zip(rows, raw):
        assert row.messages == parse_hh_transcript(hh[item["hh_rlhf_row"]]["chosen"])[:1]
    assert len({r.messages[0]["content"].lower() for r in rows}) == 50
    benign = load_prompts(bundled_benign_prompts_path())
    assert len(benign) >= 20 and all(len(r.messages) == 1 for r in benign)
