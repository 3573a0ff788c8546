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
import unicodedata

from caikit.backends.base import mark_prefix_end
from caikit.records import Messages
from caikit.soft_labels import OPTIONS
from caikit.stages.base import ParseError, render, with_system

reads = ("prompt", "response_a", "response_b", "principle")
writes = ("choice",)

_TAG = re.compile(r"<\s*/?\s*(?:conversation|response_a|response_b)\s*>")
# What a reader may take for our tags' brackets, slash and letters beyond what NFKC folds (fullwidth
# and small forms): angle quotes and brackets, Cyrillic / Greek letters that look Latin; and invisibles.
_LOOKS_LIKE = str.maketrans({
    "\u2039": "<", "\u2329": "<", "\u3008": "<", "\u27e8": "<", "\u276e": "<",
    "\u203a": ">", "\u232a": ">", "\u3009": ">", "\u27e9": ">", "\u276f": ">",
    "\u2044": "/", "\u2215": "/", "\u29f8": "/",
    "\u0430": "a", "\u0441": "c", "\u0435": "e", "\u0456": "i", "\u043e": "o", "\u0440": "p", "\u0455": "s",
    "\u0442": "t", "\u044c": "b", "\u03b1": "a", "\u03b5": "e", "\u03b9": "i", "\u03bf": "o", "\u03c1": "p",
    "\u03c4": "t", "\u03bd": "v", "\u0475": "v", "\u0578": "n",
})
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u2060\ufeff"))
_OPEN, _CLOSE = "<\uff1c\ufe64\u2039\u2329\u3008\u27e8\u276e", ">\uff1e\ufe65\u203a\u232a\u3009\u27e9\u276f"
_TAG_LIKE = re.compile(f"[{_OPEN}][^{_OPEN}{_CLOSE}\\n]{{1,60}}[{_CLOSE}]")  # a bracketed span on one line
_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def reads_as(text: str) -> str:
    """`text` as a reader may take it: compatibility forms folded, look-alike letters Latin, invisibles gone."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_LOOKS_LIKE).translate(_INVISIBLE)


def escape_untrusted(text: str) -> str:
    """Neutralise our delimiter tags inside untrusted text, however spelled: '</response_a>' ->
    '&lt;/response_a&gt;', and likewise '＜/rеsponse_a＞' (fullwidth brackets, a Cyrillic е) or a tag
    with a zero-width space in it, which a model may read as the same tag."""
    def neutralise(m: re.Match) -> str:
        span = m.group(0)
        return f"&lt;{span[1:-1]}&gt;" if _TAG.fullmatch(reads_as(span)) else span

    return _TAG_LIKE.sub(neutralise, text)


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
