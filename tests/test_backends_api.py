"""OpenAI / Anthropic backends against the loopback fake: retries, limits, cost, keys -- every test on both
transports (`--http-client aiohttp`, caikit's own wire over aiohttp, and `sdk`, the providers' SDK clients)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
import traceback

import pytest

from caikit.backends.anthropic import AnthropicBackend, cached_turns
from caikit.backends.base import CACHE_PREFIX_END, BackendError, LogprobsUnsupported, Usage
from caikit.backends.cost import cost_usd, load_price_overrides, price_for
from caikit.backends.registry import BackendOptions, make_backend, provider_class
from caikit.backends.limits import Admission, RateLimiter, estimate_tokens
from caikit.backends.retry import RetryPolicy, call_with_retries, parse_retry_after
from caikit.backends.openai import OpenAIBackend, option_logprobs_from_top
from caikit.secrets import public_url
from caikit.errors import UserError
from caikit.testing import FakeAPIServer, FaultPlan

SENTINEL = "sk-test-SENTINEL-123456789012345678"
FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.02, jitter=False)
USER = [{"role": "user", "content": "Say something kind."}]


def answer(messages, seed=None, index=0) -> str:
    digest = hashlib.sha256(json.dumps([messages, seed, index], sort_keys=True, ensure_ascii=False).encode())
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return f"Answer {digest.hexdigest()[:8]} to: {last_user[:40]}"


_real_sleep = asyncio.sleep


class VirtualClock:
    """The rate limiter's clock (time.monotonic and asyncio.sleep inside caikit.backends.limits), moved only by
    the limiter's own sleeps: its bucket arithmetic is checked exactly, however busy the machine is."""

    def __init__(self):
        self.now = 0.0

    async def sleep(self, seconds: float) -> None:
        # at least one step of the float: a wait rounded to nothing would otherwise never end
        target = max(self.now + max(0.0, seconds), math.nextafter(self.now, math.inf))
        await _real_sleep(0)
        self.now = max(self.now, target)

    def admissions(self, bucket) -> list[float]:
        """The (virtual) times at which `bucket` let each request in, in order."""
        times, take = [], bucket.take

        async def timed(amount):
            await take(amount)
            times.append(self.now)

        bucket.take = timed
        return times


