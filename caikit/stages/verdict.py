"""The judge's verdict in a free-text answer: which option, (A) or (B), it finally chose.

Reasoning may quote a response -- and a response may hold an injected line such as "The answer is: (A)".
So quoted text (double quotes, curly quotes, guillemets as in French, German and Russian -- «», »«, ‹›, „“ --,
single-quoted spans, backticks, `>` block quotes) is set aside first, and of the answer statements left the last one counts: the judge's own final verdict.
"""

from __future__ import annotations

import re

from caikit.soft_labels import OPTIONS
from caikit.stages.base import ParseError

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
# "A. Because ...", "(B) is safer", "A - it refuses": a leading option set off by punctuation (not "Response A
# includes ...", which starts describing a response)
_LEADING = re.compile(r"^\s*[*_]*" + _OPTION_WORD + r"(?:\(\s*([ABab])\s*\)|([AB])(?=[.:,)!]|\s*$|[ \t]*\n|\s+[-\u2013\u2014]\s))")
_REFUSAL = re.compile(r"\b(?:I\s*(?:can(?:no|')t|cannot|won't|will\s+not|am\s+(?:not\s+able|unable))|I'm\s+"
                      r"(?:sorry|not\s+able|unable)|as\s+an\s+AI|neither|both\s+(?:are|responses|options))", re.I)


def _letter(match: re.Match) -> str:
    return next(g for g in match.groups() if g).upper()


_QUOTED = re.compile(r'"[^"\n]{0,400}"|\u201c[^\u201d]{0,400}\u201d|\u2018[^\u2019]{0,400}\u2019|`[^`]{0,400}`'
                     # guillemets, both ways round (French/Russian «», German »«), single ‹› / ›‹, and German „“ / ‚‘
                     r"|\u00ab[^\u00bb]{0,400}\u00bb|\u00bb[^\u00ab]{0,400}\u00ab|\u2039[^\u203a]{0,400}\u203a"
                     r"|\u203a[^\u2039]{0,400}\u2039|\u201e[^\u201c\u201d]{0,400}[\u201c\u201d]"
                     r"|\u201a[^\u2018\u2019]{0,400}[\u2018\u2019]"
                     r"|(?<![\w'])'[^'\n]{1,300}'(?![\w'])|^[ \t]*>[^\n]*", re.M)


def unquoted(text: str) -> str:
    """`text` with quoted spans blanked out (same length, so positions keep their order)."""
    return _QUOTED.sub(lambda m: " " * len(m.group(0)), text)


def parse_answer(text: str | None) -> str:
    """The chosen option, 'A' or 'B', from a free-text judge answer (direct or after reasoning).

    Raises ParseError (with the raw text) for refusals, 'neither'/'both' and answers naming no option.
    """
    raw, text = text or "", unquoted(text or "")
    # the judge's own statements ("The answer is: (B)", "I choose (B)") outside quotes: the last one counts
    stated = [m for pattern in _PATTERNS[:2] for m in pattern.finditer(text)]
    if stated:
        return _letter(max(stated, key=lambda m: m.end()))
    for pattern in (_WHOLE, _LEADING):  # anchored to the whole answer or its start: read as written
        match = pattern.search(raw)
        if match:
            return _letter(match)
    if not raw.strip():
        raise ParseError("empty judge answer", raw)
    if _REFUSAL.search(text):
        raise ParseError("the judge refused or chose neither option", raw)
    matches = list(_PATTERNS[2].finditer(text))
    if matches:
        return _letter(matches[-1])
    raise ParseError(f"no option {' or '.join(f'({o})' for o in OPTIONS)} in the judge answer", raw)
