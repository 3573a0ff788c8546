"""Critic: the model critiques its last answer against one principle.

Reads: the conversation so far (prompt + latest response), a principle, few-shot demonstrations.
Writes: critique. Few-shot demonstrations are prepended as whole chat exchanges (prompt, response,
critique request, critique, revision request, revision), as in the CAI paper's few-shot prompt.
"""

from __future__ import annotations

from caikit.backends.base import mark_prefix_end
from caikit.constitution import FewShotExample
from caikit.records import Messages
from caikit.stages.base import ParseError, render, strip_label, with_system

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


def parse_answer(text: str) -> str:
    critique = strip_label(text)
    if not critique:
        raise ParseError("empty critique", text)
    return critique
