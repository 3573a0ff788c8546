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
    server.set_faults(FaultPlan(script=["hang"], hang_seconds=0.6, hang_then="drop"))
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(server, timeout=0.2).chat.completions.create(model="m", messages=USER)
    assert 0.15 < time.monotonic() - start < 0.55
    assert server.log[0].status is None  # still hanging after the client gave up
    assert server.wait_idle(3)
    entry = server.log[0]
    assert (entry.status, entry.fault) == (0, "hang") and entry.finish - entry.arrival >= 0.55


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
    latency = 0.2
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
    assert len(results) == 64 and server.max_in_flight == 64
    assert elapsed < 64 * latency / 4  # serialised would take 12.8 s
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
