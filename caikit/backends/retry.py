"""Retrying a failed request: the attempt budget, jittered exponential backoff that honours Retry-After, and
one clean line of cause (status code + short message, never headers or keys) when the attempts run out."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from caikit.backends.base import BackendError
from caikit.secrets import one_line, redact

T = TypeVar("T")


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

    # A plain loop: tenacity's machinery cost more CPU per request than the request's own HTTP exchange
    attempts = 0
    while True:
        attempts += 1
        try:
            return await fn()
        except BackendError:  # one clean line already
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clean line
            retryable = is_retryable(exc)
            if retryable and attempts < max(1, policy.max_attempts):
                server_says = retry_after_of(exc)
                server_says = min(server_says, policy.max_retry_after) if server_says is not None else 0.0
                wait = max(server_says, policy.backoff(attempts))
                if on_retry is not None:
                    on_retry(attempts, exc, wait)
                await asyncio.sleep(wait)
                continue
            where = f" after {attempts} attempts" if retryable else ""
            message = redact(f"request failed{where}: {describe(exc)}", secrets)
            raise BackendError(message, retryable=retryable, attempts=attempts,
                               status=getattr(exc, "status_code", None)) from None

