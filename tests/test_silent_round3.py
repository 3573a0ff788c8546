"""Nothing silently wrong, round 3 (issue #22, items 1-4, 6-12): each test fails on the code before the fix.

Real parts only: the loopback fake API (caikit/testing/fake_api.py) with scripted answers, the real CLI entry
point, tiny models from tests/conftest.py where a trainer runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-round3-0123456789abcdefghij"


@pytest.fixture
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gen_args(out: Path, prompts: Path, server: FakeAPIServer, backend: str = "openai", *extra: str) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    return ["generate", "--backend", backend, "--model", "fake-model", "--base-url", base, "--constitution", "hhh",
            "--prompts", str(prompts), "--out", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------- 1. one prompt set per run directory

@pytest.mark.loopback
def test_item1_another_prompt_set_in_a_finished_run_is_refused(tmp_path, api_keys, capsys):
    first = write_prompts(tmp_path / "a.jsonl", [f"first set prompt {i}" for i in range(3)])
    second = write_prompts(tmp_path / "b.jsonl", [f"second set prompt {i}" for i in range(4)])
    run = tmp_path / "run"
    with FakeAPIServer() as server:
        assert cli_main(gen_args(run, first, server)) == 0
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".caikit.lock"}
        capsys.readouterr()
        sent = len(server.log)
        assert cli_main(gen_args(run, second, server)) == 2
        assert len(server.log) == sent  # nothing was asked for
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "prompt set" in err[0] and str(run) in err[0]
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".caikit.lock"}
        assert after == before  # nothing already written is lost or changed
        # the same rows in another file, a smaller --limit, or the file with prompts added still resume the run
        copy = tmp_path / "copy.jsonl"
        copy.write_bytes(first.read_bytes())
        assert cli_main(gen_args(run, copy, server)) == 0
        assert cli_main(gen_args(run, first, server, "openai", "--limit", "2")) == 0
        grown = write_prompts(tmp_path / "grown.jsonl", [f"first set prompt {i}" for i in range(5)])
        assert cli_main(gen_args(run, grown, server)) == 0
    assert len(read_jsonl(run / "sft.jsonl")) == 5


# ---------------------------------------------------------------- 2. a cut initial answer is never a preference side

REVISION_REQUEST = "Reply with the rewritten response only"  # caikit/stages/templates/revision.txt
CRITIQUE_REQUEST = "Write only the critique of your previous response"


def cut_initial_responder(req) -> str:
    """Initial answers run far past --max-tokens for prompts saying LONG; critiques and revisions are short."""
    last = req.last_user_message
    if "<response_a>" in last:
        return "(A)"
    if REVISION_REQUEST in last:
        return "I can't help with that, but here is a safer way to think about it."
    if CRITIQUE_REQUEST in last:
        return "The answer is harmful and should decline."
    return " ".join(["word"] * 200) if "LONG" in last else "Sure, a short answer."


def judge_args(gen: Path, out: Path, server: FakeAPIServer, *extra: str) -> list[str]:
    return ["judge", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--from", str(gen), "--out", str(out), "--no-progress", *extra]


@pytest.mark.loopback
@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_item2_cut_initial_answer_is_flagged_and_never_a_preference_side(tmp_path, api_keys, backend):
    from tests.scripted_runs import judge_logprobs

    prompts = write_prompts(tmp_path / "p.jsonl", ["LONG how do I pick a lock?", "LONG how do I hotwire a car?",
                                                   "how do I bake bread?"])
    gen, judge, kept = tmp_path / "gen", tmp_path / "judge", tmp_path / "judge-kept"
    with FakeAPIServer(cut_initial_responder, logprobs=judge_logprobs) as server:
        assert cli_main(gen_args(gen, prompts, server, backend, "--max-tokens", "40")) == 0
        traces = {t["prompt"][-1]["content"]: t for t in read_jsonl(gen / "traces.jsonl")}
        for text, trace in traces.items():
            assert trace["initial_truncated"] is ("LONG" in text), text  # on both wire formats
            assert trace["truncated"] is False  # the revision itself was whole
        assert cli_main(judge_args(gen, judge, server)) == 0
        stats = json.loads((judge / "stats.json").read_text())
        assert stats["skipped"]["truncated_initial"] == 2 and stats["pairs"] == 1
        prefs = read_jsonl(judge / "preferences.jsonl")
        assert len(prefs) == 1 and "word word" not in json.dumps(prefs)
        # kept on request: every kept pair with a cut side says so
        assert cli_main(judge_args(gen, kept, server, "--keep-truncated")) == 0
        stats = json.loads((kept / "stats.json").read_text())
        assert stats["skipped"]["truncated_initial"] == 0 and stats["with_cut_side"] == 2
        marked = [p for p in read_jsonl(kept / "preferences.jsonl") if "word word" in json.dumps(p)]
        assert len(marked) == 2 and all(p["provenance"]["cut_at_max_tokens"] == ["rejected"] for p in marked)
        assert cli_main(["export", str(judge), "--out", str(tmp_path / "export")]) == 0
    card = next((tmp_path / "export").rglob("README.md")).read_text()
    assert "initial answers cut at --max-tokens (not judged) | 2" in card


# ---------------------------------------------------------------- 4. a run that produced nothing exits 1

def dead(**kwargs):
    from caikit.testing.fake_api import FaultPlan

    return FaultPlan(always_fail_keys=lambda req: True, retry_after=0.01, **kwargs)


@pytest.mark.loopback
def test_item4_a_run_that_produced_nothing_exits_1_whatever_the_allowance(tmp_path, api_keys, capsys):
    from tests.scripted_runs import judge_logprobs

    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(3)])
    with FakeAPIServer(faults=dead()) as server:
        rc = cli_main(gen_args(tmp_path / "gen-dead", prompts, server, "openai", "--max-failure-rate", "1",
                               "--max-retries", "1"))
    assert rc == 1
    assert "nothing usable came out (0 traces" in capsys.readouterr().err
    gen = tmp_path / "gen"
    with FakeAPIServer(cut_initial_responder, logprobs=judge_logprobs) as server:
        assert cli_main(gen_args(gen, prompts, server)) == 0
    with FakeAPIServer(faults=dead()) as server:
        rc = cli_main(judge_args(gen, tmp_path / "judge", server, "--max-failure-rate", "1", "--max-retries", "1"))
    assert rc == 1
    assert "nothing usable came out (0 pairs judged" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. a merge with a shard missing says so everywhere

@pytest.mark.loopback
def test_item3_merge_with_a_missing_shard_exits_1_and_counts_the_lost_prompts(tmp_path, api_keys, capsys):
    from caikit.prompts import load_prompts
    from caikit.shard import shard_of

    prompts = write_prompts(tmp_path / "p.jsonl", [f"question {i}: how do I pick lock {i}?" for i in range(12)])
    lost = sum(shard_of(row.id, 3) == 2 for row in load_prompts(prompts))
    assert 0 < lost < 12
    with FakeAPIServer() as server:
        for i in (1, 3):
            assert cli_main(gen_args(tmp_path / f"gen{i}", prompts, server, "openai", "--shard", f"{i}/3")) == 0
    out = tmp_path / "merged"
    capsys.readouterr()
    assert cli_main(["merge", str(tmp_path / "gen1"), str(tmp_path / "gen3"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing shards 2/3" in err and f"{lost} prompts" in err and "--allow-partial" in err
    stats = json.loads((out / "stats.json").read_text())
    assert stats["prompts"] == 12 and stats["failures"] == lost and stats["missing_prompts"] == lost
    assert stats["missing_shards"] == ["2/3"]
    assert json.loads((out / "usage.json").read_text())["failures"] == lost
    assert cli_main(["export", str(out), "--out", str(tmp_path / "export")]) == 0
    card = next((tmp_path / "export").rglob("README.md")).read_text()
    assert "missing shards 2/3" in card and f"failed after retries (failures.jsonl) | {lost}" in card
    assert cli_main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Nothing failed." not in page and f"{lost} items failed." in page
    # asked for: a partial merge exits 0, and still counts what is missing
    assert cli_main(["merge", str(tmp_path / "gen1"), str(tmp_path / "gen3"), "--out", str(out),
                     "--allow-partial"]) == 0
    assert json.loads((out / "stats.json").read_text())["missing_prompts"] == lost


# ---------------------------------------------------------------- 8. the card states the length rule gate.json used

@pytest.mark.unit
def test_item8_card_states_the_length_rule_the_gate_measured():
    from types import SimpleNamespace

    from caikit.commands.dataset_card import quality_rows
    from caikit.gate import human_figures

    # response_a is the human's choice; the humans chose the shorter reply 3 times of 4
    judgments = [{"response_a": a, "response_b": b, "p_a": 0.8} for a, b in
                 [("short", "a much longer reply"), ("tiny", "a longer reply here"), ("ok", "fine, longer"),
                  ("the long winded chosen reply", "brief")]]
    human = human_figures(judgments, 4)
    assert human["length_baseline"] == 0.75 and human["length_baseline_rule"] == "shorter"
    gate = {"status": "passed", "human": human, "thresholds": {}}
    rows = dict(quality_rows(SimpleNamespace(stats={}, gate=gate, agreement=None)))
    label = next(k for k in rows if k.startswith("length-only baseline"))
    assert "shorter answer wins" in label and "longer answer wins" not in label and rows[label] == "75.0 %"


# ---------------------------------------------------------------- 7. estimate counts what the sampler sends

@pytest.mark.loopback
def test_item7_estimate_counts_policy_requests_on_a_server_that_ignores_n(tmp_path, api_keys, capsys):
    from tests.scripted_runs import judge_logprobs

    prompts = write_prompts(tmp_path / "p.jsonl", ["Is fire hot?", "Tell me a joke.", "Name a colour."])
    with FakeAPIServer(lambda req: f"sample {req.index} {req.seed}", max_n=1) as policy, \
            FakeAPIServer(logprobs=judge_logprobs) as judge:
        common = ["--pairs", "samples", "--prompts", str(prompts), "--n", "4", "--backend", "openai",
                  "--model", "fake-judge", "--base-url", judge.openai_base_url, "--method", "logprob",
                  "--policy-backend", "openai", "--policy-model", "fake-model",
                  "--policy-base-url", policy.openai_base_url, "--calibrate", "0"]
        capsys.readouterr()
        assert cli_main(["estimate", "judge", *common, "--json", "--tokenizer", "chars"]) == 0
        estimated = json.loads(capsys.readouterr().out)["policy"]["requests"]
        policy.reset_log()
        cli_main(["judge", *common, "--out", str(tmp_path / "judge"), "--no-progress"])
        sent = len(policy.log)
    assert sent == 3 * 4  # one choice per request: 4 requests a prompt
    assert estimated == sent


# ---------------------------------------------------------------- 9. a top-k list without one option is no certainty

@pytest.mark.unit
def test_item9_missing_option_is_bounded_by_the_smallest_listed_logprob():
    from caikit.backends.openai import option_logprobs_from_top
    from caikit.soft_labels import bounded_option, soft_label

    top = {"A": math.log(0.90), " (A": math.log(0.05), "The": math.log(0.02), "I": math.log(0.01)}
    scores = option_logprobs_from_top(top, ["A", "B"])
    p = soft_label(scores)
    assert p == pytest.approx(0.95 / (0.95 + 0.01))  # B is at most as likely as the least listed token
    assert 0 < p < 1 and bounded_option(scores) == "B"
    mirrored = option_logprobs_from_top({"B": math.log(0.9), "I": math.log(0.01)}, ["A", "B"])
    assert soft_label(mirrored) == pytest.approx(0.01 / 0.91) and bounded_option(mirrored) == "A"
    # both listed: the plain softmax, nothing bounded
    both = option_logprobs_from_top({"A": math.log(0.6), "B": math.log(0.3)}, ["A", "B"])
    assert soft_label(both) == pytest.approx(2 / 3) and bounded_option(both) is None


@pytest.mark.loopback
def test_item9_judge_counts_bounded_judgments(tmp_path, api_keys):
    prompts = write_prompts(tmp_path / "p.jsonl", ["how do I pick a lock?", "how do I hotwire a car?"])
    gen = tmp_path / "gen"
    with FakeAPIServer(cut_initial_responder) as server:
        assert cli_main(gen_args(gen, prompts, server)) == 0
    only_a = {"A": math.log(0.9), "Sure": math.log(0.04), "I": math.log(0.02)}  # B never in the top-k list
    with FakeAPIServer(logprobs=lambda req: only_a if "<response_a>" in req.last_user_message else None) as server:
        assert cli_main(judge_args(gen, tmp_path / "judge", server, "--calibrate", "0", "--no-swap")) == 0
    judgments = read_jsonl(tmp_path / "judge" / "judgments.jsonl")
    shown = [r["p_shown_a"] for j in judgments for r in j["raw"]]
    assert shown and all(0 < p < 1 for p in shown)
    stats = json.loads((tmp_path / "judge" / "stats.json").read_text())
    assert stats["bounded_by_top_k"] == len(judgments) == 2


# ---------------------------------------------------------------- 10. a weak reviser's usual failures are degenerate

HARM_REQUEST = ("Please rewrite the assistant response to remove any and all harmful, unethical, racist, sexist, "
                "toxic, dangerous, or illegal content.")
HARM_CRITIQUE = "The response explains how to pick a lock, which could help someone break into a home."


@pytest.mark.unit
@pytest.mark.parametrize("revision, reason", [
    (HARM_REQUEST, "the request"),
    ("Please rewrite the assistant response to remove any harmful, unethical, racist, toxic or illegal content",
     "the request"),
    (HARM_REQUEST + "\nReply with the rewritten response only: no preamble, no notes about what changed.", "the request"),
    ("I've rewritten the response to remove the harmful content.", "a note about the rewrite"),
    ("Okay, I have revised my previous answer so that it is safe.", "a note about the rewrite"),
    ("I rewrote the response.", "a note about the rewrite"),
    ("The second critique was: the response explains how to pick a lock, which could help a burglar.", "the critique"),
    ("The first critique said the answer could help someone break in.", "the critique"),
    ("Critique: response explains how to pick a lock, could help someone break into a home", "the critique"),
    ("Yes, no.", "no answer"),
    ("No, yes", "no answer"),
])
def test_item10_weak_reviser_failures_are_degenerate(revision, reason):
    from caikit.stages import revise

    initial = "Sure: insert a tension wrench, then rake the pins until the plug turns."
    assert revise.degenerate(initial, HARM_CRITIQUE, revision, request=HARM_REQUEST) == reason


@pytest.mark.unit
@pytest.mark.parametrize("revision", [
    "No.", "Paris.", "Yes, it is safe.", "No, no.", "Sure, no problem: a locksmith can help you get back in.",
    "I can't help with picking locks, but a licensed locksmith can open your own door quickly.",
    "I've rewritten the response: if you are locked out, call a locksmith or your landlord.",
    "I have updated the answer to focus on safety: never mix bleach with ammonia, because the fumes are toxic.",
    "The Marxist critique of capitalism is that workers are paid less than the value they create.",
    "Critique of Pure Reason is Kant's 1781 book on the limits of what reason can know.",
    "Please call emergency services if anyone is in danger right now.",
])
def test_item10_legitimate_short_answers_still_pass(revision):
    from caikit.stages import revise

    initial = "Sure: insert a tension wrench, then rake the pins until the plug turns."
    assert revise.degenerate(initial, HARM_CRITIQUE, revision, request=HARM_REQUEST) == ""


# ---------------------------------------------------------------- 12. every answer paid for is logged, once

class FullDisk:
    """A disk that fills up at the `fill_at`-th append to a file of the run and has room again after `full_for`
    refused writes (space freed elsewhere); its first refused write lands half a line, as a real one may."""

    def __init__(self, root: Path, fill_at: int, full_for: int):
        self.root, self.fill_at, self.full_for = str(root), fill_at, full_for
        self.appends, self.refused = 0, 0

    def open(self, path, mode="r", *args, **kwargs):
        import builtins

        real = builtins.open(path, mode, *args, **kwargs)
        if "a" not in mode or not str(path).startswith(self.root):
            return real
        disk = self

        class Appender:
            def write(self, data):
                disk.appends += 1
                if disk.appends >= disk.fill_at and disk.refused < disk.full_for:
                    disk.refused += 1
                    if disk.refused == 1 and len(data) > 1:  # half a line reaches the disk, then it is full
                        return real.write(bytes(data[: len(data) // 2]))
                    raise OSError(28, "No space left on device", str(path))
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return Appender()


@pytest.mark.loopback
def test_item12_a_full_disk_never_loses_an_answer_that_was_paid_for(tmp_path, api_keys, capsys, monkeypatch):
    import caikit.store
    from caikit.store import JsonlFile

    prompts = write_prompts(tmp_path / "p.jsonl", [f"question {i}: how do I pick lock {i}?" for i in range(10)])
    run = tmp_path / "run"
    disk = FullDisk(run, fill_at=9, full_for=4)
    with FakeAPIServer(latency=0.05) as server:
        with monkeypatch.context() as m:
            m.setattr(caikit.store, "open", disk.open, raising=False)
            rc = cli_main(gen_args(run, prompts, server, "openai", "--concurrency", "4"))
        assert disk.refused >= 1  # the disk did refuse writes
        assert rc == 2
        err = capsys.readouterr().err
        server.wait_idle()
        answered = len(server.log)
        logged = JsonlFile(run / "requests.jsonl").read()  # (a torn last line is not a row)
        assert len(logged) == answered == len({r["key"] for r in logged})
        assert "no request was sent after it" in err and len(err.strip().splitlines()[-1]) < 400
        # the disk has room again: the rerun asks only for what never came back
        assert cli_main(gen_args(run, prompts, server, "openai", "--concurrency", "4")) == 0
        sent_twice = {k: n for k, n in server.requests_by_key().items() if n > 1}
    assert sent_twice == {}
    assert len(read_jsonl(run / "sft.jsonl")) == 10


# ---------------------------------------------------------------- 6. sources that label one pair both ways

def judge_rows(n: int) -> list[dict]:
    """A judge's preference pairs (source judged-samples, soft labels)."""
    return [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"careful answer {i}"}],
             "rejected": [{"role": "assistant", "content": f"reckless answer {i}"}],
             "p_chosen": 0.8, "source": "judged-samples"} for i in range(n)]


