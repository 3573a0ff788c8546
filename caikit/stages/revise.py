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


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.casefold())


def _mostly_within(text: str, source: str, share: float = 0.8) -> bool:
    """Are at least `share` of `text`'s words (3 or more of them) words of `source`?"""
    words, pool = _words(text), set(_words(source))
    return len(words) >= 3 and sum(w in pool for w in words) >= share * len(words)


# "The second critique was: ...", "Critique: ...", "My critique said that ...": the reviser quoting a critique
_ORDINAL = r"(?:first|second|third|fourth|fifth|last|previous|above|earlier|given|\w+th)"
_ANNOUNCED = re.compile(r"^\W*(?:the|my)\s+(?:" + _ORDINAL + r"\s+)?critique\s+(?:was|says|said|reads|read|stated)\b",
                        re.I)
_QUOTED_CRITIQUE = re.compile(r"^\W*(?:(?:the|my|your)\s+)?(?:" + _ORDINAL + r"\s+)?"
                              r"critique(?:\s+request)?\s*(?:was|is|says|said|reads|read|states|stated)?\s*(?:that\s+)?[:\-\u2014]?\s*",
                              re.I)
# "I've rewritten the response to remove the harmful content." -- a note about a rewrite, not the rewrite
_META = re.compile(r"^\W*(?:(?:ok(?:ay)?|sure|done|certainly)[,.!]?\s*)?(?:i(?:'ve| have)?|i\s+have)\s+"
                   r"(?:now\s+)?(?:re-?written|rewrote|revised|updated|edited|modified|changed|reworded|rephrased)\s+"
                   r"(?:the|my|your|this|that)\s+(?:previous\s+|original\s+|assistant(?:'s)?\s+)?"
                   r"(?:response|answer|reply|text)\b[^.!?:\n]*[.!?:]?", re.I)
_YES, _NO = {"yes", "yeah", "yep", "sure", "ok", "okay"}, {"no", "nope", "nah"}
_FILLER = _YES | _NO | {"maybe", "or", "and"}
_REQUEST_ECHO_LINE = "reply with the rewritten response only"  # templates/revision.txt, as a model may echo it


def _echoes(text: str, revision: str, request: str) -> bool:
    """Is the revision (normalised: `text`) the revision request said back, or the template's last line?"""
    wanted = _normal(request)
    if wanted and (text == wanted or (len(wanted) >= 30 and wanted in text and len(text) < 2 * len(wanted))
                   or (len(text) >= 30 and text in wanted)
                   or (len(_words(revision)) >= 6 and _mostly_within(revision, request, 0.9))):
        return True
    return _REQUEST_ECHO_LINE in text and len(text) < len(wanted) + 2 * len(_REQUEST_ECHO_LINE) + 40


def degenerate(initial: str, critique: str, revision: str, request: str = "", critiques: tuple[str, ...] = ()) -> str:
    """Why a revision is no improvement to learn from, or '' when it is fine:
    'unchanged' (the initial answer again), 'the critique' (the critique, the revision quoting it at length
    instead of rewriting the answer, or a critique announced as one: "The second critique was: ..."), 'empty'
    (nothing left once template markers are stripped), 'the request' (the revision request echoed back),
    'a note about the rewrite' ("I've rewritten the response ..." with nothing after it), 'no answer' (only
    yes / no words that contradict each other: "Yes, no."). `request`: the principle's revision request;
    `critiques`: every round's critique (the last is `critique`).

    Kept low on false positives: a short real answer ("No.", "Paris.", "Yes, it is safe.") passes; only a
    whole revision that is one of the above is degenerate."""
    text, before, note = _normal(revision), _normal(initial), _normal(critique)
    if not _normal(strip_label(revision)):
        return "empty"
    if text == before:
        return "unchanged"
    if note and (text == note or (len(note) >= 40 and note in text) or (len(text) >= 40 and text in note)):
        return "the critique"
    quoted = _QUOTED_CRITIQUE.match(revision.strip())
    if quoted and quoted.end() < len(revision.strip()):
        rest = revision.strip()[quoted.end():]
        if any(_mostly_within(rest, c) for c in (critique, *critiques) if c) or _ANNOUNCED.match(revision.strip()):
            return "the critique"  # a critique's words, or announced as the critique, whatever its words
    if _echoes(text, revision, request):
        return "the request"
    meta = _META.match(revision.strip())
    if meta:  # "I've rewritten the response:" followed by the rewrite is fine; followed by next to nothing is not
        rest = _words(revision.strip()[meta.end():])
        if not rest or (not meta.group().endswith(":") and len(rest) < 8):
            return "a note about the rewrite"
    words = _words(revision)
    if 2 <= len(words) <= 4 and set(words) <= _FILLER and set(words) & _YES and set(words) & _NO:
        return "no answer"
    return ""
