"""Anthropic messages API. No log-probabilities: the judge falls back to sampled / parsed votes.

Differences from the chat-completions shape handled here: system messages travel in `system`,
`n` samples are `n` concurrent requests, temperature lives in [0, 1] and is deprecated from
Claude 4.7 on (recent SDKs no longer take it as an argument: it goes in `extra_body`), prompt
caching is asked for with `cache_control` breakpoints (on the system prompt and on the last turn
of each prefix a stage marked constant, see `base.mark_prefix_end`), and usage reports cache reads
and writes beside (not inside) `input_tokens`.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from caikit.backends.api import APIBackend, split_base_url
from caikit.backends.base import (BackendError, Completion, LogprobsUnsupported, MalformedResponse, Message, Usage,
                                  check_answer_size,
                                  is_text, prefix_ends, token_count)
from caikit.backends.cost import Price, lookup_model
from caikit.backends.http_client import AiohttpClient
from caikit.backends.limits import RateLimiter, estimate_tokens
from caikit.backends.retry import RetryPolicy, call_with_retries, describe_api_error, retry_after_of_error
from caikit.errors import UserError

ANTHROPIC_VERSION = "2023-06-01"  # the Messages API version header (--http-client aiohttp)
MAX_CACHE_BREAKPOINTS = 4  # the API's limit per request
# Prompt caching: Anthropic caches up to each `cache_control` breakpoint, from a per-model minimum
# (shorter marked prefixes are simply not cached).
CACHE_MIN = {"claude-haiku-4-5": 4096, "claude-opus-4-5": 4096, "claude-opus-4-6": 4096,
             "claude-sonnet-4-6": 2048, "claude-3-5-haiku": 2048, "claude-3-haiku": 2048}
CACHE_MIN_DEFAULT = 1024  # Sonnet 3.7 / 4 / 4.5, Opus 4 / 4.1


def _price(input: float, output: float) -> Price:  # noqa: A002
    return Price(input, output, round(input * 0.1, 6), round(input * 1.25, 6))  # cache read 0.1x, 5-minute write 1.25x


# As published by Anthropic (standard tier, 2025), USD per 1M tokens: input, output.
PRICES: dict[str, Price] = {
    "claude-3-haiku": _price(0.25, 1.25),
    "claude-3-5-haiku": _price(0.80, 4.00),
    "claude-haiku-4-5": _price(1.00, 5.00),
    "claude-3-5-sonnet": _price(3.00, 15.00),
    "claude-3-7-sonnet": _price(3.00, 15.00),
    "claude-sonnet-4": _price(3.00, 15.00),
    "claude-sonnet-4-5": _price(3.00, 15.00),
    "claude-3-opus": _price(15.00, 75.00),
    "claude-opus-4": _price(15.00, 75.00),
    "claude-opus-4-1": _price(15.00, 75.00),
    "claude-opus-4-5": _price(5.00, 25.00),
}
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _import_sdk():
    try:
        import anthropic
    except ImportError:
        raise UserError("--backend anthropic needs the anthropic package: pip install 'anthropic>=0.34'") from None
    return anthropic


def accepts_temperature(model: str) -> bool:
    """Claude models before 4.7 take `temperature`; later ones answer 400 "`temperature` is deprecated",
    and so may models we cannot date, so those are sent none (the model's default applies)."""
    name = model.split("/")[-1].removeprefix("anthropic.")
    if re.match(r"claude-(instant|2|3)", name):
        return True
    m = re.match(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?=$|[-@:.])", name)
    return bool(m) and (int(m.group(1)), int(m.group(2) or 0)) < (4, 7)


def cached_turns(messages: list[Message]) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system blocks, turns) for `messages.create`: system messages join into `system`, same-role
    neighbours merge (the API wants user and assistant turns to alternate), and prompt-cache
    breakpoints are set.

    The system prompt is one text block marked `cache_control`; so is the last content block of
    each marked message (the latest ones, up to 4 breakpoints in all). Unmarked turns keep plain
    string content; a marked turn becomes a list of text blocks, also when it merges with a
    same-role neighbour (which then follows in a block of its own, so the cached prefix ends
    exactly at the mark)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    marks = [i for i in prefix_ends(messages) if messages[i]["role"] != "system" and messages[i]["content"]]
    room = MAX_CACHE_BREAKPOINTS - (1 if system else 0)
    marked = set(marks[-room:]) if room > 0 else set()
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if m["role"] == "system":
            continue
        block: dict[str, Any] = {"type": "text", "text": m["content"]}
        if i in marked:
            block["cache_control"] = {"type": "ephemeral"}
        if not turns or turns[-1]["role"] != m["role"]:
            turns.append({"role": m["role"], "content": [block] if i in marked else m["content"]})
            continue
        previous = turns[-1]["content"]
        if isinstance(previous, str) and i not in marked:
            turns[-1] = {"role": m["role"], "content": previous + "\n\n" + m["content"]}
        else:  # same text as the string merge, in blocks: the breakpoint stays where it was marked
            blocks = previous if isinstance(previous, list) else [{"type": "text", "text": previous}]
            turns[-1] = {"role": m["role"], "content": [*blocks, {**block, "text": "\n\n" + m["content"]}]}
    system_blocks = ([{"type": "text", "text": "\n\n".join(system), "cache_control": {"type": "ephemeral"}}]
                     if system else None)
    return system_blocks, turns


