"""Generator: the policy's first answer to a prompt. Reads: prompt messages. Writes: initial_response."""

from __future__ import annotations

from caikit.backends.base import Completion
from caikit.records import Messages
from caikit.stages.base import ParseError, Reply, Request, with_system

reads = ("prompt",)
writes = ("initial_response",)


def build_prompt(prompt: Messages, *, system_prompt: str = "") -> Messages:
    return with_system(prompt, system_prompt)


def parse_answer(text: str | None) -> str:
    answer = (text or "").strip()
    if not answer:
        raise ParseError("empty response", text or "")
    return answer


def accept(completion: Completion, attempt: int) -> str:
    """Any non-empty answer (one cut at --max-tokens too: the critique and revision deal with it)."""
    return parse_answer(completion.text)


def plan(state, cfg) -> Request:
    return Request("generate", build_prompt(state.prompt, system_prompt=cfg.system_prompt), temperature=cfg.temperature,
                   max_tokens=cfg.max_tokens, seed=state.seed, accept=accept)


def parse(state, reply: Reply) -> None:
    state.initial = state.response = reply.value
    state.initial_truncated = reply.truncated  # finish_reason "length" (Anthropic's max_tokens is mapped to it)
    state.stop_reasons["answer"] = reply.stop_reason
