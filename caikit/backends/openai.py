"""OpenAI chat completions, and any server that speaks them (vLLM, llama.cpp, Ollama via `base_url`).

The SDK's own retries are off (`max_retries=0`): `limits.call_with_retries` owns retrying, so
Retry-After, backoff and the attempt budget behave the same for every provider.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from caikit.backends.api import APIBackend, split_base_url
from caikit.backends.base import (BackendError, Completion, LogprobsUnsupported, MalformedResponse, Message, Usage,
                                  check_answer_size,
                                  fill_to_n, is_text, token_count, without_cache_marks)
from caikit.backends.cost import Price
from caikit.backends.http_client import AiohttpClient
from caikit.backends.limits import RateLimiter, estimate_tokens
from caikit.backends.retry import RetryPolicy, call_with_retries, describe_api_error, retry_after_of_error
from caikit.errors import UserError
from caikit.soft_labels import TOP_K_FLOOR

TOP_LOGPROBS = 20  # the most the API returns
# Prompt caching: OpenAI caches any prompt of 1024+ tokens by itself, in steps of 128.
CACHE_MIN, CACHE_STEP = 1024, 128


def _price(input: float, output: float, cached: float) -> Price:  # noqa: A002
    return Price(input, output, cached, input)  # a cache write is billed as plain input


# As published by OpenAI (standard tier, 2025), USD per 1M tokens: input, output, cached input.
PRICES: dict[str, Price] = {
    "gpt-5": _price(1.25, 10.00, 0.125),
    "gpt-5-mini": _price(0.25, 2.00, 0.025),
    "gpt-5-nano": _price(0.05, 0.40, 0.005),
    "gpt-5-pro": _price(15.00, 120.00, 15.00),
    "gpt-4.1": _price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _price(0.10, 0.40, 0.025),
    "gpt-4o": _price(2.50, 10.00, 1.25),
    "gpt-4o-mini": _price(0.15, 0.60, 0.075),
    "gpt-4-turbo": _price(10.00, 30.00, 10.00),
    "gpt-3.5-turbo": _price(0.50, 1.50, 0.50),
    "o1": _price(15.00, 60.00, 7.50),
    "o1-mini": _price(1.10, 4.40, 0.55),
    "o1-pro": _price(150.00, 600.00, 150.00),
    "o3": _price(2.00, 8.00, 0.50),
    "o3-mini": _price(1.10, 4.40, 0.55),
    "o3-pro": _price(20.00, 80.00, 20.00),
    "o4-mini": _price(1.10, 4.40, 0.275),
}


def _import_sdk():
    try:
        import openai
    except ImportError:
        raise UserError("--backend openai needs the openai package: pip install 'openai>=1.40'") from None
    return openai


def normalise_option(token: str) -> str:
    """" A", "A", "(A" and " (A" all name option "A"."""
    return token.strip().removeprefix("(").strip()


def option_logprobs_from_top(top: dict[str, float], options: list[str]) -> dict[str, float]:
    """log sum_{t in top, t names option} p(t) for each option; -inf where no top token names it, and then
    `TOP_K_FLOOR`: the smallest listed log-prob, the bound on the missing option (soft_labels.soft_label)."""
    scores = {}
    for option in options:
        matches = [lp for token, lp in top.items() if normalise_option(token) == normalise_option(option)]
        if not matches:
            scores[option] = float("-inf")
            continue
        peak = max(matches)  # log-sum-exp, stable
        scores[option] = peak + math.log(sum(math.exp(lp - peak) for lp in matches))
    listed = [lp for lp in top.values() if isinstance(lp, (int, float)) and math.isfinite(lp)]
    if listed and any(v == float("-inf") for v in scores.values()):
        scores[TOP_K_FLOOR] = min(listed)
    return scores


def _is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5+ reasoning models take max_completion_tokens and only their default temperature."""
    name = model.removeprefix("openai/")
    return bool(re.match(r"(o\d|gpt-[5-9])", name)) and "chat" not in name


def _rejected(message: str, param: str) -> bool:
    """Does a 400 say this request parameter is unsupported / deprecated for the model?"""
    text = message.lower()
    return param in text and any(w in text for w in ("unsupported", "not supported", "deprecated", "does not support"))


