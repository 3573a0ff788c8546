"""Propose: which principle explains a preference? The first step of an inverse constitution (Findeis et al.,
"Inverse Constitutional AI: Compressing Preferences into Principles", ICLR 2025, Sec. 3: principles are
generated per preference pair, then clustered, deduplicated and tested as judge instructions).

Reads: the conversation, the preferred and the other response. Writes: one candidate principle, a judge
instruction of the form "Select the response that ...". The preferred response is shown as (A) or (B) by a
seeded coin per pair, so that the model is not told "A" every time. The conversation and both responses are
untrusted text, each in its own tagged block with our tags escaped (stages/untrusted.py).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from caikit.records import Messages, idempotency_key
from caikit.stages.base import Ask, ParseError, Request, render, with_system
from caikit.stages.judge import render_conversation
from caikit.stages.untrusted import escape_untrusted

reads = ("prompt", "chosen", "rejected")
writes = ("principle",)
PREFIX = "Select the response that"
MAX_TOKENS = 60
MIN_WORDS, MAX_WORDS = 2, 40  # words after the prefix: "is shorter" .. a long sentence
# "Select/Choose/Prefer/Pick the response/answer/reply that/which ...", however the model decorates it
_RULE = re.compile(r"\b(?:select|choose|prefer|pick)\s+the\s+(?:response|answer|reply|option)\s+(?:that|which)\s+"
                   r"(?P<rest>[^\n]+)", re.I)


# Small models echo the question ("Select the response that would also decide other conversations"): a rule
# whose longer words mostly come from the request itself says nothing about the pair.
ECHO_SHARE = 0.6
_QUESTION_WORDS = frozenset(w for w in re.findall(r"[a-z]+", render("propose_principle", conversation="",
                                                                    response_a="", response_b="",
                                                                    preferred="A").split("A reviewer")[-1].lower())
                            if len(w) > 3) - {"response", "preferred"}


@dataclass(frozen=True)
class Preference:
    """One preference to explain: `chosen` beat `rejected` as the reply to `prompt`."""

    id: str
    prompt: Messages
    chosen: str
    rejected: str


def chosen_shown_first(pref: Preference, seed: int) -> bool:
    """The seeded coin: is the preferred response shown as (A)?"""
    return random.Random(idempotency_key("propose-order", seed, pref.id)).random() < 0.5


def build_prompt(pref: Preference, *, seed: int = 0, system_prompt: str = "") -> Messages:
    first = chosen_shown_first(pref, seed)
    a, b = (pref.chosen, pref.rejected) if first else (pref.rejected, pref.chosen)
    question = render("propose_principle", conversation=escape_untrusted(render_conversation(pref.prompt)),
                      response_a=escape_untrusted(a.strip()), response_b=escape_untrusted(b.strip()),
                      preferred="A" if first else "B")
    return with_system([{"role": "user", "content": question}], system_prompt)


def parse_principle(completion, attempt: int = 0) -> str:
    """The rule as a judge instruction, 'Select the response that <rest>.'; a ParseError (resampled) for an
    answer that states no such rule, or one too short or too long to be a rule."""
    text = (getattr(completion, "text", completion) or "").replace("*", "").replace("`", "")
    match = _RULE.search(text)
    if match is None:
        raise ParseError("no 'Select the response that ...' rule in the answer", text)
    rest = re.split(r"(?<=[.!?])\s", match.group("rest").strip())[0].strip().strip("\"'“”").rstrip(".!?;:, ")
    words = rest.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        raise ParseError(f"a rule of {len(words)} words (expected {MIN_WORDS} to {MAX_WORDS})", text)
    if re.search(r"\b(?:response|option)\s+[ab]\b|\([ab]\)", rest, re.I):
        raise ParseError("the rule names a response of this pair, not a general rule", text)
    said = [w for w in re.findall(r"[a-z]+", rest.lower()) if len(w) > 3]
    if said and sum(w in _QUESTION_WORDS for w in said) / len(said) >= ECHO_SHARE:
        raise ParseError("the rule repeats the question instead of stating a preference", text)
    return f"{PREFIX} {rest}."


def plan(pref: Preference, *, temperature: float = 0.7, seed: int = 0, system_prompt: str = "") -> Request:
    call_seed = int(idempotency_key("propose-seed", seed, pref.id)[-8:], 16)
    return Request("generate", build_prompt(pref, seed=seed, system_prompt=system_prompt), n=1,
                   temperature=temperature, max_tokens=MAX_TOKENS, seed=call_seed, accept=parse_principle,
                   expected_tokens=20, placeholder=f"{PREFIX} is more helpful.")


async def propose(ask: Ask, pref: Preference, *, temperature: float = 0.7, seed: int = 0,
                  system_prompt: str = "") -> tuple[str, str]:
    """(the candidate principle, the raw answer) for one preference."""
    (reply,) = await ask([plan(pref, temperature=temperature, seed=seed, system_prompt=system_prompt)])
    return reply.value, (reply.completions[0].text if reply.completions else "")
