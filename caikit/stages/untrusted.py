"""Untrusted text inside a prompt: the conversation and the responses a judge compares.

Each sits in its own tagged block (<conversation>, <response_a>, <response_b>; the rubric's <response>) and
the judge is told the blocks are data. A response must not be able to close its block and write a verdict
outside it, so any of our tags written inside the text is escaped -- however a reader might spell it: upper
case, spaces or a newline before `>`, `-` or a space for `_`, an escaped slash (`<\\/response_a>`),
attributes, fullwidth or look-alike brackets and letters, zero-width characters.
"""

from __future__ import annotations

import re
import unicodedata

# our tags as a lenient XML/HTML reader takes them, matched against `reads_as(span)`
_TAG = re.compile(r"<\s*(?:\\?/)?\s*(?:conversation|response(?:[\s_\-]*[ab])?)(?:\s[^<>]*)?\s*/?\s*>")
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
_TAG_LIKE = re.compile(f"[{_OPEN}][^{_OPEN}{_CLOSE}]{{1,80}}[{_CLOSE}]")  # a bracketed span (newlines too)


def reads_as(text: str) -> str:
    """`text` as a reader may take it: compatibility forms folded, look-alike letters Latin, invisibles gone."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_LOOKS_LIKE).translate(_INVISIBLE)


def escape_untrusted(text: str) -> str:
    """Neutralise our delimiter tags inside untrusted text, however spelled: '</response_a>' ->
    '&lt;/response_a&gt;', and likewise '＜/rеsponse_a＞' (fullwidth brackets, a Cyrillic е), '</response-a\\n>'
    or a tag with a zero-width space in it, which a model may read as the same tag."""
    def neutralise(m: re.Match) -> str:
        span = m.group(0)
        return f"&lt;{span[1:-1]}&gt;" if _TAG.fullmatch(reads_as(span)) else span

    return _TAG_LIKE.sub(neutralise, text)
