"""What every stage shares: template rendering and the parse-failure signal."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from caikit.records import Messages


class ParseError(ValueError):
    """The model's answer could not be used (empty, refused, no option). Retried, then a failure row."""

    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = raw


@lru_cache(maxsize=None)
def template(name: str) -> str:
    """Prompt text lives in caikit/stages/templates/<name>.txt, not in code."""
    return resources.files("caikit.stages").joinpath("templates", f"{name}.txt").read_text(encoding="utf-8").rstrip("\n")


def render(name: str, **fields: str) -> str:
    return template(name).format(**fields)


_LABEL = re.compile(r"^\s*(?:\*\*)?(critique|revision|revised response|rewritten response)(?:\*\*)?\s*:\s*", re.I)


def strip_label(text: str) -> str:
    """Drop a leading 'Critique:' / 'Revision:' label some models echo from the few-shot layout."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def with_system(messages: Messages, system_prompt: str) -> Messages:
    """Prepend a system prompt unless the conversation already has one."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]