@pytest.fixture
def clock(monkeypatch) -> VirtualClock:
    import types

    from caikit.backends import limits

    virtual = VirtualClock()
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(monotonic=lambda: virtual.now))
    monkeypatch.setattr(limits, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": virtual.sleep}))
    return virtual


@pytest.fixture(autouse=True, params=["aiohttp", "sdk"])
def transport(request, monkeypatch):
    """Backends made without an explicit http_client take this one."""
    monkeypatch.setattr("caikit.backends.http_client.DEFAULT", request.param)
    return request.param


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
    plan = FaultPlan(script=[fault], hang_seconds=30.0, hang_then="drop")  # stop() ends the hang
    with FakeAPIServer(faults=plan) as server:
        start = time.monotonic()
        out = run(openai_backend(server, timeout=0.3), lambda b: b.generate(USER))
        elapsed = time.monotonic() - start
    log = server.log  # final: stop() woke the hang and waited for it
    assert out[0].text == answer(USER)
    assert [r.fault for r in log] == [fault, None] and log[1].status == 200
    if fault == "hang":  # gave up at the client timeout: the retry came while the first still hung
        assert elapsed >= 0.3 and log[1].arrival < log[0].finish


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


def test_rpm_limit_spreads_a_burst(clock):
    # rpm 1200 = 20 requests/s with a 1 s burst: 20 go at once, the next 10 follow at 20/s
    with FakeAPIServer() as server:
        limiter = RateLimiter(concurrency=64, rpm=1200)
        admitted = clock.admissions(limiter.requests)
        backend = openai_backend(server, limiter=limiter)

        async def burst(b):
            return await asyncio.gather(*[b.generate([{"role": "user", "content": f"q{i}"}]) for i in range(30)])

        run(backend, burst)
        assert len(server.log) == 30
    assert admitted[:20] == [0.0] * 20  # the burst itself was not held back
    assert admitted[20:] == pytest.approx([(k - 19) / 20 for k in range(20, 30)])


def test_tpm_bucket_waits_and_is_corrected_by_actual_usage(clock):
    limiter = RateLimiter(concurrency=4, tpm=6000)  # 100 tokens/s, bucket of 100

    async def main():
        t0 = clock.now
        async with limiter.slot(100):
            pass
        limiter.record_actual(100, 20)  # used only 20: 80 come back
        async with limiter.slot(80):
            pass
        t1 = clock.now
        async with limiter.slot(50):  # empty bucket: 50 tokens take 0.5 s to refill
            pass
        return t1 - t0, clock.now - t1

    fast, slow = asyncio.run(main())
    assert fast == 0.0 and slow == pytest.approx(0.5)


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
    # the system prompt is constant: one text block marked for the prompt cache
    assert body["system"] == [{"type": "text", "text": "Be brief.\n\nBe kind.", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [{"role": "user", "content": "Hi there"}]
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


def test_same_role_neighbours_merge():
    system, turns = cached_turns([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
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
        make_backend(BackendOptions(backend="openai"))
    assert str(err.value) == "OPENAI_API_KEY is not set (needed for --backend openai; or pass --api-key-file)"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(UserError, match="^ANTHROPIC_API_KEY is not set"):
        make_backend(BackendOptions(backend="anthropic"))
    with pytest.raises(UserError, match="unknown provider 'gemini'"):
        make_backend(BackendOptions(backend="gemini"))


def test_factory_defaults():
    b = make_backend(BackendOptions(backend="openai", concurrency="3", max_retries=2))
    assert (b.model, b.limiter.concurrency, b.retry.max_attempts) == ("gpt-4o-mini", 3, 2)
    assert make_backend(BackendOptions(backend="openai")).limiter.concurrency == 16  # auto, against the cloud API
    anthropic = make_backend(BackendOptions(backend="anthropic"))
    assert anthropic.model == provider_class("anthropic").default_model == "claude-haiku-4-5"
    local = make_backend(BackendOptions(backend="local", batch_size=4, device="cpu"))  # lazy: nothing loads yet
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


# -- adaptive limits: AIMD on 429s, Retry-After for everyone, buckets held ---------------------------

def limiter_in_flight(limiter: RateLimiter) -> list[tuple[int, int]]:
    """(the cap generation, requests in flight) as `limiter` gives each request its place, itself included:
    counted at the admission itself, not when the admitted coroutine next runs (a cut may come in between)."""
    admitted, admit = [], limiter._admit

    def counted() -> int:
        generation = admit()
        admitted.append((generation, limiter._in_flight))
        return generation

    limiter._admit = counted
    return admitted


def test_aimd_halves_the_cap_on_repeated_429s_once_per_burst_and_adds_one_per_window():
    limiter = RateLimiter(concurrency=16)

    async def succeed(k: int) -> None:
        for _ in range(k):
            async with limiter.slot():
                pass

    async def main():
        # stray 429s among successes (1 in 5) are noise: 2 of the last 10 outcomes is under half
        for i in range(200):
            async with limiter.slot() as admission:
                pass
            if i % 5 == 0:
                limiter.record_rate_limit(admission)
        assert (limiter.cap, limiter.stats["cuts"]) == (16, 0)
        # a burst: 16 requests let in together all come back 429 -> one cut, not four
        burst = [Admission(limiter.generation) for _ in range(16)]
        for admission in burst:
            limiter.record_rate_limit(admission)
        assert (limiter.cap, limiter.stats["cuts"]) == (8, 1)
        # still limited after the cut: three 429s of requests let in since then cut again
        again = Admission(limiter.generation)
        for _ in range(3):
            limiter.record_rate_limit(again)
        assert (limiter.cap, limiter.stats["cuts"]) == (4, 2)
        # additive increase: one slot per `cap` successes, 4+5+...+15 = 114 of them back to 16
        await succeed(113)
        assert limiter.cap == 15
        await succeed(1)
        assert limiter.cap == 16
        await succeed(50)
        assert limiter.cap == 16 and limiter.stats["lowest_cap"] == 4
        for _ in range(8):  # never below 1
            for _ in range(3):
                limiter.record_rate_limit(Admission(limiter.generation))
        assert limiter.cap == 1

    asyncio.run(main())


def test_a_request_let_in_before_a_cut_keeps_the_generation_it_was_let_in_under():
    limiter = RateLimiter(concurrency=1)

    async def main():
        async with limiter.slot() as first:
            waiting = asyncio.ensure_future(limiter.slot().__aenter__())
            await asyncio.sleep(0)  # it queues for the one place
        # the place passed to the waiter when `first` left; a cut comes before the waiter next runs
        for _ in range(3):
            limiter.record_rate_limit(first)
        assert limiter.generation == 1
        second = await waiting
        assert second.generation == 0  # its 429 would be news of the cut already made, not a new one

    asyncio.run(main())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_429_burst_lowers_peak_in_flight_then_it_recovers(provider):
    script = [None] * 24 + ["429"] * 8  # requests 25-32 hit a rate limit
    with FakeAPIServer(latency=0.05, faults=FaultPlan(script=script, retry_after="0.05")) as server:
        limiter = RateLimiter(concurrency=8)
        admitted = limiter_in_flight(limiter)
        backend = (openai_backend(server, limiter=limiter) if provider == "openai"
                   else anthropic_backend(server, limiter=limiter))

        async def burst(b):
            return await asyncio.gather(*[b.generate([{"role": "user", "content": f"q{i}"}]) for i in range(110)])

        out = run(backend, burst)
        server.wait_idle()
        log = server.log
    assert len(out) == 110 and [r.status for r in log].count(429) == 8
    # counted where the limiter lets requests in, not where the server sees them overlap: on a busy machine the
    # client may not get 8 requests onto the wire at once though it allowed them
    before = [n for generation, n in admitted if generation == 0]
    after = [n for generation, n in admitted if generation > 0]
    assert max(before[:24]) == 8  # at the limit before the burst
    assert after[0] <= 4 and limiter.stats["lowest_cap"] == 4  # halved once (not to 1: the 8 429s were one burst)
    assert max(after[-20:]) == 8  # +1 per window of successes: back to --concurrency
    assert limiter.stats["cuts"] == 1 and limiter.cap == 8


async def arrived(server: FakeAPIServer, n: int, timeout: float = 30.0) -> None:
    """Wait until the server has logged `n` requests (on arrival): an order that a fixed sleep only hopes for."""
    deadline = time.monotonic() + timeout
    while len(server.log) < n:
        assert time.monotonic() < deadline, f"only {len(server.log)} of {n} requests arrived"
        await asyncio.sleep(0.002)


def limiter_starts(limiter: RateLimiter) -> list[float]:
    """time.monotonic() as each request through `limiter` starts (its slot entered, any pause waited out):
    the client's own moment, where a server's arrival time also counts a busy machine's delay in sending."""
    starts, slot = [], limiter.slot

    @contextlib.asynccontextmanager
    async def counted(*args, **kwargs):
        async with slot(*args, **kwargs) as admission:
            starts.append(time.monotonic())
            yield admission

    limiter.slot = counted
    return starts


def test_repeated_429s_pause_every_new_request_not_just_the_retried_ones():
    with FakeAPIServer(latency=0.3) as server:
        limiter = RateLimiter(concurrency=4)
        starts = limiter_starts(limiter)
        backend = openai_backend(server, limiter=limiter)

        async def main(b):
            await b.generate(USER)  # the SDK client and its connections are up
            server.set_faults(FaultPlan(script=["429"] * 3, retry_after="0.4"))
            first = [asyncio.ensure_future(b.generate([{"role": "user", "content": f"first{i}"}])) for i in range(3)]
            await arrived(server, 1 + 3)  # they arrive first (the script's 429s are theirs), however busy the machine
            rest = [asyncio.ensure_future(b.generate([{"role": "user", "content": f"q{i}"}])) for i in range(6)]
            return await asyncio.gather(*first, *rest)

        run(backend, main)
        server.wait_idle()
        statuses = [r.status for r in server.log[1:]]
    # The first two 429s were lone ones: each freed slot went to a waiter at once. The third made them
    # repeated: from then nothing started until its Retry-After (0.4 s) had passed, the 3 retried requests
    # and the 3 still waiting alike (1 of the 6 had the 4th slot at once).
    assert statuses.count(429) == 3 and statuses.count(200) == 9 and limiter.stats["pauses"] == 1
    pause_end = limiter.paused_until
    pause_start = pause_end - 0.4
    later = starts[1:]
    assert len(later) == 12
    assert not [t for t in later if pause_start <= t < pause_end]
    assert sum(t >= pause_end for t in later) >= 6


def test_a_lone_429_delays_only_its_own_retry():
    with FakeAPIServer(latency=0.3) as server:
        limiter = RateLimiter(concurrency=4)
        backend = openai_backend(server, limiter=limiter)

        async def main(b):
            await b.generate(USER)
            server.set_faults(FaultPlan(script=["429"], retry_after="0.4"))
            first = asyncio.ensure_future(b.generate([{"role": "user", "content": "first"}]))
            await arrived(server, 1 + 1)
            rest = [asyncio.ensure_future(b.generate([{"role": "user", "content": f"q{i}"}])) for i in range(6)]
            return await asyncio.gather(first, *rest)

        run(backend, main)
        server.wait_idle()
        log = server.log[1:]
    limited = next(r for r in log if r.status == 429)
    retried = max(r.arrival for r in log if r.arrival > limited.finish and r.key == limited.key)
    others = [r.arrival - limited.finish for r in log if r.arrival > limited.finish and r.key != limited.key]
    assert others and min(others) < retried - limited.finish  # the waiting requests took the freed slot first
    assert retried - limited.finish >= 0.39 and limiter.stats["pauses"] == 0


def test_tpm_is_held_by_the_bucket_maths_and_corrected_by_actual_usage(clock):
    # tpm 6000 = 100 tokens/s, bucket of 100. Each request is estimated at 48 tokens (3 for "qNN"
    # + max_tokens 45); after it, the bucket gets back what the response says went unused.
    def arrivals(responder, n):
        with FakeAPIServer(responder) as server:
            clock.now = 0.0
            limiter = RateLimiter(concurrency=1, tpm=6000)
            times = clock.admissions(limiter.tokens)
            backend = openai_backend(server, limiter=limiter)
            messages = [[{"role": "user", "content": f"q{i:02d}"}] for i in range(n)]

            async def one_by_one(b):
                return [await b.generate(m, max_tokens=45) for m in messages]

            out = run(backend, one_by_one)
            assert len(server.log) == n
        assert all(estimate_tokens(m, 45) == 48 for m in messages)
        used = [c[0].usage.total_tokens for c in out]
        # request k is let in once 100 + 100 t >= (tokens used by requests before it) + 48
        predicted = [max(0.0, (sum(used[:k]) + 48 - 100) / 100) for k in range(n)]
        return times, predicted, used

    times, predicted, used = arrivals(lambda req: "word " * 100, 6)  # answers fill max_tokens
    assert used == [46] * 6  # 1 prompt word + 45 completion tokens
    assert times == pytest.approx(predicted, abs=1e-9)
    assert predicted[-1] == pytest.approx(1.78)
    times, predicted, used = arrivals(lambda req: "ok", 30)  # short answers: 46 of 48 come back each time
    assert used == [2] * 30 and predicted[-1] == pytest.approx(0.06)
    # uncorrected, the 30th would wait (29 * 48 + 48 - 100) / 100 = 13.4 s
    assert times == pytest.approx(predicted, abs=1e-9)


# -- prompt caching: marks become cache_control (Anthropic) or nothing at all (OpenAI) --------------

def test_cache_marks_become_anthropic_breakpoints_at_most_four():
    marked = lambda role, text: {"role": role, "content": text, CACHE_PREFIX_END: True}  # noqa: E731
    messages = [{"role": "system", "content": "Rules."},
                marked("user", "demo 1"), marked("assistant", "answer 1"), marked("user", "demo 2"),
                marked("assistant", "answer 2"), {"role": "user", "content": "real question"},
                {"role": "user", "content": "and more"}]
    system, turns = cached_turns(messages)
    assert system == [{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}]
    cc = {"type": "ephemeral"}
    # the system block + the 3 latest marks = 4; the earliest mark is dropped; unmarked turns stay strings
    assert turns == [{"role": "user", "content": "demo 1"},
                     {"role": "assistant", "content": [{"type": "text", "text": "answer 1", "cache_control": cc}]},
                     {"role": "user", "content": [{"type": "text", "text": "demo 2", "cache_control": cc}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "answer 2", "cache_control": cc}]},
                     {"role": "user", "content": "real question\n\nand more"}]
    # a marked turn merging with its same-role neighbour keeps the breakpoint where it was marked
    _, merged = cached_turns([marked("user", "shared"), {"role": "user", "content": "own"}])
    assert merged == [{"role": "user", "content": [{"type": "text", "text": "shared", "cache_control": cc},
                                                   {"type": "text", "text": "\n\nown"}]}]
    assert cached_turns([{"role": "user", "content": "hi"}]) == (None, [{"role": "user", "content": "hi"}])


def test_openai_bodies_carry_no_cache_marks_and_cached_tokens_are_counted():
    bodies = []

    def responder(req):
        bodies.append(req.raw)
        return "fine"

    messages = [{"role": "user", "content": "demo", CACHE_PREFIX_END: True}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "now you"}]
    with FakeAPIServer(responder, cache_usage=lambda req: (2, 0)) as server:
        out = run(openai_backend(server), lambda b: b.generate(messages, seed=1))
    assert bodies[0]["messages"] == [{"role": "user", "content": "demo"}, {"role": "assistant", "content": "ok"},
                                     {"role": "user", "content": "now you"}]
    # prompt 4 words, 2 of them read from the cache (prompt_tokens_details.cached_tokens)
    assert out[0].usage == Usage(prompt_tokens=4, completion_tokens=1, cached_tokens=2, requests=1)
    assert messages[0][CACHE_PREFIX_END] is True  # the caller's messages are left alone
