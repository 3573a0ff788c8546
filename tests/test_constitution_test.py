"""`caikit constitution test` end to end against the loopback server, with a judge whose answers are scripted
by the principle it is asked to apply, so the right result is known:

  LONGER-1, LONGER-2  prefer the longer reply (two wordings of one rule: redundant)
  SHORTER             prefers the shorter reply (the opposite rule: conflicting with both LONGER ones)
  ALPHA               prefers the alphabetically first reply, which is the longer one on exactly half of the
                      pairs (distinct from the others: neither redundant nor conflicting); its cases are
                      written the other way round, so it fails them (exit 3)
  critique principle  its critique (a yes/no question) says Yes to a reply containing BAD
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from caikit.cli import main
from caikit.store import JsonlFile
from caikit.testing.fake_api import FakeAPIServer, FakeRequest
from killing import caikit, kill_9_when

pytestmark = pytest.mark.loopback

KEY = "sk-constitution-test-SECRET-0123456789"
BLOCKS = re.compile(r"<response_a>\n(.*?)\n</response_a>.*?<response_b>\n(.*?)\n</response_b>", re.S)
RESPONSE = re.compile(r"<response>\n(.*?)\n</response>", re.S)


def prefers_a(instruction: str, a: str, b: str) -> bool:
    if "LONGER" in instruction:
        return len(a) > len(b)
    if "SHORTER" in instruction:
        return len(a) < len(b)
    return a < b  # ALPHA


def judge_logprobs(req: FakeRequest) -> dict[str, float]:
    text = req.last_user_message
    found = BLOCKS.search(text)
    if found is None:  # a critique case: does the response have the problem?
        yes = "BAD" in RESPONSE.search(text).group(1)
        return {"Yes": math.log(0.9 if yes else 0.1), "No": math.log(0.1 if yes else 0.9)}
    good, bad = ("A", "B") if prefers_a(text, *found.groups()) else ("B", "A")
    return {good: math.log(0.85), bad: math.log(0.15)}


def replies(i: int) -> tuple[str, str]:
    """(longer, shorter) of pair i: the longer one comes first alphabetically on even i, last on odd i."""
    first, last = f"apple {i}", f"zebra {i}"
    return (first + " and more words", last) if i % 2 == 0 else (last + " and more words", first)


def case(i: int, better: str, worse: str) -> dict:
    return {"prompt": f"Question number {i}?", "better": better, "worse": worse}


def write_constitution(path: Path, alpha_right: bool = False) -> Path:
    principles, i = [], 0
    for pid, instruction in (("longer-1", "Choose the LONGER response."),
                             ("longer-2", "Pick whichever reply is LONGER."),
                             ("shorter", "Choose the SHORTER response."),
                             ("alpha", "Choose the ALPHA-first response.")):
        cases = []
        for _ in range(4):
            long, short = replies(i)
            if pid.startswith("longer"):
                cases.append(case(i, long, short))
            elif pid == "shorter":
                cases.append(case(i, short, long))
            else:  # alpha: written against its own rule unless alpha_right
                first, last = sorted((long, short))
                cases.append(case(i, first, last) if alpha_right else case(i, last, first))
            i += 1
        principles.append({"id": pid, "judge": instruction, "cases": cases})
    principles.append({"id": "critique-only", "critique": "Point out anything BAD.", "revision": "Remove it.",
                       "cases": [{"prompt": "Hello?", "flag": "A BAD reply."},
                                 {"prompt": "Hi?", "flag": "Another BAD one."}]})
    path.write_text(json.dumps({"name": "scripted", "principles": principles}, indent=1))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def server():
    with FakeAPIServer(logprobs=judge_logprobs) as s:
        yield s


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.env"
    path.write_text(f"OPENAI_API_KEY={KEY}\n")
    return path


def args(server, constitution: Path, out: Path, key_file: Path, *extra: str) -> list[str]:
    return ["constitution", "test", str(constitution), "--judge", f"openai:fake-model@{server.openai_base_url}",
            "--api-key-file", str(key_file), "--out", str(out), "--no-progress", "--concurrency", "4", *extra]


def relation(report: dict, first: str, second: str) -> dict:
    return next(r for r in report["relations"] if set(r["principles"]) == {first, second})


def assert_no_key(*dirs: Path) -> None:
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                assert KEY not in f.read_text(errors="replace"), f


def test_redundant_conflicting_distinct_and_a_failing_principle(server, key_file, tmp_path, capsys):
    constitution = write_constitution(tmp_path / "c.yaml")
    out = tmp_path / "out"
    assert main(args(server, constitution, out, key_file)) == 3  # alpha fails its cases
    report = json.loads((out / "report.json").read_text())
    rows = {r["id"]: r for r in report["principles"]}
    assert report["failing"] == ["alpha"] and report["status"] == "failed"
    assert rows["alpha"]["judge_cases"]["rate"] == 0.0 and rows["alpha"]["status"] == "fails its cases"
    for pid in ("longer-1", "longer-2", "shorter"):
        assert rows[pid]["judge_cases"] == {"n": 4, "rate": 1.0, "interval": pytest.approx([0.51, 1.0], abs=0.01),
                                            "unreadable": 0}
        assert rows[pid]["position_consistency"]["rate"] == 1.0 and rows[pid]["judged"] == 16
        assert rows[pid]["mean_confidence"] == pytest.approx(0.7)
        assert rows[pid]["status"] == "passes"
    assert rows["critique-only"]["critique_cases"]["rate"] == 1.0 and rows["critique-only"]["judged"] == 0
    # redundant: the two wordings of one rule; conflicting: the opposite rule; distinct: ALPHA
    assert report["redundant"] == [["longer-1", "longer-2"]]
    assert sorted(map(sorted, report["conflicting"])) == [["longer-1", "shorter"], ["longer-2", "shorter"]]
    assert relation(report, "longer-1", "alpha")["agreement"] == 0.5
    assert relation(report, "longer-1", "shorter")["agreement"] == 0.0
    assert relation(report, "longer-1", "shorter")["conflict_p"] == pytest.approx(0.5 ** 16)
    assert report["judgments"] == {"ok": 64, "unreadable": 0, "failed": 0, "missing": 0}
    printed = capsys.readouterr()
    assert "redundant: longer-1 and longer-2" in printed.out and "fails its cases" in printed.out
    assert "alpha" in printed.err  # the exit-3 line names the failing principle
    # each case row names its line in the file
    assert all(c["line"] > 1 for c in report["cases"])
    assert_no_key(out)


def test_passing_constitution_exits_0_and_the_report_shows_it(server, key_file, tmp_path):
    constitution = write_constitution(tmp_path / "c.yaml", alpha_right=True)
    extra = tmp_path / "pairs.jsonl"  # labelled pairs join the shared sample through the row reader
    extra.write_text("".join(json.dumps({"prompt": f"Extra {i}?", "chosen": replies(100 + i)[0],
                                         "rejected": replies(100 + i)[1]}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    assert main(args(server, constitution, out, key_file, "--pairs", str(extra))) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["failing"] == [] and report["status"] == "passed"
    assert report["pairs"] == {"cases": 16, "extra": 6}
    assert relation(report, "longer-1", "longer-2")["shared"] == 22
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Constitution principles" in page and "longer-1 and longer-2" in page and "redundant" in page
    # a failing constitution with --allow-failing exits 0 and still says so
    failing = write_constitution(tmp_path / "f.yaml")
    assert main(args(server, failing, tmp_path / "out2", key_file, "--allow-failing")) == 0
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["failing"] == ["alpha"]


BAD_CASES = """name: bad
principles:
  - id: only-judge
    judge: "Choose the better one."
    cases:
      - prompt: "hi"
        better: "hello"
      - prompt: "hi"
        flag: "go away"