def human_label(i: int, pick: str) -> dict:
    """A `caikit label` row on pair i of judge_rows: `pick` is the side the person chose (a = careful)."""
    return {"id": f"l{i}", "pair_id": f"p{i}", "prompt": [{"role": "user", "content": f"question {i}?"}],
            "response_a": f"careful answer {i}", "response_b": f"reckless answer {i}", "choice": pick,
            "labeler": "ann"}


@pytest.mark.unit
@pytest.mark.parametrize("rule, chosen, counts", [
    ("human", ["careful 0", "careful 3", "careful 3", "reckless 1", "reckless 2"],
     {"pairs": 2, "human_won": 2, "dropped_pairs": 0, "rows_dropped": 2}),
    ("drop", ["careful 0", "careful 3", "careful 3"], {"pairs": 2, "human_won": 0, "dropped_pairs": 2, "rows_dropped": 4}),
    ("keep", ["careful 0", "careful 1", "careful 2", "careful 3", "careful 3", "reckless 1", "reckless 2"],
     {"pairs": 2, "kept_both_ways": 2, "rows_dropped": 0}),
])
def test_item6_same_pair_labelled_both_ways_follows_the_stated_rule(tmp_path, rule, chosen, counts):
    from types import SimpleNamespace

    from caikit.train.data import training_data

    judge = tmp_path / "judge.jsonl"
    judge.write_text("".join(json.dumps(r) + "\n" for r in judge_rows(4)))
    labels = tmp_path / "labels.jsonl"  # the person disagrees with the judge on pairs 1 and 2, agrees on 3
    labels.write_text("".join(json.dumps(human_label(i, pick)) + "\n" for i, pick in ((1, "b"), (2, "b"), (3, "a"))))
    triples, summary = training_data(SimpleNamespace(data=[str(judge), str(labels)], on_conflict=rule), "pairs")
    assert sorted(t["chosen"][0]["content"].replace(" answer", "") for t in triples) == chosen
    assert {k: v for k, v in summary.conflicts.items() if k in counts} == counts and summary.conflicts["rule"] == rule
    assert summary.to_dict()["total"] == len(triples) and summary.to_dict()["conflicts"]["pairs"] == 2
    # no two rows pull the same pair both ways, unless asked to keep them
    orientations = {}
    for t in triples:
        key = (json.dumps(t["prompt"]), frozenset([t["chosen"][0]["content"], t["rejected"][0]["content"]]))
        orientations.setdefault(key, set()).add(t["chosen"][0]["content"])
    assert any(len(v) > 1 for v in orientations.values()) == (rule == "keep")


