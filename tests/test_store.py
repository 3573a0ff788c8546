"""The append-only store survives torn writes; derived files are replaced atomically."""

import json

import pytest

from caikit.errors import UserError
from caikit.records import SFTExample, Trace, idempotency_key
from caikit.store import JsonlFile, latest_by_id, write_jsonl_atomic


def test_append_then_read_roundtrip(tmp_path):
    f = JsonlFile(tmp_path / "a.jsonl")
    for i in range(3):
        f.append({"id": f"k{i}", "x": i})
    f.close()
    assert [r["x"] for r in f.read()] == [0, 1, 2]


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "tex')
    f = JsonlFile(path)
    assert [r["id"] for r in f.read()] == ["a", "b"]
    f.append({"id": "d"})  # repairs first, so the new line is not glued to the torn one
    f.close()
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n{"id": "d"}\n'


def test_terminated_but_unparseable_last_line_is_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": \n')
    f = JsonlFile(path)
    assert f.repair() == len(b'{"id": \n')
    assert path.read_bytes() == b'{"id": "a"}\n'


def test_corruption_in_the_middle_is_an_error_with_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(UserError, match=r"a\.jsonl:2: corrupt JSON"):
        JsonlFile(path).read()


def test_rows_are_read_a_line_at_a_time_from_the_file_as_it_was_when_reading_began(tmp_path):
    f = JsonlFile(tmp_path / "a.jsonl")
    for i in range(3):
        f.append({"id": f"k{i}"})
    seen = []
    for row in f.iter():  # appending while reading: the rows of the file as it was, and no endless loop
        seen.append(row["id"])
        f.append({"id": f"more-{row['id']}"})
    f.close()
    assert seen == ["k0", "k1", "k2"] and len(f.read()) == 6
    # blank lines count in the line numbers an error names
    (tmp_path / "b.jsonl").write_bytes(b'{"id": "a"}\n\n[1]\n{"id": "c"}\n')
    with pytest.raises(UserError, match=r"b\.jsonl:3: expected a JSON object"):
        JsonlFile(tmp_path / "b.jsonl").read()


def test_atomic_rewrite_leaves_no_tmp(tmp_path):
    n = write_jsonl_atomic(tmp_path / "x.jsonl", ({"id": str(i)} for i in range(5)))
    assert n == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 5


def test_latest_by_id_keeps_last():
    rows = [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "a", "v": 3}]
    assert latest_by_id(rows) == {"a": {"id": "a", "v": 3}, "b": {"id": "b", "v": 2}}


def test_idempotency_key_is_stable_and_sensitive():
    k1 = idempotency_key("trace", [{"role": "user", "content": "hi"}], {"seed": 0})
    assert k1 == idempotency_key("trace", [{"role": "user", "content": "hi"}], {"seed": 0})
    assert k1 != idempotency_key("trace", [{"role": "user", "content": "hi"}], {"seed": 1})
    assert k1.startswith("trace-") and len(k1) == len("trace-") + 24


def test_sft_example_from_trace():
    t = Trace(id="t1", prompt=[{"role": "user", "content": "q"}], initial_response="bad", final_revision="good")
    ex = SFTExample.from_trace(t)
    assert ex.prompt == [{"role": "user", "content": "q"}]
    assert ex.completion == [{"role": "assistant", "content": "good"}]
    assert json.loads(json.dumps(ex.to_dict()))["id"] == "t1"


def test_check_same_run_refuses_other_stage_or_settings(tmp_path):
    from caikit.rundir import check_identity as check_same_run
    from caikit.store import write_json_atomic

    check_same_run(tmp_path, "generate", {"rounds": 1})  # an empty dir is fine
    write_json_atomic(tmp_path / "run.json", {"stage": "generate", "identity": {"rounds": 1, "seed": 0}})
    check_same_run(tmp_path, "generate", {"rounds": 1, "seed": 0})
    with pytest.raises(UserError, match=r"rounds changed"):
        check_same_run(tmp_path, "generate", {"rounds": 2, "seed": 0})
    with pytest.raises(UserError, match=r"holds a 'generate' run"):
        check_same_run(tmp_path, "judge", {"rounds": 1})