class AnthropicBackend(APIBackend):
    """Claude over the official `anthropic` SDK, rate-limited and retried by caikit."""

    name = "anthropic"
    default_model = "claude-haiku-4-5"
    supports_logprobs = False
    honours_n = False  # no `n`: n samples are n requests
    batch_class = "caikit.backends.batch_anthropic:AnthropicBatches"
    cloud_hosts = ("api.anthropic.com",)
    prices = PRICES

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "ANTHROPIC_API_KEY",
                 timeout: float = 60.0, retry: RetryPolicy | None = None, limiter: RateLimiter | None = None,
                 api_key_file: str | None = None, http_client: str | None = None):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, timeout=timeout, retry=retry,
                         limiter=limiter, api_key_file=api_key_file, http_client=http_client)
        self.send_temperature = accepts_temperature(model)
    import_sdk = staticmethod(_import_sdk)

    @classmethod
    def cached_prefix_tokens(cls, model: str, prefix_tokens: int) -> int:
        key = lookup_model(model.split("/")[-1], CACHE_MIN)
        return prefix_tokens if prefix_tokens >= CACHE_MIN.get(key, CACHE_MIN_DEFAULT) else 0

    def make_client(self):
        base_url, query = split_base_url(self.base_url)  # ?api-version=...: sent with every request
        return self._sdk.AsyncAnthropic(api_key=self._api_key, base_url=base_url, default_query=query,
                                        timeout=self.timeout, max_retries=0)

    def make_lean_client(self) -> AiohttpClient:
        base = self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        return AiohttpClient(base, {"x-api-key": self._api_key, "anthropic-version": ANTHROPIC_VERSION}, self.timeout)

    async def _send(self, params: dict[str, Any]):
        if self.http_client != "aiohttp":
            return await self._client().messages.create(**params)
        body = {k: v for k, v in params.items() if k != "extra_body"}  # merged into the body, as the SDK does
        return await self._client().post_json("/v1/messages", {**body, **params.get("extra_body", {})})


    @staticmethod
    def usage_of(message) -> Usage:
        """Anthropic's input_tokens exclude cache reads/writes; ours include them (see cost.py)."""
        u = getattr(message, "usage", None)
        if u is None:
            return Usage(requests=1)
        read = token_count(getattr(u, "cache_read_input_tokens", 0))
        written = token_count(getattr(u, "cache_creation_input_tokens", 0))
        return Usage(prompt_tokens=token_count(getattr(u, "input_tokens", 0)) + read + written,
                     completion_tokens=token_count(getattr(u, "output_tokens", 0)),
                     cached_tokens=read, cache_write_tokens=written, requests=1)

    async def _one(self, params: dict[str, Any], estimated: int) -> tuple[Completion, Usage]:
        admission = None  # the limiter's ticket for the latest attempt: tells its 429 apart from older ones

        async def attempt():
            nonlocal admission
            async with self.limiter.slot(estimated) as admission:
                self.check_not_refused()
                message = await self._send(params)
            check_message(message, max_tokens=params.get("max_tokens"))
            return message

        try:
            message = await call_with_retries(attempt, self.retry, is_retryable=self.is_retryable,
                                              retry_after_of=retry_after_of_error, describe=describe_api_error,
                                              on_retry=lambda n, exc, wait: self.limiter.after_failure(exc, admission),
                                              secrets=(self._api_key,))
        except BackendError as e:
            text = str(e).lower()
            if e.retryable or "temperature" not in text or "temperature" not in params.get("extra_body", {}) \
                    or not any(w in text for w in ("deprecated", "not supported", "unsupported")):
                self.refuse_if_fatal(e)
                raise
            self.send_temperature = False  # a model newer than accepts_temperature knows: ask again without
            params = {k: v for k, v in params.items() if k != "extra_body"}
            return await self._one(params, estimated)
        usage = self.usage_of(message)
        self.limiter.record_actual(estimated, usage.total_tokens or estimated)
        self.total_usage.add(usage)
        return completion_from_message(message), usage

    def request_params(self, messages: list[Message], *, temperature: float, max_tokens: int,
                       stop: list[str] | None) -> dict[str, Any]:
        """Keyword arguments of one `messages.create` (one sample; the batch path sends the same)."""
        system, turns = cached_turns(messages)
        params: dict[str, Any] = {"model": self.model, "messages": turns, "max_tokens": max_tokens}
        if self.send_temperature:
            params["extra_body"] = {"temperature": min(1.0, max(0.0, temperature))}
        if system:
            params["system"] = system
        if stop:
            params["stop_sequences"] = list(stop)
        return params

    async def generate(self, messages: list[Message], *, n: int = 1, temperature: float = 0.7,
                       max_tokens: int = 256, stop: list[str] | None = None,
                       seed: int | None = None) -> list[Completion]:
        """`seed` is ignored: the API has none."""
        if n < 1:
            raise ValueError("n must be >= 1")
        params = self.request_params(messages, temperature=temperature, max_tokens=max_tokens, stop=stop)
        estimated = estimate_tokens(messages, max_tokens)
        tasks = [asyncio.ensure_future(self._one(params, estimated)) for _ in range(n)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:  # one sample failed for good: don't leave the others running
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        usage = Usage()
        for _, u in results:
            usage.add(u)
        completions = [c for c, _ in results]
        completions[0].usage = usage  # the usage of all n requests, on the first completion
        return completions

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        raise LogprobsUnsupported("the Anthropic API returns no log-probabilities: use sampled or parsed votes")


def check_message(message, *, max_tokens: int | None = None) -> None:
    """Raise MalformedResponse unless `message` is a usable Message: a list of typed content blocks,
    text blocks holding text, a text (or null) stop reason."""
    content = getattr(message, "content", None)
    if not isinstance(content, list) or not is_text(getattr(message, "stop_reason", None)) or any(
            not isinstance(getattr(b, "type", None), str)
            or (b.type == "text" and not isinstance(getattr(b, "text", None), str)) for b in content):
        raise MalformedResponse("the response had no usable message")
    check_answer_size("".join(b.text for b in content if b.type == "text"), max_tokens)


def completion_from_message(message) -> Completion:
    """The text blocks of a Message, with the stop reason in chat-completions terms."""
    text = "".join(getattr(b, "text", "") for b in (message.content or []) if getattr(b, "type", "") == "text")
    reason = message.stop_reason
    return Completion(text=text, finish_reason=FINISH_REASONS.get(reason, reason))
