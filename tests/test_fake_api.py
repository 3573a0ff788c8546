"""The loopback fake API: the real openai/anthropic SDKs parse it, and every fault kind shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from caikit.testing import FakeAPIServer, FaultPlan

USER = [{"role": "user", "content": "Why is the sky blue on a clear day?"}]


def answer(messages, seed=None, index=0) -> str:
    """The default responder's text, computed from its documented recipe."""
    digest = hashlib.sha256(json.dumps([messages, seed, index], sort_keys=True, ensure_ascii=False).encode())
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return f"Answer {digest.hexdigest()[:8]} to: {last_user[:40]}"


@pytest.fixture
def server():
    with FakeAPIServer() as s:
        yield s


def oai(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="sk-fake", max_retries=0, **kw)


def claude(server, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="sk-ant-fake", max_retries=0, **kw)


def test_openai_sdk_parses_completions_usage_and_deterministic_text(server):
    client = oai(server)
    r = client.chat.completions.create(model="gpt-4o-mini", messages=USER, n=2, seed=7, temperature=0.5)
    assert r.object == "chat.completion" and r.model == "gpt-4o-mini"
    assert [c.index for c in r.choices] == [0, 1]
    texts = [c.message.content for c in r.choices]
    assert texts == [answer(USER, 7, 0), answer(USER, 7, 1)] and texts[0] != texts[1]
    assert all(c.finish_reason == "stop" and c.message.role == "assistant" for c in r.choices)
    # whitespace words: prompt 9; each answer "Answer <h> to: Why is the sky blue on a clear day?" 3 + 9
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (9, 24, 33)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    again = client.chat.completions.create(model="gpt-4o-mini", messages=USER, n=2, seed=7, temperature=0.5)
    assert [c.message.content for c in again.choices] == texts
    other_seed = client.chat.completions.create(model="gpt-4o-mini", messages=USER, seed=8)
    assert other_seed.choices[0].message.content == answer(USER, 8, 0) != texts[0]


def test_openai_max_tokens_and_stop(server):
    client = oai(server)
    r = client.chat.completions.create(model="m", messages=USER, max_tokens=3)
    assert r.choices[0].message.content == " ".join(answer(USER).split()[:3])
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = client.chat.completions.create(model="m", messages=USER, max_completion_tokens=50, stop=[" to:"])
    assert r.choices[0].message.content == answer(USER).split(" to:")[0]
    assert r.choices[0].finish_reason == "stop"


def test_anthropic_sdk_parses_messages_with_system_blocks_and_cache_usage():
    with FakeAPIServer(responder=lambda req: f"{req.messages[0]['role']}:{req.messages[0]['content']} ok",
                       cache_usage=lambda req: (3, 2)) as server:
        client = claude(server)
        m = client.messages.create(model="claude-3-5-haiku-latest", max_tokens=50, messages=USER,
                                   system=[{"type": "text", "text": "Be brief and kind."}])
    assert m.type == "message" and m.role == "assistant" and m.model == "claude-3-5-haiku-latest"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "system:Be brief and kind. ok"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    # prompt = 4 system words + 9 user words = 13, of which 3 cache reads and 2 cache writes
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (8, 3, 2)
    assert m.usage.output_tokens == 5


def test_anthropic_stop_sequences_and_max_tokens(server):
    client = claude(server)
    m = client.messages.create(model="c", max_tokens=50, messages=USER, stop_sequences=["sky", " to:"])
    assert m.content[0].text == answer(USER).split(" to:")[0]  # " to:" comes first in the text
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", " to:")
    m = client.messages.create(model="c", max_tokens=2, messages=USER)
    assert m.content[0].text == " ".join(answer(USER).split()[:2]) and m.stop_reason == "max_tokens"


def test_logprobs_follow_the_map_and_the_argmax_leads_the_text():
    table = {"B": -1.8, " A": -0.2, "(": -3.0, "C": -4.0}
    with FakeAPIServer(logprobs=lambda req: table) as server:
        r = oai(server).chat.completions.create(model="m", messages=USER, max_tokens=1, temperature=0,
                                                logprobs=True, top_logprobs=3)
    choice = r.choices[0]
    assert choice.message.content == " A"
    first = choice.logprobs.content[0]
    assert (first.token, first.logprob, first.bytes) == (" A", -0.2, [32, 65])
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [(" A", -0.2), ("B", -1.8), ("(", -3.0)]
    assert first.top_logprobs[1].bytes == [66]


def test_logprobs_absent_unless_asked(server):
    r = oai(server).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].logprobs is None
    r = oai(server).chat.completions.create(model="m", messages=USER, logprobs=True, top_logprobs=1)
    tokens = [t.token for t in r.choices[0].logprobs.content]
    assert "".join(tokens) == r.choices[0].message.content and len(tokens) == r.usage.completion_tokens


