"""One line of the report's verdict: a topic, its level (the colour) and the plain words that say why."""

from __future__ import annotations

import dataclasses

MARKS = {"bad": "!!", "warn": "??", "good": "ok", "none": "--"}


@dataclasses.dataclass
class Finding:
    topic: str
    level: str  # bad (red) | warn (amber: not measured, or a caveat) | good | none (nothing to judge)
    text: str  # the plain-words verdict, one sentence
    badge: str = ""  # a word or two beside it, so that colour is never the only signal
    facts: str = ""  # the figures behind it
    detail: str = ""  # a longer paragraph (the gate's own words), shown on the page only

    @property
    def label(self) -> str:
        """The topic, or "" when the sentence already opens with it ("Harmlessness improved ...")."""
        opening = self.text.lower().removeprefix("the ")
        return "" if opening.startswith(self.topic.lower().removeprefix("the ")) else self.topic

    def line(self) -> str:
        label = f"{self.label}: " if self.label else ""
        return f"[{MARKS[self.level]}] {label}{self.text} {self.facts}".strip()
