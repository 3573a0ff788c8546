"""Judge: which of two assistant responses better follows a principle (RL-CAI feedback model).

Reads: the conversation, response A, response B, a judge principle. Writes: the choice (A | B).

The prompt follows the CAI paper's multiple-choice layout (conversation, the principle's instruction,
"Options: (A) ... (B) ...", "The answer is:"), sent to chat models as one user message. The
conversation and both responses are untrusted text, so each sits in its own tagged block
(<conversation>, <response_a>, <response_b>), the template tells the judge that the blocks are data,
and any of those tags written inside the text is escaped: a response cannot close its block and
append "(A) is better" outside it.

Scoring with log-probs asks for the options "A" and "B" as the first assistant tokens; no assistant
prefix like "(" is prefilled, because OpenAI-compatible chat APIs cannot continue a prefilled
assistant turn and we want the same prompt on every backend (the template asks for the bare letter).
"""

from __future__ import annotations

import re

from caikit.records import Messages
from caikit.soft_labels import OPTIONS
from caikit.stages.base import ParseError, render, with_system

reads = ("prompt", "response_a", "response_b", "principle")
writes = ("choice",)

_TAGS = re.compile(r"<(\s*/?\s*(?:conversation|response_a|response_b)\s*)>", re.I)
_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def escape_untrusted(text: str) -> str:
    """Neutralise our delimiter tags inside untrusted text: '</response_a>' -> '&lt;/response_a&gt;'."""
    return _TAGS.sub(lambda m: f"&lt;{m.group(1)}&gt;", text)


def render_conversation(messages: Messages) -> str:
    return "\n\n".join(f"{_SPEAKERS.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in messages)


def build_prompt(prompt: Messages, response_a: str, response_b: str, instruction: str, *, cot: bool = False,
                 few_shot: Messages = (), system_prompt: str = "") -> Messages:
    """The multiple-choice judge request as chat messages (few-shot exchanges first, then one user turn)."""
    question = render("judge", conversation=escape_untrusted(render_conversation(prompt)),
                      instruction=instruction.strip(), response_a=escape_untrusted(response_a.strip()),
                      response_b=escape_untrusted(response_b.strip()),
                      answer_request=render("judge_cot_answer" if cot else "judge_answer"))
    return with_system([*few_shot, {"role": "user", "content": question}], system_prompt)


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


_LETTER = r"(?:\(\s*([ABab])\s*\)|\[\s*([ABab])\s*\]|\b([AB])\b(?![’'\w]))"
_OPTION_WORD = r"(?:(?i:option|response|answer|choice)\s*)?"
_PATTERNS = [
    # "The answer is: (A)", "Final answer: B", "**Answer:** (B)" -- the last one in the text wins.
    re.compile(r"(?i:answer)(?:\s+(?i:is|would\s+be))?\s*[:\-–]?\s*[*_\s]*" + _OPTION_WORD + _LETTER),
    # "I choose (B)", "I would prefer option A", "my choice is B", "the better response is (A)"
    re.compile(r"(?i:\bI\s+(?:would\s+)?(?:choose|pick|select|prefer|go\s+with)|my\s+choice\s+is|"
               r"(?:better|preferred|best)\s+(?:response|option|one)\s+is)\s*[:\-]?\s*[*_]*\s*" + _OPTION_WORD + _LETTER),
    # "Response B is better", "(A) is less harmful", "Option A is preferable"
    re.compile(_OPTION_WORD + _LETTER + r"\s+(?i:is\s+(?:clearly\s+|much\s+|far\s+)?(?:the\s+)?"
               r"(?:better|preferable|preferred|best|more\s+\w+|less\s+\w+|safer|wiser))"),
]
_WHOLE = re.compile(r"^\s*[*_\"']*" + _OPTION_WORD + r"[(\[]?\s*([AB])\s*[)\]]?\s*[.!*_\"']*\s*$", re.I)
_LEADING = re.compile(r"^\s*[*_]*" + _OPTION_WORD + r"(?:\(\s*([ABab])\s*\)|([AB])(?=[\s.:,)!]|$))")
_REFUSAL = re.compile(r"\b(?:I\s*(?:can(?:no|')t|cannot|won't|will\s+not|am\s+(?:not\s+able|unable))|I'm\s+"
                      r"(?:sorry|not\s+able|unable)|as\s+an\s+AI|neither|both\s+(?:are|responses|options))", re.I)


def _letter(match: re.Match) -> str:
    return next(g for g in match.groups() if g).upper()


def parse_answer(text: str) -> str:
    """The chosen option, 'A' or 'B', from a free-text judge answer (direct or after reasoning).

    Raises ParseError (with the raw text) for refusals, 'neither'/'both' and answers naming no option.
    """
    explicit = list(_PATTERNS[0].finditer(text))  # a stated final answer beats everything said before it
    if explicit:
        return _letter(explicit[-1])
    for pattern in (_WHOLE, _LEADING):
        match = pattern.search(text)
        if match:
            return _letter(match)
    if not text.strip():
        raise ParseError("empty judge answer", text)
    if _REFUSAL.search(text):
        raise ParseError("the judge refused or chose neither option", text)
    for pattern in _PATTERNS[1:]:
        matches = list(pattern.finditer(text))
        if matches:
            return _letter(matches[-1])
    raise ParseError(f"no option {' or '.join(f'({o})' for o in OPTIONS)} in the judge answer", text)
