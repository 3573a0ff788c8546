"""Judge methods: how one (principle, order) comparison is asked and turned into p = P(option A is better).

Each method is one class in METHODS: its help line, its defaults (votes, answer tokens), whether it needs
option log-probs, and `shown_a(ask, messages, setup, seed) -> (p, raw)`, a plan over `ask` (see
stages/base.py), so the estimate prices exactly what the method sends. Adding a method is one class here
(plus its template, if it asks in its own words).
"""

from __future__ import annotations

from typing import Any

from caikit.backends.base import Completion
from caikit.records import canonical_json
from caikit.soft_labels import OPTIONS, clamp, soft_label, vote_share
from caikit.stages.base import Ask, ParseError, Request, render
from caikit.stages.verdict import parse_answer

LETTER_TOKENS = 2  # a direct answer: "A", " (B)"


def accept_verdict(completion: Completion, attempt: int) -> str:
    """A sampled answer must state an option; a refusal, 'neither' or nothing is resampled."""
    return parse_answer(completion.text)


def accept_logprobs(logprobs: dict[str, float], attempt: int) -> float:
    p = soft_label(logprobs)
    if p is None:
        raise ParseError("the judge put no probability on A or B", canonical_json(
            {k: (None if v == float("-inf") else v) for k, v in logprobs.items()}))
    return p


class LogprobMethod:
    name = "logprob"
    summary = "soft label from the options' log-probs"
    cot = False
    default_votes = 1
    default_max_tokens = 24

    @staticmethod
    def needs_logprobs(opts) -> bool:
        return True

    async def shown_a(self, ask: Ask, messages, setup, seed: int) -> tuple[float, dict[str, Any]]:
        (reply,) = await ask([Request("logprobs", messages, options=OPTIONS, accept=accept_logprobs)])
        return reply.value, {"logprobs": reply.logprobs}


class VoteMethod:
    name = "vote"
    summary = "share of sampled answers"
    cot = False
    default_votes = 5
    default_max_tokens = 24

    @staticmethod
    def needs_logprobs(opts) -> bool:
        return False

    def request(self, messages, setup, seed: int, expected: int | None) -> Request:
        return Request("generate", messages, n=setup.votes, temperature=setup.opts.temperature,
                       max_tokens=setup.max_tokens, seed=seed, accept=accept_verdict,
                       expected_tokens=expected, placeholder="The answer is: (A)")

    async def shown_a(self, ask: Ask, messages, setup, seed: int) -> tuple[float, dict[str, Any]]:
        (reply,) = await ask([self.request(messages, setup, seed, min(setup.max_tokens, LETTER_TOKENS))])
        return vote_share(reply.values), {"texts": [c.text for c in reply.completions], "choices": reply.values}


class CotMethod(VoteMethod):
    """Reasoning first, then the verdict (parsed, or the options scored by log-probs after the reasoning),
    clamped to [c, 1 - c]: CoT answers are overconfident (CAI paper, sec. 4.1)."""

    name = "cot"
    summary = "reason step by step, then answer (parsed, or scored by log-probs with --cot-scoring logprobs)"
    cot = True
    default_votes = 1
    default_max_tokens = 512

    @staticmethod
    def needs_logprobs(opts) -> bool:
        return opts.cot_scoring == "logprobs"

    async def shown_a(self, ask: Ask, messages, setup, seed: int) -> tuple[float, dict[str, Any]]:
        floor = setup.opts.cot_clamp
        if setup.opts.cot_scoring != "logprobs":
            p, raw = await VoteMethod.shown_a(self, ask, messages, setup, seed)
            return clamp(p, floor), raw
        reasoning = Request("generate", messages, temperature=setup.opts.temperature, max_tokens=setup.max_tokens,
                            seed=seed, accept=lambda completion, attempt: completion.text or "")
        (reply,) = await ask([reasoning])
        text = reply.completions[0].text or ""
        follow_up = [*messages, {"role": "assistant", "content": text.strip()},
                     {"role": "user", "content": render("judge_cot_final")}]
        (scored,) = await ask([Request("logprobs", follow_up, options=OPTIONS, accept=accept_logprobs)])
        return clamp(scored.value, floor), {"texts": [text], "logprobs": scored.logprobs}

    def request(self, messages, setup, seed: int, expected: int | None) -> Request:
        return super().request(messages, setup, seed, None)  # reasoning: --expected-fill of --max-tokens


METHODS = {m.name: m for m in (LogprobMethod(), CotMethod(), VoteMethod())}
