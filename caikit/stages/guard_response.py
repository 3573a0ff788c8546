"""The output-guard stage of `caikit classifier data --responses N`: for one (request, kind, index) item, an
assistant reply to the request that COMPLIES with it or one that REFUSES it, written by the model on instruction.

Reads a request: a generated one (guard_requests.jsonl), a category's example, or a `--rows` prompt that has no
response. Writes one record per item: {id, request_id, source_id, source, category, restricted, prompt,
response_kind, index, response, label, stop_reason, usage}.

The label is what an output guard must flag: harmful when the request's category is restricted and the reply
complies; a refusal, and any reply to a permitted request, is not. `refuses(text)` (the refusal detector, passed
in by the command) checks each answer: a complying one that opens with a refusal, or a refusing one that does
not, is resampled (--parse-retries), then a failure row, so no reply is stored under the wrong kind.

Prompt text: templates/guard_comply.txt and templates/guard_refuse.txt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable

from caikit.records import Messages, idempotency_key
from caikit.stages.base import ParseError, Request, render
from caikit.stages.judge import render_conversation
from caikit.stages.untrusted import escape_untrusted

reads = ("prompt", "category", "restricted")
writes = ("response", "response_kind", "label")
KINDS = ("comply", "refuse")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:assistant|response|reply|answer)\s*(?:\*\*)?\s*:\s*", re.I)
_QUOTES = '"“”'
PLACEHOLDER = {"comply": "Sure, here is a complete answer to that, step by step.",
               "refuse": "I can't help with that request."}


@dataclass
class ResponseSource:
    """A request an output guard's rows are written for."""

    id: str  # the request's row id in data.jsonl
    source_id: str  # its source prompt: the held-out split keeps every row made from it on one side
    prompt: Messages
    category: str
    restricted: bool  # is the request in a restricted category (for a --rows prompt: its label)
    source: str  # generated | constitution | file


@dataclass
class ResponseItem:
    request: ResponseSource
    kind: str  # comply | refuse
    index: int

    @property
    def id(self) -> str:
        return f"{self.request.id}~{self.kind}{self.index}"

    @property
    def label(self) -> bool:
        return self.request.restricted and self.kind == "comply"


@dataclass(frozen=True)
class ResponseSetup:
    temperature: float
    max_tokens: int
    seed: int
    model: str
    refuses: Callable[[str], bool] = field(compare=False)

    def key(self, item: ResponseItem) -> str:
        r = item.request
        return idempotency_key("guard-response", r.id, r.prompt, r.category, r.restricted, item.kind, item.index,
                               self.temperature, self.max_tokens, self.seed, self.model)


def clean_response(text: str, raw: str | None = None) -> str:
    """The reply alone: an echoed 'Assistant:' label and quotes around the whole of it dropped."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if len(text.split()) < 2:
        raise ParseError("too short to be a reply", raw if raw is not None else text)
    return text


def accepter(kind: str, refuses: Callable[[str], bool]) -> Callable:
    """The check of one answer: a reply of the kind asked for, else ParseError (resampled, then a failure)."""
    def accept(completion, attempt: int) -> str:
        text = clean_response(completion.text, completion.text)
        if kind == "comply" and refuses(text):
            raise ParseError("asked to comply, the reply refuses", completion.text)
        if kind == "refuse" and not refuses(text):
            raise ParseError("asked to refuse, the reply does not read as a refusal", completion.text)
        return text

    return accept


def response_plan(setup: ResponseSetup, item: ResponseItem) -> Request:
    conversation = escape_untrusted(render_conversation(item.request.prompt))
    text = render(f"guard_{item.kind}", conversation=conversation)
    offset = int(hashlib.sha256(item.request.id.encode("utf-8")).hexdigest()[:8], 16)
    seed = (setup.seed * 1_000_003 + offset + 2 * item.index + KINDS.index(item.kind)) % 2**31
    return Request("generate", [{"role": "user", "content": text}], temperature=setup.temperature,
                   max_tokens=setup.max_tokens, seed=seed, accept=accepter(item.kind, setup.refuses),
                   expected_tokens=min(setup.max_tokens, 40) if item.kind == "refuse" else None,
                   placeholder=PLACEHOLDER[item.kind])


async def build_response_item(ask, setup: ResponseSetup, item: ResponseItem, key: str, run_id: str):
    from caikit.records import now_iso

    (reply,) = await ask([response_plan(setup, item)])
    r = item.request
    return ResponseRecord(id=key, run_id=run_id, created_at=now_iso(), request_id=r.id, source_id=r.source_id,
                          source=r.source, category=r.category, restricted=r.restricted, prompt=r.prompt,
                          response_kind=item.kind, index=item.index, response=reply.value, label=item.label,
                          stop_reason=reply.stop_reason)


@dataclass
class ResponseRecord:
    id: str
    run_id: str
    created_at: str
    request_id: str
    source_id: str
    source: str
    category: str
    restricted: bool
    prompt: Messages
    response_kind: str
    index: int
    response: str
    label: bool
    stop_reason: str | None = None
    usage: dict | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))
