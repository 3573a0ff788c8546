"""`caikit constitution fit`: the weight fit by hand-made data, and the command end to end against the loopback
OpenAI server, whose judge follows a planted principle (it picks the person's choice) and a noise principle
(a confident seeded coin per pair, the same in both orders): the planted one must get the largest weight, the noise one
about 0, and the written constitution must be valid and apply the weights."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest

from caikit.cli import main
from caikit.constitution import load_constitution, validate_file
from caikit.constitution_fit import agreement_of, fit_logistic, fit_weights
from caikit.testing import FakeAPIServer

KEY = "sk-test-FIT-SENTINEL-0123456789"
BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)
CONSTITUTION = """\
# my constitution: the planted principle decides, the noise one does not
name: planted
principles:
  - id: noise
    judge: "NOISE: choose the response that sounds more like a coin toss."
  - id: planted
    judge: "PLANTED: choose the response that the person would choose."
    tags: [planted]
  - id: critic-only
    critique: "What is wrong?"
    revision: "Fix it."
"""


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def coin(*parts: str) -> bool:
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) % 2 == 0


def labelled_pairs(path, n: int = 40):
    rows = [{"prompt": f"Question number {i}: what should I do about thing {i}?",
             "chosen": f"Helpful answer {i} with a concrete step.", "rejected": f"Unhelpful answer {i}, vague."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {r["chosen"] for r in rows}


def planted_judge(chosen: set[str]):
    """Log-probs of the options: the planted principle puts 0.85 on the person's choice, the noise principle 0.95
    on a seeded coin's pick (the same whichever order), any other principle 0.5."""

    def logprobs(req):
        text = req.last_user_message
        blocks = dict(BLOCK.findall(text))
        if "PLANTED" in text:
            a_wins = blocks["a"].strip() in chosen
            p = 0.85 if a_wins else 0.15
        elif "NOISE" in text:
            first = min(blocks["a"], blocks["b"])
            p = 0.95 if coin(first, blocks["a"], blocks["b"]) == (blocks["a"] == first) else 0.05
        else:
            p = 0.5
        return {"A": math.log(p), " B": math.log(1 - p)}

    return logprobs


def test_fit_by_hand_made_data():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.5).astype(float)
    decides = np.where(y == 1, 0.8, 0.2)
    noise = rng.random(200)
    p = np.stack([noise, decides], axis=1)
    result = fit_weights(p, y, np.ones(2), folds=4)
    assert result.weights[1] > 1.9 and result.weights[0] < 0.1 and result.zero == [0]
    assert result.solo[1] == 1.0 and 0.35 < result.solo[0] < 0.65
    assert result.after == 1.0 and result.before < 1.0  # the equal-weight ensemble lets the noise spoil some pairs
    # the model is odd in x: mirroring every pair and its label fits the same weights
    assert np.allclose(fit_logistic(2 * p - 1, y, 0.01), fit_logistic(1 - 2 * p, 1 - y, 0.01), atol=1e-6)
    # no negative weight: a principle people contradict gets 0
    assert fit_logistic(np.stack([-(2 * decides - 1)], axis=1), y, 0.01)[0] == 0.0
    assert agreement_of(np.array([1.0, -1.0, 0.0]), np.array([1, 1, 0])) == pytest.approx(0.5)


