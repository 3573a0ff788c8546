"""The SL-CAI chain for one prompt: answer, then (critique -> revision) x rounds, the whole trace kept.

Each step is its stage module's plan/parse (answer.py, critique.py, revise.py); this module strings them
together over an `ask` (see stages/base.py), so the runner sends exactly what the estimate prices.
Principles are drawn per prompt with a seeded RNG up front, so the same prompt gets the same principles
whatever the order of work, and the estimate sees the very principles the run will use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from caikit.records import Messages, Trace, idempotency_key, keyed_on
from caikit.stages import answer, critique, revise
from caikit.progress import phase
from caikit.stages.base import Ask

# Settings that change what a trace contains: a run directory holds traces of one setting only.
IDENTITY_FIELDS = ("constitution_hash", "backend", "model", "rounds", "seed", "temperature",
                   "max_tokens", "few_shot", "system_prompt")


@dataclass
class TraceSetup:
    """What every prompt's chain shares: the options (a GenerateConfig), the constitution, the demonstrations."""

    cfg: Any
    constitution: Any
    run_id: str
    backend: dict[str, Any]
    few_shot: Messages = field(default_factory=list)

    @classmethod
    def make(cls, cfg, constitution, run_id: str, backend: dict[str, Any]) -> "TraceSetup":
        demos = constitution.few_shot if cfg.few_shot < 0 else constitution.few_shot[: cfg.few_shot]
        return cls(cfg, constitution, run_id, backend, critique.few_shot_turns(demos))


@dataclass
class TraceState:
    """One prompt on its way through the chain."""

    key: str
    prompt_id: str
    prompt: Messages
    seed: int
    principles: list
    few_shot: Messages
    initial: str = ""
    response: str = ""
    critique: str = ""
    critique_messages: Messages = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stop_reasons: dict[str, str | None] = field(default_factory=dict)
    truncated: bool = False
    initial_truncated: bool = False


def identity(cfg, constitution_hash: str) -> dict[str, Any]:
    values = {**vars(cfg), "constitution_hash": constitution_hash}
    return {k: values[k] for k in IDENTITY_FIELDS}


def trace_keys(cfg, constitution_hash: str):
    """A trace's key, idempotency_key("trace", row.messages, constitution_hash, identity(cfg, constitution_hash)),
    as a function of the row: the part every prompt shares (the constitution's hash and the settings) is
    serialised once instead of once per prompt (a million-prompt resume computes a million keys)."""
    return keyed_on("trace", [constitution_hash, identity(cfg, constitution_hash)], lambda row: row.messages)


def start(setup: TraceSetup, row, key: str) -> TraceState:
    # per-prompt RNG and seeds: the same prompt gets the same principles whatever the order of work
    seed = int(idempotency_key("seed", setup.cfg.seed, row.id)[-8:], 16)
    rng = random.Random(seed)
    principles = [setup.constitution.sample(rng, kind="critique", k=1)[0] for _ in range(setup.cfg.rounds)]
    return TraceState(key=key, prompt_id=row.id, prompt=row.messages, seed=seed, principles=principles,
                      few_shot=setup.few_shot)


async def build_trace(ask: Ask, setup: TraceSetup, row, key: str) -> Trace:
    """Answer, critique and revise `row`, `rounds` times, through `ask`."""
    cfg, state = setup.cfg, start(setup, row, key)
    with phase("answer"):
        (reply,) = await ask([answer.plan(state, cfg)])
    answer.parse(state, reply)
    for r in range(cfg.rounds):
        with phase("critique"):
            (reply,) = await ask([critique.plan(state, cfg, r)])
        critique.parse(state, r, reply)
        with phase("revise"):
            (reply,) = await ask([revise.plan(state, cfg, r)])
        revise.parse(state, r, reply)
    constitution = setup.constitution
    return Trace(id=key, run_id=setup.run_id, prompt_id=row.id, prompt=row.messages, initial_response=state.initial,
                 rounds=state.rounds, final_revision=state.response, stop_reasons=state.stop_reasons,
                 truncated=state.truncated, initial_truncated=state.initial_truncated, degenerate=revise.degenerate(
                     state.initial, state.critique, state.response, request=state.principles[-1].revision,
                     critiques=tuple(r["critique"] for r in state.rounds)),
                 backend=setup.backend,
                 params={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed,
                         "rounds": cfg.rounds, "few_shot": cfg.few_shot, "constitution": constitution.name,
                         "constitution_hash": constitution.hash})
