"""Fuzzed inputs end in a clear error, never a traceback, and never touch an existing run directory.

Inputs a user gives (prompt files, constitutions, YAML configs) must load or fail with a UserError:
one line (a MultiError: one line per problem) naming the file and, where there is one, the line or
item. Answers a server gives (any status, any body, cut-off or non-HTTP replies), through the real
SDKs, must become completions or a one-line BackendError without the API key, and through
`caikit generate`, failure rows beside the untouched outputs already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import csv
import dataclasses
import io
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import caikit
from caikit.backends.anthropic import AnthropicBackend
from caikit.backends.base import BackendError, Completion
from caikit.backends.limits import RateLimiter
from caikit.backends.retry import RetryPolicy
from caikit.backends.openai import OpenAIBackend
from caikit.cli import main as cli_main
from caikit.config import resolve
from caikit.constitution import Constitution, bundled_constitutions, load_constitution
from caikit.errors import MultiError, UserError
from caikit.prompts import load_labelled_pairs, load_prompts
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-FUZZ-SENTINEL-0123456789abcdef"
# Derandomized: CI sees the same examples every run (no flakes); no example database in the checkout.
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.env"
    path.write_text(f"OPENAI_API_KEY={KEY}\nANTHROPIC_API_KEY={KEY}\n")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, key_file) -> Path:
    """A completed `caikit generate` run directory: later failing commands must leave it byte for byte."""
    root = tmp_path_factory.mktemp("finished")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    with FakeAPIServer() as server:
        assert cli_main(["generate", "--backend", "openai", "--base-url", server.openai_base_url, "--api-key-file",
                         str(key_file), "--constitution", "hhh", "--prompts", str(prompts), "--out",
                         str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def cli(argv: list[str]) -> tuple[int, str]:
    """`caikit ARGV` in-process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as e:  # argparse's own usage errors exit 2 with a usage line
            code = e.code
    return code, err.getvalue()


def assert_user_error(err: BaseException | str, path: Path, *, placed: bool = False) -> None:
    """One line per problem, each naming the file (and the line or item where `placed`)."""
    lines = err.messages if isinstance(err, MultiError) else str(err).rstrip("\n").split("\n")
    assert lines and "Traceback" not in str(err)
    for line in lines:
        line = line.removeprefix("caikit generate: error: ").removeprefix("caikit judge: error: ")
        assert line.startswith(str(path)), line
        if placed:
            assert re.match(re.escape(str(path)) + r"(:\d+: |: item \d+: )", line), line


# -- prompt files -------------------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=12)
KEYS = st.sampled_from(["prompt", "messages", "chosen", "rejected", "id", "role", "content"]) | st.text(max_size=6)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                    max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", 3, None]),
                                 "content": SCALARS})
ROW = JSON | st.fixed_dictionaries({}, optional={
    "prompt": SCALARS | st.lists(MESSAGE, max_size=3) | st.just("\n\nHuman: hi\n\nAssistant: yo"),
    "messages": st.lists(MESSAGE, max_size=3) | SCALARS, "id": SCALARS,
    "chosen": st.text(max_size=30) | st.lists(MESSAGE, max_size=3),
    "rejected": st.text(max_size=30) | st.lists(MESSAGE, max_size=3)})


def encode_rows(rows: list, fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows).encode()
    buf = io.StringIO()
    columns = sorted({str(k) for r in rows if isinstance(r, dict) for k in r}) or ["prompt"]
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        if isinstance(r, dict):
            writer.writerow({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in r.items()})
    return buf.getvalue().encode()


@st.composite
def prompt_files(draw) -> tuple[str, bytes]:
    """(format, bytes): rows of any shape, then maybe cut short or spliced with junk (bad UTF-8 included)."""
    fmt = draw(st.sampled_from(["jsonl", "json", "csv"]))
    data = encode_rows(draw(st.lists(ROW, max_size=5)), fmt)
    cut = draw(st.integers(0, max(0, len(data))))
    how = draw(st.sampled_from(["whole", "truncated", "junk"]))
    if how == "truncated":
        data = data[:cut]
    elif how == "junk":
        data = data[:cut] + draw(st.binary(min_size=1, max_size=8)) + data[cut:]
    return fmt, data


