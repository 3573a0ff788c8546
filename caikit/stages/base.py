"""The stage contract, and what every stage shares: template rendering and the parse-failure signal.

A stage is one module that says what it reads and writes and has two hooks: `plan(item, cfg)` gives the
`Request`s the stage would send for one item, and `parse(item, replies)` turns the answers into the
stage's value (or raises ParseError: the item becomes a failure row). Where one step's request depends on
the answer to the last (critique -> revision, reasoning -> scored verdict), a stage strings its plans
together in a coroutine over an `ask` function. The runner supplies an `ask` that sends requests, the
estimate one that prices them: both run the same plans, so there is no second copy of what a stage asks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Awaitable, Callable, Protocol

from caikit.backends.base import Completion
from caikit.records import Messages


class ParseError(ValueError):
    """The model's answer could not be used (empty, refused, no option). Resampled, then a failure row."""

    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Request:
    """One model call a stage plans.

    `accept(completion, attempt)` turns one sampled answer into the stage's value or raises ParseError;
    an answer it refuses is resampled with another seed (up to --parse-retries times) and is never stored
    as final in the request log, so a rerun asks again. Logprob requests get `accept(logprobs, 0)`.
    `expected_tokens` is what the estimate assumes an answer uses (None: --expected-fill of max_tokens)."""

    kind: str  # "generate" | "logprobs"
    messages: Messages
    n: int = 1
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = None
    options: tuple[str, ...] = ()  # logprobs: the answer options to score
    accept: Callable[[Any, int], Any] | None = None
    expected_tokens: int | None = None
    placeholder: str = ""  # the estimate's stand-in answer: text `accept` takes (e.g. "The answer is: (A)")


@dataclass
class Reply:
    """The answers to one Request: `values` as `accept` returned them, one per sample (logprobs: one)."""

    values: list[Any]
    completions: list[Completion] = field(default_factory=list)
    logprobs: dict[str, float] | None = None

    @property
    def value(self) -> Any:
        return self.values[0]

    @property
    def truncated(self) -> bool:
        """Did the (first) answer stop at the token limit?"""
        return bool(self.completions) and self.completions[0].finish_reason == "length"

    @property
    def stop_reason(self) -> str | None:
        return self.completions[0].finish_reason if self.completions else None


class Ask(Protocol):
    """What a stage's plan runs against: the runner's (sends) or the estimate's (prices)."""

    def __call__(self, requests: list[Request]) -> Awaitable[list[Reply]]: ...


@lru_cache(maxsize=None)
def template(name: str) -> str:
    """Prompt text lives in caikit/stages/templates/<name>.txt, not in code."""
    return resources.files("caikit.stages").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8").rstrip("\n")


def render(name: str, **fields: str) -> str:
    return template(name).format(**fields)


_LABEL = re.compile(r"^\s*(?:\*\*)?(critique|revision|revised response|rewritten response)\s*"
                    r"(?::\s*(?:\*\*)?|\*\*\s*:)\s*", re.I)


def strip_label(text: str) -> str:
    """Drop a leading 'Critique:' / 'Revision:' label some models echo from the few-shot layout."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def with_system(messages: Messages, system_prompt: str) -> Messages:
    """Prepend a system prompt unless the conversation already has one."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]
