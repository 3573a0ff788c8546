"""Rubric: does one assistant response satisfy one constitution principle? A yes/no question per (response,
principle), the building block of rule-based rewards (Mu et al. 2024, "Rule Based Rewards for Language Model
Safety"): each judge principle becomes a proposition the judge grades, and the reward combines the grades.

Reads: the conversation, the response, a judge principle. Writes: p_yes = P(the judge answers Yes).

The principle's judge text is a comparison instruction ("Choose the response that ..."); the template asks
whether this response is one that instruction would choose over most alternatives. With option log-probs,
p_yes is the softmax of "Yes" against "No" as the first answer token (the CAI paper's normalised option
probabilities); without them, one answer at temperature 0 is read as 1 (Yes) or 0 (No), and an answer that is
neither is resampled up to --parse-retries times. The conversation and the response are untrusted text, each
in its own tagged block with our tags escaped inside it (stages/untrusted.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from caikit.records import Messages, canonical_json
from caikit.soft_labels import soft_label
from caikit.stages.base import Ask, ParseError, Reply, Request, render, with_system
from caikit.stages.judge import render_conversation
from caikit.stages.untrusted import escape_untrusted

reads = ("prompt", "response", "principle")
writes = ("p_yes",)
OPTIONS = ("Yes", "No")
ANSWER_TOKENS = 4  # a parsed answer: "Yes", "No.", "**No**"
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)


@dataclass(frozen=True)
class RubricItem:
    """One question: `response` to the conversation `prompt`, graded under one principle's judge text."""

    prompt: Messages
    response: str
    principle_id: str
    instruction: str
    template: str = "rubric"  # the question's wording (critique_flag: does a critique request find a problem?)


def build_prompt(item: RubricItem, system_prompt: str = "") -> Messages:
    question = render(item.template, conversation=escape_untrusted(render_conversation(item.prompt)),
                      response=escape_untrusted(item.response.strip()), instruction=item.instruction.strip())
    return with_system([{"role": "user", "content": question}], system_prompt)


def accept_logprobs(logprobs: dict[str, float], attempt: int) -> float:
    p = soft_label(logprobs, OPTIONS)
    if p is None:
        raise ParseError("the judge put no probability on Yes or No", canonical_json(
            {k: (None if v == float("-inf") else v) for k, v in logprobs.items()}))
    return p


def parse_yes_no(completion, attempt: int) -> float:
    """1.0 for an answer opening with Yes, 0.0 for No; anything else is a ParseError (resampled)."""
    text = completion.text or ""
    match = _YES_NO.match(text)
    if match is None:
        raise ParseError("the judge answered neither Yes nor No", text)
    return 1.0 if match.group(1).lower() == "yes" else 0.0


def plan(item: RubricItem, *, logprobs: bool, system_prompt: str = "", seed: int | None = None) -> Request:
    messages = build_prompt(item, system_prompt)
    if logprobs:
        return Request("logprobs", messages, options=OPTIONS, accept=accept_logprobs)
    return Request("generate", messages, n=1, temperature=0.0, max_tokens=ANSWER_TOKENS, seed=seed,
                   accept=parse_yes_no, expected_tokens=1, placeholder="Yes")


def parse(item: RubricItem, reply: Reply) -> float:
    return float(reply.value)


async def grade(ask: Ask, item: RubricItem, *, logprobs: bool, system_prompt: str = "",
                seed: int | None = None) -> float:
    """p_yes of one (response, principle)."""
    (reply,) = await ask([plan(item, logprobs=logprobs, system_prompt=system_prompt, seed=seed)])
    return parse(item, reply)
