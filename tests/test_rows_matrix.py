"""One input, read the same way by every command: command x format x layout.

Each cell writes one layout in one format and reads it through the loader the command calls (generate
--prompts, train sft / reward / dpo --data, score --input, eval judge --pairs). A cell either gives the
same typed content as every other format of that layout, or fails with one UserError (exit 2) naming the
file and the row. A few cells run the real commands on a tiny model for one step, among them the shared
hh-rlhf file that `train reward` / `train dpo` could not read before caikit.rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import pytest

from caikit.errors import UserError
from caikit.records import Label, PreferencePair, SFTExample

unit, e2e = pytest.mark.unit, pytest.mark.e2e

HH_FILE = "hh-rlhf/harmless-base-test.jsonl.gz"
N = 2  # good rows per file


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def conv(i):
    return [user("Hi"), bot("Hello!"), user(f"How do I boil egg number {i}?")]


def hh(messages):
    return "".join(f"\n\nHuman: {m['content']}" if m["role"] == "user" else f"\n\nAssistant: {m['content']}"
                   for m in messages)


CHOSEN, REJECTED = "Simmer it 8 minutes.", "Fry it."

# layout -> (view, rows(i), expected prompt(i)); p_chosen / source where a layout carries them
PAIR_LAYOUTS = {
    "hh-transcripts": lambda i: {"chosen": hh(conv(i) + [bot(CHOSEN)]), "rejected": hh(conv(i) + [bot(REJECTED)])},
    "hh-prompt-string": lambda i: {"prompt": hh(conv(i)) + "\n\nAssistant:", "chosen": " " + CHOSEN,
                                   "rejected": " " + REJECTED},
    "trl-standard": lambda i: {"prompt": conv(i)[-1]["content"], "chosen": CHOSEN, "rejected": REJECTED},
    "conversational": lambda i: {"prompt": conv(i), "chosen": [bot(CHOSEN)], "rejected": [bot(REJECTED)]},
    "implicit-prompt": lambda i: {"chosen": conv(i) + [bot(CHOSEN)], "rejected": conv(i) + [bot(REJECTED)]},
    "caikit-preference": lambda i: PreferencePair(id=f"pref-{i}", prompt=conv(i), chosen=[bot(CHOSEN)],
                                                  rejected=[bot(REJECTED)], p_chosen=0.75,
                                                  source="revision-vs-initial", provenance={"judge": "x"}).to_dict(),
}
SFT_LAYOUTS = {
    "messages": lambda i: {"messages": conv(i) + [bot(CHOSEN)]},
    "prompt-completion": lambda i: {"prompt": conv(i)[-1]["content"], "completion": CHOSEN},
    "caikit-sft": lambda i: SFTExample(id=f"t{i}", prompt=conv(i), completion=[bot(CHOSEN)]).to_dict(),
    "hh-prompt-completion": lambda i: {"prompt": hh(conv(i)) + "\n\nAssistant:", "completion": " " + CHOSEN},
    "text": lambda i: {"text": f"Plain text {i}."},
    "prompt-response-messages": lambda i: {"prompt": conv(i), "response": [bot(CHOSEN)]},
}
SINGLE_TURN = {"trl-standard", "prompt-completion"}


def label_rows():
    """`caikit label` output: pair 0 'b', pair 1 'a' then changed to 'b', pair 2 undone, pair 3 a tie."""
    def row(pair, choice, n):
        return Label(id=f"l{n}", pair_id=f"p{pair}", prompt=conv(pair), response_a=REJECTED, response_b=CHOSEN,
                     choice=choice, labeler="ann").to_dict()
    return [row(0, "b", 0), row(1, "a", 1), row(2, "a", 2), row(1, "b", 3), row(2, "undo", 4), row(3, "tie", 5)]


def expected_prompt(layout, i):
    return conv(i)[-1:] if layout in SINGLE_TURN else conv(i)


# --- writing one layout in every format ---------------------------------------------------------------


def _cell(value):
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def csv_text(rows):
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def jsonl_text(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def write(fmt: str, rows: list[dict], root: Path, run_file: str) -> tuple[Path, str]:
    """Write rows in a format; returns (the path a user gives, the file an error names)."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt in ("datasets", "datasetdict"):
        import datasets

        ds = datasets.Dataset.from_list(rows)
        if fmt == "datasetdict":
            ds = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
        ds.save_to_disk(str(root / "ds"))
        return root / "ds", str(root / "ds")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), root / "d.parquet")
        return root / "d.parquet", str(root / "d.parquet")
    if fmt == "run-dir":
        (root / run_file).write_text(jsonl_text(rows), encoding="utf-8")
        return root, str(root / run_file)
    name, data = {
        "jsonl": ("d.jsonl", jsonl_text(rows).encode()),
        "jsonl-bom": ("d.jsonl", b"\xef\xbb\xbf" + jsonl_text(rows).encode()),
        "jsonl.gz": ("d.jsonl.gz", gzip.compress(jsonl_text(rows).encode())),
        "json-list": ("d.json", json.dumps(rows).encode()),
        "json-lines.json": ("d.json", jsonl_text(rows).encode()),
        "json.gz": ("d.json.gz", gzip.compress(json.dumps(rows).encode())),
        "csv": ("d.csv", csv_text(rows).encode()),
        "csv-bom.gz": ("d.csv.gz", gzip.compress(b"\xef\xbb\xbf" + csv_text(rows).encode())),
    }[fmt]
    (root / name).write_bytes(data)
    return root / name, str(root / name)