class OpenAIBackend(APIBackend):
    """Chat completions over the official `openai` SDK, rate-limited and retried by caikit."""

    name = "openai"
    default_model = "gpt-4o-mini"
    supports_logprobs = True
    honours_n = True  # the OpenAI API does; servers that don't (llama.cpp, Ollama) are topped up by fill_to_n
    batch_class = "caikit.backends.batch_openai:OpenAIBatches"
    cloud_hosts = ("api.openai.com",)
    openai_compatible = True
    prices = PRICES

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retry: RetryPolicy | None = None, limiter: RateLimiter | None = None,
                 api_key_file: str | None = None, http_client: str | None = None):
        super().__init__(model, base_url=base_url, api_key_env=api_key_env, timeout=timeout, retry=retry,
                         limiter=limiter, api_key_file=api_key_file, http_client=http_client)
        # what this model accepts; a 400 naming an unsupported parameter updates these (see _create)
        self.token_param = "max_completion_tokens" if _is_reasoning_model(model) else "max_tokens"
        self.send_temperature = not _is_reasoning_model(model)
    import_sdk = staticmethod(_import_sdk)

    @classmethod
    def cached_prefix_tokens(cls, model: str, prefix_tokens: int) -> int:
        if prefix_tokens < CACHE_MIN:
            return 0
        return CACHE_MIN + (prefix_tokens - CACHE_MIN) // CACHE_STEP * CACHE_STEP

    def make_client(self):
        base_url, query = split_base_url(self.base_url)  # ?api-version=...: sent with every request
        return self._sdk.AsyncOpenAI(api_key=self._api_key, base_url=base_url, default_query=query,
                                     timeout=self.timeout, max_retries=0)

    def make_lean_client(self) -> AiohttpClient:
        headers = {"Authorization": f"Bearer {self._api_key}"}
        for env, header in (("OPENAI_ORG_ID", "OpenAI-Organization"), ("OPENAI_PROJECT_ID", "OpenAI-Project")):
            if os.environ.get(env):  # as the SDK sends them
                headers[header] = os.environ[env]
        base = self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return AiohttpClient(base, headers, self.timeout)

    async def _create(self, params: dict[str, Any], estimated: int):
        """One chat.completions call under the rate limiter, retried; returns (response, usage).

        A 400 that names an unsupported parameter (max_tokens or temperature on reasoning models)
        is answered once more without it, and remembered; one that names logprobs means the model
        cannot score options."""
        try:
            return await self._create_retried(params, estimated)
        except BackendError as e:
            if e.retryable:
                raise
            message = str(e)
            if "logprobs" in params and _rejected(message, "logprobs"):
                raise LogprobsUnsupported(f"{self.model} returns no logprobs: use sampled or parsed votes") from None
            if "max_tokens" in params and _rejected(message, "max_tokens"):
                self.token_param = "max_completion_tokens"
                params = {("max_completion_tokens" if k == "max_tokens" else k): v for k, v in params.items()}
            elif "temperature" in params and _rejected(message, "temperature"):
                self.send_temperature = False
                params = {k: v for k, v in params.items() if k != "temperature"}
            else:
                self.refuse_if_fatal(e)
                raise
        return await self._create(params, estimated)

    async def _create_retried(self, params: dict[str, Any], estimated: int):
        admission = None  # the limiter's ticket for the latest attempt: tells its 429 apart from older ones

        async def attempt():
            nonlocal admission
            async with self.limiter.slot(estimated) as admission:
                self.check_not_refused()
                if self.http_client == "aiohttp":
                    response = await self._client().post_json("/chat/completions", params)
                else:
                    # The SDK's low-level post: same auth, errors and response parsing, but it skips
                    # `chat.completions.create`'s recursive TypedDict transform of the messages, which
                    # cost ~2 ms of CPU per request and capped throughput at high concurrency.
                    response = await self._client().post("/chat/completions", body=params,
                                                         cast_to=self._sdk.types.chat.ChatCompletion)
            check_response(response, logprobs=bool(params.get("logprobs")), max_tokens=params.get(self.token_param))
            return response

        response = await call_with_retries(attempt, self.retry, is_retryable=self.is_retryable,
                                           retry_after_of=retry_after_of_error, describe=describe_api_error,
                                           on_retry=lambda n, exc, wait: self.limiter.after_failure(exc, admission),
                                           secrets=(self._api_key,))
        usage = self.usage_of(response)
        self.limiter.record_actual(estimated, usage.total_tokens or estimated)
        self.total_usage.add(usage)
        return response, usage

    @staticmethod
    def usage_of(response) -> Usage:
        u = getattr(response, "usage", None)
        if u is None:  # some compatible servers send none
            return Usage(requests=1)
        details = getattr(u, "prompt_tokens_details", None)
        return Usage(prompt_tokens=token_count(getattr(u, "prompt_tokens", 0)),
                     completion_tokens=token_count(getattr(u, "completion_tokens", 0)),
                     cached_tokens=token_count(getattr(details, "cached_tokens", 0)), requests=1)

    def request_params(self, messages: list[Message], *, n: int, temperature: float, max_tokens: int,
                       stop: list[str] | None, seed: int | None) -> dict[str, Any]:
        """The chat.completions body (the batch path sends the same). OpenAI caches long prompt
        prefixes by itself, so the stages' cache marks are simply dropped."""
        params: dict[str, Any] = {"model": self.model, "messages": without_cache_marks(messages), "n": n,
                                  self.token_param: max_tokens}
        if self.send_temperature:
            params["temperature"] = temperature
        if stop:
            params["stop"] = list(stop)
        if seed is not None:
            params["seed"] = seed
        return params

    async def generate(self, messages: list[Message], *, n: int = 1, temperature: float = 0.7,
                       max_tokens: int = 256, stop: list[str] | None = None,
                       seed: int | None = None) -> list[Completion]:
        if n < 1:
            raise ValueError("n must be >= 1")
        params = self.request_params(messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed)
        response, usage = await self._create(params, estimate_tokens(messages, max_tokens, n))
        return await fill_to_n(self, messages, completions_from_response(response), usage, n=n,
                               temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed)

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        """One greedy token with its top-20 alternatives; each option sums the tokens that name it."""
        params = self.option_logprobs_params(messages)
        response, usage = await self._create(params, estimate_tokens(messages, 1))
        self.last_usage = usage
        return logprobs_from_response(response, options, self.model)

    def option_logprobs_params(self, messages: list[Message]) -> dict[str, Any]:
        """The request body `option_logprobs` sends (the batch path sends the same)."""
        return {**self.request_params(messages, n=1, temperature=0.0, max_tokens=1, stop=None, seed=None),
                "logprobs": True, "top_logprobs": TOP_LOGPROBS}


