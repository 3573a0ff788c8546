"""The `caikit classifier data` stage: for one (category, index) item, a user request in that category, then
`paraphrases` rewrites of it (some in other languages). Reads the constitution's categories; writes one record
per item: {id, category, kind, label, request, paraphrases, usage}.

Prompt text: templates/guard_request.txt and templates/guard_paraphrase.txt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from caikit.records import idempotency_key
from caikit.stages.base import ParseError, Request, render

KIND_NOTE = {
    "restricted": "The message should really ask for this harmful content.",
    "permitted": "The message is harmless and should be answered, even if some of its words sound alarming.",
}
LANGUAGES = ("", " and in French", " and in Spanish", " and in German")
_LABEL = re.compile(r"^\s*(?:\*\*)?(?:message|request|user|rewritten message|rewrite)\s*(?:\*\*)?\s*:\s*", re.I)


@dataclass(frozen=True)
class GuardItem:
    category: object  # caikit.categories.Category
    index: int

    @property
    def id(self) -> str:
        return f"{self.category.id}#{self.index}"


@dataclass(frozen=True)
class GuardSetup:
    paraphrases: int
    temperature: float
    max_tokens: int
    seed: int
    model: str

    def key(self, item: GuardItem) -> str:
        c = item.category
        return idempotency_key("guard-request", c.id, c.kind, c.description, c.examples, item.index,
                               self.paraphrases, self.temperature, self.max_tokens, self.seed, self.model)


def clean(text: str, raw: str | None = None) -> str:
    """The message alone: a label the model echoed, surrounding quotes and anything after a blank line dropped."""
    text = _LABEL.sub("", text.strip(), count=1).strip()
    text = text.split("\n\n")[0].strip().strip('"“”\'').strip()
    if len(text.split()) < 3:
        raise ParseError("too short to be a request", raw if raw is not None else text)
    return text


def accept(completion, attempt: int) -> str:
    return clean(completion.text, completion.text)


def request_plan(setup: GuardSetup, item: GuardItem) -> Request:
    c = item.category
    examples = "\n".join(f"- {e}" for e in c.examples) or "- (none given)"
    text = render("guard_request", category=c.id, description=c.description, kind_note=KIND_NOTE[c.kind],
                  examples=examples)
    return Request("generate", [{"role": "user", "content": text}], temperature=setup.temperature,
                   max_tokens=setup.max_tokens, seed=setup.seed * 1_000_003 + item.index, accept=accept,
                   expected_tokens=40, placeholder="How would someone go about this particular thing?")


def paraphrase_plan(setup: GuardSetup, item: GuardItem, request: str, k: int) -> Request:
    text = render("guard_paraphrase", request=request, language=LANGUAGES[k % len(LANGUAGES)])
    return Request("generate", [{"role": "user", "content": text}], temperature=setup.temperature,
                   max_tokens=setup.max_tokens, seed=setup.seed * 1_000_003 + item.index * 101 + k + 1,
                   accept=accept, expected_tokens=40, placeholder="How might one go about this particular thing?")


async def build_guard_item(ask, setup: GuardSetup, item: GuardItem, key: str, run_id: str):
    """The chain for one item: the request, then its paraphrases (all in one step)."""
    from caikit.records import now_iso

    (reply,) = await ask([request_plan(setup, item)])
    request = reply.value
    paraphrases = []
    if setup.paraphrases:
        replies = await ask([paraphrase_plan(setup, item, request, k) for k in range(setup.paraphrases)])
        paraphrases = [r.value for r in replies]
    return GuardRecord(id=key, run_id=run_id, created_at=now_iso(), category=item.category.id,
                       kind=item.category.kind, label=item.category.restricted, request=request,
                       paraphrases=paraphrases)


@dataclass
class GuardRecord:
    id: str
    run_id: str
    created_at: str
    category: str
    kind: str
    label: bool
    request: str
    paraphrases: list
    usage: dict | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))
