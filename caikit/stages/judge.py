"""Judge: which of two assistant responses better follows a principle (RL-CAI feedback model).

Reads: the conversation, response A, response B, judge principles. Writes: a Judgment with the soft label
p_a = P(response A is better), averaged over both orders and the sampled principles. How one (principle,
order) is asked -- option log-probs, sampled votes, reasoning then a verdict -- is a judge method
(stages/judge_methods.py); this module builds the prompt, plans a pair and combines the answers.

The prompt follows the CAI paper's multiple-choice layout (conversation, the principle's instruction,
"Options: (A) ... (B) ...", "The answer is:"), sent to chat models as one user message. The
conversation and both responses are untrusted text, so each sits in its own tagged block
(<conversation>, <response_a>, <response_b>), the template tells the judge that the blocks are data,
and any of those tags written inside the text is escaped (stages/untrusted.py): a response cannot close
its block and append "(A) is better" outside it.

Scoring with log-probs asks for the options "A" and "B" as the first assistant tokens; no assistant
prefix like "(" is prefilled, because OpenAI-compatible chat APIs cannot continue a prefilled
assistant turn and we want the same prompt on every backend (the template asks for the bare letter).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

from caikit.backends.base import mark_prefix_end
from caikit.config import option
from caikit.constitution import weighted_sample
from caikit.errors import UserError
from caikit.records import Judgment, Messages, idempotency_key
from caikit.soft_labels import position_consistent, swap_average, weighted_mean
from caikit.stages.base import Ask, ParseError, render, with_system
from caikit.stages.judge_methods import METHODS
from caikit.stages.untrusted import escape_untrusted
from caikit.stages.verdict import parse_answer  # noqa: F401 - the judge stage's parse of one answer

reads = ("prompt", "response_a", "response_b", "principle")
writes = ("p_a",)
ORDERS = ("first", "swapped")  # first: response_a shown as (A); swapped: response_a shown as (B)
_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def render_conversation(messages: Messages) -> str:
    return "\n\n".join(f"{_SPEAKERS.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in messages)


def build_prompt(prompt: Messages, response_a: str, response_b: str, instruction: str, *, cot: bool = False,
                 few_shot: Messages = (), system_prompt: str = "") -> Messages:
    """The multiple-choice judge request as chat messages (few-shot exchanges first, then one user turn).

    The demonstrations depend only on the principle: their last turn is marked as the end of a
    cacheable prefix, shared by every pair judged under that principle."""
    question = render("judge", conversation=escape_untrusted(render_conversation(prompt)),
                      instruction=instruction.strip(), response_a=escape_untrusted(response_a.strip()),
                      response_b=escape_untrusted(response_b.strip()),
                      answer_request=render("judge_cot_answer" if cot else "judge_answer"))
    return with_system([*mark_prefix_end(list(few_shot)), {"role": "user", "content": question}], system_prompt)


def few_shot_turns(examples, instruction: str) -> Messages:
    """Judge demonstrations (constitution `judge_few_shot`) as answered exchanges.

    The better response alternates between (A) and (B) so the demonstrations teach no position.
    """
    turns: Messages = []
    for i, ex in enumerate(examples):
        a, b, answer = (ex.chosen, ex.rejected, "A") if i % 2 == 0 else (ex.rejected, ex.chosen, "B")
        turns += build_prompt(list(ex.prompt), a, b, instruction)
        turns.append({"role": "assistant", "content": answer})
    return turns


@dataclasses.dataclass
class JudgeOptions:
    """How the judge decides; shared by `caikit judge`, `caikit eval judge` and `caikit eval`."""

    constitution: str = option("anthropic-cai", help="constitution YAML file or bundled name whose judge principles apply")
    method: str = option("auto", help="; ".join(f"{name}: {m.summary}" for name, m in METHODS.items())
                         + "; auto: logprob where the backend returns log-probs, else vote",
                         metadata={"choices": ["auto", *METHODS]})
    swap: bool = option(True, help="judge every pair in both orders and average (--no-swap: one order per "
                                   "pair, picked by a seeded coin)")
    principles: int = option(1, low=1, high=1000, help="judge principles sampled per pair (seeded) and averaged")
    votes: int = option(0, low=0, high=100, help="sampled answers per order for vote/cot (0: 5 for vote, 1 for cot)")
    cot_clamp: float = option(0.4, low=0, high=0.5, help="cot: clamp p to [c, 1-c] as in the CAI paper (0: no clamp)")
    cot_scoring: str = option("parse", help="cot: parse the stated answer, or score the options' log-probs "
                                            "after the reasoning (logprobs backends)",
                              metadata={"choices": ["parse", "logprobs"]})
    few_shot: int = option(0, low=-1, high=1000, help="judge demonstrations from the constitution prepended, not "
                                                      "for cot (-1: all)")
    temperature: float = option(1.0, low=0, high=2, help="sampling temperature of vote / cot answers")
    max_tokens: int = option(0, low=0, high=100000, help="max tokens of a judge answer (0: 24 for vote, 512 for cot)")
    system_prompt: str = option("", help="system prompt for every judge request")
    parse_retries: int = option(2, low=0, high=20, help="resamples of an unparseable or refused answer before "
                                                        "the pair fails")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed for principle sampling, order coins and sampled answers")
    progress: bool = option(True, help="show a progress bar")


@dataclasses.dataclass
class Pair:
    """Two responses to one conversation. id = '<group>#<i>-<j>': responses i and j of group."""

    id: str
    prompt: Messages
    response_a: str
    response_b: str
    cut: tuple[int, ...] = ()  # which of responses i, j (as in the id) stopped at the token limit (kept on request)


def pair_id(group: str, i: int, j: int) -> str:
    return f"{group}#{i}-{j}"


def split_pair_id(pid: str) -> tuple[str, int, int]:
    group, _, ij = pid.rpartition("#")
    i, j = ij.split("-")
    return group, int(i), int(j)


def resolve_method(opts: JudgeOptions, supports_logprobs: bool, provider: str = "this") -> str:
    """The method a run uses: `auto` is logprob where the backend returns log-probs (the provider's
    capability, or what `caikit probe` found on a server), else vote."""
    if opts.method == "auto":
        return "logprob" if supports_logprobs else "vote"
    if METHODS[opts.method].needs_logprobs(opts) and not supports_logprobs:
        raise UserError(f"--method {opts.method} needs option log-probs, which the {provider} backend "
                        "cannot return: use --method vote or --method cot")
    return opts.method


@dataclasses.dataclass
class JudgeSetup:
    """What every pair's judgment shares: options, method, principle pool, demonstrations, identity."""

    opts: JudgeOptions
    method: Any  # a judge_methods.Method
    principles: list  # the pool judge principles are drawn from
    demos: list
    identity_hash: str
    backend: dict[str, Any]
    votes: int
    max_tokens: int

    @classmethod
    def make(cls, opts: JudgeOptions, method_name: str, constitution, identity: dict[str, Any],
             backend: dict[str, Any], principles: list | None = None) -> "JudgeSetup":
        method = METHODS[method_name]
        demos = constitution.judge_few_shot if opts.few_shot < 0 else constitution.judge_few_shot[: opts.few_shot]
        return cls(opts, method, principles if principles is not None else constitution.judge_principles,
                   [] if method.cot else demos, idempotency_key("identity", identity), backend,
                   opts.votes or method.default_votes, opts.max_tokens or method.default_max_tokens)

    def key(self, pair: Pair) -> str:
        return idempotency_key("judgment", pair.prompt, pair.response_a, pair.response_b, self.identity_hash)

    def draw(self, key: str) -> tuple[list, tuple[str, ...]]:
        """The principles and orders pair `key` is judged under (seeded by the pair, not the order of work)."""
        rng = random.Random(int(idempotency_key("judge-seed", self.opts.seed, key)[-8:], 16))
        k = min(self.opts.principles, len(self.principles))
        picked = weighted_sample(rng, self.principles, k, lambda p: p.judge_share)
        return picked, ORDERS if self.opts.swap else (ORDERS[rng.random() < 0.5],)


