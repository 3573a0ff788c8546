"""Real generate and judge runs against the loopback fake server, with scripted answers that read like a
CAI run's: an initial answer, a critique, a longer revision; a judge whose log-probs prefer the revision (or,
between policy samples, the alphabetically first). Used by the dataset-card and TRL consumer tests.

A prompt containing TRUNCATE gets a revision longer than --max-tokens (a `truncated` trace); one containing
UNCHANGED gets its initial answer back as the revision (a `degenerate` one).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from caikit.testing.fake_api import FakeAPIServer, FakeRequest

REVISION_REQUEST = "Reply with the rewritten response only"  # caikit/stages/templates/revision.txt
CRITIQUE_REQUEST = "Write only the critique of your previous response"  # .../critique.txt
_BLOCK = re.compile(r"<response_a>\n(.*?)\n</response_a>.*?<response_b>\n(.*?)\n</response_b>", re.S)
REVISION = ("I can't help with that, because it could hurt someone. If you are worried about {topic}, a safer "
            "first step is to talk it through with someone you trust, or with a professional who can look at "
            "the whole situation. I am happy to explain the risks, point you to reliable information, or help "
            "you plan what to say.")


def _said(req: FakeRequest, marker: str) -> bool:
    return any(marker in m["content"] for m in req.messages)


def sl_cai_responder(req: FakeRequest) -> str:
    """Answer, critique or revision, as the request asks (see the module docstring)."""
    last = req.last_user_message
    if "<response_a>" in last:  # a judge asked for its reasoning (cot / vote): pick the letter its log-probs would
        a, b = _BLOCK.search(last).groups()
        return "(A)" if _prefers_a(a, b) else "(B)"
    answered = [i for i, m in enumerate(req.messages) if m["content"].startswith("Sure, here is how")]
    prompt = req.messages[answered[-1] - 1]["content"] if answered else last  # (few-shot demos come first)
    topic = " ".join(prompt.split()[:6]).lower()
    if REVISION_REQUEST in last:
        if _said(req, "UNCHANGED"):  # the initial answer again, as a model that ignored the critique would
            return next(m["content"] for m in reversed(req.messages) if m["content"].startswith("Sure, here is how"))
        if _said(req, "TRUNCATE"):
            return " ".join(["far"] * 2000)
        return REVISION.format(topic=topic)
    if CRITIQUE_REQUEST in last:
        return "The answer helps with something harmful and should decline while still being useful."
    return f"Sure, here is how ({req.index}): first you {topic}"


def _prefers_a(a: str, b: str) -> bool:
    if a.startswith("I can't") != b.startswith("I can't"):
        return a.startswith("I can't")
    return a < b


def judge_logprobs(req: FakeRequest) -> dict[str, float] | None:
    """The judge's first-token log-probs: 0.8 on the letter of the preferred response."""
    found = _BLOCK.search(req.last_user_message)
    if not found:
        return None
    good, bad = ("A", "B") if _prefers_a(*found.groups()) else ("B", "A")
    return {good: math.log(0.8), bad: math.log(0.2)}


def scripted_server(**kwargs) -> FakeAPIServer:
    return FakeAPIServer(sl_cai_responder, logprobs=judge_logprobs, **kwargs)


def endpoint_args(server: FakeAPIServer) -> list[str]:
    return ["--backend", "openai", "--model", "fake-model", "--base-url", server.openai_base_url, "--no-progress"]


def generate_and_judge(root: Path, server: FakeAPIServer, *generate_args: str) -> tuple[Path, Path]:
    """`caikit generate` (with `generate_args`, e.g. --prompts FILE), then `caikit judge` of its revisions:
    (generate dir, judge dir) under `root`."""
    from caikit.cli import main

    gen, judge = root / "gen", root / "judge"
    assert main(["generate", *endpoint_args(server), "--out", str(gen), *generate_args]) == 0
    assert main(["judge", *endpoint_args(server), "--from", str(gen), "--out", str(judge)]) == 0
    return gen, judge
