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
    for fact in ("anthropic-cai", "ab" * 32, "| judge model | `openai:gpt-4o-mini` |", "| judge method | logprob",
                 "| judge endpoint | cloud API (OpenAI) |", "| order swap (position-bias control) | yes |",
                 "| rows in this dataset | 3 |", "| ties (p_chosen = 0.5, dropped) | 1 |",
                 "| agreement with human labels (`caikit eval judge`) | 0.7125 on 200 pairs",
                 "| judge principles per pair | 2 |", "Prompts** (`?`): not recorded", "license: unknown"):
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
    (run / "config.yaml").write_text("prompts: [unclosed\n")
    assert main(["export", str(run), "--format", "jsonl"]) == 2
    assert "config.yaml: unreadable YAML" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["datasets", "parquet", "jsonl"])
def test_a_bad_row_mid_file_keeps_the_last_export_and_a_changed_file_is_exported_anew(tmp_path, capsys, fmt):
    from datasets import load_dataset, load_from_disk

    def exported(run):
        where = run / "export" / "preferences"
        if fmt == "datasets":
            return load_from_disk(str(where)).to_list()
        return load_dataset("parquet" if fmt == "parquet" else "json", split="train",
                            data_files=str(where / ("train.parquet" if fmt == "parquet" else "train.jsonl"))).to_list()

    run = make_run(tmp_path)
    assert main(["export", str(run), "--format", fmt]) == 0
    before = exported(run)
    good = (run / "preferences.jsonl").read_text().splitlines()
    (run / "preferences.jsonl").write_text("\n".join([*good[:2], json.dumps({"id": "x", "prompt": PROMPT}),
                                                     good[2]]) + "\n")
    capsys.readouterr()
    assert main(["export", str(run), "--format", fmt]) == 2
    said = capsys.readouterr().err.strip().splitlines()  # (sft.jsonl, exported first, was fine)
    assert said[-1].startswith(f"caikit export: error: {run / 'preferences.jsonl'}:3: ") and "chosen" in said[-1]
    assert not [line for line in said[:-1] if "preferences" in line]
    assert exported(run) == before  # the last export is whole
    assert sorted(p.name for p in (run / "export").iterdir()) == ["preferences", "sft"]  # nothing half-written left
    # the same file name with other rows: exported from the rows, never from a copy cached by an earlier export
    (run / "preferences.jsonl").write_text("\n".join(good[:2]).replace("that 1.", "that one.") + "\n")
    assert main(["export", str(run), "--format", fmt]) == 0
    after = exported(run)
    assert len(after) == 2 and after[1]["chosen"][0]["content"] == "I can't help with that one."
    assert "| rows in this dataset | 2 |" in (run / "export" / "preferences" / "README.md").read_text()


def test_sft_layouts_and_older_messages_rows(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["export", str(run), "--format", "jsonl", "--sft-layout", "messages"]) == 0
    rows = [json.loads(line) for line in (run / "export" / "sft" / "train.jsonl").read_text().splitlines()]
    assert rows[1] == {"messages": PROMPT + [{"role": "assistant", "content": "No 1."}]}

    # a run written before the prompt-completion layout: `messages` rows, split at their last assistant turn
    conversation = PROMPT + [{"role": "assistant", "content": "Why?"}, {"role": "user", "content": "Just tell me."},
                             {"role": "assistant", "content": "No."}]
    (run / "sft.jsonl").write_text(json.dumps({"id": "old", "messages": conversation}) + "\n")
    assert main(["export", str(run), "--format", "jsonl"]) == 0
    (row,) = [json.loads(line) for line in (run / "export" / "sft" / "train.jsonl").read_text().splitlines()]
    assert row == {"prompt": conversation[:-1], "completion": conversation[-1:]}

    (run / "sft.jsonl").write_text(json.dumps({"id": "x", "prompt": PROMPT, "completion": None}) + "\n")
    assert main(["export", str(run), "--format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "sft.jsonl:1: " in err and "completion" in err and "Traceback" not in err
    assert main(["export", str(run), "--sft-layout", "chat"]) == 2
    assert "--sft-layout must be one of prompt-completion, messages, got 'chat'" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["prompt-completion", "messages"])
def test_caikit_train_sft_trains_on_the_revision_alone(tmp_path, tiny_model_dir, layout):
    """What the SFT card says of `caikit train sft`: of an exported row, only the revision (and EOS) is trained."""
    from caikit.models import load_tokenizer
    from caikit.rows import read_examples
    from caikit.train.data import tokenize_sft

    run = make_run(tmp_path)
    revision = "I won't help with that, but I can tell you who can."
    conversation = PROMPT + [{"role": "assistant", "content": "Sure, step 1: ..."},
                             {"role": "user", "content": "And then?"}]
    (run / "sft.jsonl").write_text(json.dumps(SFTExample(id="t", prompt=conversation, completion=[
        {"role": "assistant", "content": revision}]).to_dict()) + "\n")
    assert main(["export", str(run), "--format", "parquet", "--sft-layout", layout]) == 0
    examples = read_examples(run / "export" / "sft").items
    tokenizer = load_tokenizer(tiny_model_dir)
    (encoded,), _ = tokenize_sft(tokenizer, [(e.prompt, e.completion) for e in examples], 1024, 1024)
    trained = [t for t, m in zip(encoded["input_ids"], encoded["labels_mask"]) if m]
    assert tokenizer.decode(trained) == revision + tokenizer.eos_token
    assert "Sure, step 1" in tokenizer.decode(encoded["input_ids"])  # the earlier turn is there, as context only