def check_prompt_file(path: Path) -> None:
    """Load `path` as prompts and as labelled pairs: each gives well-formed rows or a UserError that
    names the file."""
    for loader in (load_prompts, load_labelled_pairs):
        try:
            rows = loader(path)
        except UserError as e:
            assert_user_error(e, path)
            continue
        assert rows
        for row in rows:
            assert isinstance(row.id, str) and row.messages and row.messages[-1]["role"] == "user"
            assert all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant")
                       for m in row.messages)
            json.dumps(dataclasses.asdict(row), ensure_ascii=False).encode("utf-8")  # writable as a record


@settings(FUZZ, max_examples=400)
@given(file=prompt_files())
def test_prompt_files_load_or_name_the_problem(tmp_path, file):
    fmt, data = file
    path = tmp_path / f"prompts.{fmt}"
    path.write_bytes(data)
    check_prompt_file(path)


@pytest.mark.parametrize("name, content, expected", [
    ("empty.jsonl", "", "empty file: no prompts"),
    ("blank.jsonl", "\n \n\t\n", "empty file: no prompts"),
    ("latin1.jsonl", b'{"prompt": "caf\xe9"}\n', "not UTF-8 text"),
    ("torn.jsonl", '{"prompt": "a"}\n{"prompt": "b', ":2: invalid JSON"),
    ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", ":1: invalid JSON: nested too deeply"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
    ("surrogate.jsonl", '{"prompt": "hi \\ud800"}\n', ":1: invalid JSON: a string holds an unpaired UTF-16 surrogate"),
    ("long_int.jsonl", '{"prompt": "hi", "id": ' + "9" * 5000 + "}\n", ":1: invalid JSON: Exceeds the limit"),
    ("not_list.json", '"hi"', "expected a JSON list"),  # one object is a one-row JSON Lines file
    ("number.jsonl", "42\n", ":1: expected an object or a string"),
    ("no_column.csv", "question\nhi\n", "no 'prompt' or 'messages' column"),
    ("big_cell.csv", "prompt\n" + "x" * 200_000 + "\n", None),  # longer than csv's 128 KiB default: loads
    ("huge.jsonl", json.dumps({"prompt": "y" * 3_000_000}) + "\n", None),
])
def test_prompt_file_edge_cases(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if expected is None:
        (row,) = load_prompts(path)
        assert len(row.messages[0]["content"]) >= 200_000
        return
    with pytest.raises(UserError) as err:
        load_prompts(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value) and "\n" not in str(err.value)


@settings(FUZZ, max_examples=40)
@given(file=prompt_files())
def test_generate_refuses_bad_prompts_and_keeps_the_run(tmp_path, finished_run, key_file, file):
    fmt, data = file
    path = tmp_path / f"prompts.{fmt}"
    path.write_bytes(data)
    try:
        load_prompts(path)
        assume(False)  # a valid file would start real work: only refusals are checked here
    except UserError:
        pass
    before = snapshot(finished_run)
    code, err = cli(["generate", "--backend", "openai", "--api-key-file", str(key_file), "--base-url",
                     "http://127.0.0.1:9/v1", "--constitution", "hhh", "--prompts", str(path), "--out",
                     str(finished_run), "--no-progress"])
    assert code == 2 and err.count("\n") == 1, err
    assert_user_error(err, path)
    assert snapshot(finished_run) == before


# -- constitutions -------------------------------------------------------------------------------------

HHH = yaml.safe_load(bundled_constitutions()["hhh"].read_text(encoding="utf-8"))
YAML_VALUES = st.none() | st.booleans() | st.integers(-5, 10 ** 20) | st.floats() | st.text(max_size=12) | \
    st.lists(st.text(max_size=5), max_size=3) | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
TAGGED = st.sampled_from(["!!python/name:os.system ''", "!!int abc", "!!float x", "!!bool maybe", "!!timestamp x",
                          "!!binary '%%'", "!!set {a}", "!!str 3", ".nan", "-.inf", "0x1F", "1_000", "~", "[]", "{}",
                          "&a [*a]", "*nowhere", "!!python/object/apply:os.system ['true']"])


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@st.composite
def yaml_mutations(draw, base: dict, tag_keys: str) -> str:
    """`base` dumped as YAML after 1-3 structural mutations (delete, retype, duplicate, rename), maybe
    with a raw tagged scalar spliced in after one of `tag_keys` (a regex alternation), or cut short."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["delete", "retype", "duplicate", "rename"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "retype":
            parent[path[-1]] = draw(YAML_VALUES)
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[path[-1]]))
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = parent.pop(path[-1])
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True) if isinstance(doc, (dict, list)) else str(doc)
    how = draw(st.sampled_from(["as is", "tagged", "cut"]))
    if how == "tagged":
        scalars = list(re.finditer(r"(?m)^(\s*-?\s*(?:" + tag_keys + r"): ).*$", text))
        if scalars:
            m = draw(st.sampled_from(scalars))
            text = text[:m.end(1)] + draw(TAGGED) + text[m.end():]
    elif how == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    return text


def constitution_texts():
    return yaml_mutations(HHH, "weight|version|id|judge|name")


@settings(FUZZ, max_examples=300)
@given(text=constitution_texts())
def test_constitutions_load_or_list_each_problem_with_its_line(tmp_path, text):
    path = tmp_path / "constitution.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        constitution = load_constitution(str(path))
    except UserError as e:
        assert_user_error(e, path, placed=True)
        return
    assert isinstance(constitution, Constitution) and constitution.principles
    for p in constitution.principles:
        assert isinstance(p.id, str) and p.id and isinstance(p.weight, float) and 0 < p.weight < float("inf")
        assert p.has_critique or p.has_judge
        assert all(isinstance(t, str) for t in (p.critique, p.revision, p.judge) if t is not None)
    assert constitution.hash  # canonical JSON of every value works


@pytest.mark.parametrize("weight", ["!!python/name:os.system ''", "!!int abc", "!!float abc", "!!bool maybe",
                                    "!!timestamp xx", "!!python/object/apply:os.system ['true']"])
def test_explicitly_tagged_weight_is_a_problem_not_a_crash(tmp_path, weight):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nprinciples:\n  - id: p1\n    judge: Choose.\n    weight: " + weight + "\n")
    with pytest.raises(MultiError) as err:
        load_constitution(str(path))
    assert err.value.messages == [f"{path}:5: principle 'p1': 'weight' must be a positive number, got "
                                  + err.value.messages[0].split(", got ")[1]]
    code, out = cli(["constitution", "validate", str(path)])
    assert code == 2 and out.startswith(f"{path}:5: ") and "Traceback" not in out


@pytest.mark.parametrize("text, line, message", [
    ("name: t\nversion: !!int zz\nprinciples:\n  - {id: a, judge: x}\n", 2, "'version' must be a number or text"),
    ("name: t\nprinciples: " + "[" * 2000 + "]" * 2000 + "\n", 1, "invalid YAML: nested too deeply"),
])
def test_constitution_value_errors_are_placed(tmp_path, text, line, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(MultiError) as err:
        load_constitution(str(path))
    assert err.value.messages[0].startswith(f"{path}:{line}: {message}")


@settings(FUZZ, max_examples=25)
@given(text=constitution_texts())
def test_generate_refuses_bad_constitutions_and_keeps_the_run(tmp_path, finished_run, key_file, text):
    path = tmp_path / "constitution.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_constitution(str(path))
        assume(False)
    except UserError:
        pass
    before = snapshot(finished_run)
    code, err = cli(["generate", "--backend", "openai", "--api-key-file", str(key_file), "--constitution", str(path),
                     "--out", str(finished_run), "--no-progress"])
    assert code == 2 and "Traceback" not in err
    assert_user_error(err, path, placed=True)
    assert snapshot(finished_run) == before


# -- run and command configs ---------------------------------------------------------------------------

def _config_classes():
    from caikit.commands.generate import GenerateConfig
    from caikit.commands.judge import JudgeConfig
    from caikit.train.dpo import DPOConfig
    from caikit.train.grpo import GRPOConfig
    from caikit.train.kto import KTOConfig
    from caikit.train.ppo import PPOConfig
    from caikit.train.reward import RewardConfig
    from caikit.train.sft import SFTConfig

    return {"generate": GenerateConfig, "judge": JudgeConfig, "train sft": SFTConfig, "train dpo": DPOConfig,
            "train reward": RewardConfig, "train ppo": PPOConfig, "train grpo": GRPOConfig, "train kto": KTOConfig}


CONFIGS = _config_classes()
ALL_OPTIONS = sorted({f for cls in CONFIGS.values() for f in cls.__dataclass_fields__})
OPTION_VALUES = st.none() | st.booleans() | st.integers(-3, 2 ** 70) | st.floats() | st.text(max_size=10) | \
    st.sampled_from(["1e-5", "16", "2.5", "openai", "local", "logprob", "yes", "1/2"]) | \
    st.lists(st.integers() | st.text(max_size=4), max_size=3) | st.dictionaries(st.text(max_size=4), st.integers(),
                                                                                max_size=2)


def _typed(cls, cfg) -> None:
    """Every field of a resolved config holds its declared type (no list where a path goes, ...)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, tp = getattr(cfg, f.name), hints[f.name]
        if value is None and f.default is None:
            continue
        if tp is float:
            assert isinstance(value, float), (f.name, value)
        elif tp in (int, bool, str):
            assert isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), (f.name, value)
        else:
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), (f.name, value)
        assert value in f.metadata.get("choices", [value]), (f.name, value)


