"""What the fake servers share: the request a responder sees, fault plans and their seeded draws, the log.

Kept apart from fake_api.py (the online endpoints) and fake_batch.py (the batch endpoints), which both use it.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field
from typing import Any, Callable

FAULT_KINDS = ("429", "500", "503", "hang", "truncated", "disconnect")

ERROR_TYPES = {  # status -> (OpenAI error type, Anthropic error type)
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    404: ("invalid_request_error", "not_found_error"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    503: ("server_error", "overloaded_error"),
}


@dataclass
class FakeRequest:
    """One parsed request, as a responder sees it. `messages` include the system prompt first."""

    provider: str  # "openai" | "anthropic"
    model: str
    messages: list[dict[str, str]]
    n: int = 1
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    key: str = ""  # stable hash of the body (messages + params)
    index: int = 0  # which of the n choices is being answered
    probe: bool = False  # one of `caikit probe`'s requests: answered by default_responder
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def last_user_message(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass
class FaultPlan:
    """Which requests fail, and how.

    A request first consults `always_fail_keys` (True -> 500, every time), then the `script`
    (the i-th request to arrive gets script[i]; None means answer normally), then the seeded `rates`.
    `max_faults_per_key` caps how often the same body fails, so a client that retries gets through.
    """

    rates: dict[str, float] = field(default_factory=dict)  # kind -> probability per request
    script: list[str | None] = field(default_factory=list)
    seed: int = 0
    retry_after: float | str | None = 1  # Retry-After header of a 429: seconds ("0.05") or an HTTP-date
    hang_seconds: float = 5.0  # how long a "hang" stalls before it answers (or drops)
    hang_then: str = "respond"  # "respond" | "drop"
    max_faults_per_key: int | None = None
    always_fail_keys: Callable[[FakeRequest], bool] | None = None

    def __post_init__(self) -> None:
        unknown = [k for k in [*self.rates, *self.script] if k is not None and k not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULT_KINDS)}")
        if self.hang_then not in ("respond", "drop"):
            raise ValueError("hang_then must be 'respond' or 'drop'")


@dataclass
class LoggedRequest:
    """What the server saw and did. Times are time.monotonic() seconds; logged on arrival."""

    arrival: float
    provider: str
    path: str
    key: str = ""  # "" until the body parsed (401/404/400 answers)
    finish: float | None = None  # None while still in flight (e.g. a hang)
    status: int | None = None  # None while in flight; 0: no response (disconnect, dropped hang)
    fault: str | None = None
    started: float | None = None  # when a slot began working on it (after waiting in line, with `slots`)


def draw_fault(rng: random.Random, kinds: tuple[str, ...], rates: dict[str, float]) -> str | None:
    """One seeded draw: kind k with probability rates[k] (taken in `kinds` order), else None."""
    draw, cumulative = rng.random(), 0.0
    for kind in kinds:
        cumulative += rates.get(kind, 0.0)
        if draw < cumulative:
            return kind
    return None


def count_fault(kind: str | None, counts: collections.Counter, key: str, cap: int | None) -> str | None:
    """`kind`, unless `key` has already had `cap` faults (then None, so a retry gets through); counted."""
    if kind and cap is not None and counts[key] >= cap:
        return None
    if kind:
        counts[key] += 1
    return kind