def _is_logprob(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_response(response, *, logprobs: bool = False, max_tokens: int | None = None) -> None:
    """Raise MalformedResponse unless `response` is a usable ChatCompletion: choices with text (or
    null) messages and, for a logprobs request, well-formed first-token logprobs where any came
    back (none at all is LogprobsUnsupported, later, not a retry)."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("the response had no choices")
    for c in choices:
        message, index = getattr(c, "message", None), getattr(c, "index", None)
        if (not hasattr(message, "content") or not is_text(message.content)
                or not is_text(getattr(c, "finish_reason", None))
                or not (index is None or (isinstance(index, int) and not isinstance(index, bool)))):
            raise MalformedResponse("a choice had no usable message")
        check_answer_size(message.content, max_tokens)
    content = getattr(getattr(choices[0], "logprobs", None), "content", None) if logprobs else None
    if content is None or content == []:
        return
    tops = getattr(content[0], "top_logprobs", None) if isinstance(content, list) else None
    if not isinstance(content, list) or not isinstance(tops if tops is not None else [], list) or any(
            not isinstance(getattr(t, "token", None), str) or not _is_logprob(getattr(t, "logprob", None))
            for t in [content[0], *(tops or [])]):
        raise MalformedResponse("the response had malformed logprobs")


def completions_from_response(response) -> list[Completion]:
    """The choices of a ChatCompletion, in index order (usage is the caller's business)."""
    choices = sorted(response.choices, key=lambda c: c.index or 0)
    return [Completion(text=c.message.content or "", finish_reason=c.finish_reason) for c in choices]


def logprobs_from_response(response, options: list[str], model: str) -> dict[str, float]:
    """Option log-probs from the first generated token's top_logprobs."""
    content = getattr(getattr(response.choices[0], "logprobs", None), "content", None)
    if not content:
        raise LogprobsUnsupported(f"{model} returned no logprobs (the server may not support them)")
    first = content[0]
    top = {t.token: t.logprob for t in (first.top_logprobs or [])}
    top.setdefault(first.token, first.logprob)
    return option_logprobs_from_top(top, options)