@settings(FUZZ, max_examples=400)
@given(command=st.sampled_from(sorted(CONFIGS)), data=st.data())
def test_configs_resolve_to_declared_types_or_name_the_file(tmp_path, command, data):
    cls = CONFIGS[command]
    fields = sorted(cls.__dataclass_fields__)
    options = data.draw(st.dictionaries(st.sampled_from(fields) | st.sampled_from(ALL_OPTIONS) | st.text(max_size=6)
                                        | st.integers(), OPTION_VALUES, min_size=1, max_size=4))
    path = tmp_path / "config.yaml"
    text = yaml.safe_dump(options, allow_unicode=True, sort_keys=False) if data.draw(st.booleans()) else \
        data.draw(st.sampled_from(["- a\n- b\n", "out: [unclosed\n", "a: b: c\n", "model: !!python/name:os.system ''\n",
                                   "\tout: x\n", "out: &a [*a]\n"]))
    path.write_text(text, encoding="utf-8")
    try:
        cfg = resolve(cls, {}, config_file=str(path))
    except UserError as e:
        if not str(e).startswith(str(path)):  # a check across options (validate()) names the flags instead
            assert re.search(r"--[a-z]", str(e)) and "\n" not in str(e), str(e)
            return
        assert_user_error(e, path)
        return
    _typed(cls, cfg)


