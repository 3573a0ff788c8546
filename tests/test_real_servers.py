"""Issue 14 against loopback servers that behave like real ones: `caikit probe`, concurrency that fits a server
serving one request at a time, estimates that match what a run sends, usage that adds up, degenerate revisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer, default_responder

pytestmark = pytest.mark.loopback

KEY = "sk-test-SENTINEL-servers-0123456789"


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def prompts_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"question {i}: how do I pick lock {i}?"}) + "\n" for i in range(n)))
    return path


def judge_logprobs(request) -> dict[str, float]:
    """Prefers the revision (the fake's initial answer repeats the question) in both orders."""
    shown_a = request.last_user_message.split("<response_a>\n", 1)[-1].split("\n</response_a>", 1)[0]
    return {"A": -2.0, "B": -0.2} if "question" in shown_a else {"A": -0.2, "B": -2.0}


def judge_text(request) -> str:
    if "<response_a>" not in request.last_user_message:
        return default_responder(request)
    winner = max(judge_logprobs(request).items(), key=lambda kv: kv[1])[0]
    return f"Thinking it over, the answer is: ({winner})"


# -- caikit probe -----------------------------------------------------------------------------------------

def probe(server: FakeAPIServer, capsys) -> dict:
    assert cli_main(["probe", "--base-url", server.openai_base_url, "--model", "fake-model", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_describes_a_llamacpp_like_server(capsys):
    with FakeAPIServer(max_n=1, props={"total_slots": 2}, logprobs_supported=False) as server:
        found = probe(server, capsys)
        assert server.log == [] and len(server.probe_log) >= 5  # probes are told apart by the server
    assert (found["model_listed"], found["honours_n"], found["logprobs"]) == (True, False, False)
    assert (found["slots"], found["slots_from"]) == (2, "props")
    assert found["system_message"] in ("followed", "not followed") and found["latency_s"] >= 0


def test_probe_measures_slots_by_a_ramp_and_sees_n_and_logprobs(capsys):
    with FakeAPIServer(slots=2, latency=0.15, models=["other-model"]) as server:
        found = probe(server, capsys)
    assert (found["honours_n"], found["logprobs"], found["top_logprobs"]) == (True, True, 1)
    assert (found["slots"], found["slots_from"]) == (2, "ramp")
    assert found["model_listed"] is False and found["models"] == ["other-model"]


def test_probe_of_a_server_that_is_not_there_is_one_line(capsys):
    with FakeAPIServer() as server:
        url = server.openai_base_url
    assert cli_main(["probe", "--base-url", url, "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert "cannot probe" in err and "Traceback" not in err


# -- concurrency that fits the server ----------------------------------------------------------------------

def test_default_generate_fits_a_one_slot_server(tmp_path):
    """The issue's case: one slot, 0.5 s a request, --timeout 5, 12 prompts. 16 requests in flight would wait
    up to 8 s in the server's queue, time out and be sent again; `--concurrency auto` asks the server first."""
    with FakeAPIServer(slots=1, latency=0.5) as server:
        code = cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", server.openai_base_url,
                         "--constitution", "hhh", "--few-shot", "0", "--prompts",
                         str(prompts_file(tmp_path / "p.jsonl", 12)), "--out", str(tmp_path / "run"), "--timeout", "5",
                         "--no-progress"])
        by_key = server.requests_by_key()
    assert code == 0 and read_jsonl(tmp_path / "run" / "failures.jsonl") == []
    assert len(by_key) == 36 and max(by_key.values()) == 1  # no request processed twice
    probe = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert probe["slots"] == 1 and json.loads((tmp_path / "run" / "usage.json").read_text())["requests"] == 36


def test_timeouts_slow_the_client_down_when_it_was_told_too_many(tmp_path):
    """With --concurrency 12 forced on a one-slot server, timeouts count as overload: the in-flight cap drops
    and abandoned requests hold their place, so work done twice stays far below one resend per request."""
    with FakeAPIServer(slots=1, latency=0.15) as server:  # 12 in flight wait up to 1.8 s: past --timeout 1
        code = cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", server.openai_base_url,
                         "--constitution", "hhh", "--few-shot", "0", "--prompts",
                         str(prompts_file(tmp_path / "p.jsonl", 8)), "--out", str(tmp_path / "run"), "--timeout", "1",
                         "--no-progress", "--concurrency", "12", "--prefetch", "1", "--max-retries", "8"])
        by_key = server.requests_by_key()
    assert code == 0 and read_jsonl(tmp_path / "run" / "failures.jsonl") == []
    assert sum(by_key.values()) <= 1.5 * len(by_key)


# -- estimates that add up ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", KEY)
        with FakeAPIServer() as server:
            assert cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", server.openai_base_url,
                             "--constitution", "hhh", "--few-shot", "0", "--prompts",
                             str(prompts_file(root / "p.jsonl", 6)), "--out", str(root / "gen"), "--no-progress"]) == 0
    return root / "gen"


@pytest.mark.parametrize("max_n", [None, 1], ids=["honours-n", "ignores-n"])
@pytest.mark.parametrize("method", [["--method", "logprob"], ["--method", "vote", "--votes", "5"],
                                    ["--method", "cot"], ["--method", "cot", "--cot-scoring", "logprobs"]],
                         ids=["logprob", "vote", "cot", "cot-logprobs"])
