"""--workers for judge, eval judge and eval: N processes sharing one run directory judge what one process judges,
send each request once, lose nothing and pay nothing twice when a worker is killed (-9), stop together on a refused
key, and are refused (one line, exit 2) where a local model, a batch job or a --max-cost budget would need one
process. Against the loopback OpenAI server; `caikit eval` with two real tiny models."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.records import Trace
from caikit.testing import FakeAPIServer
from killing import lines, rerun

KEY = "sk-test-WORKERS-SENTINEL-0123456789"
REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)
TIMING = ("created_at",)  # the fields two runs of the same work may differ in


def with_repo() -> dict[str, str]:
    """This environment (as the test's fixtures left it) with the checkout importable in a subprocess."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shown_a(request) -> str:
    return dict(BLOCK.findall(request.last_user_message))["a"]


def favour_good(request) -> dict[str, float]:
    """(A) holding 'GOOD' wins 0.8; pair i's (A) at odd i wins only 0.6 (pairs differ, as real ones do)."""
    a = shown_a(request)
    strong = 0.6 if a.endswith(("1", "3", "5", "7", "9")) else 0.8
    p_a = strong if a.startswith("GOOD") else 1 - strong
    return {"A": math.log(p_a), "B": math.log(1 - p_a)}


class Recorder:
    """The judge's log-probs, remembering which responses every request showed."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, request):
        self.seen.append(request.last_user_message)
        return favour_good(request)


def write_generate_run(root: Path, n: int) -> Path:
    run = root / "gen"
    run.mkdir()
    with open(run / "traces.jsonl", "w") as fh:
        for i in range(n):
            trace = Trace(id=f"trace-{i}", prompt_id=f"p{i}", prompt=[{"role": "user", "content": f"question {i}"}],
                          initial_response=f"bad {i}", final_revision=f"GOOD {i}",
                          rounds=[{"principle_id": "harmful0", "revision": f"GOOD {i}"}])
            fh.write(json.dumps(trace.to_dict()) + "\n")
    return run


def judge_args(out: Path, gen: Path, server: FakeAPIServer, **extra) -> list[str]:
    args = ["judge", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--from-dir", str(gen), "--out", str(out), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def without_timing(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def assert_each_request_once(out: Path) -> list[dict]:
    rows = read_jsonl(out / "requests.jsonl")
    final = [r["key"] for r in rows if r.get("final", True)]
    assert len(final) == len(set(final)), "an answer already logged was paid for again"
    return rows


def assert_usage_is_the_logs(out: Path, records: list[dict]) -> None:
    """Each record's usage is exactly its own request rows'; usage.json is the sum over the log."""
    rows = read_jsonl(out / "requests.jsonl")
    for record in records:
        mine = [r for r in rows if r.get("item") == record["id"]]
        assert record["usage"]["requests"] == len(mine) > 0
        assert record["usage"]["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in mine)
    assert json.loads((out / "usage.json").read_text())["requests"] == len(rows)


@pytest.mark.unit
def test_a_workers_rows_leave_in_order_together_after_each_loop_turn_and_at_once_outside_a_loop():
    import asyncio
    import socket

    from caikit.workers import Channel

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    channel = Channel(theirs)

    def received() -> bytes:
        try:
            return ours.recv(1 << 16)
        except BlockingIOError:
            return b""

    async def main():
        channel.send("request", {"key": "a"})
        channel.send("record", {"id": "x", "text": "tab\there"})
        assert received() == b""  # the rows of one turn leave together, after it
        await asyncio.sleep(0)
        assert received() == b'request\t{"key": "a"}\nrecord\t{"id": "x", "text": "tab\\there"}\n'

    asyncio.run(main())
    channel.send("finished", {})  # no loop: at once
    assert received() == b"finished\t{}\n"
    ours.close()
    theirs.close()


# -- caikit judge ----------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_judge_over_two_workers_matches_one_process(tmp_path):
    gen = write_generate_run(tmp_path, 24)
    one, two = tmp_path / "one", tmp_path / "two"
    with FakeAPIServer(logprobs=favour_good, latency=0.01) as server:
        # the gate's 8 calibration pairs are judged by the command's own process, the other 16 by the workers
        assert cli_main(judge_args(one, gen, server, calibrate=8, concurrency=8, principles=2)) == 0
        sent_by_one = len(server.log)
        server.reset_log()
        assert cli_main(judge_args(two, gen, server, calibrate=8, concurrency=8, principles=2, workers=2)) == 0
        assert len(server.log) == sent_by_one == 24 * 2 * 2  # pairs x principles x orders: nothing sent twice
    assert without_timing(read_jsonl(two / "judgments.jsonl")) == without_timing(read_jsonl(one / "judgments.jsonl"))
    preferences = [list(without_timing(read_jsonl(d / "preferences.jsonl")).items()) for d in (one, two)]
    assert preferences[1] == preferences[0] and len(preferences[0]) == 24  # soft labels, in the same order
    for name in ("stats.json", "gate.json", "usage.json"):
        assert json.loads((two / name).read_text()) == json.loads((one / name).read_text()), name
    assert json.loads((two / "gate.json").read_text())["status"] == "passed"
    assert len(assert_each_request_once(two)) == 96
    assert_usage_is_the_logs(two, read_jsonl(two / "judgments.jsonl"))
    assert not (two / ".caikit.lock").exists()


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [c for c in pids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def kill_a_worker(cmd: list[str], records: Path, at_least: int, timeout: float = 240) -> str:
    """Run `cmd` until `records` holds `at_least` rows, kill -9 one of its workers, and return its stderr once it
    ended (exit 1: the other worker finished, the dead one's items are left)."""
    proc = subprocess.Popen(cmd, env=with_repo(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    workers: list[int] = []
    while time.time() < deadline and proc.poll() is None:
        workers = _workers_of(proc.pid)
        if workers and lines(records) >= at_least:
            break
        time.sleep(0.02)
    assert workers, "the run has worker processes"
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 1, stderr
    assert "ended without finishing" in stderr and "left for the next run" in stderr
    return stderr


@pytest.mark.e2e
def test_judge_worker_killed_mid_run_loses_nothing_and_pays_nothing_twice(tmp_path):
    gen = write_generate_run(tmp_path, 40)
    out = tmp_path / "run"
    recorder = Recorder()
    with FakeAPIServer(logprobs=recorder, latency=0.05) as server:
        cmd = [sys.executable, "-m", "caikit.cli", *judge_args(out, gen, server, calibrate=0, concurrency=2,
                                                                workers=2)]
        kill_a_worker(cmd, out / "judgments.jsonl", 4)
        first = read_jsonl(out / "judgments.jsonl")
        assert 4 <= len(first) < 40
        logged = {r["key"] for r in read_jsonl(out / "requests.jsonl") if r.get("final", True)}
        done = {j["response_a"] for j in first}
        recorder.seen.clear()
        rerun(cmd, env=with_repo(), timeout=240)
    assert recorder.seen, "the rerun judged the pairs left"
    asked = {shown for text in recorder.seen for shown in dict(BLOCK.findall(text)).values()}
    assert done.isdisjoint(asked), "a judged pair was requested again"
    rows = assert_each_request_once(out)
    assert logged <= {r["key"] for r in rows}
    judgments = read_jsonl(out / "judgments.jsonl")
    assert len({j["id"] for j in judgments}) == len(judgments) == 40
    assert_usage_is_the_logs(out, judgments)
    assert json.loads((out / "stats.json").read_text())["judged"] == 40
    assert len(read_jsonl(out / "preferences.jsonl")) == 40


@pytest.mark.e2e
def test_a_refused_key_in_one_worker_stops_every_worker(tmp_path, capsys):
    gen = write_generate_run(tmp_path, 4)
    out = tmp_path / "run"

    def reject(request):  # pair 0's requests meet a 401; pair 0 is the first worker's
        return (401, "Incorrect API key provided") if "GOOD 0" in request.last_user_message else None

    def latency(request):  # the other worker's pairs would take 30 s: it is stopped long before (the probe's
        text = request.last_user_message  # own requests show no pair and are answered at once)
        return 30.0 if "GOOD" in text and "GOOD 0" not in text else 0.0

    with FakeAPIServer(logprobs=favour_good, reject=reject, latency=latency) as server:
        code = cli_main(judge_args(out, gen, server, calibrate=0, concurrency=4, workers=2))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "401" in err and "Traceback" not in err
    assert not (out / "judgments.jsonl").exists() or read_jsonl(out / "judgments.jsonl") == []
    assert json.loads((out / "stats.json").read_text())["judged"] == 0  # the files still say what happened


@pytest.mark.unit
@pytest.mark.parametrize("extra, says", [
    (["--backend", "local"], "a local model batches in one"),
    (["--backend", "openai", "--batch-api"], "--batch-api"),
    (["--backend", "openai", "--max-cost", "1"], "--max-cost"),
])
def test_judge_workers_refused_where_one_process_is_needed(tmp_path, capsys, extra, says):
    gen = write_generate_run(tmp_path, 2)
    out = tmp_path / "run"
    assert cli_main(["judge", "--from-dir", str(gen), "--out", str(out), "--workers", "2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


# -- caikit judge --pairs samples: the policy's samples over the workers too ----------------------------------------
class Policy:
    """The policy's 3 samples of a prompt (one GOOD), remembering the prompts it was asked; the judge's text is never
    read (it answers by log-probs)."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, request) -> str:
        if request.model == "policy-model" and request.index == 0:
            self.asked.append(request.last_user_message)
        return f"{'GOOD' if request.index == 1 else 'bad'} {request.index} for {request.last_user_message}"


def samples_args(out: Path, prompts: Path, server: FakeAPIServer, **extra) -> list[str]:
    args = ["judge", "--pairs", "samples", "--n", "3", "--prompts", str(prompts), "--backend", "openai", "--model",
            "fake-model", "--base-url", server.openai_base_url, "--policy-backend", "openai", "--policy-model",
            "policy-model", "--policy-base-url", server.openai_base_url, "--out", str(out), "--no-progress",
            "--calibrate", "0"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def assert_each_sample_request_once(out: Path) -> list[dict]:
    rows = read_jsonl(out / "policy_requests.jsonl")
    final = [r["key"] for r in rows if r.get("final", True)]
    assert len(final) == len(set(final)), "a prompt already sampled was paid for again"
    return rows


@pytest.mark.e2e
def test_policy_samples_over_two_workers_match_one_process(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12)
    one, two = tmp_path / "one", tmp_path / "two"
    policy = Policy()
    with FakeAPIServer(policy, logprobs=favour_good, latency=0.01) as server:
        assert cli_main(samples_args(one, prompts, server, concurrency=4)) == 0
        sent_by_one, asked_by_one = len(server.log), sorted(policy.asked)
        server.reset_log()
        policy.asked.clear()
        capsys.readouterr()
        assert cli_main(samples_args(two, prompts, server, concurrency=4, workers=2)) == 0
        assert capsys.readouterr().err.count("2 worker processes") == 2  # sampling, then judging
        assert len(server.log) == sent_by_one == 12 + 12 * 3 * 2  # samples, then 3 pairs x 2 orders a prompt
        assert sorted(policy.asked) == asked_by_one and len(set(asked_by_one)) == 12  # each prompt sampled once
    for name in ("samples.jsonl", "judgments.jsonl", "preferences.jsonl"):
        assert without_timing(read_jsonl(two / name)) == without_timing(read_jsonl(one / name)), name
    assert len(assert_each_sample_request_once(two)) == 12
    assert_usage_is_the_logs(two, read_jsonl(two / "judgments.jsonl"))
    usage = [json.loads((d / "usage.json").read_text()) for d in (one, two)]
    assert usage[1]["policy"] == usage[0]["policy"] and usage[1]["policy"]["requests"] == 12


@pytest.mark.e2e
def test_a_sampling_worker_killed_mid_run_loses_nothing_and_pays_nothing_twice(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", 40)
    out = tmp_path / "run"

    def latency(request):  # sampling is slow enough to kill a worker in the middle of it
        return 0.05 if request.model == "policy-model" else 0.0

    policy = Policy()
    with FakeAPIServer(policy, logprobs=favour_good, latency=latency) as server:
        cmd = [sys.executable, "-m", "caikit.cli", *samples_args(out, prompts, server, concurrency=2, workers=2)]
        kill_a_worker(cmd, out / "samples.jsonl", 4)
        first = {s["prompt_id"] for s in read_jsonl(out / "samples.jsonl")}
        assert 4 <= len(first) < 40
        policy.asked.clear()
        rerun(cmd, env=with_repo(), timeout=240)
    assert policy.asked and not set(policy.asked) & {f"question {p[1:]}" for p in first}  # none sampled again
    assert_each_sample_request_once(out)
    samples = read_jsonl(out / "samples.jsonl")
    assert len({s["prompt_id"] for s in samples}) == len(samples) == 40
    stats = json.loads((out / "stats.json").read_text())
    assert stats["judged"] == 40 * 3 and len(read_jsonl(out / "preferences.jsonl")) == 40


# -- caikit eval judge -----------------------------------------------------------------------------------------
def write_human_pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}", "chosen": f"GOOD {i}", "rejected": f"bad {i}"})
                            + "\n" for i in range(n)))
    return path


def eval_judge_args(out: Path, pairs: Path, server: FakeAPIServer, **extra) -> list[str]:
    args = ["eval", "judge", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--pairs", str(pairs), "--out", str(out), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.mark.e2e
def test_eval_judge_over_two_workers_matches_one_process(tmp_path):
    pairs = write_human_pairs(tmp_path / "pairs.jsonl", 20)
    one, two = tmp_path / "one", tmp_path / "two"
    with FakeAPIServer(logprobs=favour_good) as server:
        assert cli_main(eval_judge_args(one, pairs, server, calibrate=6, concurrency=8)) == 0
        sent_by_one = len(server.log)
        server.reset_log()
        assert cli_main(eval_judge_args(two, pairs, server, calibrate=6, concurrency=8, workers=3)) == 0
        assert len(server.log) == sent_by_one == 40
    assert without_timing(read_jsonl(two / "judgments.jsonl")) == without_timing(read_jsonl(one / "judgments.jsonl"))
    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert report_two == report_one and report_two["n"] == 20 and report_two["accuracy"] == 1.0
    assert_each_request_once(two)
    assert_usage_is_the_logs(two, read_jsonl(two / "judgments.jsonl"))


@pytest.mark.unit
def test_eval_judge_workers_refused_with_a_budget(tmp_path, capsys):
    pairs = write_human_pairs(tmp_path / "pairs.jsonl", 2)
    assert cli_main(["eval", "judge", "--backend", "openai", "--pairs", str(pairs), "--out", str(tmp_path / "e"),
                     "--workers", "2", "--max-cost", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-cost" in err
    assert not (tmp_path / "e").exists()


# -- caikit eval -----------------------------------------------------------------------------------------------
def prefer_longer(request) -> dict[str, float]:
    blocks = dict(BLOCK.findall(request.last_user_message))
    a, b = len(blocks["a"]), len(blocks["b"])
    p_a = 0.9 if a > b else 0.1 if a < b else 0.5
    return {"A": math.log(p_a), "B": math.log(1 - p_a)}


@pytest.fixture(scope="module")
def perturbed_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model with every weight moved by N(0, 0.05): another policy with the same tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-perturbed")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def eval_args(out: Path, after: str, before: str, server: FakeAPIServer, **extra) -> list[str]:
    args = ["eval", "--model", after, "--before", before, "--judge", f"openai:fake-judge@{server.openai_base_url}",
            "--harm-suite", "none", "--max-tokens", "8", "--out", str(out), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.mark.e2e
def test_eval_over_two_workers_matches_one_process(tmp_path, tiny_model_dir, perturbed_model_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    with FakeAPIServer(logprobs=prefer_longer) as server:
        assert cli_main(eval_args(one, perturbed_model_dir, tiny_model_dir, server, limit=6)) == 0
        sent_by_one = len(server.log)
        two.mkdir()  # the same answers: the cache comes along, so only the judging differs
        (two / "answers.jsonl").write_bytes((one / "answers.jsonl").read_bytes())
        server.reset_log()
        assert cli_main(eval_args(two, perturbed_model_dir, tiny_model_dir, server, limit=6, workers=2)) == 0
        assert len(server.log) == sent_by_one > 0
    assert read_jsonl(two / "samples.jsonl") == read_jsonl(one / "samples.jsonl")
    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert report_two["table"] == report_one["table"] and report_two["judge"] == report_one["judge"]
    assert {s["judge_p_after"] for s in read_jsonl(two / "samples.jsonl")} - {0.5}, "the two models' answers differ"
    assert report_two["counts"] | {"answers_generated": 0} == report_one["counts"] | {"answers_generated": 0}
    assert report_two["counts"]["judged_pairs"] == 12
    assert without_timing(read_jsonl(two / "judgments.jsonl")) == without_timing(read_jsonl(one / "judgments.jsonl"))
    assert_each_request_once(two)
    assert json.loads((two / "usage.json").read_text()) == json.loads((one / "usage.json").read_text())


@pytest.mark.e2e
def test_eval_worker_killed_mid_run_loses_nothing_and_pays_nothing_twice(tmp_path, tiny_model_dir,
                                                                         perturbed_model_dir):
    out = tmp_path / "run"
    with FakeAPIServer(logprobs=prefer_longer, latency=0.1) as server:
        cmd = [sys.executable, "-m", "caikit.cli", *eval_args(out, perturbed_model_dir, tiny_model_dir, server,
                                                               limit=12, workers=2, concurrency=2)]
        kill_a_worker(cmd, out / "judgments.jsonl", 3)
        first = read_jsonl(out / "judgments.jsonl")
        assert 3 <= len(first) < 24
        logged = {r["key"] for r in read_jsonl(out / "requests.jsonl") if r.get("final", True)}
        server.reset_log()
        rerun(cmd, env=with_repo(), timeout=240)
        assert server.log, "the rerun judged the pairs left"
    judgments = read_jsonl(out / "judgments.jsonl")
    assert len({j["id"] for j in judgments}) == len(judgments) == 24
    rows = assert_each_request_once(out)
    assert logged <= {r["key"] for r in rows}
    first_ids = {j["id"] for j in first}
    assert {r["item"] for r in rows if r["key"] not in logged}.isdisjoint(first_ids), "a judged pair was asked again"
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["judged_pairs"] == 24 and report["counts"]["judge_failures"] == 0
    assert json.loads((out / "usage.json").read_text())["requests"] == len(rows)


@pytest.mark.unit
def test_eval_workers_refused_with_a_local_judge(tmp_path, capsys):
    # refused before a model is loaded or an answer generated
    assert cli_main(["eval", "--model", "smollm2", "--judge", "local:smollm2", "--workers", "2",
                     "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a local model batches in one" in err
    assert not (tmp_path / "e").exists()
