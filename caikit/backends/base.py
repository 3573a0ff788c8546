"""The backend contract every provider implements.

A backend turns chat messages into completions (`generate`) and, where the provider can, scores
a fixed set of answer options by log-probability (`option_logprobs`), which the judge uses for
soft labels. API backends are async and concurrent; the local backend batches concurrent calls.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

# Prompt caching. A stage marks the last message of a conversation's constant prefix (few-shot
# demonstrations, instructions shared by every request) with this key; a system prompt counts as
# constant without a mark. The Anthropic backend turns marks into `cache_control` breakpoints;
# OpenAI caches prefixes by itself, so the OpenAI and local backends just drop the key.
CACHE_PREFIX_END = "cache_prefix_end"


def mark_prefix_end(messages: list[Message]) -> list[Message]:
    """`messages` (copied) with the last one marked as the end of a cacheable constant prefix."""
    if not messages:
        return list(messages)
    return [*messages[:-1], {**messages[-1], CACHE_PREFIX_END: True}]


def prefix_ends(messages: list[Message]) -> list[int]:
    """Indices of the messages marked as the end of a cacheable prefix."""
    return [i for i, m in enumerate(messages) if m.get(CACHE_PREFIX_END)]


def without_cache_marks(messages: list[Message]) -> list[Message]:
    """`messages` as plain {role, content} turns: the same list when nothing is marked."""
    if not any(CACHE_PREFIX_END in m for m in messages):
        return messages
    return [{k: v for k, v in m.items() if k != CACHE_PREFIX_END} for m in messages]


@dataclass
class Usage:
    """Token counts of one request (or a sum of requests)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from a provider cache (read)
    cache_write_tokens: int = 0  # prompt tokens written to a provider cache (Anthropic)
    requests: int = 0

    def add(self, other: "Usage") -> "Usage":
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.requests += other.requests
        return self

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens,
                "requests": self.requests}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Usage":
        d = d or {}
        return cls(**{k: int(d.get(k, 0) or 0) for k in cls.__dataclass_fields__})


@dataclass
class Completion:
    """One sampled answer."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | provider-specific
    usage: Usage = field(default_factory=Usage)  # usage of the whole request, on the first completion only

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, "usage": self.usage.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Completion":
        return cls(text=d["text"], finish_reason=d.get("finish_reason"), usage=Usage.from_dict(d.get("usage")))


# HTTP statuses that say the whole run is misconfigured (wrong key, no permission, unknown model, a request
# the server will never take): the run stops at once instead of failing prompt by prompt.
FATAL_STATUS = {400, 401, 403, 404}
_ONE_ITEM_TOO_LONG = ("context length", "context_length", "maximum context", "too long", "too many tokens")


class BackendError(Exception):
    """A request failed for good (after retries). `retryable` says whether a later rerun may succeed;
    `attempts` how many requests were sent; `status` the last HTTP status, if any."""

    def __init__(self, message: str, *, retryable: bool = True, attempts: int = 1, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.attempts = attempts
        self.status = status

    @property
    def fatal(self) -> bool:
        """Does this failure stop the whole run (401/403/404, a 400 that no prompt will get past)? A 400 for
        one over-long prompt is that prompt's failure, not the run's."""
        if self.retryable or self.status not in FATAL_STATUS:
            return False
        return not (self.status == 400 and any(w in str(self).lower() for w in _ONE_ITEM_TOO_LONG))


class MalformedResponse(ValueError):
    """A 2xx whose body is not a usable answer (no choices, wrong types). Retryable.

    The SDKs build their response objects from any JSON without validating it, so each provider
    checks the shape inside its retried attempt: a broken body is retried, then becomes a
    BackendError, never an AttributeError deep in a stage."""


def answer_cap(max_tokens: int | None) -> int | None:
    """The longest answer text (characters) a request for `max_tokens` may get back: a generous 32 characters a
    token plus 4 KiB. A server that ignores max_tokens (a 20 MB answer to 256 tokens) gets a malformed-response
    retry, then a failure row, never a record."""
    return None if not max_tokens else 32 * int(max_tokens) + 4096


def check_answer_size(text: str | None, max_tokens: int | None) -> None:
    cap = answer_cap(max_tokens)
    if cap is not None and text is not None and len(text) > cap:
        raise MalformedResponse(f"an answer of {len(text):,} characters to a request for {max_tokens} tokens "
                                "(the server ignored max_tokens)")


def token_count(value: Any) -> int:
    """A token count read from a response: a non-negative int, else 0 (broken usage is not worth a retry)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def is_text(value: Any) -> bool:
    """None or a string: what an optional text field of a response may hold."""
    return value is None or isinstance(value, str)


