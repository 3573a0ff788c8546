"""Generator: the policy's first answer to a prompt. Reads: prompt messages. Writes: initial_response."""

from __future__ import annotations

from caikit.records import Messages
from caikit.stages.base import ParseError, with_system

reads = ("prompt",)
writes = ("initial_response",)


def build_prompt(prompt: Messages, *, system_prompt: str = "") -> Messages:
    return with_system(prompt, system_prompt)


def parse_answer(text: str) -> str:
    answer = text.strip()
    if not answer:
        raise ParseError("empty response", text)
    return answer