RUN_FILE = yaml.safe_load((Path(caikit.__file__).parent / "configs" / "demo-cpu.yaml").read_text(encoding="utf-8"))


@settings(FUZZ, max_examples=150)
@given(text=yaml_mutations(RUN_FILE, "seed|out|name|policy|limit|lr|backend|max_steps|stages"))
def test_run_files_build_typed_stage_configs_or_name_the_file(tmp_path, text):
    """`caikit run FILE` resolves every stage's config before any work: that step types or refuses all."""
    from caikit.commands import run as pipeline_run

    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        planned = pipeline_run._build_stage_configs(pipeline_run._load_run_file(str(path)), tmp_path / "out", str(path))
    except UserError as e:
        if not str(e).startswith(str(path)):  # a check across options (validate()) names the flags instead
            assert re.search(r"--[a-z]", str(e)) and "\n" not in str(e), str(e)
        else:
            assert_user_error(e, path)
        code, err = cli(["run", str(path), "--no-report"])  # refused before any directory is made
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
        return
    for _, cfg, _ in planned:
        _typed(type(cfg), cfg)



@pytest.mark.parametrize("text, message", [
    pytest.param("out: [a]\nstages: {sft: {out: x}}\n", "'out' must be text"),
    pytest.param("stages: {1: {}, foo: {}}\n", "unknown stage(s) 1, foo"),
    ("1: x\nfoo: y\nstages: {sft: {}}\n", "option names must be text, got 1"),
    ("seed: [1]\nstages: {sft: {out: x}}\n", "stages.sft: option 'seed' must be an integer"),
    ("stages: {sft: {out: x, lr: !!float fast}}\n", "invalid YAML: a value its tag (!!int, !!timestamp, ...) does not fit"),
])
def test_run_file_values_of_the_wrong_type_are_user_errors(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    code, err = cli(["run", str(path), "--no-report"])
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1 and message in err, err
    assert err.startswith(f"caikit run: error: {path}")


@pytest.mark.parametrize("text, message", [
    ("1: 2\n", "option names must be text, got 1"),
    ("concurrency: null\n", "option 'concurrency' must be text, got None"),
    ("rounds: .inf\n", "option 'rounds' must be an integer, got inf"),
    ("rounds: 2.5\n", "option 'rounds' must be an integer"),
    ("rounds: true\n", "option 'rounds' must be an integer, got True"),
    ("prompts: [a.jsonl, b.jsonl]\n", "option 'prompts' must be text"),
    ("constitution: {file: x.yaml}\n", "option 'constitution' must be text"),
    ("progress: 'no'\n", "option 'progress' must be true or false"),
    ("backend: openia\n", "option 'backend' must be one of openai, anthropic, local, got 'openia'"),
    (b"model: \xff\n", "not UTF-8 text"),
    ("a: " + "[" * 1000 + "\n", "invalid YAML: nested too deeply"),
])
def test_config_type_errors_name_the_file(tmp_path, finished_run, text, message):
    path = tmp_path / "gen.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(finished_run)
    code, err = cli(["generate", "--config", str(path), "--out", str(finished_run)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"caikit generate: error: {path}") and message in err, err
    assert snapshot(finished_run) == before


def test_config_numbers_given_as_text_still_work(tmp_path):
    from caikit.commands.generate import GenerateConfig

    path = tmp_path / "gen.yaml"
    path.write_text("concurrency: '8'\ntemperature: '0.5'\nmodel: 4\nrounds: 2.0\nmax_cost: 1\n")
    cfg = resolve(GenerateConfig, {}, config_file=str(path))
    assert (cfg.requests_in_flight(), cfg.temperature, cfg.model, cfg.rounds, cfg.max_cost) == (8, 0.5, "4", 2, 1.0)
    assert isinstance(cfg.max_cost, float)


# -- run-directory files edited by hand -------------------------------------------------------------------

TRACE = {"id": "t1", "prompt_id": "p1", "prompt": [{"role": "user", "content": "q"}], "initial_response": "a",
         "final_revision": "b", "rounds": [{"principle_id": "x", "revision": "b"}]}


@pytest.mark.parametrize("line, message", [
    ("5", ":1: expected a JSON object per line, got int"),
    ('["t0"]', ":1: expected a JSON object per line, got list"),
    ("[" * 100_000 + "]" * 100_000, ":1: corrupt JSON line"),
    ('{"id": ' + "7" * 5000 + "}", ":1: corrupt JSON line"),
    ('{"prompt": "no id"}', "a record has no 'id'"),
])
def test_judge_from_hand_edited_traces_is_a_user_error(tmp_path, key_file, line, message):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "traces.jsonl").write_text(line + "\n" + json.dumps(TRACE) + "\n")
    code, err = cli(["judge", "--from", str(gen), "--out", str(tmp_path / "judge"), "--backend", "openai",
                     "--api-key-file", str(key_file), "--base-url", "http://127.0.0.1:9/v1", "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and message in err, err
    assert not (tmp_path / "judge").exists()


@pytest.mark.parametrize("run_json", ["[" * 100_000 + "]" * 100_000, '{"stage": ' + "1" * 5000 + "}",
                                      b"\xff\xfe", "{not json"])
def test_rerun_into_a_dir_with_a_broken_run_json_is_refused(tmp_path, finished_run, key_file, run_json):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "run.json").write_bytes(run_json if isinstance(run_json, bytes) else run_json.encode())
    before = snapshot(run)
    code, err = cli(["generate", "--backend", "openai", "--api-key-file", str(key_file), "--constitution", "hhh",
                     "--out", str(run), "--no-progress", "--limit", "1"])
    assert code == 2 and "Traceback" not in err and f"{run / 'run.json'}" in err and "invalid JSON" in err, err
    assert snapshot(run) == before


# -- server responses ------------------------------------------------------------------------------------

# The SDKs build response objects from any JSON without validating it (`construct`): the backends check
# them (check_response / check_message) so a 200 with a number for the text, a JSON string for the
# message or a list for usage is retried and then a BackendError, never an AttributeError/TypeError.


class RawServer:
    """Loopback TCP server that reads one HTTP request per connection and answers with `reply`, raw
    bytes the test chose (status line, headers and body; or no HTTP at all), then closes."""

    def __init__(self):
        self.reply = b""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                               if k.strip().lower() == b"content-length"), 0)
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                conn.sendall(self.reply)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def raw_server():
    server = RawServer()
    yield server
    server.close()


