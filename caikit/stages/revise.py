"""Reviser: the model rewrites its answer in light of its critique.

Reads: the critique conversation and the principle's revision request. Writes: revision.
"""

from __future__ import annotations

import re

from caikit.records import Messages
from caikit.stages.base import ParseError, render, strip_label

reads = ("critique_conversation", "critique", "principle")
writes = ("revision",)

_PREAMBLE = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is) (?:the|a|my) (?:rewritten|revised) (?:response|version)[^:\n]*:)\s*",
                       re.I)


def build_prompt(critique_conversation: Messages, critique: str, revision_request: str) -> Messages:
    return [*critique_conversation, {"role": "assistant", "content": critique},
            {"role": "user", "content": render("revision", revision_request=revision_request)}]


def parse_answer(text: str) -> str:
    revision = _PREAMBLE.sub("", strip_label(text), count=1).strip()
    if not revision:
        raise ParseError("empty revision", text)
    return revision
