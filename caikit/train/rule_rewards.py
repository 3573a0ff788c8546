"""Example rule rewards for `--reward-fn caikit.train.rule_rewards:NAME` (see configs/grpo-rule-reward.yaml).

A rule reward is a plain function f(prompts: list[str], responses: list[str]) returning one float per
response, or a dict {part: one float per response} whose parts are summed into the score and logged
one by one (metrics `detail_<part>`). Write your own in any file and pass `--reward-fn path.py:name`.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?)\"']\s*$")


def concise(prompts: list[str], responses: list[str]) -> dict[str, list[float]]:
    """Two parts in 0-1: `brevity` (1 up to 40 words, falling linearly to 0 at 160) and `complete` (1 when the
    answer ends a sentence rather than being cut off). The score is their sum, 0-2."""
    brevity = [min(1.0, max(0.0, (160 - len(r.split())) / 120)) for r in responses]
    complete = [1.0 if SENTENCE_END.search(r) else 0.0 for r in responses]
    return {"brevity": brevity, "complete": complete}

