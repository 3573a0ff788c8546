"""Client-side rate limits and retries, shared by the API backends.

`RateLimiter` keeps us under a provider's limits before it has to tell us (a semaphore for requests
in flight, token buckets for requests/min and tokens/min); `call_with_retries` handles it when it
does tell us anyway (429, 5xx, timeouts, cut-off bodies), honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from caikit.backends.base import BackendError, Message

T = TypeVar("T")


class _TokenBucket:
    """Continuous-refill bucket: `rate` units/second, holding at most `capacity` (the burst)."""

    def __init__(self, per_minute: float, burst_seconds: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float) -> None:
        """Wait until `amount` fits, then take it. A request larger than the whole bucket waits for a
        full bucket and leaves it in debt, so the long-run rate still holds."""
        need = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """At most `concurrency` requests in flight, `rpm` requests and `tpm` tokens per minute.

    Buckets start full and hold `burst_seconds` worth of the rate, so a burst of rpm/60 requests
    goes at once and the rest follow at the steady rate. Callers share one limiter per backend.
    """

    def __init__(self, concurrency: int = 16, rpm: float | None = None, tpm: float | None = None, *,
                 burst_seconds: float = 1.0):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.requests = _TokenBucket(rpm, burst_seconds) if rpm else None
        self.tokens = _TokenBucket(tpm, burst_seconds) if tpm else None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _primitives(self) -> tuple[asyncio.Semaphore, asyncio.Lock]:
        # asyncio primitives belong to one event loop; a second asyncio.run() gets fresh ones
        # while the bucket levels (plain numbers) carry over.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._semaphore, self._bucket_lock = asyncio.Semaphore(self.concurrency), asyncio.Lock()
        return self._semaphore, self._bucket_lock

    @contextlib.asynccontextmanager
    async def slot(self, estimated_tokens: int = 0) -> AsyncIterator[None]:
        semaphore, bucket_lock = self._primitives()
        async with semaphore:
            async with bucket_lock:  # first come, first served on the buckets
                if self.requests is not None:
                    await self.requests.take(1)
                if self.tokens is not None:
                    await self.tokens.take(estimated_tokens)
            yield

    def record_actual(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the response says how many tokens the request really used."""
        if self.tokens is not None:
            self.tokens.give_back(estimated - actual)


def estimate_tokens(messages: list[Message], max_tokens: int = 0, n: int = 1) -> int:
    """Rough pre-request token count for the TPM bucket: ~4 characters per token, plus the budget."""
    chars = sum(len(m.get("content") or "") + 8 for m in messages)
    return math.ceil(chars / 4) + max_tokens * n


@dataclass
class RetryPolicy:
    """How hard to retry a failing request."""

    max_attempts: int = 6  # attempts in all, the first included
    initial_wait: float = 0.5  # seconds before the first retry; doubles each time
    max_wait: float = 30.0  # cap on the exponential backoff
    jitter: bool = True  # wait a random 50-100% of the backoff, so clients don't retry in lockstep
    max_retry_after: float = 300.0  # never trust a Retry-After longer than this

    def backoff(self, retry_number: int) -> float:
        wait = min(self.max_wait, self.initial_wait * 2 ** (retry_number - 1))
        return wait * random.uniform(0.5, 1.0) if self.jitter else wait


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds ("2", "0.05") or an HTTP-date."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Retry-After from response headers (OpenAI also sends `retry-after-ms`)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+\S+)")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (known values and anything key-shaped) from text bound for users."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRET.sub("***", text)


def public_url(url: str | None) -> str | None:
    """`url` without any user:password part, fit for records and logs."""
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_describe(exc: BaseException) -> str:
    """`429 RateLimitError: message` — status code (if any), type and a short message."""
    status = getattr(exc, "status_code", None)
    prefix = f"{status} " if status is not None else ""
    return f"{prefix}{type(exc).__name__}: {one_line(exc)}"


def retry_after_of_error(exc: BaseException) -> float | None:
    """Retry-After of an SDK status error (its `.response.headers`), if the server sent one."""
    return retry_after_from_headers(getattr(getattr(exc, "response", None), "headers", None))


def describe_api_error(exc: BaseException) -> str:
    """One line for an OpenAI/Anthropic SDK error: `HTTP 429 rate_limit_error: slow down`.

    Reads the provider's error JSON ({"error": {"type", "message"}}) rather than the SDK's message,
    which embeds the whole body."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        body = getattr(exc, "body", None)
        err = body.get("error", body) if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        kind = err.get("type") or type(exc).__name__
        return f"HTTP {status} {kind}: {one_line(err.get('message') or getattr(exc, 'message', '') or '')}"
    name = type(exc).__name__
    if name == "APITimeoutError":
        return "request timed out"
    if name == "APIConnectionError":
        return "connection error (server unreachable or closed the connection)"
    if isinstance(exc, ValueError) and ("JSON" in name or "Validation" in name):
        return f"malformed response body ({name})"
    return default_describe(exc)


async def call_with_retries(fn: Callable[[], Awaitable[T]], policy: RetryPolicy, *,
                            is_retryable: Callable[[BaseException], bool],
                            retry_after_of: Callable[[BaseException], float | None],
                            on_retry: Callable[[int, BaseException, float], Any] | None = None,
                            describe: Callable[[BaseException], str] = default_describe,
                            secrets: tuple[str, ...] = ()) -> T:
    """Call `fn()` until it succeeds, fails with a non-retryable error, or the attempts run out.

    Waits max(Retry-After, jittered exponential backoff) between attempts. Failures end in a
    BackendError with one line of cause (status code + short message), never headers or keys;
    `retryable` on it says whether a later rerun could succeed.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        server_says = retry_after_of(exc) if exc is not None else None
        server_says = min(server_says, policy.max_retry_after) if server_says is not None else 0.0
        return max(server_says, policy.backoff(state.attempt_number))

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.attempt_number, state.outcome.exception(), state.next_action.sleep)

    retrying = AsyncRetrying(stop=stop_after_attempt(max(1, policy.max_attempts)), wait=wait,
                             retry=retry_if_exception(is_retryable), before_sleep=before_sleep, reraise=True)
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                return await fn()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clean line
        retryable = is_retryable(exc)
        where = f" after {attempts} attempts" if retryable else ""
        message = redact(f"request failed{where}: {describe(exc)}", secrets)
        raise BackendError(message, retryable=retryable) from None
    raise AssertionError("unreachable")  # pragma: no cover