"""


def test_case_errors_name_file_and_line_exit_2(server, key_file, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CASES)
    out = tmp_path / "out"
    assert main(args(server, path, out, key_file)) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: principle 'only-judge': case 1 has no 'worse'" in err
    assert f"{path}:8: principle 'only-judge': case 2 is a critique case, but the principle has no 'critique'" in err
    assert "Traceback" not in err and not out.exists()
    assert main(["constitution", "validate", str(path)]) == 2


def test_kill_9_then_resume_pays_nothing_twice(server, key_file, tmp_path):
    constitution = write_constitution(tmp_path / "c.yaml")
    reference = tmp_path / "reference"
    assert main(args(server, constitution, reference, key_file)) == 3
    total = len(JsonlFile(reference / "requests.jsonl").read())
    assert total == 64 * 2 + 2  # every (pair, principle) in both orders, and the two critique cases
    server.wait_idle(3)
    server.reset_log()
    server.latency = 0.02
    out = tmp_path / "killed"
    env = {**os.environ, "OPENAI_API_KEY": ""}
    try:
        kill_9_when(caikit(*args(server, constitution, out, key_file)),
                    lambda: sum(r.status == 200 for r in server.log) >= 40, env=env)
        persisted = JsonlFile(out / "requests.jsonl").read()
        server.wait_idle(3)
        killed_log = server.log
        assert 0 < len(persisted) < total
        assert not (out / "report.json").exists()
        resumed = subprocess.run(caikit(*args(server, constitution, out, key_file)), capture_output=True, env=env,
                                 timeout=120)
    finally:
        server.latency = 0.0
    assert resumed.returncode == 3, resumed.stderr.decode()[-2000:]
    asked = [r.key for r in server.log[len(killed_log):] if r.status == 200]
    assert len(asked) == len(set(asked)) == total - len(persisted)  # only what the killed run had not stored
    assert len(set(asked) & {r.key for r in killed_log}) <= 4  # resent: at most what was in flight (--concurrency 4)
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert got["principles"] == want["principles"] and got["relations"] == want["relations"]
    # a third run sends nothing
    server.reset_log()
    assert main(args(server, constitution, out, key_file)) == 3
    assert not [r for r in server.log if r.status == 200]
    assert_no_key(out, reference)


def test_shared_pairs_judges_a_sample_besides_each_principles_own_cases(server, key_file, tmp_path):
    constitution = write_constitution(tmp_path / "c.yaml", alpha_right=True)
    out = tmp_path / "out"
    assert main(args(server, constitution, out, key_file, "--shared-pairs", "6", "--min-shared", "3")) == 0
    report = json.loads((out / "report.json").read_text())
    # 6 pairs judged by all 4 principles, and the 10 case pairs outside the sample by their own principle only
    assert report["judgments"]["ok"] == 4 * 6 + 10
    assert all(r["judge_cases"]["n"] == 4 for r in report["principles"] if r["judge_cases"])
    assert relation(report, "longer-1", "longer-2")["shared"] == 6 and report["redundant"] == [["longer-1", "longer-2"]]


@pytest.mark.unit
def test_binomial_tail_by_hand():
    from caikit.stats import binomial_upper_tail

    assert binomial_upper_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)  # C(10,8) + C(10,9) + C(10,10)
    assert binomial_upper_tail(0, 5) == 1.0 and binomial_upper_tail(6, 5) == 0.0
    assert binomial_upper_tail(3, 3, 0.2) == pytest.approx(0.008)
    assert 0 < binomial_upper_tail(600, 1000) < 1e-9  # large n neither overflows nor underflows to 0


@pytest.mark.unit
def test_a_principle_that_picks_by_position_cannot_be_applied():
    from caikit.constitution import Principle
    from caikit.constitution_checks import principle_relations, principle_rows
    from caikit.principle_matrix import Cell, Matrix
    from caikit.stages.judge import Pair

    pairs = [Pair(f"p{i}#0-1", [{"role": "user", "content": "q"}], f"a{i}", f"b{i}") for i in range(12)]
    cells = {}
    for p in pairs:  # `steady` prefers response_a in both orders; `first` always says (A): 0.9 then 1 - 0.9
        cells[(p.id, "steady")] = Cell(p.id, "steady", "ok", 0.8, 0.8, 0.8)
        cells[(p.id, "first")] = Cell(p.id, "first", "ok", 0.9, 0.1, 0.5)
    matrix = Matrix(pairs, ["steady", "first"], cells, "logprob", {})
    rows = {r["id"]: r for r in principle_rows([Principle("steady", judge="j"), Principle("first", judge="k")],
                                               matrix, [], min_accuracy=0.6)}
    assert rows["steady"]["cannot_apply"] == [] and rows["steady"]["status"] == "no cases"
    assert rows["first"]["position_consistency"]["rate"] == 0.0 and rows["first"]["mean_confidence"] == 0.0
    assert rows["first"]["status"] == "cannot be applied" and "position consistency 0%" in rows["first"]["cannot_apply"][0]
    (rel,) = principle_relations(matrix, ["steady", "first"])
    assert rel["shared"] == 0 and not rel["redundant"] and not rel["conflicting"]  # no verdicts: nothing to compare
