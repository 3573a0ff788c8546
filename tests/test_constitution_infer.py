"""`caikit constitution infer`: the proposal parse, TF-IDF clustering and the selection rule by hand, and the
command end to end against the loopback OpenAI server on 200 synthetic pairs whose preference is planted
("the shorter answer wins"). The scripted server proposes candidates (the planted rule in two wordings, a
polite-sounding one and an irrelevant one, sometimes nothing readable) and, asked to judge with a candidate as
its principle, follows it: shorter -> the shorter response, polite -> a seeded coin, weather -> no side,
longer -> the longer response. The planted rule must come back, and nothing else."""

from __future__ import annotations

import hashlib
import json
import math
import re

import numpy as np
import pytest

from caikit.cli import main
from caikit.constitution import load_constitution, validate_file
from caikit.constitution_infer import Cluster, cluster, select, support_of
from caikit.stages.base import ParseError
from caikit.stages.propose import parse_principle
from caikit.testing import FakeAPIServer

KEY = "sk-test-INFER-SENTINEL-0123456789"
BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)
WORDS = "the a small quick answer about this that covers some details and more words here".split()


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def draw(*parts) -> float:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 2**32


def synthetic_pairs(path, n: int = 200) -> None:
    """`n` pairs whose preferred response is always the shorter one (4-7 words against 14-24)."""
    rows = []
    for i in range(n):
        short = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(4 + i % 4)) + f" ({i})."
        long = " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(14 + i % 11)) + f" [{i}]."
        rows.append({"prompt": f"Tell me about topic {i}.", "chosen": short, "rejected": long})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def proposer(req) -> str:
    """What the scripted model proposes for one pair (a resample, with another seed, may say something else)."""
    u = draw(req.last_user_message, req.seed)
    if u < 0.5:
        return "Select the response that is shorter."
    if u < 0.65:
        return "I would say: select the response that is more concise and shorter. That is all."
    if u < 0.8:
        return "Select the response that is more polite."
    if u < 0.92:
        return "Select the response that mentions the weather."
    return "Both responses are fine."  # no rule: unreadable, resampled


def judge(req) -> dict[str, float]:
    text = req.last_user_message
    blocks = dict(BLOCK.findall(text))
    a, b = blocks["a"].strip(), blocks["b"].strip()
    if "shorter" in text:
        p = 0.9 if len(a) < len(b) else 0.1
    elif "longer" in text:
        p = 0.9 if len(a) > len(b) else 0.1
    elif "polite" in text:
        first = min(a, b)
        p = 0.85 if (draw(first, max(a, b)) < 0.5) == (a == first) else 0.15
    else:
        p = 0.5
    return {"A": math.log(p), " B": math.log(1 - p)}


def test_parse_principle_by_hand():
    assert parse_principle("**Select the response that** is shorter.") == "Select the response that is shorter."
    assert parse_principle("Rule: choose the answer which avoids medical claims. Because ...") == \
        "Select the response that avoids medical claims."
    for bad in ["Response A is better.", "Select the response that wins.", "Select the response that is (A).",
                "Select the response that would also decide other conversations."]:  # an echo of the question
        with pytest.raises(ParseError):
            parse_principle(bad)


def test_cluster_and_select_by_hand():
    groups = cluster([("1", "Select the response that is shorter."), ("2", "Select the response that is shorter."),
                      ("3", "Select the response that is more concise and shorter."),
                      ("4", "Select the response that is more polite.")])
    assert [(g.text, sorted(g.pairs)) for g in groups] == [
        ("Select the response that is shorter.", ["1", "2", "3"]), ("Select the response that is more polite.", ["4"])]
    assert isinstance(groups[0], Cluster) and groups[0].wordings["Select the response that is shorter."] == 2
    # net support = (agrees - disagrees) / pairs; a rewording (same sides) is left out; a coin is not supported
    side = {"short": [1] * 18 + [-1] * 2, "brief": [1] * 18 + [-1] * 2, "coin": [1, -1] * 10,
            "rare": [1] * 3 + [0] * 17}
    assert support_of(side["short"]).score == pytest.approx(0.8) and support_of(side["rare"]).score == 0.15
    kept, dropped = select(list(side), side, max_principles=5)
    assert kept == ["short"] and "rewording of short" in dropped["brief"] and "net support" in dropped["coin"]
    assert "chance" in dropped["rare"]  # 3 of 3 right is too few to tell