FORMATS = ["jsonl", "jsonl-bom", "jsonl.gz", "json-list", "json-lines.json", "json.gz", "csv", "csv-bom.gz",
           "parquet", "datasets", "datasetdict", "run-dir"]


def place(fmt: str, file: str, row: int) -> str:
    """How an error names row `row` (1-based) of a file in this format."""
    if fmt in ("json-list", "json.gz"):
        return f"{file}: item {row}: "
    if fmt in ("parquet", "datasets", "datasetdict"):
        return f"{file}: row {row}: "
    return f"{file}:{row + 1 if fmt.startswith('csv') else row}: "


# --- what each command reads -------------------------------------------------------------------------


def read_as(command: str, path: Path):
    """Load `path` with the loader `command` calls; a comparable, format-free result."""
    from caikit.prompts import load_labelled_pairs, load_prompts
    from caikit.train.data import training_data
    from caikit.train.reward import _score_rows

    if command == "generate":
        return [r.messages for r in load_prompts(path)]
    if command == "eval judge":
        return [(p.messages, p.chosen, p.rejected) for p in load_labelled_pairs(path)]
    if command == "score":
        return _score_rows(str(path))
    if command == "train sft":
        from caikit.train.sft import SFTConfig

        return training_data(SFTConfig(data=[str(path)]), "examples")[0]
    from caikit.train.dpo import DPOConfig
    from caikit.train.reward import RewardConfig

    cls = RewardConfig if command == "train reward" else DPOConfig
    return [(t["prompt"], t["chosen"], t["rejected"], t["p_chosen"]) for t in training_data(cls(data=[str(path)]),
                                                                                             "pairs")[0]]


def expected(command: str, layout: str):
    """What every format of `layout` must give `command`; None: the cell must fail naming the file and row."""
    pair = layout in PAIR_LAYOUTS or layout == "labels"
    p_chosen = 0.75 if layout == "caikit-preference" else 1.0 if layout == "labels" else None
    rows = range(2 if layout == "labels" else N)
    prompts = [expected_prompt(layout, i) for i in rows]
    if command == "generate":
        if layout == "text":
            return None
        return prompts + ([conv(2), conv(3)] if layout == "labels" else [])
    if command in ("train reward", "train dpo"):
        return [(p, [bot(CHOSEN)], [bot(REJECTED)], p_chosen) for p in prompts] if pair else None
    if command == "eval judge":
        return [(p, CHOSEN, REJECTED) for p in prompts] if pair else None
    if command == "train sft":
        if pair or layout == "prompt-response-messages":
            return None
        return [(None, [bot(f"Plain text {i}.")]) if layout == "text" else (p, [bot(CHOSEN)])
                for i, p in zip(rows, prompts)]
    if pair or layout == "text":  # score
        return None
    return [(p, [bot(CHOSEN)]) for p in prompts]


