"""Reviser: the model rewrites its answer in light of its critique.

Reads: the critique conversation and the principle's revision request. Writes: revision.
"""

from __future__ import annotations

import re

from caikit.backends.base import Completion
from caikit.records import Messages
from caikit.stages.base import ParseError, Reply, Request, render, strip_label

reads = ("critique_conversation", "critique", "principle")
writes = ("revision",)

_PREAMBLE = re.compile(r"^\s*(?:sure[,!.]?\s*)?(?:here(?:'s| is) (?:the|a|my) (?:rewritten|revised) (?:response|version)[^:\n]*:)\s*",
                       re.I)


def build_prompt(critique_conversation: Messages, critique: str, revision_request: str) -> Messages:
    return [*critique_conversation, {"role": "assistant", "content": critique},
            {"role": "user", "content": render("revision", revision_request=revision_request)}]


def parse_answer(text: str | None) -> str:
    revision = _PREAMBLE.sub("", strip_label(text or ""), count=1).strip()
    if not revision:
        raise ParseError("empty revision", text or "")
    return revision


def accept(completion: Completion, attempt: int) -> str:
    """A non-empty revision; one cut at --max-tokens is kept and flagged (the trace's `truncated`)."""
    return parse_answer(completion.text)


def plan(state, cfg, r: int) -> Request:
    messages = build_prompt(state.critique_messages, state.critique, state.principles[r].revision)
    return Request("generate", messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                   seed=state.seed + 2 * r + 2, accept=accept)


def parse(state, r: int, reply: Reply) -> None:
    principle = state.principles[r]
    state.response = reply.value
    state.truncated = reply.truncated
    state.stop_reasons[f"revision {r + 1}"] = reply.stop_reason
    state.rounds.append({"principle_id": principle.id, "critique_request": principle.critique,
                         "critique": state.critique, "revision_request": principle.revision,
                         "revision": reply.value})


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


def degenerate(initial: str, critique: str, revision: str) -> str:
    """Why a revision is no improvement to learn from, or '' when it is fine:
    'unchanged' (the initial answer again), 'the critique' (the critique, or the revision quoting it at
    length instead of rewriting the answer), 'empty' (nothing left once template markers are stripped)."""
    text, before, note = _normal(revision), _normal(initial), _normal(critique)
    if not _normal(strip_label(revision)):
        return "empty"
    if text == before:
        return "unchanged"
    if note and (text == note or (len(note) >= 40 and note in text) or (len(text) >= 40 and text in note)):
        return "the critique"
    return ""
