"""OpenAI / Anthropic backends through the real SDKs against the loopback fake: retries, limits, cost, keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import traceback

import pytest

from caikit.backends.anthropic import AnthropicBackend, split_system
from caikit.backends.base import BackendError, LogprobsUnsupported, Usage
from caikit.backends.cost import cost_usd, load_price_overrides, price_for
from caikit.backends.factory import DEFAULT_MODELS, make_backend
from caikit.backends.limits import RateLimiter, RetryPolicy, call_with_retries, parse_retry_after, public_url
from caikit.backends.openai import OpenAIBackend, option_logprobs_from_top
from caikit.errors import UserError
from caikit.testing import FakeAPIServer, FaultPlan

SENTINEL = "sk-test-SENTINEL-123456789012345678"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.02, jitter=False)
USER = [{"role": "user", "content": "Say something kind."}]


def answer(messages, seed=None, index=0) -> str:
    digest = hashlib.sha256(json.dumps([messages, seed, index], sort_keys=True, ensure_ascii=False).encode())
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return f"Answer {digest.hexdigest()[:8]} to: {last_user[:40]}"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)


def openai_backend(server, *, retry=FAST, timeout=5.0, limiter=None) -> OpenAIBackend:
    return OpenAIBackend("gpt-4o-mini", base_url=server.openai_base_url, timeout=timeout, retry=retry,
                         limiter=limiter or RateLimiter(16))


def anthropic_backend(server, **kw) -> AnthropicBackend:
    return AnthropicBackend("claude-3-5-haiku-latest", base_url=server.anthropic_base_url, retry=FAST, **kw)


def run(backend, coro_fn):
    async def main():
        try:
            return await coro_fn(backend)
        finally:
            await backend.aclose()

    return asyncio.run(main())


# -- retries ---------------------------------------------------------------------------------------

def test_429_is_retried_after_the_servers_retry_after():
    with FakeAPIServer(faults=FaultPlan(script=["429"], retry_after="0.3")) as server:
        out = run(openai_backend(server), lambda b: b.generate(USER, seed=3))
        server.wait_idle()
        log = server.log
    assert out[0].text == answer(USER, 3) and out[0].finish_reason == "stop"
    assert [r.status for r in log] == [429, 200]
    assert log[1].arrival - log[0].finish >= 0.29  # backoff alone would be 0.01 s


def test_500_then_success_reports_usage_once():
    with FakeAPIServer(faults=FaultPlan(script=["500"])) as server:
        backend = openai_backend(server)
        out = run(backend, lambda b: b.generate(USER, n=2, seed=1))
        server.wait_idle()
        assert [r.status for r in server.log] == [500, 200]
    assert [c.text for c in out] == [answer(USER, 1, 0), answer(USER, 1, 1)]
    # prompt 3 words; each answer "Answer <h> to: Say something kind." is 6 words
    assert out[0].usage == Usage(prompt_tokens=3, completion_tokens=12, requests=1)
    assert out[1].usage == Usage() and backend.total_usage == out[0].usage


@pytest.mark.parametrize("fault", ["hang", "truncated", "disconnect", "503"])
def test_transient_faults_are_retried(fault):
    plan = FaultPlan(script=[fault], hang_seconds=2.0, hang_then="drop")
    with FakeAPIServer(faults=plan) as server:
        start = time.monotonic()
        out = run(openai_backend(server, timeout=0.3), lambda b: b.generate(USER))
        elapsed = time.monotonic() - start
    log = server.log  # final: stop() woke the hang and waited for it
    assert out[0].text == answer(USER)
    assert [r.fault for r in log] == [fault, None] and log[1].status == 200
    if fault == "hang":
        assert 0.3 <= elapsed < 1.5  # gave up at the client timeout, not at the end of the 2 s hang


def test_a_request_that_always_fails_ends_after_exactly_max_attempts():
    retries = []
    with FakeAPIServer(faults=FaultPlan(always_fail_keys=lambda req: True)) as server:
        with pytest.raises(BackendError) as err:
            run(openai_backend(server), lambda b: b.generate(USER))
        server.wait_idle()
        assert list(server.requests_by_key().values()) == [FAST.max_attempts]
    message = str(err.value)
    assert err.value.retryable and "\n" not in message
    assert message == "request failed after 4 attempts: HTTP 500 server_error: injected fault 500"
    # and the on_retry hook sees each wait
    async def failing():
        raise TimeoutError("slow")
    with pytest.raises(BackendError, match="after 3 attempts"):
        asyncio.run(call_with_retries(failing, RetryPolicy(3, 0.01, 0.01, jitter=False),
                                      is_retryable=lambda e: True, retry_after_of=lambda e: None,
                                      on_retry=lambda n, e, wait: retries.append((n, wait))))
    assert retries == [(1, 0.01), (2, 0.01)]


def test_client_errors_are_not_retried():
    with FakeAPIServer(require_key="sk-another-key-000000000000") as server:
        with pytest.raises(BackendError) as err:
            run(openai_backend(server), lambda b: b.generate(USER))
        assert len(server.log) == 1
    assert not err.value.retryable and str(err.value).startswith("request failed: HTTP 401")


def test_retry_after_as_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == pytest.approx(5.0)
    assert parse_retry_after("0.05") == 0.05 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


# -- rate limits -----------------------------------------------------------------------------------

def test_concurrency_limit_is_respected_and_reached():
    with FakeAPIServer(latency=0.1) as server:
        backend = openai_backend(server, limiter=RateLimiter(concurrency=8))

        async def burst(b):
            return await asyncio.gather(*[b.generate([{"role": "user", "content": f"q{i}"}]) for i in range(40)])

        out = run(backend, burst)
        assert len(out) == 40 and server.max_in_flight == 8


def test_rpm_limit_spreads_a_burst():
    # rpm 1200 = 20 requests/s with a 1 s burst: 20 go at once, the next 10 follow at 20/s
    with FakeAPIServer() as server:
        backend = openai_backend(server, limiter=RateLimiter(concurrency=64, rpm=1200))

        async def burst(b):
            return await asyncio.gather(*[b.generate([{"role": "user", "content": f"q{i}"}]) for i in range(30)])

        start = time.monotonic()
        run(backend, burst)
        elapsed = time.monotonic() - start
        arrivals = [t - start for t in sorted(r.arrival for r in server.log)]  # same clock, same process
    assert 0.45 <= elapsed < 1.5
    assert arrivals[19] < 0.4  # the burst itself was not held back
    for k in range(20, 30):
        assert arrivals[k] >= (k - 19) / 20 - 0.005


def test_tpm_bucket_waits_and_is_corrected_by_actual_usage():
    limiter = RateLimiter(concurrency=4, tpm=6000)  # 100 tokens/s, bucket of 100

    async def main():
        t0 = time.monotonic()
        async with limiter.slot(100):
            pass
        limiter.record_actual(100, 20)  # used only 20: 80 come back
        async with limiter.slot(80):
            pass
        t1 = time.monotonic()
        async with limiter.slot(50):  # empty bucket: 50 tokens take 0.5 s to refill
            pass
        return t1 - t0, time.monotonic() - t1

    fast, slow = asyncio.run(main())
    assert fast < 0.1 and 0.45 <= slow < 0.8


# -- logprobs --------------------------------------------------------------------------------------

def test_option_logprobs_sums_variants_of_each_option():
    table = {" A": -0.5, "A": -1.5, "(A": -2.0, " B": -1.0, "(": -3.0, "Sure": -4.0}
    seen = []

    def responder(req):
        seen.append(req.raw)
        return "ignored"

    with FakeAPIServer(responder, logprobs=lambda req: table) as server:
        backend = openai_backend(server)
        scores = run(backend, lambda b: b.option_logprobs(USER, ["A", "B", "C"]))
    assert scores["A"] == pytest.approx(math.log(math.exp(-0.5) + math.exp(-1.5) + math.exp(-2.0)))
    assert scores["B"] == pytest.approx(-1.0) and scores["C"] == float("-inf")
    body = seen[0]
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["top_logprobs"]) == (1, 0, True, 20)
    assert backend.last_usage == Usage(prompt_tokens=3, completion_tokens=1, requests=1)
    assert option_logprobs_from_top({" (B": -0.1, "B)": -0.2}, ["B"]) == {"B": -0.1}  # ")" is not stripped


def test_openai_drops_parameters_the_model_rejects_and_remembers():
    seen = []

    def reject(req):
        seen.append(sorted(k for k in ("max_tokens", "max_completion_tokens", "temperature", "logprobs") if k in req.raw))
        if "max_tokens" in req.raw:
            return 400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
        if "temperature" in req.raw:
            return 400, "Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported."
        if req.raw.get("logprobs"):
            return 400, "logprobs are not supported with reasoning models"
        return None

    with FakeAPIServer(reject=reject) as server:
        backend = openai_backend(server)

        async def main(b):
            first = await b.generate(USER)
            second = await b.generate(USER)
            with pytest.raises(LogprobsUnsupported):
                await b.option_logprobs(USER, ["A", "B"])
            return first, second

        first, second = run(backend, main)
        server.wait_idle()
        statuses = [r.status for r in server.log]
    assert first[0].text == second[0].text == answer(USER)
    assert seen == [["max_tokens", "temperature"], ["max_completion_tokens", "temperature"], ["max_completion_tokens"],
                    ["max_completion_tokens"], ["logprobs", "max_completion_tokens"]]
    assert statuses == [400, 400, 200, 200, 400]
    # reasoning models start with what they accept
    o4 = OpenAIBackend("o4-mini", base_url="http://127.0.0.1:9/v1")
    assert (o4.token_param, o4.send_temperature) == ("max_completion_tokens", False)


# -- Anthropic -------------------------------------------------------------------------------------

def test_anthropic_moves_system_messages_and_fans_out_n():
    seen = []

    def responder(req):
        seen.append(req.raw)
        return "Kind words here."

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "system", "content": "Be kind."}]
    with FakeAPIServer(responder, cache_usage=lambda req: (2, 1)) as server:
        backend = anthropic_backend(server)
        out = run(backend, lambda b: b.generate(messages, n=3, temperature=1.3, max_tokens=50, stop=["END"]))
        assert len(server.log) == 3
    assert [c.text for c in out] == ["Kind words here."] * 3 and out[0].finish_reason == "stop"
    body = seen[0]
    assert body["system"] == "Be brief.\n\nBe kind." and body["messages"] == [{"role": "user", "content": "Hi there"}]
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["END"] and body["max_tokens"] == 50
    # each request: prompt 6 words (2 cache reads + 1 cache write included), 3 output words
    assert out[0].usage == Usage(prompt_tokens=18, completion_tokens=9, cached_tokens=6, cache_write_tokens=3,
                                 requests=3)
    assert backend.supports_logprobs is False
    with pytest.raises(LogprobsUnsupported):
        asyncio.run(backend.option_logprobs(USER, ["A", "B"]))


def test_anthropic_temperature_only_where_the_model_takes_it():
    seen = []

    def reject(req):
        seen.append(dict(req.raw))
        if "temperature" in req.raw and req.model != "claude-3-5-haiku-latest":
            return 400, "`temperature` is deprecated for this model."
        return None

    with FakeAPIServer(reject=reject) as server:
        run(AnthropicBackend("claude-opus-4-7", base_url=server.anthropic_base_url, retry=FAST),
            lambda b: b.generate(USER, temperature=0.2))
        assert "temperature" not in seen[-1]
        # a model we would send it to, but the server says no: asked again without, then remembered
        backend = AnthropicBackend("claude-sonnet-4-6", base_url=server.anthropic_base_url, retry=FAST)
        out = run(backend, lambda b: b.generate(USER, temperature=0.2))
        assert out[0].text == answer(USER) and backend.send_temperature is False
        assert [("temperature" in r) for r in seen[1:]] == [True, False]
        server.wait_idle()
        assert [r.status for r in server.log] == [200, 400, 200]


def test_anthropic_truncation_and_retry():
    with FakeAPIServer(faults=FaultPlan(script=["429"], retry_after="0.05")) as server:
        out = run(anthropic_backend(server), lambda b: b.generate(USER, max_tokens=2))
        server.wait_idle()
        assert [r.status for r in server.log] == [429, 200]
    assert out[0].text == "Answer " + answer(USER).split()[1] and out[0].finish_reason == "length"


def test_split_system_merges_same_role_neighbours():
    system, turns = split_system([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                  {"role": "assistant", "content": "c"}])
    assert system is None and turns == [{"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "c"}]


# -- cost ------------------------------------------------------------------------------------------

def test_cost_of_known_models_snapshots_batch_and_unknown():
    usage = Usage(prompt_tokens=1_000_000, cached_tokens=200_000, completion_tokens=500_000)
    # gpt-4o-mini: 0.8M x $0.15 + 0.2M x $0.075 + 0.5M x $0.60
    assert cost_usd("gpt-4o-mini", usage) == pytest.approx(0.12 + 0.015 + 0.30)
    assert cost_usd("gpt-4o-mini-2024-07-18", usage, batch=True) == pytest.approx(0.435 / 2)
    assert price_for("gpt-4o-2024-08-06").input == 2.50 and price_for("gpt-4.1-nano").output == 0.40
    # claude-3-5-haiku: 500 plain x $0.80 + 300 read x $0.08 + 200 write x $1.00 + 100 out x $4.00
    anthropic_usage = Usage(prompt_tokens=1000, cached_tokens=300, cache_write_tokens=200, completion_tokens=100)
    assert cost_usd("claude-3-5-haiku-20241022", anthropic_usage) == pytest.approx(
        (500 * 0.80 + 300 * 0.08 + 200 * 1.00 + 100 * 4.00) / 1e6)
    assert price_for("claude-opus-4-1-20250805").output == 75.0 and price_for("claude-haiku-4-5").input == 1.0
    # a minor version or a dotted release is a different model, not a snapshot of its elder
    assert not price_for("claude-opus-4-6").known and not price_for("gpt-5.1").known
    assert price_for("claude-opus-4-20250514").output == 75.0
    assert cost_usd("smollm2", usage) == 0.0 and price_for("smollm2").known
    assert cost_usd("my-finetune", usage) == 0.0 and not price_for("my-finetune").known


def test_price_overrides_from_yaml_and_json(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("my-finetune:\n  input: 1.0\n  output: 2.0\ngpt-4o-mini:\n  input: 0.3\n  output: 1.2\n")
    overrides = load_price_overrides(path)
    usage = Usage(prompt_tokens=2_000_000, cached_tokens=1_000_000, completion_tokens=1_000_000)
    assert cost_usd("my-finetune-v2", usage, overrides=overrides) == pytest.approx(2 * 1.0 + 2.0)
    assert price_for("my-finetune", overrides=overrides).known
    # cached_input not overridden: the table's $0.075 stays
    assert cost_usd("gpt-4o-mini", usage, overrides=overrides) == pytest.approx(0.3 + 0.075 + 1.2)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"m": {"input": 1, "ouput": 2}}))
    with pytest.raises(UserError, match=r"bad\.json: model 'm': unknown field\(s\) ouput"):
        load_price_overrides(bad)


# -- keys and the factory --------------------------------------------------------------------------

def test_missing_key_is_a_one_line_user_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError) as err:
        make_backend("openai")
    assert str(err.value) == "OPENAI_API_KEY is not set (needed for --backend openai; or pass --api-key-file)"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(UserError, match="^ANTHROPIC_API_KEY is not set"):
        make_backend("anthropic")
    with pytest.raises(UserError, match="unknown backend 'gemini'"):
        make_backend("gemini")


def test_factory_defaults():
    b = make_backend("openai", concurrency=3, max_retries=2)
    assert (b.model, b.limiter.concurrency, b.retry.max_attempts) == ("gpt-4o-mini", 3, 2)
    assert make_backend("anthropic").model == DEFAULT_MODELS["anthropic"] == "claude-haiku-4-5"
    local = make_backend("local", batch_size=4, device="cpu")  # lazy: nothing loads until first use
    assert (local.name, local.model, local.batch_size) == ("local", "smollm2", 4)
    assert public_url("http://user:sk-pass@proxy.example:8000/v1") == "http://proxy.example:8000/v1"


def test_servers_that_ignore_n_are_asked_again():
    with FakeAPIServer(max_n=1) as server:
        out = run(openai_backend(server), lambda b: b.generate(USER, n=3, seed=10))
        assert len(server.log) == 3
    # the extra samples use seed + 1, seed + 2, so they differ and stay reproducible
    assert [c.text for c in out] == [answer(USER, 10), answer(USER, 11), answer(USER, 12)]
    assert out[0].usage == Usage(prompt_tokens=9, completion_tokens=18, requests=3)


def test_the_key_never_appears_in_errors_or_descriptions():
    texts = []

    def collect(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            texts.extend([str(e), repr(e), "".join(traceback.format_exception(e))])
        else:
            raise AssertionError("expected a failure")

    # the fake echoes a wrong key in its 401 body, as real APIs do
    with FakeAPIServer(require_key="sk-the-right-one-0000000000") as server:
        for backend in (openai_backend(server), anthropic_backend(server)):
            collect(lambda: run(backend, lambda b: b.generate(USER)))
            texts.append(json.dumps(backend.describe()))
    with FakeAPIServer(faults=FaultPlan(always_fail_keys=lambda req: True)) as server:
        collect(lambda: run(openai_backend(server), lambda b: b.generate(USER)))
    with FakeAPIServer(faults=FaultPlan(rates={"hang": 1.0}, hang_seconds=0.5, hang_then="drop")) as server:
        collect(lambda: run(openai_backend(server, timeout=0.1, retry=RetryPolicy(2, 0.01, 0.01)),
                            lambda b: b.generate(USER)))
    assert any("401" in t for t in texts) and any("timed out" in t for t in texts)
    assert not [t for t in texts if SENTINEL in t or "SENTINEL" in t]


def test_a_backend_survives_a_second_event_loop():
    with FakeAPIServer() as server:
        backend = openai_backend(server, limiter=RateLimiter(2, rpm=6000))
        first = asyncio.run(backend.generate(USER))
        second = asyncio.run(backend.generate(USER, seed=5))
    assert first[0].text == answer(USER) and second[0].text == answer(USER, 5)