COMMANDS = ["generate", "train sft", "train reward", "train dpo", "score", "eval judge"]
LAYOUTS = [*PAIR_LAYOUTS, "labels", *SFT_LAYOUTS]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{(layout, format): (path given, file named in errors)}, written once for every command."""
    root = tmp_path_factory.mktemp("matrix")
    out = {}
    for layout in LAYOUTS:
        rows = label_rows() if layout == "labels" else [
            (PAIR_LAYOUTS.get(layout) or SFT_LAYOUTS[layout])(i) for i in range(N)]
        run_file = "labels.jsonl" if layout == "labels" else "preferences.jsonl" if layout in PAIR_LAYOUTS else \
            "sft.jsonl"
        for fmt in FORMATS:
            out[layout, fmt] = write(fmt, rows, root / layout / fmt, run_file)
    return out


@unit
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_format_reads_the_same_or_names_the_row(files, command, layout, capsys):
    want = expected(command, layout)
    for fmt in FORMATS:
        path, file = files[layout, fmt]
        if want is not None:
            assert read_as(command, path) == want, (fmt, path)
            continue
        with pytest.raises(UserError) as err:
            read_as(command, path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(str(path)), (fmt, message)
        # a tabular file lacking the columns is named as a whole; any other failure names the first row
        tabular = fmt.startswith("csv") or fmt in ("parquet", "datasets", "datasetdict")
        # and a run directory without the file this command reads is named as a directory
        assert message.startswith(place(fmt, file, 1)) or (tabular and " column" in message) or (
            fmt == "run-dir" and message.startswith(f"{path}: no ") and "(caikit run directory)" in message), (
            fmt, message)
    assert "reading split 'train' (" in capsys.readouterr().err  # the DatasetDict cell says which split it read


BAD_ROW = {  # one broken second row per view, with the columns and column types of the good first row
    "generate": ({"prompt": "fine"}, {"prompt": " "}, "empty prompt"),
    "train sft": ({"prompt": "q", "completion": [bot("a")]}, {"prompt": "q", "completion": [user("x")]},
                  "'completion' must hold the assistant's reply"),
    "train reward": ({"prompt": "q", "chosen": [bot("a")], "rejected": [bot("b")]},
                     {"prompt": "q", "chosen": [bot("a")], "rejected": [{"role": "human", "content": "b"}]},
                     "'rejected' message 1 must be {role: system|user|assistant"),
    "score": ({"prompt": [user("q")], "response": "a"}, {"prompt": [bot("x")], "response": "a"},
              "'prompt' must end with a user turn"),
}
BAD_ROW["train dpo"] = BAD_ROW["eval judge"] = BAD_ROW["train reward"]


@unit
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_row_is_named_in_every_format(tmp_path, command):
    good, bad, reason = BAD_ROW[command]
    for fmt in FORMATS:
        path, file = write(fmt, [good, bad], tmp_path / fmt, "sft.jsonl" if command in ("train sft", "score")
                           else "preferences.jsonl")
        with pytest.raises(UserError) as err:
            read_as(command, path)
        message = str(err.value)
        assert message.startswith(place(fmt, file, 2)) and reason in message and "\n" not in message, (fmt, message)


# --- rules every command shares -----------------------------------------------------------------------


@unit
def test_duplicate_ids_name_both_places_and_identical_ones_are_counted(tmp_path, capsys):
    from caikit.prompts import load_prompts
    from caikit.rows import read_examples, read_pairs

    rows = [{"id": "a", "prompt": "q1"}, {"id": "b", "prompt": "q2"}, {"id": "a", "prompt": "q1"}]
    path = tmp_path / "p.jsonl"
    path.write_text(jsonl_text(rows))
    assert [r.id for r in load_prompts(path)] == ["a", "b"]
    assert capsys.readouterr().err == f"{path}: 1 duplicate prompts (same id and content) read once\n"
    path.write_text(jsonl_text(rows + [{"id": "b", "prompt": "other"}]))
    with pytest.raises(UserError, match=f"^{re.escape(str(path))}:4: id 'b' is also at {re.escape(str(path))}:2 "
                                        "with different content"):
        load_prompts(path)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"id": "x", "prompt": "q", "chosen": "a", "rejected": "b"},
                                 {"id": "x", "prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.6}]))
    with pytest.raises(UserError, match=re.escape(f"{pairs}: item 2: id 'x' is also at {pairs}: item 1")):
        read_pairs(pairs)
    sft = tmp_path / "sft.jsonl"
    sft.write_text(jsonl_text([{"prompt": "q", "completion": "a"}] * 3))
    assert len(read_examples(sft).items) == 1 and "2 duplicate SFT examples" in capsys.readouterr().err


@unit
def test_labels_latest_wins_and_left_out_are_counted(tmp_path, capsys):
    from caikit.rows import read_pairs

    path = tmp_path / "labels.jsonl"
    path.write_text(jsonl_text(label_rows()))
    loaded = read_pairs(path)
    assert [(p.id, p.p_chosen, p.source, p.labeler) for p in loaded.items] == [("p0", 1.0, "human", "ann"),
                                                                                ("p1", 1.0, "human", "ann")]
    assert loaded.left_out == {"undo": 1, "tie": 1}
    assert capsys.readouterr().err == (f"{path}: 2 human labels used; left out: 1 tie, 1 undo "
                                       "(2 replaced by a later label of the same pair)\n")


@unit
def test_datasetdict_split_is_chosen_and_said_aloud(files, capsys):
    from caikit.rows import read_pairs

    path, _ = files["conversational", "datasetdict"]
    assert len(read_pairs(path, split="test").items) == 1
    assert f"{path}: reading split 'test' (1 rows; splits here: train, test)" in capsys.readouterr().err
    with pytest.raises(UserError, match=re.escape(f"{path}: no split 'validation' in this DatasetDict (splits: "
                                                  "train, test); choose one with --split")):
        read_pairs(path, split="validation")


@unit
def test_repeated_list_flags_extend_and_yaml_takes_one_value(tmp_path):
    import argparse

    from caikit.config import add_dataclass_args, resolve
    from caikit.train.reward import RewardConfig

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, RewardConfig)
    for argv in (["--data", "a", "--data", "b"], ["--data", "a", "b"]):
        assert parser.parse_args(argv).data == ["a", "b"]
    (tmp_path / "c.yaml").write_text("data: run/\nout: o\n")
    assert resolve(RewardConfig, parser.parse_args([]), config_file=str(tmp_path / "c.yaml")).data == ["run/"]
    assert resolve(RewardConfig, parser.parse_args(["--data", "x"]), config_file=str(tmp_path / "c.yaml")).data == ["x"]


@unit
def test_hh_transcripts_split_prompt_and_response_with_and_without_a_chat_template(tiny_model_dir, shared_data):
    from caikit.models import load_tokenizer
    from caikit.rows import read_pairs
    from caikit.train.data import encode_prompt_response

    pair = read_pairs(shared_data / HH_FILE, limit=1).items[0]
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    prompt_ids, response_ids = encode_prompt_response(tokenizer, pair.prompt, pair.chosen)
    assert tokenizer.decode(prompt_ids) == tokenizer.apply_chat_template(pair.prompt, add_generation_prompt=True,
                                                                         tokenize=False)
    assert tokenizer.decode(response_ids) == pair.chosen[0]["content"] + tokenizer.eos_token
    tokenizer.chat_template = None  # a base model's tokenizer: plain "role: text" turns
    prompt_ids, response_ids = encode_prompt_response(tokenizer, pair.prompt, pair.chosen)
    prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    assert prompt_text.startswith("user: what are some pranks with a pen i can do?\n\nassistant: ")
    assert prompt_text.endswith("user: okay some of these do not have anything to do with pens\n\nassistant: ")
    assert tokenizer.decode(response_ids, skip_special_tokens=True) == pair.chosen[0]["content"]
    assert "Human:" not in prompt_text + tokenizer.decode(response_ids)


def exported_run(tmp_path: Path, n_pairs: int, n_sft: int, fmt: str) -> Path:
    """A run directory with caikit's own records, exported by `caikit export --format fmt` into RUN/export."""
    from caikit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "preferences.jsonl").write_text(jsonl_text([PAIR_LAYOUTS["caikit-preference"](i) for i in range(n_pairs)]))
    (run / "sft.jsonl").write_text(jsonl_text([SFT_LAYOUTS["caikit-sft"](i) for i in range(n_sft)]))
    (run / "run.json").write_text(json.dumps({"stage": "judge", "identity": {}}))
    assert main(["export", str(run), "--format", fmt]) == 0
    return run


