"""Scale: the aiohttp transport answers as the SDK transport does (faults included), --workers processes share one
run directory, a worker killed mid-run loses nothing and pays nothing twice, the on-disk index catches up with
its JSONL after a crash, and a finished run resumes from the index without reading its records."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caikit.backends.anthropic import AnthropicBackend
from caikit.backends.base import BackendError
from caikit.backends.limits import RateLimiter
from caikit.backends.openai import OpenAIBackend
from caikit.backends.retry import RetryPolicy
from caikit.cli import main as cli_main
from caikit.index import RecordIndex, RequestIndex, index_path
from caikit.store import JsonlFile
from caikit.testing.fake_api import FakeAPIServer, FaultPlan, default_responder

KEY = "sk-test-SENTINEL-scale-0123456789abcdef"
FAST = RetryPolicy(max_attempts=5, initial_wait=0.01, max_wait=0.02, jitter=False)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_prompts(path: Path, n: int) -> list[str]:
    texts = [f"prompt number {i}: how do I pick a lock?" for i in range(n)]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return texts


def generate_args(out: Path, prompts: Path, server: FakeAPIServer, **extra) -> list[str]:
    args = ["generate", "--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url,
            "--constitution", "hhh", "--prompts", str(prompts), "--out", str(out), "--no-progress", "--few-shot", "0"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


# -- the two transports ------------------------------------------------------------------------------------
def _exchange(provider: str, http_client: str, script: list[str | None]) -> dict:
    """Three requests through one backend against a server answering `script` first; what came back."""
    with FakeAPIServer(latency=0.01, faults=FaultPlan(script=script, retry_after=0.01)) as server:
        cls, base = ((OpenAIBackend, server.openai_base_url) if provider == "openai"
                     else (AnthropicBackend, server.anthropic_base_url))
        backend = cls("fake-model", base_url=base, retry=FAST, timeout=5, limiter=RateLimiter(2),
                      http_client=http_client)

        async def main():
            try:
                out = []
                for i in range(3):
                    try:
                        (c,) = await backend.generate([{"role": "user", "content": f"question {i}"}], seed=i,
                                                      max_tokens=32)
                        out.append((c.text, c.finish_reason, c.usage.to_dict()))
                    except BackendError as e:
                        out.append(("error", str(e), e.retryable, e.attempts, e.fatal))
                return out
            finally:
                await backend.aclose()

        results = asyncio.run(main())
        return {"results": results, "statuses": [r.status for r in server.log],
                "limiter": dict(backend.limiter.stats)}


@pytest.mark.loopback
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_aiohttp_and_sdk_transports_answer_alike_through_faults(provider):
    # a 429 (Retry-After), a 500, a body cut in half and a dropped connection are retried; then three answers
    script = ["429", "500", "truncated", "disconnect"]
    lean, sdk = (_exchange(provider, client, script) for client in ("aiohttp", "sdk"))
    assert lean["results"] == sdk["results"]
    assert [r[0] for r in lean["results"]] != ["error"] * 3 and all(r[0] != "error" for r in lean["results"])
    assert lean["results"][0][2]["requests"] == 1 and lean["results"][0][2]["prompt_tokens"] > 0
    assert lean["statuses"][:3] == sdk["statuses"][:3] == [429, 500, 200]  # the truncated body was a 200
    assert len(lean["statuses"]) == len(sdk["statuses"])  # the same number of attempts in all


@pytest.mark.loopback
@pytest.mark.parametrize("http_client", ["aiohttp", "sdk"])
def test_a_wrong_key_stops_and_is_scrubbed_on_both_transports(http_client):
    with FakeAPIServer(require_key="sk-the-right-one") as server:
        backend = OpenAIBackend("fake-model", base_url=server.openai_base_url, retry=FAST, http_client=http_client)

        async def main():
            try:
                await backend.generate([{"role": "user", "content": "hi"}])
            finally:
                await backend.aclose()

        with pytest.raises(BackendError) as info:
            asyncio.run(main())
    assert info.value.fatal and not info.value.retryable and info.value.status == 401
    assert KEY not in str(info.value) and "401" in str(info.value)
    assert len(server.log) == 1  # a 401 is not retried


@pytest.mark.loopback
def test_the_transport_is_recorded_in_run_json(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    with FakeAPIServer() as server:
        assert cli_main(generate_args(tmp_path / "run", prompts, server, http_client="sdk")) == 0
        assert cli_main(generate_args(tmp_path / "lean", prompts, server)) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["http_client"] == "sdk"
    assert json.loads((tmp_path / "lean" / "run.json").read_text())["http_client"] == "aiohttp"


# -- workers -------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_two_workers_share_a_run_directory_and_match_one_process(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 24)
    with FakeAPIServer(latency=0.02) as server:
        assert cli_main(generate_args(tmp_path / "one", prompts, server, concurrency=8)) == 0
        sent_by_one = len(server.log)
        server.reset_log()
        assert cli_main(generate_args(tmp_path / "two", prompts, server, concurrency=8, workers=2)) == 0
        assert len(server.log) == sent_by_one == 24 * 3  # nothing sent twice
    one, two = tmp_path / "one", tmp_path / "two"

    def by_id(path):
        return {r["id"]: r for r in read_jsonl(path)}

    assert by_id(one / "sft.jsonl").keys() == by_id(two / "sft.jsonl").keys()
    assert [r["completion"] for r in read_jsonl(one / "sft.jsonl")] == [r["completion"] for r in read_jsonl(two / "sft.jsonl")]
    traces = read_jsonl(two / "traces.jsonl")
    assert len(traces) == 24 and all(t["usage"]["requests"] == 3 for t in traces)  # each record's own requests
    usage_one, usage_two = (json.loads((d / "usage.json").read_text()) for d in (one, two))
    assert usage_two["requests"] == usage_one["requests"] == 72
    assert usage_two["total_tokens"] == usage_one["total_tokens"] == sum(
        t["usage"]["prompt_tokens"] + t["usage"]["completion_tokens"] for t in traces)
    assert not (two / ".caikit.lock").exists()


class RecordingResponder:
    """Answers like the default responder and remembers every prompt text asked about."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, request):
        self.seen.append(next(m["content"] for m in request.messages if m["role"] == "user"))
        return default_responder(request)


