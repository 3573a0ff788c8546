"""Row schemas written by caikit stages, one JSON object per line.

Every record carries `id`, `run_id` and `created_at`. `id` is the idempotency key of the work that
produced it (see `idempotency_key`), so a rerun can tell what is already done.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

Messages = list[dict[str, str]]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def idempotency_key(stage: str, *parts: Any) -> str:
    """hash(stage, prompt, principle, params, seed) -> 24 hex chars."""
    digest = hashlib.sha256(canonical_json([stage, *parts]).encode("utf-8")).hexdigest()
    return f"{stage}-{digest[:24]}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Record:
    id: str
    run_id: str = ""
    created_at: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    backend: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class SFTExample(Record):
    """Prompt + final revision: one row of the SL-CAI dataset (`messages` layout)."""

    messages: Messages = field(default_factory=list)
    prompt_id: str = ""

    @classmethod
    def from_trace(cls, trace: Trace) -> "SFTExample":
        return cls(
            id=trace.id,
            run_id=trace.run_id,
            created_at=trace.created_at,  # derived, not new: a rerun rewrites sft.jsonl byte for byte
            prompt_id=trace.prompt_id,
            messages=[*trace.prompt, {"role": "assistant", "content": trace.final_revision}],
        )


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
    raw: list[dict[str, Any]] = field(default_factory=list)
    backend: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class PreferencePair(Record):
    """TRL / alignment-handbook conversational preference row."""

    prompt: Messages = field(default_factory=list)
    chosen: Messages = field(default_factory=list)  # [{"role": "assistant", "content": ...}]
    rejected: Messages = field(default_factory=list)
    score_chosen: float = 0.0
    score_rejected: float = 0.0
    margin: float = 0.0
    source: str = ""  # revision-vs-initial | judged-samples
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure(Record):
    """Work that still failed after the retry budget; retried on the next run."""

    stage: str = ""
    prompt_id: str = ""
    error: str = ""
    raw: str | None = None
    attempts: int = 0
