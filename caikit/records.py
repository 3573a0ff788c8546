"""Row schemas written by caikit stages, one JSON object per line.

Every record carries `id`, `run_id` and `created_at`. `id` is the idempotency key of the work that
produced it (see `idempotency_key`), so a rerun can tell what is already done.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

Messages = list[dict[str, str]]


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))  # made once, not per call


def canonical_json(obj: Any) -> str:
    return _CANONICAL.encode(obj)


def idempotency_key(stage: str, *parts: Any) -> str:
    """hash(stage, prompt, principle, params, seed) -> 24 hex chars."""
    digest = hashlib.sha256(canonical_json([stage, *parts]).encode("utf-8")).hexdigest()
    return f"{stage}-{digest[:24]}"


def keyed_on(stage: str, shared: list[Any], part_of) -> Callable[[Any], str]:
    """key(item) == idempotency_key(stage, part_of(item), *shared), with `shared` serialised once."""
    head = canonical_json([stage])[:-1] + ","
    tail = ("," + canonical_json(shared)[1:]) if shared else "]"

    def key(item: Any) -> str:
        text = head + canonical_json(part_of(item)) + tail
        return f"{stage}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:24]}"

    return key


def plain(value: Any) -> Any:
    """dataclasses.asdict without its deep copy of every leaf (which cost more CPU than sending the request):
    dataclasses become dicts, lists and dicts are rebuilt, strings and numbers are shared."""
    names = _FIELD_NAMES.get(type(value))
    if names is None and hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: plain(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return type(value)(plain(v) for v in value) if type(value) is tuple else value
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Record:
    id: str
    run_id: str = ""
    created_at: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Round:
    """One critique -> revision step."""

    principle_id: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclass
class Trace(Record):
    """The whole SL-CAI trace of one prompt."""

    prompt_id: str = ""
    prompt: Messages = field(default_factory=list)
    initial_response: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)  # Round as dicts
    final_revision: str = ""
    stop_reasons: dict[str, str | None] = field(default_factory=dict)  # step -> finish_reason ("length": cut)
    truncated: bool = False  # the final revision stopped at --max-tokens
    initial_truncated: bool = False  # the initial answer stopped at --max-tokens (never a preference side)
    degenerate: str = ""  # why the revision is no improvement to learn from ("unchanged", "the critique", ...)
    backend: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class SFTExample(Record):
    """One row of the SL-CAI dataset in TRL's conversational prompt-completion layout: `prompt` is the
    conversation up to its last user turn, `completion` the final revision as one assistant message, so a
    trainer (TRL's SFTTrainer by default, caikit's always) learns the revision's tokens and nothing else."""

    prompt_id: str = ""
    prompt: Messages = field(default_factory=list)
    completion: Messages = field(default_factory=list)  # [{"role": "assistant", "content": final revision}]

    @classmethod
    def from_trace(cls, trace: "Trace") -> "SFTExample":
        return cls(
            id=trace.id,
            run_id=trace.run_id,
            created_at=trace.created_at,  # derived, not new: a rerun rewrites sft.jsonl byte for byte
            prompt_id=trace.prompt_id,
            prompt=list(trace.prompt),
            completion=[{"role": "assistant", "content": trace.final_revision}],
        )


@dataclass
class PolicySamples(Record):
    """The policy's answers to one prompt (judge --pairs samples): distinct, non-empty, not cut short."""

    prompt_id: str = ""
    prompt: Messages = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    truncated: int = 0  # answers left out because they stopped at the token limit
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Judgment(Record):
    """One pairwise comparison, judged in both orders, under one or more principles."""

    pair_id: str = ""
    prompt: Messages = field(default_factory=list)
    response_a: str = ""
    response_b: str = ""
    principle_ids: list[str] = field(default_factory=list)
    p_a_first: float | None = None  # P(A better) with A shown as option (A)
    p_a_swapped: float | None = None  # P(A better) from the run with A shown as option (B)
    p_a: float = 0.5  # soft label: mean over orders and principles
    per_principle: list[dict[str, Any]] = field(default_factory=list)
    method: str = "logprob"  # logprob | cot | vote | parsed
    position_consistent: bool | None = None
    cut_responses: list[int] = field(default_factory=list)  # indices (in the pair id) of responses cut at max tokens
    raw: list[dict[str, Any]] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class FlagCheck(Record):
    """A critique test case (`caikit constitution test`): would the principle's critique find a problem in
    `response`? p_yes = P(the judge answers Yes), from option log-probs or one parsed answer."""

    principle_id: str = ""
    prompt: Messages = field(default_factory=list)
    response: str = ""
    p_yes: float = 0.5
    method: str = "logprob"  # logprob | parsed
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class PreferencePair(Record):
    """TRL / alignment-handbook conversational preference row, with the judge's soft label.

    `p_chosen` is P(chosen is better) as the labeller gave it: the AI judge's soft label (both orders and
    principles averaged), or 1.0 for a human or rule label. No column carries a name a consumer reads with
    another meaning (TRL's RewardTrainer subtracts a column named `margin` inside its loss)."""

    prompt: Messages = field(default_factory=list)
    chosen: Messages = field(default_factory=list)  # [{"role": "assistant", "content": ...}]
    rejected: Messages = field(default_factory=list)
    p_chosen: float = 1.0
    source: str = ""  # revision-vs-initial | judged-samples | human
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Label(Record):
    """One human comparison from `caikit label`: which of two responses to one conversation is better.

    `shown_left` records the randomised order ("a": response_a was on the left); `choice` is "a", "b",
    "tie" or "skip". `ai_p_a` is the AI judge's P(a better) where the pair came from a judge run."""

    pair_id: str = ""
    prompt: Messages = field(default_factory=list)
    response_a: str = ""
    response_b: str = ""
    shown_left: str = "a"
    choice: str = ""
    labeler: str = ""
    note: str = ""
    source: str = ""  # where the pair came from (a judge / generate run directory, a pairs file)
    ai_p_a: float | None = None


@dataclass
class Failure(Record):
    """Work that still failed after the retry budget; retried on the next run."""

    stage: str = ""
    prompt_id: str = ""
    error: str = ""
    kind: str = ""  # "unparseable": the answers came back but none could be used; "request": the requests failed
    raw: str | None = None
    attempts: int = 0  # requests really sent for this item in the run that failed (retries included)
    usage: dict[str, int] = field(default_factory=dict)  # what those requests cost
