"""Client-side rate limits and retries, shared by the API backends.

`RateLimiter` keeps us under a provider's limits before it has to tell us (a semaphore for requests
in flight, token buckets for requests/min and tokens/min); `call_with_retries` handles it when it
does tell us anyway (429, 5xx, timeouts, cut-off bodies), honouring Retry-After.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from dataclasses import dataclass
from typing import AsyncIterator

from caikit.backends.base import Message
from caikit.backends.retry import retry_after_of_error


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


@dataclass(frozen=True)
class Admission:
    """A request's ticket from `RateLimiter.slot`: the cap generation it was let in under."""

    generation: int


class RateLimiter:
    """At most `cap` requests in flight, `rpm` requests and `tpm` tokens per minute.

    Buckets start full and hold `burst_seconds` worth of the rate, so a burst of rpm/60 requests
    goes at once and the rest follow at the steady rate. Callers share one limiter per backend.

    When the provider pushes back anyway, the limiter adapts (AIMD, as TCP does with its window):
    - a lone 429 among successes delays only its own retry (by Retry-After), but repeated 429s
      (`PAUSE_AFTER` of the latest `WINDOW` outcomes) mean the key is at its limit: then a
      Retry-After pauses every new request through this limiter, not just the retried one;
    - repeated 429s (at least 3, and half of the latest `WINDOW` outcomes) halve the in-flight
      cap, never below 1. Stray 429s among successes cut nothing (with 5% of requests answered
      429 at random, about one 429 in 1,000 cuts), and a burst cuts once: 429s of requests let
      in before the last cut are that cut's news, not a new one;
    - each `cap` successes in a row (one window's worth) give one slot back, up to `concurrency`.

    A timeout counts as overload too: a self-hosted server that serves fewer requests at once than are
    sent keeps the rest waiting in its queue, and the client's timeout counts that wait. So a timeout
    halves the cap at once (one per burst, as above: it wasted a whole --timeout of the server's work,
    where a 429 cost it nothing), and the request the client abandoned still
    holds its place for `abandoned_hold` seconds -- the server is still working on it -- so its retry
    waits until the in-flight count has come down instead of doubling the queue.
    """

    WINDOW = 10  # latest outcomes (429 or success) looked at to tell a rate limit from stray 429s
    CUT_AFTER, CUT_SHARE = 3, 0.5  # cut when at least 3, and half, of them were 429s
    PAUSE_AFTER = 3  # pause everyone when 3 of the latest WINDOW outcomes (any generation) were 429s

    def __init__(self, concurrency: int = 16, rpm: float | None = None, tpm: float | None = None, *,
                 burst_seconds: float = 1.0, max_pause: float = 300.0, abandoned_hold: float = 0.0):
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency  # the ceiling (--concurrency)
        self.cap = concurrency  # the current in-flight cap, between 1 and concurrency
        self.requests = _TokenBucket(rpm, burst_seconds) if rpm else None
        self.tokens = _TokenBucket(tpm, burst_seconds) if tpm else None
        self.max_pause = max_pause  # never trust a Retry-After longer than this
        self.paused_until = 0.0  # time.monotonic(): no request starts before this
        self.generation = 0  # bumped by every cut
        self.abandoned_hold = abandoned_hold
        self.stats = {"cuts": 0, "raises": 0, "pauses": 0, "lowest_cap": concurrency, "timeouts": 0}
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=self.WINDOW)  # True: a 429
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.WINDOW)  # same, never cleared
        self._successes = 0  # since the cap last changed
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.Lock:
        # Waiters and locks belong to one event loop; a second asyncio.run() gets fresh ones while the
        # bucket levels and the cap (plain numbers) carry over.
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._in_flight = 0
            self._waiters: collections.deque[asyncio.Future] = collections.deque()
            self._bucket_lock = asyncio.Lock()
            self._timer: asyncio.TimerHandle | None = None
        return self._bucket_lock

    @contextlib.asynccontextmanager
    async def slot(self, estimated_tokens: int = 0) -> AsyncIterator[Admission]:
        bucket_lock = self._bind()
        generation = await self._acquire()
        try:
            async with bucket_lock:  # first come, first served on the buckets
                if self.requests is not None:
                    await self.requests.take(1)
                if self.tokens is not None:
                    await self.tokens.take(estimated_tokens)
            while (pause := self.paused_until - time.monotonic()) > 0:  # a pause that began meanwhile
                await asyncio.sleep(pause)
            admission = Admission(generation)  # the cap it was let in under: a cut since is news of its 429
            yield admission
            self._record_success(admission)  # reached only when the request raised nothing
        finally:
            self._release()

    async def _acquire(self) -> int:
        """Wait for a place under the cap, first come first served, and outside any pause; the cap
        generation the place was given under."""
        if not self._waiters and self._in_flight < self.cap and time.monotonic() >= self.paused_until:
            return self._admit()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake()
        try:
            return await waiter  # resolved by _wake, which counted us in
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # let in just as we were cancelled: pass the place on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Let waiters in while there is room, or come back when the pause ends."""
        pause = self.paused_until - time.monotonic()
        if pause > 0:
            if self._waiters and self._timer is None:
                self._timer = self._loop.call_later(pause, self._end_pause)
            return
        while self._waiters and self._in_flight < self.cap:
            waiter = self._waiters.popleft()
            if not waiter.done():  # (a cancelled waiter is skipped)
                waiter.set_result(self._admit())

    def _admit(self) -> int:
        """Count one more request in flight, at the moment it gets its place (a waiter resumes later)."""
        self._in_flight += 1
        return self.generation

    def _end_pause(self) -> None:
        self._timer = None
        self._wake()

    def _record_success(self, admission: Admission) -> None:
        self._recent.append(False)
        if admission.generation == self.generation:
            self._outcomes.append(False)
        if self.cap < self.concurrency:
            self._successes += 1
            if self._successes >= self.cap:  # additive increase: one slot per window of successes
                self.cap += 1
                self._successes = 0
                self.stats["raises"] += 1
                self._wake()

    def record_rate_limit(self, admission: Admission | None, retry_after: float | None = None) -> None:
        """A 429. Repeated ones pause new requests for Retry-After, and may halve the in-flight cap.

        (With 5% of requests answered 429 at random, about 7% of those 429s pause everyone.)"""
        self._recent.append(True)
        if retry_after and sum(self._recent) >= self.PAUSE_AFTER:
            self.paused_until = max(self.paused_until, time.monotonic() + min(retry_after, self.max_pause))
            self.stats["pauses"] += 1
        if admission is not None and admission.generation == self.generation:
            self._outcomes.append(True)
            limited = sum(self._outcomes)
            if limited >= self.CUT_AFTER and limited >= self.CUT_SHARE * len(self._outcomes):
                self._cut()

    def _cut(self) -> None:
        self.cap = max(1, self.cap // 2)  # multiplicative decrease
        self.generation += 1
        self._outcomes.clear()
        self._successes = 0
        self.stats["cuts"] += 1
        self.stats["lowest_cap"] = min(self.stats["lowest_cap"], self.cap)

    def after_failure(self, exc: BaseException, admission: Admission | None) -> None:
        """`call_with_retries`' on_retry hook: a failed attempt that was a 429 or a timeout slows everyone down."""
        if getattr(exc, "status_code", None) == 429:
            self.record_rate_limit(admission, retry_after_of_error(exc))
        elif type(exc).__name__ == "APITimeoutError":  # both SDKs name it so
            self.stats["timeouts"] += 1
            self._recent.append(True)
            if admission is not None and admission.generation == self.generation:
                self._cut()  # one is enough: each costs the server a whole --timeout of work for nothing
            self._hold_abandoned()

    def _hold_abandoned(self) -> None:
        """Count an abandoned request as in flight a while longer: the server is still working on it."""
        if self.abandoned_hold <= 0 or self._loop is None:
            return
        self._in_flight += 1
        self._loop.call_later(self.abandoned_hold, self._release)

    def resize(self, concurrency: int) -> None:
        """A new ceiling (what `caikit probe` found the server serves at once), before or between runs."""
        self.concurrency = self.cap = max(1, concurrency)
        self.stats["lowest_cap"] = min(self.stats["lowest_cap"], self.cap)

    def record_actual(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the response says how many tokens the request really used."""
        if self.tokens is not None:
            self.tokens.give_back(estimated - actual)


def estimate_tokens(messages: list[Message], max_tokens: int = 0, n: int = 1) -> int:
    """Rough pre-request token count for the TPM bucket: ~4 characters per token, plus the budget."""
    chars = sum(len(m.get("content") or "") + 8 for m in messages)
    return math.ceil(chars / 4) + max_tokens * n


class TokenCounter:
    """For estimates: 4 characters a token plus 8 characters a message, as `estimate_tokens`; or, given
    a tiktoken encoding, its count plus 4 tokens a message (for Claude models an approximation).
    Counts are kept in additive `units` (characters or tokens) and rounded up to tokens per request."""

    def __init__(self, encoding=None):
        self.encoding = encoding
        self.name = "tiktoken" if encoding is not None else "chars/4"

    def text_units(self, text: str) -> int:
        return len(text) if self.encoding is None else len(self.encoding.encode(text, disallowed_special=()))

    def units(self, messages) -> int:
        overhead = 8 if self.encoding is None else 4
        return sum(self.text_units(m.get("content") or "") + overhead for m in messages)

    def tokens(self, units: float) -> int:
        return math.ceil(units / 4 if self.encoding is None else units)

    def placeholder(self, tokens: int) -> str:
        """Text that counts as `tokens` tokens."""
        return "x" * (4 * tokens) if self.encoding is None else " x" * tokens


def token_counter(model: str, kind: str = "auto") -> TokenCounter:
    """tiktoken where importable and its encoding loads (it may need a download), else chars/4."""
    if kind == "chars":
        return TokenCounter()
    try:
        import tiktoken

        try:
            return TokenCounter(tiktoken.encoding_for_model(model))
        except KeyError:
            return TokenCounter(tiktoken.get_encoding("o200k_base"))
    except Exception:  # noqa: BLE001 - not installed, or offline without the encoding file
        return TokenCounter()
