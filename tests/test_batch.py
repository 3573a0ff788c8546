"""`--batch-api`: generate and judge through the OpenAI Batch and Anthropic Message Batches emulations of the
loopback server: same records as online, one batch per round, failed lines retried, limits split jobs,
a kill -9 mid-poll resumed without resubmitting, half the online cost."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from caikit.backends.anthropic import AnthropicBackend
from caikit.backends.base import BackendError
from caikit.backends.batch import BatchBackend, custom_id
from caikit.backends.retry import RetryPolicy
from caikit.backends.openai import OpenAIBackend
from caikit.cli import main as cli_main
from caikit.records import Trace
from caikit.testing import FakeAPIServer, FaultPlan
from caikit.testing.fake_batch import BatchFaultPlan
from killing import caikit, kill_9_when

KEY = "sk-test-BATCH-SENTINEL-0123456789abcdef"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}  # priced, so cost can be compared
POLL = ["--batch-api", "--batch-poll-interval", "0.05"]
BATCH_PATHS = re.compile(r"^/v1/(files|batches|messages/batches)")


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def write_prompts(path: Path, n: int, poison: set[int] = frozenset()) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"prompt number {i}: how do I pick a lock?"
                                        + (" POISON" if i in poison else "")}) + "\n" for i in range(n)))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def generate_args(out: Path, prompts: Path, server: FakeAPIServer, backend: str = "openai", *extra: str) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    return ["generate", "--backend", backend, "--model", MODELS[backend], "--base-url", base, "--constitution", "hhh",
            "--prompts", str(prompts), "--out", str(out), "--no-progress", "--few-shot", "0", *extra]


def trace_contents(run: Path) -> dict[str, tuple]:
    """prompt id -> what a trace says (texts and principles), without ids, times and backend info."""
    return {t["prompt_id"]: (t["initial_response"], t["final_revision"],
                             [(r["principle_id"], r["critique"], r["revision"]) for r in t["rounds"]])
            for t in read_jsonl(run / "traces.jsonl")}


def no_key_anywhere(run: Path) -> None:
    for f in run.iterdir():
        assert KEY not in f.read_text(errors="ignore"), f.name


# -- generate --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_generate_rounds_come_out_as_one_batch_each_and_equal_the_online_run(tmp_path, backend):
    prompts = write_prompts(tmp_path / "p.jsonl", 20)
    with FakeAPIServer() as server:
        assert cli_main(generate_args(tmp_path / "batch", prompts, server, backend, "--rounds", "2", *POLL)) == 0
        jobs = server.batches.jobs
        assert all(BATCH_PATHS.match(r.path) for r in server.log), "the batch run sent nothing online"
        assert cli_main(generate_args(tmp_path / "online", prompts, server, backend, "--rounds", "2")) == 0
    # answer, critique 1, revision 1, critique 2, revision 2: one batch each, every prompt in each
    assert [len(j.custom_ids) for j in jobs] == [20] * 5 and {j.provider for j in jobs} == {backend}
    batch, online = trace_contents(tmp_path / "batch"), trace_contents(tmp_path / "online")
    assert len(batch) == 20 and batch == online
    assert all(t["backend"]["batch_api"] is True for t in read_jsonl(tmp_path / "batch" / "traces.jsonl"))
    log = read_jsonl(tmp_path / "batch" / "batches.jsonl")
    # each submission: its intent (flushed before the upload), then the job it made, then what it returned
    assert [(e["event"], e.get("job_id")) for e in log] == \
        [(ev, j.id if ev != "submitting" else None) for j in jobs for ev in ("submitting", "submitted", "collected")]
    assert [e["nonce"] for e in log if e["event"] == "submitting"] == \
        [e["nonce"] for e in log if e["event"] == "submitted"]
    assert all(e["failed_custom_ids"] == [] for e in log if e["event"] == "collected")
    # the same tokens at half the price
    used_batch = json.loads((tmp_path / "batch" / "usage.json").read_text())
    used_online = json.loads((tmp_path / "online" / "usage.json").read_text())
    for k in ("prompt_tokens", "completion_tokens", "requests"):
        assert used_batch[k] == used_online[k] > 0, k
    assert used_online["cost_usd"] > 0 and used_batch["cost_usd"] == pytest.approx(used_online["cost_usd"] / 2,
                                                                                   abs=2e-6)
    no_key_anywhere(tmp_path / "batch")


def _poisoned(request) -> bool:
    return any("POISON" in m["content"] for m in request.messages)


def test_failed_lines_are_retried_in_follow_up_batches_and_a_row_failing_every_time_is_a_failure_row(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 12, poison={5})
    faults = BatchFaultPlan(line_rates={"500": 0.15, "429": 0.1, "malformed": 0.1, "expired": 0.1}, seed=3,
                            max_faults_per_key=1, always_fail_keys=_poisoned)
    run = tmp_path / "batch"
    with FakeAPIServer(batch_faults=faults) as server:
        assert cli_main(generate_args(run, prompts, server, "openai", "--max-retries", "3", *POLL)) == 0
        jobs = server.batches.jobs
        faulted = {cid: fault for j in jobs for cid, fault in j.line_faults.items()}
        assert {"500", "429", "malformed", "expired"} <= set(faulted.values())
        # every line that failed was sent again in a later batch (the poisoned prompt's 3 times in all)
        for i, job in enumerate(jobs):
            for cid in job.line_faults:
                assert any(cid in later.custom_ids for later in jobs[i + 1:]) or \
                    sum(cid in j.custom_ids for j in jobs) == 3, cid
        assert len(jobs) > 3
        assert cli_main(generate_args(tmp_path / "online", prompts, server, "openai")) == 0
    online = trace_contents(tmp_path / "online")
    (failure,) = read_jsonl(run / "failures.jsonl")
    assert failure["prompt_id"] not in trace_contents(run)
    assert "after 3 attempt(s)" in failure["error"] and "HTTP 500" in failure["error"]
    assert trace_contents(run) == {k: v for k, v in online.items() if k != failure["prompt_id"]}

    # the endpoint recovered: a rerun sends only the failed prompt's chain, one batch per step
    with FakeAPIServer() as healthy:
        assert cli_main(generate_args(run, prompts, healthy, "openai", *POLL)) == 0
        assert [len(j.custom_ids) for j in healthy.batches.jobs] == [1, 1, 1]
    assert trace_contents(run) == online and read_jsonl(run / "failures.jsonl") == []


@pytest.mark.parametrize("backend,job_faults", [("openai", ["failed", "expired"]),
                                                ("anthropic", ["expired", "cancelled"])])
def test_failed_expired_and_cancelled_jobs_are_retried(tmp_path, backend, job_faults):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    with FakeAPIServer(batch_faults=BatchFaultPlan(jobs=job_faults)) as server:
        assert cli_main(generate_args(tmp_path / "batch", prompts, server, backend, *POLL)) == 0
        jobs = server.batches.jobs
        assert cli_main(generate_args(tmp_path / "online", prompts, server, backend)) == 0
    log = read_jsonl(tmp_path / "batch" / "batches.jsonl")
    assert [j.fault for j in jobs[:2]] == job_faults
    for k in (0, 1):  # what job k left unanswered goes out again in job k + 1 (beside the next round's requests)
        ids = jobs[k].custom_ids
        unanswered = ids if jobs[k].fault in ("failed", "cancelled") else ids[len(ids) // 2:]  # expired: 2nd half
        assert unanswered and set(unanswered) <= set(jobs[k + 1].custom_ids)
        collected = next(e for e in log if e["event"] == "collected" and e["job_id"] == jobs[k].id)
        assert sorted(collected["failed_custom_ids"]) == sorted(unanswered)
    assert trace_contents(tmp_path / "batch") == trace_contents(tmp_path / "online")


# -- judge -----------------------------------------------------------------------------------------

BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)


def shown_a(req) -> str:
    return dict(BLOCK.findall(req.last_user_message))["a"]


def favour_good(req):
    """(A) holding 'GOOD' gets p(A) = 0.8 (split over 'A' and ' A'), else (B) gets 0.8."""
    if shown_a(req).startswith("GOOD"):
        return {"A": math.log(0.7), " A": math.log(0.1), "B": math.log(0.2)}
    return {"A": math.log(0.2), " B": math.log(0.7), "B": math.log(0.1)}


def vote_for_good(req):
    return f"The answer is: ({'A' if shown_a(req).startswith('GOOD') else 'B'})"


def write_generate_run(root: Path, n: int) -> Path:
    run = root / "gen"
    run.mkdir()
    with open(run / "traces.jsonl", "w") as fh:
        for i in range(n):
            revision, initial = (f"GOOD {i}", f"bad {i}") if i % 3 else (f"bad {i}", f"GOOD {i}")
            trace = Trace(id=f"trace-{i}", prompt_id=f"p{i}", prompt=[{"role": "user", "content": f"q {i}"}],
                          initial_response=initial, final_revision=revision,
                          rounds=[{"principle_id": "harmful0", "revision": revision}])
            fh.write(json.dumps(trace.to_dict()) + "\n")
    return run


@pytest.mark.parametrize("backend,method", [("openai", "logprob"), ("anthropic", "vote")])
def test_judge_through_batches_equals_the_online_judgments(tmp_path, backend, method):
    gen = write_generate_run(tmp_path, 6)
    with FakeAPIServer(vote_for_good, logprobs=favour_good) as server:
        base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
        args = ["judge", "--backend", backend, "--model", MODELS[backend], "--base-url", base, "--from", str(gen),
                "--method", method, "--principles", "2", "--votes", "3", "--no-progress"]
        assert cli_main([*args, "--out", str(tmp_path / "batch"), *POLL]) == 0
        jobs = server.batches.jobs
        assert cli_main([*args, "--out", str(tmp_path / "online")]) == 0
    # every pair x principle x order at once: one batch (Anthropic: 3 votes = 3 requests each)
    assert [len(j.custom_ids) for j in jobs] == [6 * 2 * 2 * (3 if method == "vote" else 1)]

    def judged(run):
        return {j["pair_id"]: (j["p_a"], j["p_a_first"], j["p_a_swapped"], j["principle_ids"],
                               [{k: v for k, v in r.items()} for r in j["raw"]])
                for j in read_jsonl(run / "judgments.jsonl")}

    batch, online = judged(tmp_path / "batch"), judged(tmp_path / "online")
    assert len(batch) == 6 and batch == online
    assert {pid: v[0] for pid, v in batch.items()} == {f"trace-{i}#0-1": (0.8 if method == "logprob" else 1.0)
                                                       if i % 3 else (0.2 if method == "logprob" else 0.0)
                                                       for i in range(6)}

    def preferred(run):
        return [(p["chosen"], p["rejected"], p["p_chosen"])
                for p in read_jsonl(run / "preferences.jsonl")]

    assert preferred(tmp_path / "batch") == preferred(tmp_path / "online") and len(preferred(tmp_path / "batch")) == 6
    used_batch = json.loads((tmp_path / "batch" / "usage.json").read_text())
    used_online = json.loads((tmp_path / "online" / "usage.json").read_text())
    assert used_batch["requests"] == used_online["requests"]
    assert used_batch["cost_usd"] == pytest.approx(used_online["cost_usd"] / 2, abs=2e-6)


# -- limits, resume, faults of the batch endpoints (the backend on its own) --------------------------

def make_inner(backend: str, server: FakeAPIServer, attempts: int = 4):
    retry = RetryPolicy(max_attempts=attempts, initial_wait=0.01, max_wait=0.05)
    if backend == "openai":
        return OpenAIBackend(MODELS[backend], base_url=server.openai_base_url, retry=retry, timeout=2)
    return AnthropicBackend(MODELS[backend], base_url=server.anthropic_base_url, retry=retry, timeout=2)


def ask_all(backend, n: int, **generate) -> list[str]:
    async def main():
        try:
            out = await asyncio.gather(*[backend.generate([{"role": "user", "content": f"question {i}"}], **generate)
                                         for i in range(n)])
            return [c.text for cs in out for c in cs]
        finally:
            await backend.aclose()
    return asyncio.run(main())


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_request_count_and_size_limits_split_one_round_into_several_jobs(tmp_path, backend):
    with FakeAPIServer() as probe_server:  # measure one line
        probe = BatchBackend(make_inner(backend, probe_server), tmp_path / "probe.jsonl", poll_interval=0.02).provider
    body = probe.generate_bodies([{"role": "user", "content": "question 0"}], n=1, temperature=0.7, max_tokens=256,
                                 stop=None, seed=1)[0]
    max_bytes = probe.envelope_bytes + 3 * probe.line_size(custom_id("g0", MODELS[backend], body), body) + 2
    with FakeAPIServer() as server:
        online = ask_all(make_inner(backend, server), 10, seed=1)
        server.batches.limits[backend] = (4, 10**6)  # the server refuses what a client over the limits sends
        by_count = BatchBackend(make_inner(backend, server), tmp_path / "a.jsonl", poll_interval=0.02, max_requests=4)
        assert ask_all(by_count, 10, seed=1) == online
        assert [len(j.custom_ids) for j in server.batches.jobs] == [4, 4, 2]
        server.batches.limits[backend] = (10, max_bytes)
        by_size = BatchBackend(make_inner(backend, server), tmp_path / "b.jsonl", poll_interval=0.02,
                               max_bytes=max_bytes)
        assert ask_all(by_size, 10, seed=1) == online
        assert [len(j.custom_ids) for j in server.batches.jobs[3:]] == [3, 3, 3, 1]
        assert all(j.status == "ended" for j in server.batches.jobs), "the server's own limits held"


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_batch_endpoint_faults_are_retried_and_a_vanished_job_is_submitted_again(tmp_path, backend):
    endpoint_faults = FaultPlan(rates={"429": 0.2, "500": 0.15, "truncated": 0.15}, retry_after=0.01, seed=4)
    with FakeAPIServer(batch_endpoint_faults=endpoint_faults) as server:
        # an Anthropic create answered with a cut-off body made its batch: it is not re-sent (see the test
        # of dropped create answers below), so here only OpenAI's creates (looked up, then adopted) are cut off
        server.batches.truncate_creates = backend == "openai"
        expected = ask_all(make_inner(backend, server), 6, seed=2)
        jobs_path = tmp_path / "batches.jsonl"
        # a job id stored by an earlier run that the provider no longer knows (404): its rows go out anew
        body = BatchBackend(make_inner(backend, server), tmp_path / "x.jsonl", poll_interval=0.02).provider \
            .generate_bodies([{"role": "user", "content": "question 0"}], n=1, temperature=0.7, max_tokens=256,
                             stop=None, seed=2)[0]
        jobs_path.write_text(json.dumps({"event": "submitted", "job_id": "batch_gone", "provider": backend,
                                         "custom_ids": [custom_id("g0", MODELS[backend], body)]}) + "\n")
        batch = BatchBackend(make_inner(backend, server, attempts=8), jobs_path, poll_interval=0.02)
        assert ask_all(batch, 6, seed=2) == expected
        statuses = [r.status for r in server.log if BATCH_PATHS.match(r.path)]
    assert {429, 500} <= set(statuses), "faults were injected"
    log = [e for e in read_jsonl(jobs_path) if "job_id" in e]
    assert {"event": "collected", "job_id": "batch_gone", "status": "unavailable"}.items() <= log[1].items()
    assert sum(e["event"] == "submitted" for e in log) >= 2


def test_a_request_failing_in_every_batch_raises_one_line_backend_error(tmp_path):
    with FakeAPIServer(batch_faults=BatchFaultPlan(always_fail_keys=lambda r: True)) as server:
        batch = BatchBackend(make_inner("openai", server, attempts=2), tmp_path / "b.jsonl", poll_interval=0.02)
        with pytest.raises(BackendError) as err:
            ask_all(batch, 1)
        assert len(server.batches.jobs) == 2  # one retry, in a second batch
    message = str(err.value)
    assert "\n" not in message and "after 2 attempt(s)" in message and KEY not in message and err.value.retryable


# -- kill -9 while polling ---------------------------------------------------------------------------

def test_kill_9_while_polling_then_rerun_submits_nothing_twice(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 8)
    run = tmp_path / "batch"
    with FakeAPIServer() as server:
        server.batches.hold()  # the first batch stays in progress however often it is polled
        kill_9_when(caikit(*generate_args(run, prompts, server, "openai", "--rounds", "2", *POLL)),
                    lambda: bool(server.batches.jobs) and server.batches.jobs[0].polls >= 2,
                    env={**os.environ, "OPENAI_API_KEY": KEY})
        (first,) = server.batches.jobs
        assert first.polls >= 2 and len(first.custom_ids) == 8, "killed while polling the first batch"
        assert [e["job_id"] for e in read_jsonl(run / "batches.jsonl") if "job_id" in e][0] == first.id
        server.batches.release()
        assert cli_main(generate_args(run, prompts, server, "openai", "--rounds", "2", *POLL)) == 0
        jobs = server.batches.jobs
        assert cli_main(generate_args(tmp_path / "online", prompts, server, "openai", "--rounds", "2")) == 0
    assert jobs[0].polls > first.polls, "the rerun polled the stored job"
    assert [len(j.custom_ids) for j in jobs] == [8] * 5  # the killed run's batch + 4 more rounds
    every_line = [cid for j in jobs for cid in j.custom_ids]
    assert len(every_line) == len(set(every_line)), "no request was submitted twice"
    assert trace_contents(run) == trace_contents(tmp_path / "online")


# -- fuzzed batch results: a clean row error, never an exception ----------------------------------------

GOOD_CHAT = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
             "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3,
                       "prompt_tokens_details": {"cached_tokens": 0}},
             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}},
                         {"index": 1, "finish_reason": "length", "message": {"role": "assistant", "content": "ho"}}]}
GOOD_MESSAGE = {"id": "m", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}],
                "usage": {"input_tokens": 2, "output_tokens": 1, "cache_read_input_tokens": 0}}


def _paths(obj, prefix=()):
    yield prefix
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in children:
        yield from _paths(v, (*prefix, k))


def _mutated(template):
    """`template` with the value at one random path replaced by an arbitrary JSON value, or deleted."""
    import copy

    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3) | st.floats(allow_nan=False)
    values = st.recursive(leaves, lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=3), c,
                                                                                      max_size=2), max_leaves=4)

    def apply(path, value, delete):
        obj = copy.deepcopy(template)
        if not path:
            return value
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return obj

    return st.builds(apply, st.sampled_from(list(_paths(template))), values, st.booleans())


def test_fuzzed_result_lines_become_row_results_never_exceptions():
    from anthropic._models import construct_type_unchecked
    from anthropic.types.messages import MessageBatchIndividualResponse
    from hypothesis import given, settings

    from caikit.backends.batch_jobs import RowResult
    from caikit.backends.batch_anthropic import AnthropicBatches
    from caikit.backends.batch_openai import OpenAIBatches

    openai_rows = OpenAIBatches(OpenAIBackend("gpt-4o-mini"), call=None)
    anthropic_rows = AnthropicBatches(AnthropicBackend("claude-haiku-4-5"), call=None)
    seen = {"ok": 0, "error": 0}

    def check(result):
        assert isinstance(result, RowResult)
        assert (result.response is None) != (result.error == "") and "\n" not in result.error
        seen["ok" if result.response is not None else "error"] += 1

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(_mutated({"custom_id": "x", "response": {"status_code": 200, "body": GOOD_CHAT}, "error": None}),
           _mutated({"custom_id": "x", "result": {"type": "succeeded", "message": GOOD_MESSAGE}}))
    def run(openai_line, anthropic_line):
        check(openai_rows.row_result(openai_line if isinstance(openai_line, dict) else {"response": openai_line}))
        item = construct_type_unchecked(value=anthropic_line, type_=MessageBatchIndividualResponse)
        check(anthropic_rows.row_result(getattr(item, "result", None)))

    run()
    assert seen["ok"] > 50 and seen["error"] > 50  # both outcomes were exercised


# -- a create that reached the provider but whose answer was lost: never paid for twice ------------------

def question_items(backend: str, server: FakeAPIServer, tmp_path: Path, questions: range, seed: int):
    """(custom_id, body) of `ask_all`'s requests for `questions`, and the provider that sends them."""
    provider = BatchBackend(make_inner(backend, server), tmp_path / "probe.jsonl", poll_interval=0.02).provider
    items = []
    for i in questions:
        body = provider.generate_bodies([{"role": "user", "content": f"question {i}"}], n=1, temperature=0.7,
                                        max_tokens=256, stop=None, seed=seed)[0]
        items.append((custom_id("g0", MODELS[backend], body), body))
    return items, provider