OPENAI_OK = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None}, "finish_reason": "stop",
     "logprobs": {"content": [{"token": "A", "logprob": -0.1, "bytes": [65], "top_logprobs": [
         {"token": "A", "logprob": -0.1, "bytes": [65]}, {"token": "B", "logprob": -2.0, "bytes": [66]}]}]}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "prompt_tokens_details": {"cached_tokens": 0}}}
ANTHROPIC_OK = {"id": "msg", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 0,
                          "cache_creation_input_tokens": 0}}
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=3), max_leaves=8)
STATUSES = st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 404, 408, 409, 418, 422, 429, 500, 503, 529])
# (Retry-After values stay short: a long one is honoured up to the limiter's cap, minutes, by design.)
HEADERS = st.lists(st.sampled_from(["Content-Type: application/json", "Content-Type: text/html", "Retry-After: abc",
                                    "Retry-After: -5", "Retry-After: 0.001", "retry-after-ms: 1", "Retry-After: 0",
                                    "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT"]), max_size=3)
FAST = RetryPolicy(max_attempts=2, initial_wait=0.001, max_wait=0.002, max_retry_after=0.01)


@st.composite
def mutated(draw, valid: dict) -> dict:
    """A valid response body with 1-3 values deleted or replaced by arbitrary JSON."""
    body = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(body) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(ANY_JSON)
    return body