@pytest.mark.parametrize("path, headers, expected", [
    ("/v1/chat/completions", {}, {"error": {"message": "missing API key", "type": "invalid_request_error",
                                            "param": None, "code": "401"}}),
    ("/v1/messages", {}, {"type": "error", "error": {"type": "authentication_error", "message": "missing API key"}}),
])
def test_requests_without_a_key_get_401_in_the_providers_shape(server, path, headers, expected):
    req = urllib.request.Request(server.url + path, data=json.dumps({"model": "m", "messages": USER}).encode(),
                                 headers={"Content-Type": "application/json", **headers}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401 and json.loads(err.value.read()) == expected


def test_sdk_error_classes_for_status_faults(server):
    server.set_faults(FaultPlan(script=["429", "500", "503", None], retry_after="0.05"))
    client = oai(server)
    with pytest.raises(openai.RateLimitError) as e429:
        client.chat.completions.create(model="m", messages=USER)
    assert e429.value.response.headers["retry-after"] == "0.05"
    assert e429.value.body["type"] == "rate_limit_error"
    with pytest.raises(openai.InternalServerError) as e500:
        client.chat.completions.create(model="m", messages=USER)
    assert e500.value.status_code == 500
    with pytest.raises(anthropic.InternalServerError) as e503:
        claude(server).messages.create(model="c", max_tokens=5, messages=USER)
    assert e503.value.status_code == 503 and e503.value.body["error"]["type"] == "overloaded_error"
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == answer(USER)
    server.wait_idle()
    assert [(r.status, r.fault) for r in server.log] == [(429, "429"), (500, "500"), (503, "503"), (200, None)]


def test_truncated_body_is_a_200_with_broken_json(server):
    server.set_faults(FaultPlan(script=["truncated"]))
    with pytest.raises(json.JSONDecodeError):
        oai(server).chat.completions.create(model="m", messages=USER)
    server.set_faults(FaultPlan(script=["truncated"]))
    with pytest.raises(json.JSONDecodeError):
        claude(server).messages.create(model="c", max_tokens=5, messages=USER)
    server.wait_idle()
    assert [(r.status, r.fault) for r in server.log] == [(200, "truncated")] * 2


def test_disconnect_closes_without_a_response(server):
    server.set_faults(FaultPlan(script=["disconnect"]))
    with pytest.raises(openai.APIConnectionError) as err:
        oai(server).chat.completions.create(model="m", messages=USER)
    assert not isinstance(err.value, openai.APITimeoutError)
    server.wait_idle()
    assert [(r.status, r.fault) for r in server.log] == [(0, "disconnect")]


def test_hang_outlasts_a_short_client_timeout_then_drops(server):
    server.set_faults(FaultPlan(script=["hang"], hang_seconds=2.0, hang_then="drop"))
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(server, timeout=0.2).chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - start > 0.15
    assert server.log[0].status is None  # still hanging after the client gave up
    assert server.wait_idle(30)
    entry = server.log[0]
    assert (entry.status, entry.fault) == (0, "hang") and entry.finish - entry.arrival >= 1.95


def test_hang_then_respond_answers_a_patient_client(server):
    server.set_faults(FaultPlan(script=["hang"], hang_seconds=0.3, hang_then="respond"))
    start = time.monotonic()
    r = oai(server, timeout=5).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content == answer(USER) and time.monotonic() - start >= 0.3
    server.wait_idle()
    assert [(e.status, e.fault) for e in server.log] == [(200, "hang")]


def test_max_faults_per_key_lets_retries_through_and_always_fail_keys_never_does(server):
    server.set_faults(FaultPlan(rates={"500": 1.0}, max_faults_per_key=2,
                                always_fail_keys=lambda req: "doomed" in req.last_user_message))
    client = oai(server)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=USER)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == answer(USER)
    doomed = [{"role": "user", "content": "doomed"}]
    for _ in range(4):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=doomed)
    server.wait_idle()  # the client can read an answer before the handler has logged its finish
    counts = server.requests_by_key()
    assert sorted(counts.values()) == [3, 4]
    server.reset_log()
    assert server.log == [] and server.requests_by_key() == {}


def test_seeded_rates_are_reproducible():
    def fault_sequence(seed: int) -> list:
        with FakeAPIServer(faults=FaultPlan(rates={"500": 0.3, "503": 0.2}, seed=seed)) as server:
            client = oai(server)
            for i in range(40):
                try:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
                except openai.InternalServerError:
                    pass
            return [r.fault for r in server.log]

    first, again, other = fault_sequence(1), fault_sequence(1), fault_sequence(2)
    assert first == again != other
    assert 5 <= first.count("500") <= 20 and 2 <= first.count("503") <= 15 and first.count(None) >= 10


def test_64_slow_requests_run_concurrently():
    latency = 1.0  # long enough for all 64 connections to open inside it on a loaded machine
    with FakeAPIServer(latency=latency) as server:
        async def main():
            client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-fake", max_retries=0)
            start = time.monotonic()
            results = await asyncio.gather(*[
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(64)])
            await client.close()
            return results, time.monotonic() - start

        results, elapsed = asyncio.run(main())
    assert len(results) == 64 and server.max_in_flight == 64  # all at once, not one after another
    assert elapsed >= latency
    assert all(r.finish - r.arrival >= latency for r in server.log)