def test_openai_create_whose_answer_is_lost_is_looked_up_and_adopted_not_created_twice(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    run = tmp_path / "batch"
    with FakeAPIServer() as server:
        server.batches.drop_create_responses(1)  # the first batch is made, its answer never arrives
        assert cli_main(generate_args(run, prompts, server, "openai", *POLL)) == 0
        jobs = server.batches.jobs
        creates = [r for r in server.log if r.path == "/v1/batches" and r.status is not None]
        lookups = [r for r in server.log if r.path.startswith("/v1/batches?")]
        assert cli_main(generate_args(tmp_path / "online", prompts, server, "openai")) == 0
    # answer, critique, revision: one batch each, the first created once although its create failed
    assert [len(j.custom_ids) for j in jobs] == [6, 6, 6]
    every_line = [cid for j in jobs for cid in j.custom_ids]
    assert len(every_line) == len(set(every_line)), "no request was submitted twice"
    assert [r.status for r in creates][:1] == [0], "the first create's answer was dropped"
    assert len(creates) == 3 and [r.status for r in lookups] == [200], "looked up once, then adopted"
    log = read_jsonl(run / "batches.jsonl")
    first = next(e for e in log if e["event"] == "submitted")
    assert first["job_id"] == jobs[0].id and first["nonce"] == log[0]["nonce"] and log[0]["event"] == "submitting"
    assert trace_contents(run) == trace_contents(tmp_path / "online")


def test_rerun_after_a_crash_between_create_and_the_submitted_line_adopts_the_batch(tmp_path):
    from caikit.backends.batch_jobs import JobLog

    jobs_path = tmp_path / "batches.jsonl"
    with FakeAPIServer() as server:
        expected = ask_all(make_inner("openai", server), 6, seed=3)
        made, provider = question_items("openai", server, tmp_path, range(4), seed=3)
        lost, _ = question_items("openai", server, tmp_path, range(4, 6), seed=3)
        log = JobLog(jobs_path, "openai")  # the crashed run: intents written, then killed before "submitted"
        log.submitting("nonce-made", [cid for cid, _ in made])
        log.submitting("nonce-lost", [cid for cid, _ in lost])  # killed before its create reached the server
        log.file.close()
        job_id = asyncio.run(provider.submit(made, nonce="nonce-made", since=time.time()))
        assert [j.id for j in server.batches.jobs] == [job_id]

        batch = BatchBackend(make_inner("openai", server), jobs_path, poll_interval=0.02)
        assert ask_all(batch, 6, seed=3) == expected
        jobs = server.batches.jobs
    assert [len(j.custom_ids) for j in jobs] == [4, 2], "the found batch was polled, only the lost one created"
    events = read_jsonl(jobs_path)
    adopted = next(e for e in events if e["event"] == "submitted" and e["nonce"] == "nonce-made")
    assert adopted["job_id"] == job_id and adopted["adopted"] is True
    assert {"event": "abandoned", "nonce": "nonce-lost"}.items() <= next(
        e for e in events if e["event"] == "abandoned").items()
    assert JobLog(jobs_path, "openai").pending == {}


def test_openai_lost_create_whose_lookup_fails_is_not_sent_again_and_a_rerun_adopts_it(tmp_path):
    jobs_path = tmp_path / "batches.jsonl"
    # upload, create (made, answer dropped), then the lookup fails on both attempts
    faults = FaultPlan(script=[None, None, "500", "500"])
    with FakeAPIServer(batch_endpoint_faults=faults) as server:
        server.batches.drop_create_responses(1)
        batch = BatchBackend(make_inner("openai", server, attempts=2), jobs_path, poll_interval=0.02)
        with pytest.raises(BackendError) as err:
            ask_all(batch, 3, seed=4)
        assert len(server.batches.jobs) == 1, "nothing was created blindly"
        assert err.value.retryable and "may exist" in str(err.value) and "\n" not in str(err.value)
        expected = ask_all(make_inner("openai", server), 3, seed=4)
        rerun = BatchBackend(make_inner("openai", server, attempts=2), jobs_path, poll_interval=0.02)
        assert ask_all(rerun, 3, seed=4) == expected
        (job,) = server.batches.jobs
    assert any(e["event"] == "submitted" and e.get("adopted") and e["job_id"] == job.id
               for e in read_jsonl(jobs_path))


def test_anthropic_create_whose_answer_is_lost_is_not_sent_again(tmp_path):
    jobs_path = tmp_path / "batches.jsonl"
    with FakeAPIServer() as server:
        server.batches.drop_create_responses(1)
        batch = BatchBackend(make_inner("anthropic", server), jobs_path, poll_interval=0.02)
        with pytest.raises(BackendError) as err:
            ask_all(batch, 3, seed=5)
        # the batch exists, nothing says which it is: no second batch, the rows fail retryably and say why
        assert len(server.batches.jobs) == 1
        assert err.value.retryable and "may exist" in str(err.value) and "\n" not in str(err.value)
        assert KEY not in str(err.value)
        events = read_jsonl(jobs_path)
        assert [e["event"] for e in events] == ["submitting"]
        # a 429 / 500 answer means no batch was made: that create is retried
        server.batches.endpoint_faults = FaultPlan(script=["429", "500"], retry_after=0.01)
        expected = ask_all(make_inner("anthropic", server), 3, seed=5)
        rerun = BatchBackend(make_inner("anthropic", server), jobs_path, poll_interval=0.02)
        assert ask_all(rerun, 3, seed=5) == expected  # the rerun is the user's call: it submits again
        assert len(server.batches.jobs) == 2
    events = read_jsonl(jobs_path)
    assert {"event": "abandoned", "reason": "cannot be looked up"}.items() <= events[1].items()
    assert [e["event"] for e in events[2:]] == ["submitting", "submitted", "collected"]
