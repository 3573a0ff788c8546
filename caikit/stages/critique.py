"""Critic: the model critiques its last answer against one principle.

Reads: the conversation so far (prompt + latest response), a principle, few-shot demonstrations.
Writes: critique. Few-shot demonstrations are prepended as whole chat exchanges (prompt, response,
critique request, critique, revision request, revision), as in the CAI paper's few-shot prompt.
"""

from __future__ import annotations

from caikit.backends.base import Completion, mark_prefix_end
from caikit.constitution import FewShotExample
from caikit.records import Messages
from caikit.stages.base import ParseError, Reply, Request, render, strip_label, with_system

reads = ("prompt", "response", "principle")
writes = ("critique",)


def few_shot_turns(demos: list[FewShotExample]) -> Messages:
    """Demonstrations as chat turns, in the same layout the real conversation will take."""
    turns: Messages = []
    for demo in demos:
        turns += list(demo.prompt)
        turns.append({"role": "assistant", "content": demo.response})
        for rnd in demo.rounds:
            turns.append({"role": "user", "content": render("critique", critique_request=rnd.critique_request)})
            turns.append({"role": "assistant", "content": rnd.critique})
            turns.append({"role": "user", "content": render("revision", revision_request=rnd.revision_request)})
            turns.append({"role": "assistant", "content": rnd.revision})
    return turns


def build_prompt(prompt: Messages, response: str, critique_request: str, *, few_shot: Messages = (),
                 system_prompt: str = "") -> Messages:
    """Few-shot exchanges, then the conversation, the response and the critique request.

    The demonstrations are the same for every prompt: their last turn is marked as the end of a
    cacheable prefix (the revision request, which extends this conversation, shares it too)."""
    conversation = [*mark_prefix_end(list(few_shot)), *prompt, {"role": "assistant", "content": response},
                    {"role": "user", "content": render("critique", critique_request=critique_request)}]
    return with_system(conversation, system_prompt)


def parse_answer(text: str | None) -> str:
    critique = strip_label(text or "")
    if not critique:
        raise ParseError("empty critique", text or "")
    return critique


def accept(completion: Completion, attempt: int) -> str:
    """A non-empty critique; one cut off at --max-tokens is resampled once, then taken as it is."""
    critique = parse_answer(completion.text)
    if completion.finish_reason == "length" and attempt == 0:
        raise ParseError("critique cut off at --max-tokens", completion.text or "")
    return critique


def plan(state, cfg, r: int) -> Request:
    """Round r's critique request: the conversation, the latest response, round r's principle."""
    state.critique_messages = build_prompt(state.prompt, state.response, state.principles[r].critique,
                                           few_shot=state.few_shot, system_prompt=cfg.system_prompt)
    return Request("generate", state.critique_messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                   seed=state.seed + 2 * r + 1, accept=accept)


def parse(state, r: int, reply: Reply) -> None:
    state.critique = reply.value
    state.stop_reasons[f"critique {r + 1}"] = reply.stop_reason