def test_max_n_and_a_broken_responder():
    def responder(req):
        if "boom" in req.last_user_message:
            raise RuntimeError("responder bug")
        return "fine"

    with FakeAPIServer(responder, max_n=1) as server:
        client = oai(server)
        r = client.chat.completions.create(model="m", messages=USER, n=3)
        assert [c.message.content for c in r.choices] == ["fine"]
        with pytest.raises(openai.InternalServerError, match="RuntimeError: responder bug"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "boom"}])


# -- batch endpoints ----------------------------------------------------------------------------------

def batch_line(custom_id: str, content: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **body}}


def test_openai_batch_files_and_jobs_parse_in_the_sdk_and_answer_as_online():
    from caikit.testing.fake_batch import BatchFaultPlan

    faults = BatchFaultPlan(always_fail_keys=lambda r: "FAIL" in r.last_user_message)
    line_fault = lambda r: "expired" if "LATE" in r.last_user_message else None  # noqa: E731
    with FakeAPIServer(batch_latency=0.3, batch_faults=faults, batch_line_fault=line_fault) as server:
        client = oai(server)
        lines = [batch_line("r-0", USER[0]["content"], seed=7), batch_line("r-1", "FAIL me"),
                 batch_line("r-2", "LATE one")]
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file = client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
        assert file.purpose == "batch" and file.bytes == len(data)
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "in_progress" and batch.request_counts.total == 3 and batch.output_file_id is None
        assert client.batches.retrieve(batch.id).status == "in_progress"  # before batch_latency
        time.sleep(0.35)
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 2)
        (out,) = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
        assert out["custom_id"] == "r-0" and out["response"]["status_code"] == 200
        assert out["response"]["body"]["choices"][0]["message"]["content"] == answer(USER, 7)  # as online
        error_lines = client.files.content(done.error_file_id).text.splitlines()
        errors = {e["custom_id"]: e for e in map(json.loads, error_lines)}
        assert errors["r-1"]["response"]["status_code"] == 500 and errors["r-1"]["response"]["body"]["error"]
        assert errors["r-2"]["response"] is None and errors["r-2"]["error"]["code"] == "batch_expired"
        (job,) = server.batches.jobs
        assert job.custom_ids == ["r-0", "r-1", "r-2"] and job.polls == 2 and job.line_faults == {"r-1": "500",
                                                                                                 "r-2": "expired"}
        # validation as the service does it: duplicate custom_ids fail the whole batch
        dup = client.files.create(file=("d.jsonl", data + data, "application/jsonl"), purpose="batch")
        failed = client.batches.create(input_file_id=dup.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert failed.status == "failed" and "duplicate" in failed.errors.data[0].message


def test_anthropic_message_batches_parse_in_the_sdk_with_every_result_type():
    from caikit.testing.fake_batch import BatchFaultPlan

    with FakeAPIServer(batch_faults=BatchFaultPlan(jobs=["expired"]),
                       batch_line_fault=lambda r: "500" if "FAIL" in r.last_user_message else None) as server:
        client = claude(server)
        params = lambda text: {"model": "claude-haiku-4-5", "max_tokens": 50, "system": "Be brief.",  # noqa: E731
                               "messages": [{"role": "user", "content": text}]}
        server.batches.hold()
        batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params("Hello")},
                                                         {"custom_id": "b", "params": params("FAIL")},
                                                         {"custom_id": "c", "params": params("x")},
                                                         {"custom_id": "d", "params": params("y")}])
        assert batch.processing_status == "in_progress" and batch.request_counts.processing == 4
        assert client.messages.batches.retrieve(batch.id).results_url is None  # held
        server.batches.release()
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.results_url.startswith(server.url)
        assert (ended.request_counts.succeeded, ended.request_counts.errored, ended.request_counts.expired) == (1, 1, 2)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert results["a"].type == "succeeded"
        assert results["a"].message.content[0].text == answer([{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": "Hello"}])
        assert results["b"].type == "errored" and results["b"].error.error.type == "api_error"
        assert results["c"].type == results["d"].type == "expired"  # the second half of an expired batch
        with pytest.raises(anthropic.BadRequestError, match="unique"):
            client.messages.batches.create(requests=[{"custom_id": "a", "params": params("1")},
                                                     {"custom_id": "a", "params": params("2")}])


def test_batch_endpoint_faults_and_limits():
    faults = FaultPlan(script=["429", None, "500"], retry_after=0.01)
    with FakeAPIServer(batch_endpoint_faults=faults, anthropic_batch_limits=(1, 10**6)) as server:
        client = claude(server)
        request = {"custom_id": "a", "params": {"model": "m", "max_tokens": 5, "messages": USER}}
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=[request])
        batch = client.messages.batches.create(requests=[request])
        with pytest.raises(anthropic.InternalServerError):
            client.messages.batches.retrieve(batch.id)
        with pytest.raises(anthropic.BadRequestError, match="at most 1"):
            client.messages.batches.create(requests=[request, {**request, "custom_id": "b"}])
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve("msgbatch_nope")