class LogprobsUnsupported(BackendError):
    """The provider cannot return option log-probabilities (e.g. Anthropic): use votes instead."""

    def __init__(self, message: str = "this backend cannot return log-probabilities"):
        super().__init__(message, retryable=False)


class Backend(abc.ABC):
    """A chat model behind some transport. Subclasses declare their capabilities (the registry and every
    caller read these, never a provider's name)."""

    name: str = "base"
    default_model: str = ""
    supports_logprobs: bool = False  # option log-probs for soft judge labels
    honours_n: bool = True  # one request returns n samples (False: n samples cost n requests)
    batch_class: str | None = None  # "module:Class" of the provider's batch API, if it has one
    cloud_hosts: tuple[str, ...] = ()  # hosts that are the provider's own API (others are self-hosted servers)
    in_process: bool = False  # the model runs here (no API, no price, batches by itself)
    openai_compatible: bool = False  # speaks the chat-completions wire format: a self-hosted one can be probed
    prices: dict[str, Any] = {}  # model (or dated-snapshot prefix) -> cost.Price, USD per 1M tokens

    def __init__(self, model: str):
        self.model = model

    @classmethod
    def from_options(cls, opts, *, in_flight: int) -> "Backend":
        """A backend for registry.BackendOptions `opts`, with `in_flight` requests allowed at once."""
        raise NotImplementedError

    @classmethod
    def is_cloud(cls, base_url: str | None) -> bool:
        """Is `base_url` (None/'': the default) the provider's own API rather than a self-hosted server?"""
        if not base_url:
            return True
        from urllib.parse import urlsplit

        return (urlsplit(base_url).hostname or "") in cls.cloud_hosts

    @classmethod
    def cached_prefix_tokens(cls, model: str, prefix_tokens: int) -> int:
        """How many tokens of a shared `prefix_tokens`-long prefix the provider serves from its prompt cache."""
        return 0

    @abc.abstractmethod
    async def generate(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[Completion]:
        """Return `n` completions for one conversation. Raises BackendError when it fails for good."""

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        """Log-probability of each option string as the next assistant tokens (e.g. "A", "B").

        Values are unnormalised log-probs; options the provider did not rank get -inf.
        """
        raise LogprobsUnsupported()

    def describe(self) -> dict[str, Any]:
        """What goes into records and reports: never secrets."""
        return {"backend": self.name, "model": self.model}

    def prepare_to_send(self) -> None:
        """Called once before a run's first request, and only when it has requests to send: load what sending
        needs (an HTTP library) outside the first request's timing."""

    async def aclose(self) -> None:
        """Release connections / threads."""


async def fill_to_n(backend: Backend, messages: list[Message], completions: list[Completion], usage: Usage, *,
                    n: int, temperature: float, max_tokens: int, stop: list[str] | None,
                    seed: int | None) -> list[Completion]:
    """`n` completions, the first carrying `usage` of all requests. Servers that ignore `n` (llama.cpp,
    Ollama) answer one: the missing samples are asked for one by one, with seeds seed+1, seed+2, ..."""
    import asyncio

    if len(completions) < n:
        more = await asyncio.gather(*[
            backend.generate(messages, n=1, temperature=temperature, max_tokens=max_tokens, stop=stop,
                             seed=None if seed is None else seed + i)
            for i in range(1, n - len(completions) + 1)])
        for (extra,) in more:
            usage.add(extra.usage)
            completions.append(Completion(extra.text, extra.finish_reason))
    completions = completions[:n]
    completions[0].usage = usage
    return completions