def _workers_of(pid: int) -> list[int]:
    """The spawned worker processes of `pid` (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(c) for c in children.read_text().split()] if children.exists() else []
    return [c for c in pids if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.e2e
def test_a_worker_killed_mid_run_loses_nothing_and_pays_nothing_twice(tmp_path):
    prompts = tmp_path / "p.jsonl"
    texts = write_prompts(prompts, 40)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    responder = RecordingResponder()
    with FakeAPIServer(responder, latency=0.05) as server:
        cmd = [sys.executable, "-m", "caikit.cli", *generate_args(out, prompts, server, concurrency=4, workers=2)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            traces = out / "traces.jsonl"
            if traces.exists() and traces.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.02)
        workers = _workers_of(proc.pid)
        assert workers, "the run has worker processes"
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, stderr  # the other worker finished; the dead one's prompts are left
        assert "ended without finishing" in stderr
        first = read_jsonl(out / "traces.jsonl")
        assert 6 <= len(first) < 40
        logged = {r["key"] for r in read_jsonl(out / "requests.jsonl") if r.get("final", True)}
        done_texts = {t["prompt"][-1]["content"] for t in first}
        responder.seen.clear()
        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
    assert responder.seen, "the rerun did the remaining work"
    assert done_texts.isdisjoint(responder.seen), "a finished prompt was requested again"
    rows = read_jsonl(out / "requests.jsonl")
    final_keys = [r["key"] for r in rows if r.get("final", True)]
    assert len(final_keys) == len(set(final_keys)), "an answer already logged was paid for again"
    assert logged <= set(final_keys)
    traces = read_jsonl(out / "traces.jsonl")
    assert len({t["id"] for t in traces}) == len(traces) == 40
    assert {t["prompt"][-1]["content"] for t in traces} == set(texts)
    usage = json.loads((out / "usage.json").read_text())
    assert usage["requests"] == len(rows)  # usage.json is the sum over the log, rows of both runs


# -- the index -------------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_an_index_behind_its_jsonl_catches_up_and_one_ahead_is_rebuilt(tmp_path):
    log = JsonlFile(tmp_path / "traces.jsonl")
    index = log.indexed(RecordIndex)
    for i in range(5):
        log.append({"id": f"k{i}", "prompt_id": f"p{i}", "truncated": i == 3})
    index.commit()
    for i in range(5, 8):  # written, indexed, never committed: a kill -9 before the next commit
        log.append({"id": f"k{i}", "prompt_id": f"p{i}"})
    index.db.close()  # the uncommitted transaction is gone, as with a dead process
    log.index = None
    log._fh.close()
    log._fh = None

    with sqlite3.connect(index_path(log.path)) as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 5  # behind the file
    again = JsonlFile(log.path).indexed(RecordIndex)
    assert len(again) == 8 and "k7" in again and again.counts()["truncated"] == 1
    again.close()

    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:6]))  # a power cut lost the file's tail: the index is ahead
    rebuilt = JsonlFile(log.path).indexed(RecordIndex)
    assert len(rebuilt) == 6 and "k6" not in rebuilt
    rebuilt.close()

    index_path(log.path).write_bytes(b"not a database")  # an unreadable index is rebuilt too
    assert len(JsonlFile(log.path).indexed(RecordIndex)) == 6


@pytest.mark.loopback
def test_a_lost_trace_is_rebuilt_from_the_request_log_without_a_request(tmp_path):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 6)
    out = tmp_path / "run"
    with FakeAPIServer() as server:
        assert cli_main(generate_args(out, prompts, server)) == 0
        traces = out / "traces.jsonl"
        lines = traces.read_bytes().splitlines(keepends=True)
        traces.write_bytes(b"".join(lines[:-1]))  # the index now names a trace the file lost
        server.reset_log()
        assert cli_main(generate_args(out, prompts, server)) == 0
        assert len(server.log) == 0  # its three answers were in the request log
    assert len(read_jsonl(traces)) == 6 and len(read_jsonl(out / "sft.jsonl")) == 6
    with sqlite3.connect(index_path(out / "requests.jsonl")) as db:
        assert db.execute("SELECT count(*) FROM done").fetchone()[0] == 18


@pytest.mark.loopback
def test_a_finished_run_resumes_from_the_index_without_reading_a_record(tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 8)
    out = tmp_path / "run"
    with FakeAPIServer() as server:
        assert cli_main(generate_args(out, prompts, server)) == 0
        before = {name: (out / name).read_bytes() for name in ("sft.jsonl", "stats.json", "failures.jsonl")}
        read = []
        real_iter, real_read_at = JsonlFile.iter, JsonlFile.read_at
        monkeypatch.setattr(JsonlFile, "iter", lambda self: read.append(self.path.name) or real_iter(self))
        monkeypatch.setattr(JsonlFile, "read_at", lambda self, *a: read.append(self.path.name) or real_read_at(self, *a))
        for cls in (RecordIndex, RequestIndex):  # nor is any index rebuilt from its file
            monkeypatch.setattr(cls, "add", lambda self, row, *a: read.append(self.jsonl.path.name))
        server.reset_log()
        (out / ".finished.json").unlink()  # the index path, not the finished run's shortcut (tested below)
        assert cli_main(generate_args(out, prompts, server)) == 0
        assert len(server.log) == 0
    assert not [name for name in read if name in ("traces.jsonl", "requests.jsonl", "failures.log.jsonl")], read
    assert {name: (out / name).read_bytes() for name in before} == before
    usage = json.loads((out / "usage.json").read_text())
    assert usage["requests"] == 24 and usage["traces"] == 8


def test_a_finished_run_with_the_same_inputs_is_not_parsed_again_and_any_change_resumes_it(tmp_path, monkeypatch,
                                                                                          capsys):
    import caikit.commands.generate as generate

    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 6)
    out = tmp_path / "run"
    loads = []
    real_load = generate.load_inputs
    monkeypatch.setattr(generate, "load_inputs", lambda cfg, *rest: loads.append(1) or real_load(cfg, *rest))
    with FakeAPIServer() as server:
        assert cli_main(generate_args(out, prompts, server)) == 0 and len(loads) == 1
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        capsys.readouterr()
        server.reset_log()
        assert cli_main(generate_args(out, prompts, server)) == 0
        assert len(loads) == 1 and len(server.log) == 0  # neither parsed nor sent: the same inputs, finished
        said = capsys.readouterr().err
        assert "6 prompts, 6 already done, 0 to go" in said and "6/6 traces, 0 failures, 6 SFT examples" in said
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
        # another option, a prompt added, a derived file gone: each is a real resume
        assert cli_main(generate_args(out, prompts, server, max_failure_rate=0.2)) == 0 and len(loads) == 2
        with prompts.open("a") as fh:
            fh.write(json.dumps({"prompt": "one more: how do I bake bread?"}) + "\n")
        assert cli_main(generate_args(out, prompts, server)) == 0 and len(loads) == 3
        assert len(server.log) == 3  # the new prompt's chain, and nothing else
        (out / "sft.jsonl").unlink()
        assert cli_main(generate_args(out, prompts, server)) == 0 and len(loads) == 4
        assert len(read_jsonl(out / "sft.jsonl")) == 7
        assert cli_main(generate_args(out, prompts, server)) == 0 and len(loads) == 4


@pytest.mark.unit
def test_keys_with_a_shared_tail_are_the_keys_older_run_directories_hold():
    from caikit.records import idempotency_key, keyed_on

    shared = ["hash", {"rounds": 1, "temperature": 0.7, "é": [1.5, None, True]}]
    key = keyed_on("trace", shared, lambda messages: messages)
    for messages in ([{"role": "user", "content": "hi \u2028 é \"quoted\""}], [], "text"):
        assert key(messages) == idempotency_key("trace", messages, *shared)
    assert keyed_on("seed", [], lambda x: x)(7) == idempotency_key("seed", 7)


@pytest.mark.unit
def test_an_index_made_before_its_file_existed_is_not_rebuilt(tmp_path, monkeypatch):
    log = JsonlFile(tmp_path / "requests.jsonl")
    log.indexed(RequestIndex)  # a fresh run: the index comes first
    for i in range(3):
        log.append({"key": f"k{i}", "usage": {"requests": 1}})
    log.close()
    indexed = []
    real_add = RequestIndex.add
    monkeypatch.setattr(RequestIndex, "add", lambda self, *a: indexed.append(a) or real_add(self, *a))
    again = JsonlFile(log.path).indexed(RequestIndex)
    assert indexed == [] and again.usage()["requests"] == 3  # read from the index, no line read again


@pytest.mark.unit
def test_the_request_index_sums_usage_per_item_and_keeps_the_first_final_answer(tmp_path):
    log = JsonlFile(tmp_path / "requests.jsonl")
    index = log.indexed(RequestIndex)
    log.append({"key": "a", "item": "x", "final": False, "usage": {"prompt_tokens": 5, "requests": 1}})
    log.append({"key": "a", "item": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 2, "requests": 1}})
    log.append({"key": "b", "item": "y", "usage": {"prompt_tokens": 1, "requests": 1}})
    assert index.usage("x") == {"prompt_tokens": 12, "completion_tokens": 2, "cached_tokens": 0,
                                "cache_write_tokens": 0, "requests": 2}
    assert index.usage()["requests"] == 3
    assert log.read_at(*index.final("a"))["usage"]["prompt_tokens"] == 7  # the final row, not the unusable one
    assert index.final("c") is None
    log.close()


@pytest.mark.unit
def test_probe_suggests_workers_from_the_servers_capacity():
    from caikit.backends.probe import REQUESTS_PER_PROCESS, suggest_workers

    assert suggest_workers(16, 0.2, cores=8) == 1  # 80 requests/s: one process is plenty
    # a server answering 256 at once in 0.1 s takes 2,560 requests/s: three processes' worth at 1,000 each
    assert suggest_workers(256, 0.1, cores=8) == math.ceil(2560 / REQUESTS_PER_PROCESS)
    assert suggest_workers(4096, 0.05, cores=4) == 4  # never more than the cores
    assert suggest_workers(None, 0.2) == suggest_workers(8, None) == 1  # capacity unknown
