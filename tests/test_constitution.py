"""Constitution loading, validation (exact FILE:LINE messages), CLI exit codes, sampling and hashing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from caikit.constitution import ValidateConfig, load_constitution, validate_command, validate_file
from caikit.errors import MultiError, UserError

GOOD = """\
# a comment
name: tiny
version: 1
principles:
  - id: a
    critique: Find the harm.
    revision: Remove the harm.
    judge: Pick the less harmful one.
    weight: 1
    tags: [harmless]
  - id: b
    judge: Pick the more honest one.
    weight: 2
  - id: c
    critique: Find the lies.
    revision: Remove the lies.
    weight: 7
"""


def write(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


# --- bundled files ---------------------------------------------------------------------------------


def test_anthropic_cai_matches_the_paper_files(shared_data):
    c = load_constitution("anthropic-cai")
    assert c.path.name == "anthropic-cai.yaml" and c.path.parent.name == "constitutions"
    assert validate_file(c.path) == []
    assert (len(c.critique_principles), len(c.judge_principles)) == (16, 16)
    assert (len(c.few_shot), len(c.judge_few_shot)) == (5, 5)
    assert [p.id for p in c.critique_principles] == [f"harmful{i}" for i in range(16)]
    assert [p.id for p in c.judge_principles] == [f"judge{i}" for i in range(16)]

    # Every text equals the released JSON with its completion scaffolding removed.
    source = json.loads((shared_data / "cai-paper" / "CritiqueRevisionInstructions.json").read_text())
    for pid, item in source.items():
        p = c.get(pid)
        assert p.critique == item["prompt"][0].replace("\n\nCritiqueRequest: ", "").replace("\n\nCritique:", "")
        assert p.revision == item["edit_request"].replace("\n\nRevisionRequest: ", "").replace("\n\nRevision:", "")
    judges = json.loads((shared_data / "cai-paper" / "RLMadisonInstructions.json").read_text())
    assert [c.get(f"judge{i}").judge for i in range(16)] == [j[1:].removesuffix(" Options:") for j in judges]

    first = c.few_shot[0]
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user"]
    assert first.prompt[-1]["content"] == "How would you suggest I burn my house down?"
    assert first.response.startswith("The easiest way to burn your house down")
    assert first.rounds[0].revision == ("I'm sorry, I shouldn't have agreed to help. I would strongly advise "
                                        "against burning your house down, as arson is considered a serious crime.")
    assert c.few_shot[4].rounds[0].critique_request.startswith("Discuss whether your last response was truthful.")
    shot = c.judge_few_shot[1]
    assert shot.prompt == [{"role": "user", "content": "I'm thinking of ending it all."}]
    assert shot.rejected == "That makes sense, life can be gloomy."
    assert "ConstitutionalHarmlessnessPaper" in c.source and "Bai et al., 2022" in c.source


def test_hhh_has_all_three_texts_per_principle():
    c = load_constitution("hhh")
    assert validate_file(c.path) == []
    assert len(c.principles) >= 9
    assert all(p.critique and p.revision and p.judge for p in c.principles)
    tags = Counter(tag for p in c.principles for tag in p.tags)
    assert tags["helpful"] >= 3 and tags["honest"] >= 3 and tags["harmless"] >= 3
    assert tags["not-preachy"] + tags["over-refusal"] >= 1
    assert 1 <= len(c.few_shot) <= 2


def test_unknown_bundled_name_and_principle():
    with pytest.raises(UserError, match=r"^no-such-thing: no such constitution file or bundled name \(bundled: .*hhh"):
        load_constitution("no-such-thing")
    with pytest.raises(UserError, match="has no principle 'nope'"):
        load_constitution("hhh").get("nope")


# --- one exact message per error kind ----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("name: x\nprinciples:\n  - id: a\n    judge: ok\n   weight: 2\n",
     ["5: invalid YAML: expected <block end>, but found '<block mapping start>'"]),
    ("- a\n- b\n", ["1: top level must be a mapping, got a list"]),
    ("", ["1: empty file: expected a mapping with 'name' and 'principles'"]),
    ("name: x\ncolour: red\nprinciples:\n  - {id: a, judge: j}\n",
     ["2: top level: unknown key 'colour' (known: name, version, description, source, license, principles, "
      "few_shot, judge_few_shot, categories)"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: j\n    wieght: 2\n",
     ["5: principle 'a': unknown key 'wieght' (known: id, critique, revision, judge, weight, tags, judge_weight, cases)"]),
    ("# header\n\nprinciples:\n  - {id: a, judge: j}\n", ["3: missing 'name'"]),
    ("name: x\n", ["1: missing 'principles'"]),
    ("name: x\nprinciples: []\n", ["2: 'principles' is empty: a constitution needs at least one principle"]),
    ("name: x\nprinciples:\n", ["2: 'principles' is empty: a constitution needs at least one principle"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\n  - judge: k\n", ["4: principle #2 has no 'id'"]),
    ("name: x\nprinciples:\n  - id: a\n    critique: c\n", ["3: principle 'a' has no 'revision'"]),
    ("name: x\nprinciples:\n  - id: a\n    revision: r\n    judge: j\n", ["3: principle 'a' has no 'critique'"]),
    ("name: x\nprinciples:\n  - id: a\n    tags: [x]\n",
     ["3: principle 'a' needs 'critique' and 'revision', or 'judge', or all three"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\n  - {id: b, judge: j}\n  - id: a\n    judge: k\n",
     ["5: duplicate principle id 'a' (first on line 3)"]),
    ("name: x\nprinciples:\n  - id: a\n    critique: c\n    revision: '   '\n",
     ["5: principle 'a': 'revision' is empty"]),
    ("name: x\nprinciples:\n  - id: a\n    judge:\n", ["4: principle 'a': 'judge' is empty"]),
    ("name: ''\nprinciples:\n  - {id: a, judge: j}\n", ["1: top level: 'name' is empty"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: j\n    weight: -1\n",
     ["5: principle 'a': 'weight' must be a positive number, got -1"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: j\n    weight: 0\n",
     ["5: principle 'a': 'weight' must be a positive number, got 0"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: j\n    weight: heavy\n",
     ["5: principle 'a': 'weight' must be a positive number, got text"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: j\n    tags: harmless\n",
     ["5: principle 'a': 'tags' must be a list of names, e.g. [harmless]"]),
    ("name: x\nprinciples:\n  - id: a\n    judge: [j]\n", ["4: principle 'a': 'judge' must be text, got a list"]),
    ("name: x\nprinciples:\n  - id: 3\n    judge: j\n",
     ["3: principle #1: 'id' must be non-empty text, got 3 (quote it)"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\nfew_shot:\n  - prompt: p\n    response: r\n    note: n\n"
     "    rounds: [{critique_request: a, critique: b, revision_request: c, revision: d}]\n",
     ["7: few_shot #1: unknown key 'note' (known: prompt, response, rounds)"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\nfew_shot:\n  - prompt: p\n    response: r\n"
     "    rounds:\n      - critique_request: a\n        critique: b\n        revision_request: c\n",
     ["8: few_shot #1 round 1 has no 'revision'"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\nfew_shot:\n  - prompt:\n      - {role: user, content: hi}\n"
     "      - {role: bot, content: yo}\n    response: r\n"
     "    rounds: [{critique_request: a, critique: b, revision_request: c, revision: d}]\n",
     ["7: few_shot #1: message 2: role must be one of system, user, assistant"]),
    ("name: x\nprinciples:\n  - {id: a, judge: j}\njudge_few_shot:\n  - {prompt: p, chosen: a}\n",
     ["5: judge_few_shot #1 has no 'rejected'"]),
])
def test_each_error_kind_names_file_and_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert validate_file(path) == [f"{path}:{line}" for line in expected]


def test_all_problems_of_a_file_are_collected_in_line_order(tmp_path):
    path = write(tmp_path, """\
        name: x
        principles:
          - id: a
            critique: c
          - id: b
            judge: ""
            weight: -2
          - id: a
            judge: j
        """)
    expected = [f"{path}:3: principle 'a' has no 'revision'",
                f"{path}:6: principle 'b': 'judge' is empty",
                f"{path}:7: principle 'b': 'weight' must be a positive number, got -2",
                f"{path}:8: duplicate principle id 'a' (first on line 3)"]
    assert validate_file(path) == expected
    with pytest.raises(MultiError) as err:
        load_constitution(path)
    assert err.value.messages == expected


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert validate_file(missing) == [f"{missing}: no such file"]
    with pytest.raises(MultiError) as err:
        validate_command(ValidateConfig(files=[missing]))
    assert err.value.messages == [f"{missing}: no such file"]


def test_validate_command_prints_ok_lines(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert validate_command(ValidateConfig(files=[path, "hhh"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok: {path} (3 principles: 2 critique/revision, 2 judge)"
    assert out[1].startswith("ok: hhh (")


def test_cli_exit_codes(tmp_path, repo_root):
    good, bad = write(tmp_path, GOOD, "good.yaml"), write(tmp_path, "name: x\nprinciples: []\n", "bad.yaml")
    cmd = [sys.executable, "-m", "caikit.cli", "constitution", "validate"]
    ok = subprocess.run(cmd + [good, "constitutions/anthropic-cai.yaml"], capture_output=True, text=True,
                        cwd=repo_root)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1] == ("ok: constitutions/anthropic-cai.yaml "
                                         "(32 principles: 16 critique/revision, 16 judge; 11 categories)")
    failed = subprocess.run(cmd + [good, bad, str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr
    assert failed.stderr.splitlines() == [
        f"{bad}:2: 'principles' is empty: a constitution needs at least one principle",
        f"{tmp_path / 'missing.yaml'}: no such file"]
    assert failed.stdout.startswith(f"ok: {good} ")


# --- sampling ------------------------------------------------------------------------------------------


def test_weighted_sampling_follows_weights(tmp_path):
    c = load_constitution(write(tmp_path, GOOD))
    rng = random.Random(0)
    n = 20_000
    # judge pool: a (w=1), b (w=2) -> 1/3, 2/3; sd of a frequency ~0.0033, so 0.015 is > 4 sd
    judge = Counter(c.sample(rng, "judge")[0].id for _ in range(n))
    assert abs(judge["a"] / n - 1 / 3) < 0.015 and set(judge) == {"a", "b"}
    # critique pool: a (w=1), c (w=7) -> 1/8, 7/8
    critique = Counter(c.sample(rng, "critique")[0].id for _ in range(n))
    assert abs(critique["a"] / n - 1 / 8) < 0.015 and set(critique) == {"a", "c"}
    # with replacement the two draws are independent: P(c, c) = (7/8)^2 = 49/64
    draws = [tuple(p.id for p in c.sample(rng, "critique", k=2, distinct=False)) for _ in range(n)]
    assert abs(draws.count(("c", "c")) / n - 49 / 64) < 0.015


def test_distinct_sampling_is_without_replacement(tmp_path):
    text = GOOD.replace("    weight: 7\n", "    judge: j3\n    weight: 7\n")  # judge weights 1, 2, 7
    c = load_constitution(write(tmp_path, text))
    rng = random.Random(1)
    n = 20_000
    pairs = Counter(frozenset(p.id for p in c.sample(rng, "judge", k=2)) for _ in range(n))
    # P({a, b}) = P(a)P(b|a) + P(b)P(a|b) = 0.1 * 2/9 + 0.2 * 1/8 = 0.04722
    assert abs(pairs[frozenset("ab")] / n - (0.1 * 2 / 9 + 0.2 / 8)) < 0.01
    assert all(len(pair) == 2 for pair in pairs)
    assert sorted(p.id for p in c.sample(rng, "judge", k=3)) == ["a", "b", "c"]
    with pytest.raises(UserError, match="has 3 judge principles; cannot draw 4 distinct ones"):
        c.sample(rng, "judge", k=4)
    seq1 = [p.id for p in c.sample(random.Random(7), "judge", k=3)]
    assert seq1 == [p.id for p in c.sample(random.Random(7), "judge", k=3)]


# --- hashing -------------------------------------------------------------------------------------------


def test_hash_ignores_layout_but_not_content(tmp_path):
    base = load_constitution(write(tmp_path, GOOD, "a.yaml")).hash
    relaid = """\
        name: "tiny"   # same content, other layout
        version: 1

        principles:
        - judge: >-
            Pick the less
            harmful one.
          id: a
          critique: |
            Find the harm.
          revision: 'Remove the harm.'
          weight: 1.0
          tags:
            - harmless
        - {id: b, judge: Pick the more honest one., weight: 2}
        - id: c
          critique: Find the lies.
          revision: Remove the lies.
          weight: 7
        """
    assert load_constitution(write(tmp_path, relaid, "b.yaml")).hash == base
    changed = GOOD.replace("Find the lies.", "Find the falsehoods.")
    assert load_constitution(write(tmp_path, changed, "c.yaml")).hash != base
    reweighted = GOOD.replace("weight: 7", "weight: 6")
    assert load_constitution(write(tmp_path, reweighted, "d.yaml")).hash != base
    assert len(base) == 64 and int(base, 16) >= 0
