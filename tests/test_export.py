"""`caikit export`: round trips into HF datasets / parquet / JSONL with the columns TRL trainers read."""

from __future__ import annotations

import json

import pytest

from caikit.cli import main
from caikit.records import PreferencePair, SFTExample

PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]


def make_run(root, *, stage="judge"):
    run = root / "run"
    run.mkdir()
    prefs = [PreferencePair(id=f"pref-{i}", prompt=PROMPT + [{"role": "assistant", "content": "Why?"},
                                                            {"role": "user", "content": f"Tell me {i}."}],
                            chosen=[{"role": "assistant", "content": f"I can't help with that {i}."}],
                            rejected=[{"role": "assistant", "content": f"Sure, step {i}: ..."}],
                            p_chosen=0.8, source="revision-vs-initial",
                            provenance={"judge": "x"}) for i in range(3)]
    (run / "preferences.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prefs))
    sft = [SFTExample(id=f"t{i}", prompt=PROMPT, completion=[{"role": "assistant", "content": f"No {i}."}]) for i in range(2)]
    (run / "sft.jsonl").write_text("".join(json.dumps(s.to_dict()) + "\n" for s in sft))
    identity = {"constitution": "anthropic-cai", "constitution_hash": "ab" * 32, "backend": "openai",
                "model": "gpt-4o-mini", "method": "logprob", "swap": True, "principles": 2, "pairs": "revision"}
    (run / "run.json").write_text(json.dumps({"stage": stage, "identity": identity}))
    (run / "stats.json").write_text(json.dumps({"source": "revision-vs-initial", "pairs": 4, "ties": 1,
                                                "position_consistency_rate": 0.75}))
    return run


def is_conversational_preference(row) -> bool:
    """The check TRL's DPOTrainer / RewardTrainer make: prompt/chosen/rejected lists of {role, content}."""
    for key in ("prompt", "chosen", "rejected"):
        value = row[key]
        if not isinstance(value, list) or not value or not all(set(m) == {"role", "content"} for m in value):
            return False
    return row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_export_datasets_round_trip_with_trl_columns_and_card(tmp_path):
    from datasets import load_from_disk

    run = make_run(tmp_path)
    agreement = tmp_path / "report.json"
    agreement.write_text(json.dumps({"accuracy": 0.7125, "n": 200, "pairs_file": "hh.jsonl.gz", "ece": 0.05,
                                     "position_consistency_rate": 0.6}))
    assert main(["export", str(run), "--format", "datasets", "--agreement", str(agreement)]) == 0
    prefs = load_from_disk(str(run / "export" / "preferences"))
    assert prefs.column_names == ["prompt", "chosen", "rejected", "p_chosen", "source"]
    assert len(prefs) == 3 and all(is_conversational_preference(row) for row in prefs)
    assert prefs[1]["prompt"][-1] == {"role": "user", "content": "Tell me 1."}
    assert prefs[1]["chosen"] == [{"role": "assistant", "content": "I can't help with that 1."}]
    assert prefs[0]["p_chosen"] == 0.8
    sft = load_from_disk(str(run / "export" / "sft"))
    assert sft.column_names == ["prompt", "completion"] and sft[1]["prompt"] == PROMPT
    assert sft[1]["completion"] == [{"role": "assistant", "content": "No 1."}]
    card = (run / "export" / "preferences" / "README.md").read_text()
    for fact in ("anthropic-cai", "ab" * 32, "openai:gpt-4o-mini", "| judge method | logprob |",
                 "| order swap (position-bias control) | yes |", "| rows | 3 |", "| ties | 1 |",
                 "| judge agreement with human labels | 0.7125 on 200 pairs", "| judge principles per pair | 2 |"):
        assert fact in card, fact


@pytest.mark.parametrize("fmt, file", [("parquet", "train.parquet"), ("jsonl", "train.jsonl")])
def test_export_parquet_and_jsonl_load_with_datasets(tmp_path, fmt, file):
    from datasets import load_dataset

    run = make_run(tmp_path)
    assert main(["export", str(run), "--format", fmt]) == 0
    assert main(["export", str(run), "--format", fmt]) == 0  # a second export replaces the first
    path = run / "export" / "preferences" / file
    prefs = load_dataset("parquet" if fmt == "parquet" else "json", data_files=str(path), split="train")
    assert len(prefs) == 3 and all(is_conversational_preference(row) for row in prefs)
    card = (run / "export" / "preferences" / "README.md").read_text()
    assert f"path: {file}" in card and "not measured" in card


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "nothing to export" in capsys.readouterr().err
    run = make_run(tmp_path)
    (run / "preferences.jsonl").write_text(json.dumps({"id": "x", "prompt": PROMPT}) + "\n")
    assert main(["export", str(run), "--format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "preferences.jsonl" in err and "chosen" in err and "Traceback" not in err