def test_estimate_matches_the_requests_a_run_sends(tmp_path, generated, capsys, method, max_n):
    out = tmp_path / "judge"
    with FakeAPIServer(judge_text, logprobs=judge_logprobs, max_n=max_n) as server:
        common = ["--backend", "openai", "--model", "j", "--base-url", server.openai_base_url, "--constitution", "hhh",
                  "--from", str(generated), "--principles", "2", *method, "--out", str(out)]
        assert cli_main(["estimate", "judge", *common, "--json"]) == 0
        estimate = json.loads(capsys.readouterr().out)
        assert cli_main(["judge", *common, "--no-progress", "--calibrate", "0"]) == 0
        sent = len(server.log)
    assert abs(estimate["requests"] - sent) <= 0.15 * sent, (estimate["requests"], sent)
    assert estimate["honours_n"] is (max_n is None)


def test_estimate_of_generate_matches_the_run(tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl", 5)
    with FakeAPIServer() as server:
        common = ["--backend", "openai", "--model", "m", "--base-url", server.openai_base_url, "--constitution", "hhh",
                  "--prompts", str(prompts), "--rounds", "2", "--out", str(tmp_path / "gen")]
        assert cli_main(["estimate", "generate", *common, "--json"]) == 0
        estimate = json.loads(capsys.readouterr().out)
        assert cli_main(["generate", *common, "--no-progress"]) == 0
        assert estimate["requests"] == len(server.log) == 5 * 5  # answer + 2 x (critique, revision)


# -- usage and attempts that add up -----------------------------------------------------------------------

def test_every_row_carries_its_usage_and_the_rows_sum_to_usage_json(tmp_path, generated):
    flaky = {"n": 0}

    def sometimes_empty(request):  # one pair's judge answers come back empty every time: a failure row
        return "" if "lock 3?" in request.last_user_message else judge_text(request)

    with FakeAPIServer(sometimes_empty, logprobs=judge_logprobs) as server:
        code = cli_main(["judge", "--backend", "openai", "--model", "j", "--base-url", server.openai_base_url,
                         "--constitution", "hhh", "--from", str(generated), "--method", "vote", "--votes", "2",
                         "--out", str(tmp_path / "j"), "--no-progress", "--calibrate", "0", "--parse-retries", "1"])
    assert code == 0 and flaky["n"] == 0
    judgments = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    (failure,) = read_jsonl(tmp_path / "j" / "failures.jsonl")
    usage = json.loads((tmp_path / "j" / "usage.json").read_text())
    for field in ("prompt_tokens", "completion_tokens", "requests"):
        rows = sum(j["usage"][field] for j in judgments) + failure["usage"][field]
        assert rows == usage[field], field
    assert all(j["usage"]["requests"] == 2 for j in judgments)  # one request per order
    assert failure["attempts"] >= 2 and failure["kind"] == "unparseable"


def test_logprob_judgments_carry_their_usage(tmp_path, generated):
    with FakeAPIServer(logprobs=judge_logprobs) as server:
        assert cli_main(["judge", "--backend", "openai", "--model", "j", "--base-url", server.openai_base_url,
                         "--constitution", "hhh", "--from", str(generated), "--out", str(tmp_path / "j"),
                         "--no-progress", "--calibrate", "0"]) == 0
    judgments = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    usage = json.loads((tmp_path / "j" / "usage.json").read_text())
    assert all(j["usage"]["prompt_tokens"] > 0 for j in judgments)
    assert sum(j["usage"]["prompt_tokens"] for j in judgments) == usage["prompt_tokens"]


def test_failure_rows_count_the_attempts_really_made(tmp_path):
    with FakeAPIServer(reject=lambda request: (503, "overloaded")) as server:
        assert cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", server.openai_base_url,
                         "--constitution", "hhh", "--prompts", str(prompts_file(tmp_path / "p.jsonl", 2)), "--out",
                         str(tmp_path / "run"), "--no-progress", "--max-retries", "3", "--concurrency", "2"]) == 1
    failures = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert [f["attempts"] for f in failures] == [3, 3] and all(f["kind"] == "request" for f in failures)


# -- degenerate revisions ---------------------------------------------------------------------------------

def echo_initial(request) -> str:
    """Revises by repeating the first answer: the revision is the initial response again."""
    text = request.last_user_message
    if "Write only the critique" in text:
        return "The response could be more careful."
    if "Reply with the rewritten response only" in text:
        first_answer = next(m["content"] for m in request.messages if m["role"] == "assistant")
        return first_answer
    return default_responder(request)


def test_a_revision_equal_to_the_answer_is_counted_and_left_out(tmp_path):
    prompts = prompts_file(tmp_path / "p.jsonl", 3)
    args = ["generate", "--backend", "openai", "--model", "m", "--constitution", "hhh", "--few-shot", "0",
            "--prompts", str(prompts), "--out", str(tmp_path / "run"), "--no-progress"]
    with FakeAPIServer(echo_initial) as server:
        assert cli_main([*args, "--base-url", server.openai_base_url]) == 1  # nothing usable: exit 1
        stats = json.loads((tmp_path / "run" / "stats.json").read_text())
        assert stats["degenerate"] == 3 and stats["degenerate_by_reason"] == {"unchanged": 3}
        assert read_jsonl(tmp_path / "run" / "sft.jsonl") == []
        assert cli_main([*args, "--base-url", server.openai_base_url, "--keep-degenerate"]) == 0
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == 3