def test_infer_recovers_the_planted_preference(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    synthetic_pairs(pairs)
    written = tmp_path / "c0.yaml"
    written.write_text("name: c0\nprinciples:\n"
                       "  - {id: brevity, judge: Choose the shorter response.}\n"
                       "  - {id: detail, judge: Choose the longer response.}\n"
                       "  - {id: weather, judge: Choose the response about the weather.}\n")
    out = tmp_path / "infer"
    with FakeAPIServer(proposer, logprobs=judge) as server:
        argv = ["constitution", "infer", "--pairs", str(pairs), "--judge",
                f"openai:fake-model@{server.openai_base_url}", "--out", str(out), "--compare", str(written),
                "--no-progress", "--limit", "0"]
        assert main(argv) == 0
        asked = len(server.log)
        assert main(argv) == 0  # resumed: only the failed proposals asked again (1 + 2 resamples each)
        report = json.loads((out / "report.json").read_text())
        assert len(server.log) - asked == 3 * report["proposals"]["failed"]
    assert report["kept"] == ["shorter"]
    rows = {r["id"]: r for r in report["candidates"]}
    assert set(rows) == {"shorter", "polite", "mentions-weather"}
    assert rows["shorter"]["proposed_by"] > 100 and rows["shorter"]["accuracy"] == 1.0
    assert rows["shorter"]["decisiveness"] == 1.0 and rows["shorter"]["score"] == 1.0
    assert rows["mentions-weather"]["decisiveness"] == 0.0 and not rows["polite"]["kept"]
    assert report["proposals"]["proposed"] + report["proposals"]["failed"] == 200
    verdicts = {r["id"]: r["verdict"] for r in report["compare"]["principles"]}
    assert verdicts == {"brevity": "supported", "detail": "contradicted", "weather": "undecided"}
    assert validate_file(out / "constitution.yaml") == []
    inferred = load_constitution(out / "constitution.yaml")
    assert [(p.id, p.judge) for p in inferred.principles] == [("shorter", "Select the response that is shorter.")]
    text = (out / "constitution.yaml").read_text()
    assert "its side is the preferred one on 100% of those" in text and "net support +1.00" in text
    printed = capsys.readouterr().out
    assert "compare detail: contradicted" in printed and "1 principle explains the pairs: shorter" in printed
    assert all(KEY not in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


def test_infer_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["constitution", "infer", "--judge", "openai:m", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("--pairs FILE is required (preference pairs: caikit label rows "
                                                    "or any pairs file)")
    assert main(["constitution", "infer", "--pairs", "x.jsonl", "--max-principles", "0"]) == 2
    assert "--max-principles" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n')
    assert main(["constitution", "infer", "--pairs", str(bad), "--judge", "openai:m@http://127.0.0.1:9/v1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2:" in err


# --- constitution diff ----------------------------------------------------------------------------------------


def test_diff_by_hand():
    from caikit.commands.constitution_diff import diff_verdicts

    # two principles; A = only the first, B = only the second; pair 0 they agree, pair 1 they part
    p = np.array([[0.9, 0.8], [0.9, 0.2]])
    got = diff_verdicts(p, np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert got["differ"].tolist() == [False, True]
    assert np.allclose(got["contributions"].sum(axis=1), got["v_a"] - got["v_b"])  # exact attribution
    assert np.allclose(got["drive"], [0.4 / 0.7, 0.3 / 0.7]) and got["drive"].sum() == pytest.approx(1.0)


DIFF_A = "name: a\nprinciples:\n  - {id: common, judge: COMMON choose either.}\n" \
         "  - {id: brevity, judge: Choose the shorter response.}\n"
DIFF_B = DIFF_A.replace("name: a", "name: b") + "  - {id: coin, judge: COIN choose by a coin.}\n"


def diff_judge(req) -> dict[str, float]:
    """COMMON takes no side, 'shorter' 0.8 for the shorter response, COIN 0.99 for a seeded coin's pick."""
    text = req.last_user_message
    blocks = dict(BLOCK.findall(text))
    a, b = blocks["a"].strip(), blocks["b"].strip()
    if "COIN" in text:
        first = min(a, b)
        p = 0.99 if (draw(first, max(a, b)) < 0.5) == (a == first) else 0.01
    elif "shorter" in text:
        p = 0.8 if len(a) < len(b) else 0.2
    else:
        p = 0.5
    return {"A": math.log(p), " B": math.log(1 - p)}


def test_diff_names_the_principle_that_drives_the_difference(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    synthetic_pairs(pairs, n=30)
    (tmp_path / "a.yaml").write_text(DIFF_A)
    (tmp_path / "b.yaml").write_text(DIFF_B)
    out = tmp_path / "diff"
    with FakeAPIServer(logprobs=diff_judge) as server:
        argv = ["constitution", "diff", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--pairs", str(pairs),
                "--judge", f"openai:fake-model@{server.openai_base_url}", "--out", str(out), "--no-progress",
                "--limit", "0"]
        assert main(argv) == 0
        assert len(server.log) == 30 * 3 * 2  # the two shared principles are judged once
    report = json.loads((out / "report.json").read_text())
    drive = {d["principle"]: d["drive"] for d in report["drivers"]}
    assert report["drivers"][0]["principle"] == "B:coin" and drive["common"] == 0.0
    assert drive["B:coin"] > 0.6 and drive["brevity"] > 0
    assert 5 < report["differ"] < 25  # B follows the coin where it disagrees with brevity
    assert report["a"]["agreement_with_pairs"] == 1.0 and report["b"]["agreement_with_pairs"] < 1.0
    assert report["most_different"] and all(s["driven_by"] == "B:coin" for s in report["most_different"])
    printed = capsys.readouterr().out
    assert "verdicts differ on" in printed and "B:coin" in printed


def test_diff_bad_input(tmp_path, capsys):
    assert main(["constitution", "diff", "hhh", "--pairs", "p.jsonl"]) == 2
    assert "give two constitutions" in capsys.readouterr().err
    assert main(["constitution", "diff", "hhh", "anthropic-cai"]) == 2
    assert "--pairs FILE is required" in capsys.readouterr().err