async def judge_pair(ask: Ask, setup: JudgeSetup, pair: Pair, key: str, run_id: str) -> Judgment:
    """Judge `pair` under its drawn principles, in one or both orders, all calls at once (a local backend
    batches them); p_a is the mean over principles of the mean over orders."""
    principles, orders = setup.draw(key)

    async def one(principle, order: str) -> dict[str, Any]:
        a, b = (pair.response_a, pair.response_b) if order == "first" else (pair.response_b, pair.response_a)
        few_shot = few_shot_turns(setup.demos, principle.judge)
        messages = build_prompt(pair.prompt, a, b, principle.judge, cot=setup.method.cot, few_shot=few_shot,
                                system_prompt=setup.opts.system_prompt)
        call_key = idempotency_key("judge-call", key, principle.id, order)  # pair + principle + order
        p_shown_a, raw = await setup.method.shown_a(ask, messages, setup, int(call_key[-8:], 16))
        p_a = p_shown_a if order == "first" else 1.0 - p_shown_a  # back to P(response_a better)
        return {"key": call_key, "principle_id": principle.id, "order": order, "p_shown_a": p_shown_a,
                "p_a": p_a, **raw}

    results = await asyncio.gather(*[one(p, o) for p in principles for o in orders], return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise next((e for e in errors if not isinstance(e, ParseError)), errors[0])
    per_principle = []
    for principle in principles:
        got = {r["order"]: r["p_a"] for r in results if r["principle_id"] == principle.id}
        first, swapped = got.get("first"), got.get("swapped")
        per_principle.append({"principle_id": principle.id, "p_a_first": first, "p_a_swapped": swapped,
                              "p_a": swap_average(first, swapped),
                              "position_consistent": position_consistent(first, swapped)})
    # Principles drawn in proportion to their judge share are averaged plainly; when every principle judges
    # the pair, the share weights the average instead (what `caikit constitution fit` fits).
    share = {p.id: p.judge_share for p in principles}
    if len(principles) < len(setup.principles) or not any(share.values()):  # (one principle alone: its share is 0)
        share = dict.fromkeys(share, 1.0)
    p_a_first = weighted_mean([(x["p_a_first"], share[x["principle_id"]]) for x in per_principle])
    p_a_swapped = weighted_mean([(x["p_a_swapped"], share[x["principle_id"]]) for x in per_principle])
    return Judgment(id=key, run_id=run_id, pair_id=pair.id, prompt=pair.prompt, response_a=pair.response_a,
                    response_b=pair.response_b, principle_ids=[p.id for p in principles], p_a_first=p_a_first,
                    p_a_swapped=p_a_swapped, p_a=weighted_mean([(x["p_a"], share[x["principle_id"]])
                                                                for x in per_principle]),
                    per_principle=per_principle, method=setup.method.name,
                    position_consistent=position_consistent(p_a_first, p_a_swapped),
                    cut_responses=list(pair.cut),
                    raw=list(results), backend=setup.backend)