@unit
@pytest.mark.parametrize("fmt", ["datasets", "parquet", "jsonl"])
def test_every_export_format_reads_as_its_run(tmp_path, fmt):
    from caikit.rows import read_examples, read_pairs, read_prompts

    run = exported_run(tmp_path, 3, 2, fmt)

    def content(loaded):
        return [(p.prompt, p.chosen, p.rejected, p.p_chosen, p.source) for p in loaded.items]

    assert content(read_pairs(run / "export" / "preferences")) == content(read_pairs(run / "export")) == [
        (conv(i), [bot(CHOSEN)], [bot(REJECTED)], 0.75, "revision-vs-initial") for i in range(3)]
    assert [(e.prompt, e.completion) for e in read_examples(run / "export").items] == [
        (conv(i), [bot(CHOSEN)]) for i in range(2)]
    assert [p.messages for p in read_prompts(run / "export").items] == [conv(0), conv(1)]
    refusal = "--split test does not apply" if fmt == "datasets" else "no test.jsonl / test.parquet"
    with pytest.raises(UserError, match=refusal):
        read_pairs(run / "export" / "preferences", split="test")


@unit
def test_thumbs_rows(tmp_path):
    from caikit.rows import read_pairs, read_thumbs

    path = tmp_path / "thumbs.csv"
    path.write_text(csv_text([{"prompt": "q", "completion": "good", "label": "true"},
                              {"prompt": hh(conv(0)), "completion": " bad", "label": "false"}]))
    assert [(t.prompt, t.completion, t.label) for t in read_thumbs(path).items] == [
        ([user("q")], [bot("good")], True), (conv(0), [bot("bad")], False)]
    with pytest.raises(UserError, match=re.escape(f"{path}: no 'chosen' and 'rejected' columns")):
        read_pairs(path)
    path = tmp_path / "thumbs.jsonl"
    path.write_text(jsonl_text([{"prompt": "q", "completion": "good", "label": True},
                                {"prompt": "q", "completion": "x", "label": "maybe"}]))
    with pytest.raises(UserError, match=re.escape(f"{path}:2: 'label' must be true or false, got 'maybe'")):
        read_thumbs(path)
    with pytest.raises(UserError, match=re.escape(f"{path}:1: a thumbs row (prompt, completion, label) is not a "
                                                  "preference pair")):
        read_pairs(path)