@st.composite
def raw_replies(draw, valid: dict) -> bytes:
    """A whole HTTP reply: any status, a mutated / arbitrary / non-JSON body (or one echoing the key,
    as real 401s do), framed exactly, cut short of its Content-Length, or close-delimited; or bytes
    that are no HTTP at all."""
    body = draw(st.one_of(mutated(valid).map(json.dumps), ANY_JSON.map(json.dumps),
                          st.just(json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}})))
                .map(str.encode) | st.binary(max_size=40))
    framing = draw(st.sampled_from(["exact", "exact", "short", "close", "not http"]))
    if framing == "not http":
        return body
    head = [f"HTTP/1.1 {draw(STATUSES)} X", *draw(HEADERS), "Connection: close"]
    if framing != "close":
        head.append(f"Content-Length: {len(body) + (10 if framing == 'short' else 0)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def call_backend(provider: str, url: str, method: str):
    async def main():
        backend = (OpenAIBackend("gpt-4o-mini", base_url=url + "/v1", timeout=2, retry=FAST, limiter=RateLimiter(4))
                   if provider == "openai" else
                   AnthropicBackend("claude-haiku-4-5", base_url=url, timeout=2, retry=FAST, limiter=RateLimiter(4)))
        try:
            messages = [{"role": "user", "content": "hi"}]
            if method == "logprobs":
                return await backend.option_logprobs(messages, ["A", "B"])
            return await backend.generate(messages, n=1, max_tokens=5)
        finally:
            await backend.aclose()

    return asyncio.run(main())


@settings(FUZZ, max_examples=200)
@given(provider=st.sampled_from(["openai", "anthropic"]), data=st.data())
def test_server_replies_become_completions_or_one_line_backend_errors(raw_server, monkeypatch, provider, data):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    raw_server.reply = data.draw(raw_replies(OPENAI_OK if provider == "openai" else ANTHROPIC_OK))
    for method in ("generate", "logprobs") if provider == "openai" else ("generate",):
        try:
            result = call_backend(provider, raw_server.url, method)
        except BackendError as e:
            assert "\n" not in str(e) and KEY not in str(e), str(e)
            continue
        if method == "logprobs":
            # (top_k_floor: the smallest listed log-prob, given when an option is missing from the list)
            assert set(result) - {"top_k_floor"} == {"A", "B"} and all(isinstance(v, float) for v in result.values())
            continue
        (completion,) = result
        assert isinstance(completion, Completion) and isinstance(completion.text, str)
        assert completion.finish_reason is None or isinstance(completion.finish_reason, str)
        assert all(isinstance(v, int) and v >= 0 for v in completion.usage.to_dict().values())


@pytest.mark.parametrize("provider, body", [
    pytest.param("openai", {"choices": [{"index": 0, "message": {"role": "assistant", "content": 5},
                                         "finish_reason": "stop"}]}, id="openai-number-content"),
    pytest.param("openai", {"choices": ["not a choice"]}, id="openai-choice-not-an-object"),
    pytest.param("openai", [1, 2, 3], id="openai-list-body"),
    pytest.param("anthropic", {"content": [{"type": "text", "text": None}], "stop_reason": "end_turn"},
                 id="anthropic-null-text"),
    pytest.param("anthropic", "a JSON string, not a message", id="anthropic-string-body"),
    pytest.param("anthropic", {"content": "hi", "usage": [1]}, id="anthropic-text-content"),
])
def test_malformed_answers_become_failure_rows_beside_the_old_outputs(tmp_path, finished_run, key_file, raw_server,
                                                                      provider, body):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    prompts = tmp_path / "prompts.jsonl"  # the 3 finished prompts and 2 new ones
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    data = json.dumps(body).encode()
    raw_server.reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    base = raw_server.url + "/v1" if provider == "openai" else raw_server.url
    code, err = cli(["generate", "--backend", provider, "--base-url", base, "--api-key-file", str(key_file), "--constitution", "hhh", "--prompts",
                     str(prompts), "--out", str(run if provider == "openai" else tmp_path / "other"),
                     "--max-retries", "2", "--no-progress"])
    # 2 of 5 prompts failing is within --max-failure-rate 0.5 (exit 0); all 5 failing is not (exit 1)
    assert code == (0 if provider == "openai" else 1) and "Traceback" not in err, err
    out = run if provider == "openai" else tmp_path / "other"
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == (2 if provider == "openai" else 5)
    assert all("request failed after 2 attempts" in f["error"] for f in failures), failures
    if provider == "openai":  # the finished work is untouched: append-only logs unchanged, derived files equal
        after = snapshot(run)
        for name in ("traces.jsonl", "requests.jsonl", "sft.jsonl", "run.json"):
            assert after[name] == before[name], name