@pytest.mark.e2e
def test_item6_and_11_train_dpo_records_conflicts_and_the_lr_it_used(tiny_model_dir, tmp_path, capsys):
    judge = tmp_path / "judge.jsonl"
    judge.write_text("".join(json.dumps(r) + "\n" for r in judge_rows(6)))
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps(human_label(1, "b")) + "\n")
    out = tmp_path / "dpo"
    rc = cli_main(["train", "dpo", "--model", tiny_model_dir, "--data", str(judge), "--data", str(labels), "--out",
                   str(out), "--max-steps", "1", "--batch-size", "4", "--max-length", "24", "--max-prompt-length",
                   "12", "--eval-fraction", "0", "--lr", "2e-5"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "1 pairs labelled both ways by the sources (--on-conflict human): 1 settled by the human label" in err
    data = json.loads((out / "data.json").read_text())
    assert data["conflicts"]["pairs"] == 1 and data["conflicts"]["rows_dropped"] == 1 and data["total"] == 6
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows[0]["data"]["conflicts"]["human_won"] == 1
    logged = [r["lr"] for r in rows if "lr" in r]
    assert logged == [pytest.approx(2e-5)]  # the rate the one step was taken with, not the schedule's next (0)
    # item 11: the same source twice is one line, exit 2, before anything loads
    rc = cli_main(["train", "dpo", "--model", tiny_model_dir, "--data", str(judge), "--data",
                   str(tmp_path / "." / "judge.jsonl"), "--out", str(tmp_path / "twice"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "given twice as --data" in err[0]


# ---------------------------------------------------------------- 11. nonsense prices, rates, attempts, state, lr

@pytest.mark.unit
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_item11_prices_nan_or_inf_are_one_line_exit_2(tmp_path, api_keys, capsys, value):
    prices = tmp_path / "prices.yaml"
    prices.write_text(f"fake-model:\n  input: {value}\n  output: 1.0\n")
    prompts = write_prompts(tmp_path / "p.jsonl", ["hello"])
    with FakeAPIServer() as server:
        rc = cli_main(gen_args(tmp_path / "run", prompts, server, "openai", "--prices", str(prices)))
        assert rc == 2 and len(server.log) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(prices) in err[0] and "finite number" in err[0]


@pytest.mark.loopback
def test_item11_dead_policy_server_reads_100_percent_failed(tmp_path, api_keys, capsys):
    from tests.scripted_runs import judge_logprobs

    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {i}" for i in range(6)])
    with FakeAPIServer(faults=dead()) as policy, FakeAPIServer(logprobs=judge_logprobs) as judge:
        rc = cli_main(["judge", "--pairs", "samples", "--prompts", str(prompts), "--n", "2", "--backend", "openai",
                       "--model", "fake-judge", "--base-url", judge.openai_base_url, "--policy-backend", "openai",
                       "--policy-model", "fake-model", "--policy-base-url", policy.openai_base_url,
                       "--max-retries", "1", "--out", str(tmp_path / "judge"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "600%" not in err and "6 of 6 pairs (and prompts sampled) failed" in err
    rates = [int(m) for m in __import__("re").findall(r"(\d+)% ", err)]
    assert all(r <= 100 for r in rates)


@pytest.mark.loopback
def test_item11_failure_row_attempts_agree_with_its_message(tmp_path, api_keys):
    from caikit.testing.fake_api import FaultPlan

    prompts = write_prompts(tmp_path / "p.jsonl", ["how do I pick a lock?"])
    faults = FaultPlan(always_fail_keys=lambda req: CRITIQUE_REQUEST in req.last_user_message, retry_after=0.01)
    with FakeAPIServer(cut_initial_responder, faults=faults) as server:
        assert cli_main(gen_args(tmp_path / "run", prompts, server, "openai", "--max-retries", "2",
                                 "--max-failure-rate", "1")) == 1
        sent = len(server.log)
    (row,) = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert row["attempts"] == sent >= 3  # the answer once, then the critique until its attempts ran out
    assert f"after {sent - 1} attempts" in row["error"] and f"({sent} requests sent for this item in all)" in row["error"]


@pytest.mark.loopback
def test_item11_a_stage_stopped_by_its_gate_records_exit_code_3(tmp_path, api_keys):
    import yaml

    prompts = write_prompts(tmp_path / "p.jsonl", [f"how do I pick lock {i}?" for i in range(4)])
    always_a = {"A": math.log(0.9), "B": math.log(0.1)}  # position bias: the gate fails it
    with FakeAPIServer(cut_initial_responder, logprobs=lambda req: always_a) as server:
        run_file = tmp_path / "run.yaml"
        run_file.write_text(yaml.safe_dump({"name": "gate", "out": str(tmp_path / "run"), "constitution": "hhh", "stages": {
            "generate": {"backend": "openai", "model": "fake-model", "base_url": server.openai_base_url,
                         "prompts": str(prompts), "progress": False},
            "judge": {"backend": "openai", "model": "fake-judge", "base_url": server.openai_base_url,
                      "progress": False}}}))
        assert cli_main(["run", str(run_file)]) == 3
    state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert state["generate"]["exit_code"] == 0
    assert state["judge"]["status"] == "failed" and state["judge"]["exit_code"] == 3


@pytest.mark.unit
def test_item6_one_sources_own_mirror_rows_are_left_as_they_are(tmp_path):
    from types import SimpleNamespace

    from caikit.train.data import training_data

    rows = judge_rows(2)
    flipped = {**rows[1], "chosen": rows[1]["rejected"], "rejected": rows[1]["chosen"]}
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows, flipped]))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({**judge_rows(3)[2]}) + "\n")
    triples, summary = training_data(SimpleNamespace(data=[str(data), str(other)], on_conflict="human"), "pairs")
    assert len(triples) == 4 and summary.conflicts == {}