def test_fit_command_weights_the_planted_principle(tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    chosen = labelled_pairs(labels)
    (tmp_path / "c.yaml").write_text(CONSTITUTION)
    out = tmp_path / "fit"
    with FakeAPIServer(logprobs=planted_judge(chosen)) as server:
        argv = ["constitution", "fit", str(tmp_path / "c.yaml"), "--labels", str(labels), "--judge",
                f"openai:fake-model@{server.openai_base_url}", "--out", str(out), "--no-progress", "--limit", "0"]
        assert main(argv) == 0
        assert len(server.log) == 40 * 2 * 2  # pairs x judge principles x orders
        assert main(argv) == 0  # resumed: nothing asked again
        assert len(server.log) == 160
    report = json.loads((out / "report.json").read_text())
    weights = {row["id"]: row["judge_weight"] for row in report["principles"]}
    assert weights["planted"] == max(weights.values()) and weights["noise"] < 0.05
    assert report["about_zero"] == ["noise"]
    solo = {row["id"]: row["solo_agreement"] for row in report["principles"]}
    assert solo["planted"] == 1.0 and 0.2 < solo["noise"] < 0.8
    assert report["after"]["agreement"] == 1.0 and report["before"]["agreement"] < 1.0
    assert report["labels_used"] == 40 and report["failure_share"] == 0
    assert validate_file(out / "constitution.yaml") == []
    fitted = load_constitution(out / "constitution.yaml")
    assert {p.id: p.judge_weight for p in fitted.principles} == {"noise": 0.0, "planted": 2.0, "critic-only": None}
    assert [p.id for p in fitted.judge_principles] == ["planted"]  # judge_weight 0 turns the noise principle off
    text = (out / "constitution.yaml").read_text()
    assert "# my constitution: the planted principle decides" in text  # the user's own comments stay
    assert "alone it agrees with the people on 100% of 40 pairs" in text
    printed = capsys.readouterr().out
    assert "weight about 0" in printed and "noise" in printed and "after 100.0%" in printed
    assert all(KEY not in p.read_text(errors="ignore") for p in out.iterdir() if p.is_file())


@pytest.mark.parametrize("argv, message", [
    (["constitution", "fit", "--labels", "x.jsonl"], "give the constitution to fit"),
    (["constitution", "fit", "hhh"], "--labels FILE is required"),
    (["constitution", "fit", "hhh", "--labels", "LABELS", "--judge", "nobody:x"], "--judge must be PROVIDER"),
    (["constitution", "fit", "hhh", "--labels", "LABELS", "--folds", "1"], "--folds"),
    (["constitution", "fit", "nope.yaml", "--labels", "LABELS"], "nope.yaml: no such constitution"),
    (["constitution", "fit", "hhh", "--labels", "BAD", "--judge", "openai:m@http://127.0.0.1:9/v1"], "BAD:2:"),
    (["constitution", "fit", "hhh", "--labels", "FEW", "--judge", "openai:m@http://127.0.0.1:9/v1"],
     "at least 10 are needed"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    good = tmp_path / "labels.jsonl"
    labelled_pairs(good, n=12)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text().splitlines()[0] + "\n{\"prompt\": \"p\", \"chosen\": \"x\"}\n")
    few = tmp_path / "few.jsonl"
    labelled_pairs(few, n=3)
    paths = {"LABELS": str(good), "BAD": str(bad), "FEW": str(few)}
    argv = [paths.get(a, a) for a in argv] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err.replace(str(bad), "BAD"), err
    assert not (tmp_path / "o" / "constitution.yaml").exists()


def test_the_judge_pools_every_principle_with_its_judge_weight(tmp_path):
    """Asked under every principle, the judge's p_a is the judge_weight-weighted mean (what fit fitted); drawn
    one at a time, principles come in proportion to judge_weight, and judge_weight 0 never judges."""
    import asyncio

    from caikit.stages.base import Reply
    from caikit.stages.judge import JudgeOptions, JudgeSetup, Pair, judge_pair

    (tmp_path / "w.yaml").write_text("name: w\nprinciples:\n"
                                     "  - {id: for-a, judge: YES always A., judge_weight: 3}\n"
                                     "  - {id: for-b, judge: NO always B., judge_weight: 1, weight: 5}\n"
                                     "  - {id: silent, judge: OFF., judge_weight: 0}\n")
    constitution = load_constitution(tmp_path / "w.yaml")
    assert [p.id for p in constitution.judge_principles] == ["for-a", "for-b"]

    async def ask(requests):  # YES puts 0.9 on the shown (A), NO 0.1
        return [Reply([r.accept({"A": math.log(0.9 if "YES" in r.messages[-1]["content"] else 0.1),
                                 "B": math.log(0.1 if "YES" in r.messages[-1]["content"] else 0.9)}, 0)])
                for r in requests]

    pair = Pair("g#0-1", [{"role": "user", "content": "hi"}], "one", "two")
    every = JudgeSetup.make(JudgeOptions(principles=2), "logprob", constitution, {}, {})
    judged = asyncio.run(judge_pair(ask, every, pair, every.key(pair), "r"))
    # in the first order YES gives response a 0.9 and NO 0.1: the pooled value is their judge_weight mean, 3 : 1
    assert judged.p_a_first == pytest.approx((3 * 0.9 + 1 * 0.1) / 4)
    one = JudgeSetup.make(JudgeOptions(principles=1), "logprob", constitution, {}, {})
    drawn = [one.draw(str(i))[0][0].id for i in range(400)]
    assert 0.65 < drawn.count("for-a") / 400 < 0.85 and "silent" not in drawn  # 3 : 1, not the sampling weight 5


def test_the_writer_replaces_a_judge_weight_and_rewrites_flow_style(tmp_path):
    from caikit.constitution_write import with_judge_weights, write_valid

    block = tmp_path / "block.yaml"
    block.write_text("name: b\nprinciples:\n  - id: a\n    judge: pick a  # keep me\n    judge_weight: 0.5\n"
                     "  - id: c\n    judge: pick c\n")
    text = with_judge_weights(block, {"a": 2.0, "c": 0.25}, notes={"c": ["why c"]})
    assert text.count("judge_weight") == 2 and "# keep me" in text and "  # why c\n  - id: c" in text
    write_valid(tmp_path / "out.yaml", text)
    assert {p.id: p.judge_weight for p in load_constitution(tmp_path / "out.yaml").principles} == {"a": 2.0, "c": 0.25}
    flow = tmp_path / "flow.yaml"
    flow.write_text("name: f\nprinciples:\n  - {id: a, judge: pick a}\n  - {id: c, judge: pick c}\n")
    write_valid(tmp_path / "flow-out.yaml", with_judge_weights(flow, {"a": 0.0, "c": 1.0}, header=["fitted"]))
    assert [(p.id, p.judge_weight) for p in load_constitution(tmp_path / "flow-out.yaml").principles] == \
        [("a", 0.0), ("c", 1.0)]
    with pytest.raises(Exception, match="would not be valid"):  # every judge_weight 0: refused, nothing written
        write_valid(tmp_path / "bad.yaml", with_judge_weights(flow, {"a": 0.0, "c": 0.0}))
    assert not (tmp_path / "bad.yaml").exists()