# --- the commands themselves, on a tiny model for one step ----------------------------------------------


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`caikit ARGV` in this process: (exit code, stdout, stderr)."""
    from caikit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TINY = ("--max-steps", "1", "--batch-size", "8", "--max-length", "32", "--max-prompt-length", "16")


@e2e
def test_train_reward_and_dpo_read_the_shared_hh_rlhf_file(tiny_model_dir, shared_data, tmp_path, capsys):
    hh_file = shared_data / HH_FILE
    code, _, err = cli(capsys, "train", "reward", "--model", tiny_model_dir, "--data", hh_file, "--out",
                       tmp_path / "rm", "--eval-fraction", "0.02", *TINY)
    assert code == 0, err
    assert f"caikit train reward: 1800 pairs from {hh_file}\n" in err
    assert json.loads((tmp_path / "rm" / "data.json").read_text())["total"] == 1800
    # DPO computes reference log-probs for every pair first: short sequences keep that cheap on a CPU
    code, _, err = cli(capsys, "train", "dpo", "--model", tiny_model_dir, "--data", hh_file, "--out",
                       tmp_path / "dpo", "--eval-fraction", "0.01", "--max-steps", "1", "--batch-size", "32",
                       "--max-length", "12", "--max-prompt-length", "6")
    assert code == 0, err
    assert "Cannot apply chat template" not in err and (tmp_path / "dpo" / "model.safetensors").exists()


@e2e
def test_export_dirs_and_labels_train_and_mix_with_counts_per_source(tiny_model_dir, tmp_path, capsys):
    run = exported_run(tmp_path, 6, 4, "parquet")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(jsonl_text(label_rows()))

    code, _, err = cli(capsys, "train", "reward", "--model", tiny_model_dir, "--data", run / "export" / "preferences",
                       "--data", labels, "--out", tmp_path / "rm", "--eval-fraction", "0", *TINY)
    assert code == 0, err
    assert f"6 pairs from {run}/export/preferences ({run}/export/preferences/train.parquet)\n" in err
    assert f"2 pairs from {labels} [1 tie left out; 1 undo left out]\n" in err and "8 pairs from 2 sources" in err
    data = json.loads((tmp_path / "rm" / "data.json").read_text())
    assert [(s["path"], s["used"]) for s in data["sources"]] == [(str(run / "export" / "preferences"), 6),
                                                                 (str(labels), 2)]
    first = json.loads((tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["data"]["total"] == 8 and "loss" in first

    code, _, err = cli(capsys, "train", "sft", "--model", tiny_model_dir, "--data", run / "export", "--out",
                       tmp_path / "sft", "--eval-fraction", "0", *TINY)
    assert code == 0 and f"4 examples from {run}/export ({run}/export/sft/train.parquet)" in err, err

    # score: a response given as messages, and an hh-style prompt string read as the same turns as messages
    scored = tmp_path / "scored.jsonl"
    scored.write_text(jsonl_text([{"prompt": conv(0), "response": [bot(CHOSEN)]},
                                  {"prompt": hh(conv(0)) + "\n\nAssistant:", "response": " " + CHOSEN},
                                  {"messages": conv(0) + [bot(REJECTED)]}]))
    code, out, err = cli(capsys, "score", "--model", tmp_path / "rm", "--input", scored)
    assert code == 0, err
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    assert len(scores) == 3 and scores[0] == scores[1] != scores[2]


@e2e
def test_a_datasetdict_without_the_split_is_exit_2_listing_its_splits(tiny_model_dir, tmp_path, capsys):
    import datasets

    rows = [PAIR_LAYOUTS["conversational"](i) for i in range(2)]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows), "dev": datasets.Dataset.from_list(rows)}
                         ).save_to_disk(str(tmp_path / "dd"))
    code, _, err = cli(capsys, "train", "dpo", "--model", tiny_model_dir, "--data", tmp_path / "dd", "--out",
                       tmp_path / "o")
    assert code == 2 and err == (f"caikit train dpo: error: {tmp_path / 'dd'}: no split 'train' in this DatasetDict "
                                 "(splits: test, dev); choose one with --split\n")
