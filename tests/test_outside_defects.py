"""Issue 13, class by class: nothing lost, nothing paid twice, nothing silently wrong.

Each test drives the commands as a user would, against a real HTTP server on 127.0.0.1 (caikit.testing) or the
file system, and checks the outcome a user would see: exit status, one-line errors, what reached the disk and
what reached the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer, default_responder

pytestmark = pytest.mark.loopback

KEY = "sk-test-SENTINEL-defects-0123456789"


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def prompts_file(path: Path, n: int, word: str = "question") -> Path:
    path.write_text("".join(json.dumps({"prompt": f"{word} {i}: how do I pick lock {i}?"}) + "\n" for i in range(n)))
    return path


def generate(server: FakeAPIServer, prompts: Path, out: Path, *extra: str, backend: str = "openai") -> int:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    return cli_main(["generate", "--backend", backend, "--model", "fake-model", "--base-url", base, "--constitution",
                     "hhh", "--few-shot", "0", "--prompts", str(prompts), "--out", str(out), "--no-progress",
                     "--max-retries", "2", "--concurrency", "4", *extra])


class Switch:
    """A responder that answers `bad(request)` until switched, then `good(request)` (default: the fake's answer)."""

    def __init__(self, bad, good=default_responder):
        self.bad, self.good, self.on = bad, good, True

    def __call__(self, request):
        return self.bad(request) if self.on else self.good(request)


def prefer_a(request) -> dict[str, float]:
    return {"A": -0.2, "B": -2.0}


# -- class 1: a bad answer is never cached as final -------------------------------------------------------

def test_empty_answers_are_asked_again_by_the_next_run(tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl", 3)
    responder = Switch(lambda request: "")
    with FakeAPIServer(responder) as server:
        assert generate(server, prompts, tmp_path / "run") == 1  # every prompt failed: exit 1
        first = server.requests_by_key()
        log = read_jsonl(tmp_path / "run" / "requests.jsonl")
        assert log and all(row.get("final") is False for row in log)  # paid for, logged, not final
        assert len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 3
        responder.on = False  # the server recovers
        server.reset_log()
        assert generate(server, prompts, tmp_path / "run") == 0
        again = server.requests_by_key()
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 3 and read_jsonl(tmp_path / "run" / "failures.jsonl") == []
    # the answer requests that came back empty were requested again (same keys), not replayed from the log
    assert set(first) & set(again)
    usage = json.loads((tmp_path / "run" / "usage.json").read_text())
    rows = read_jsonl(tmp_path / "run" / "requests.jsonl")
    assert usage["requests"] == sum(r["usage"]["requests"] for r in rows)  # the empty answers were paid: counted


def test_unparseable_judge_answers_are_asked_again(tmp_path):
    gen = tmp_path / "gen"
    with FakeAPIServer() as server:
        assert generate(server, prompts_file(tmp_path / "p.jsonl", 2), gen) == 0
    judge = Switch(lambda request: "I cannot decide between these.", lambda request: "The answer is: (A)")
    with FakeAPIServer(judge) as server:
        args = ["judge", "--backend", "openai", "--model", "j", "--base-url", server.openai_base_url, "--from",
                str(gen), "--out", str(tmp_path / "j"), "--method", "vote", "--votes", "1", "--calibrate", "0",
                "--parse-retries", "0", "--no-progress", "--constitution", "hhh"]
        assert cli_main(args) == 1
        judge.on = False
        assert cli_main(args) == 0
    assert len(read_jsonl(tmp_path / "j" / "judgments.jsonl")) == 2


# -- class 2: caikit run reruns a stage that left failures ---------------------------------------------------

def run_file(path: Path, server: FakeAPIServer, prompts: Path, out: Path) -> Path:
    common = {"backend": "openai", "model": "fake-model", "base_url": server.openai_base_url, "progress": False,
              "max_retries": 1, "concurrency": "4"}
    path.write_text(yaml.safe_dump({
        "out": str(out), "constitution": "hhh", "prompts": str(prompts),
        "stages": {"generate": {**common, "few_shot": 0, "max_failure_rate": 0.9},
                   "judge": {**common, "calibrate": 0}}}))
    return path


def test_a_stage_with_failures_is_rerun_and_its_successors_follow(tmp_path):
    prompts = prompts_file(tmp_path / "p.jsonl", 4)
    flaky = Switch(lambda request: "" if "lock 1?" in request.messages[-1]["content"] else default_responder(request))
    with FakeAPIServer(flaky, logprobs=prefer_a) as server:
        config = run_file(tmp_path / "run.yaml", server, prompts, tmp_path / "run")
        assert cli_main(["run", str(config), "--no-report"]) == 0
        state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
        assert state["generate"]["status"] == "incomplete" and state["generate"]["outcome"]["failures"] == 1
        assert len(read_jsonl(tmp_path / "run" / "judge" / "judgments.jsonl")) == 3
        flaky.on = False
        assert cli_main(["run", str(config), "--no-report"]) == 0
        state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert state["generate"]["status"] == "done" and state["judge"]["status"] == "done"
    assert len(read_jsonl(tmp_path / "run" / "generate" / "traces.jsonl")) == 4
    assert len(read_jsonl(tmp_path / "run" / "judge" / "judgments.jsonl")) == 4  # the judge followed


def test_a_stage_that_failed_entirely_stops_the_run_with_its_status(tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl", 3)
    with FakeAPIServer(lambda request: "") as server:
        config = run_file(tmp_path / "run.yaml", server, prompts, tmp_path / "run")
        config.write_text(config.read_text().replace("max_failure_rate: 0.9", "max_failure_rate: 0.5"))
        assert cli_main(["run", str(config), "--no-report"]) == 1
    state = json.loads((tmp_path / "run" / "state.json").read_text())["stages"]
    assert state["generate"]["status"] == "failed" and "judge" not in state  # never "running", judge never ran
    assert "run caikit generate first" not in capsys.readouterr().err


# -- class 3: one process per directory -------------------------------------------------------------------

def test_a_second_generate_on_one_directory_is_refused_at_once(tmp_path):
    prompts = prompts_file(tmp_path / "p.jsonl", 12)
    out = tmp_path / "run"
    tried = threading.Event()  # the first one's requests wait here until the second has been tried: however
    # slow the machine, the first still holds the directory when the second starts

    def held(request) -> float:
        if not request.probe:  # each process probes the server first: answered at once
            tried.wait(120)
        return 0.0

    with FakeAPIServer(latency=held) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        first = subprocess.Popen([sys.executable, "-m", "caikit.cli", "generate", "--backend", "openai", "--model", "m",
                                  "--base-url", server.openai_base_url, "--constitution", "hhh", "--few-shot", "0",
                                  "--prompts", str(prompts), "--out", str(out), "--no-progress", "--concurrency", "2"],
                                 env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (out / ".caikit.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        while not server.log and time.monotonic() < deadline:  # the first is under way
            time.sleep(0.05)
        before = len(server.log)
        try:
            second = subprocess.run([sys.executable, "-m", "caikit.cli", "generate", "--backend", "openai", "--model",
                                     "m", "--base-url", server.openai_base_url, "--constitution", "hhh", "--few-shot",
                                     "0", "--prompts", str(prompts), "--out", str(out), "--no-progress",
                                     "--concurrency", "2"], env=env, capture_output=True, text=True, timeout=60)
            first_still_running = first.poll() is None
        finally:
            tried.set()
        assert second.returncode == 2 and f"PID {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and first_still_running
        assert first.wait(timeout=120) == 0
        by_key = server.requests_by_key()
    assert len(by_key) == 36 and set(by_key.values()) == {1}  # 12 prompts x 3 requests, each sent once
    assert before <= len(by_key)
    assert len(read_jsonl(out / "traces.jsonl")) == 12 and not (out / ".caikit.lock").exists()


def test_the_lock_is_released_by_a_killed_process(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from caikit.rundir import lock_directory; "
                               f"lock_directory({str(out)!r}, 'test'); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert holder.stdout.readline().strip() == "held"
    from caikit.errors import UserError
    from caikit.rundir import lock_directory

    with pytest.raises(UserError, match=f"PID {holder.pid}"):
        lock_directory(out, "generate")
    holder.kill()
    holder.wait()
    lock_directory(out, "generate").release()  # the kernel dropped the dead holder's lock


# -- class 4: answers cut at the token limit ----------------------------------------------------------------

def long_answers(request) -> str:
    return default_responder(request) + " word" * 40 + " end."


def test_cut_revisions_are_counted_not_trained_on_and_cut_critiques_resampled_once(tmp_path):
    prompts = prompts_file(tmp_path / "p.jsonl", 2)
    with FakeAPIServer(long_answers) as server:
        assert generate(server, prompts, tmp_path / "run", "--max-tokens", "10") == 1  # nothing usable: exit 1
        critiques = [r for r in server.log if r.status == 200]
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert len(traces) == 2 and all(t["truncated"] for t in traces)
    assert all(t["stop_reasons"]["revision 1"] == "length" for t in traces)
    assert read_jsonl(tmp_path / "run" / "sft.jsonl") == []
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["truncated"] == 2 and stats["sft_examples"] == 0
    assert len(critiques) == 2 * 4  # answer, critique, its one resample, revision
    with FakeAPIServer(long_answers) as server:
        assert generate(server, prompts, tmp_path / "run", "--max-tokens", "10", "--keep-truncated") == 0
        assert server.log == []  # nothing asked again: only the derived files change
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == 2


def test_anthropic_max_tokens_stop_counts_as_cut(tmp_path):
    with FakeAPIServer(long_answers) as server:
        generate(server, prompts_file(tmp_path / "p.jsonl", 1), tmp_path / "run", "--max-tokens", "10",
                 backend="anthropic")
    (trace,) = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert trace["truncated"] and trace["stop_reasons"]["answer"] == "length"


# -- class 5: exit status ----------------------------------------------------------------------------------

def test_a_server_that_is_down_fails_the_run(tmp_path):
    with FakeAPIServer() as server:
        url = server.openai_base_url
    code = cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", url, "--constitution", "hhh",
                     "--prompts", str(prompts_file(tmp_path / "p.jsonl", 2)), "--out", str(tmp_path / "run"),
                     "--no-progress", "--max-retries", "1", "--timeout", "2", "--concurrency", "2"])
    assert code == 1 and len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 2


@pytest.mark.parametrize("status, message", [(401, "Incorrect API key"), (403, "not allowed"),
                                             (404, "model does not exist"), (400, "unknown parameter")])
def test_a_provider_refusing_the_run_stops_it_at_once(tmp_path, capsys, status, message):
    with FakeAPIServer(reject=lambda request: (status, message)) as server:
        code = generate(server, prompts_file(tmp_path / "p.jsonl", 20), tmp_path / "run")
        sent = len(server.log)
    err = capsys.readouterr().err
    assert code == 2 and f"HTTP {status}" in err and "refused the run" in err and "Traceback" not in err
    assert sent <= 4 and read_jsonl(tmp_path / "run" / "failures.jsonl") == []  # nothing retried prompt by prompt


def test_one_over_long_prompt_fails_alone(tmp_path):
    def reject(request):
        return (400, "This model's maximum context length is 8 tokens") if "lock 0?" in str(request.messages) else None

    with FakeAPIServer(reject=reject) as server:
        assert generate(server, prompts_file(tmp_path / "p.jsonl", 3), tmp_path / "run") == 0
    assert len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 1


# -- class 6: a finished model is not trained over unasked ---------------------------------------------------

@pytest.mark.e2e
def test_training_into_a_finished_model_needs_resume_or_overwrite(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}.", "completion": f"{i}."}) + "\n" for i in range(4)))
    out = tmp_path / "sft"
    args = ["train", "sft", "--model", tiny_model_dir, "--data", str(data), "--out", str(out), "--max-steps", "1",
            "--batch-size", "2", "--eval-fraction", "0"]
    assert cli_main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    metrics = (out / "metrics.jsonl").read_text()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and (out / "metrics.jsonl").read_text() == metrics
    assert cli_main([*args, "--overwrite"]) == 0


# -- class 7: options that make no sense ------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, says", [
    ("--rpm", "-1", ">= 0"), ("--tpm", "-5", ">= 0"), ("--max-tokens", "-5", "1 to 1,000,000"),
    ("--temperature", "-1", "0 to 2"), ("--temperature", "nan", "finite"), ("--timeout", "0", "> 0"),
    ("--concurrency", "0", "auto or a whole number"), ("--concurrency", "1" + "0" * 30, "auto or a whole number"),
    ("--max-retries", "0", "1 to 100"), ("--limit", str(10**30), "out of range"), ("--max-cost", "inf", "finite"),
])
def test_out_of_range_options_are_one_line_errors(tmp_path, capsys, flag, value, says):
    assert cli_main(["generate", flag, value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_ranges_hold_in_yaml_too(tmp_path, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text("rpm: -1\n")
    assert cli_main(["generate", "--config", str(config)]) == 2
    assert f"{config}: option 'rpm' must be >= 0, got -1" in capsys.readouterr().err


# -- class 8: the file system says no --------------------------------------------------------------------

def test_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with FakeAPIServer() as server:
        assert generate(server, prompts_file(tmp_path / "p.jsonl", 1), tmp_path / "file") == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Traceback" not in err


def test_an_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    target = Path("/proc/caikit-test-run")  # /proc refuses new entries, even to root
    with FakeAPIServer() as server:
        assert generate(server, prompts_file(tmp_path / "p.jsonl", 1), target) == 2
    err = capsys.readouterr().err
    assert "caikit generate: error:" in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.e2e
def test_a_damaged_safetensors_file_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Hi.", "completion": "Hello."}) + "\n")
    assert cli_main(["train", "sft", "--model", str(broken), "--data", str(data), "--out", str(tmp_path / "o"),
                     "--max-steps", "1", "--eval-fraction", "0"]) == 2
    err = capsys.readouterr().err
    assert "damaged or not safetensors" in err and "Traceback" not in err


def test_a_failed_atomic_write_leaves_no_temporary(tmp_path, monkeypatch):
    from caikit.store import write_jsonl_atomic

    def rows():
        yield {"a": 1}
        raise OSError(28, "No space left on device")

    (tmp_path / "sft.jsonl").write_text('{"old": true}\n')
    with pytest.raises(OSError):
        write_jsonl_atomic(tmp_path / "sft.jsonl", rows())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft.jsonl"]
    assert (tmp_path / "sft.jsonl").read_text() == '{"old": true}\n'


# -- class 10: unbounded answers --------------------------------------------------------------------------

def test_an_answer_far_past_max_tokens_is_malformed_not_a_record(tmp_path):
    huge = "x " * 300_000  # 600 KB for a request of 16 tokens
    with FakeAPIServer(lambda request: huge, honour_max_tokens=False) as server:
        assert generate(server, prompts_file(tmp_path / "p.jsonl", 2), tmp_path / "run", "--max-tokens", "16") == 1
    (failure, _) = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert "ignored max_tokens" in failure["error"] and failure["attempts"] == 2
    assert (tmp_path / "run" / "traces.jsonl").stat().st_size == 0 if (tmp_path / "run" / "traces.jsonl").exists() \
        else True
    assert sum(p.stat().st_size for p in (tmp_path / "run").iterdir() if p.is_file()) < 200_000


# -- class 12: smaller ones -------------------------------------------------------------------------------

def test_key_like_query_parameters_never_reach_config_yaml(tmp_path):
    with FakeAPIServer() as server:
        url = server.openai_base_url + "?api-key=SECRET123&api-version=2024-01-01"
        cli_main(["generate", "--backend", "openai", "--model", "m", "--base-url", url, "--constitution", "hhh",
                  "--prompts", str(prompts_file(tmp_path / "p.jsonl", 1)), "--out", str(tmp_path / "run"),
                  "--no-progress", "--concurrency", "1"])
    for name in ("config.yaml", "run.json"):
        text = (tmp_path / "run" / name).read_text()
        assert "SECRET123" not in text, name
    assert "api-version=2024-01-01" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_run_name_cannot_leave_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "../../escape", "stages": {"sft": {"model": "x"}}}))
    assert cli_main(["run", str(config)]) == 2
    assert "'name' must be letters" in capsys.readouterr().err
    assert not (tmp_path.parent / "escape").exists()


def test_the_max_cost_stop_says_what_was_spent(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("fake-model: {input: 10000, output: 10000}\n")
    with FakeAPIServer(latency=0.05) as server:
        code = generate(server, prompts_file(tmp_path / "p.jsonl", 6), tmp_path / "run", "--prices", str(prices),
                        "--max-cost", "5", "--yes")
    err = capsys.readouterr().err
    spent = json.loads((tmp_path / "run" / "usage.json").read_text())["cost_usd"]
    from caikit.backends.cost import format_usd

    assert code == 2 and f"--max-cost {format_usd(5.0)} reached" in err and spent > 0
    assert f"has spent {format_usd(spent)}" in err  # the figure usage.json holds, not $0.0000
