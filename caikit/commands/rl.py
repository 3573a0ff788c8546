"""`caikit train ppo` and `caikit train grpo`: the RL trainers (caikit/train/ppo.py, grpo.py), with a judge as the
independent check.

`--check-judge PROVIDER:MODEL[@BASE_URL]` asks a model, per sampled answer, whether it is harmless and helpful
(stages/templates/check_judge.txt); its P(Yes) is the check score the reward-hacking monitor compares with
the reward model's. The judge is built here, above the trainers, and handed to them like a reward function:
caikit/train imports no provider.
"""

from __future__ import annotations

import asyncio
import math

from caikit.backends.base import LogprobsUnsupported
from caikit.backends.registry import BackendOptions, make_backend, parse_spec
from caikit.errors import UserError
from caikit.stages.base import render
from caikit.train import grpo, ppo
from caikit.train.grpo import GRPOConfig
from caikit.train.ppo import PPOConfig


class JudgeCheck:
    """Score = P(Yes) from option log-probs, or 1/0 from a parsed answer where the provider has no log-probs."""

    def __init__(self, spec: str, device: str | None = None):
        provider, model, _ = parse_spec(spec, what="--check-judge")
        if not model:
            raise UserError(f"--check-judge must be PROVIDER:MODEL[@BASE_URL], got {spec!r}")
        self.backend = make_backend(BackendOptions(device=device or "").with_spec(spec, what="--check-judge"))
        self._loop = None  # one event loop for the whole run: backends keep per-loop clients and queues

    async def _one(self, conversation: list[dict], response: str) -> float:
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in conversation]
        lines.append(f"Assistant: {response}")
        messages = [{"role": "user", "content": render("check_judge", conversation="\n\n".join(lines))}]
        try:
            lp = await self.backend.option_logprobs(messages, ["Yes", "No"])
            yes, no = lp.get("Yes", -math.inf), lp.get("No", -math.inf)
            if math.isinf(yes) and math.isinf(no):
                return 0.5
            top = max(yes, no)
            return math.exp(yes - top) / (math.exp(yes - top) + math.exp(no - top))
        except LogprobsUnsupported:
            (completion,) = await self.backend.generate(messages, n=1, temperature=0.0, max_tokens=4)
            answer = (completion.text or "").strip().lower()
            return 1.0 if answer.startswith("yes") else 0.0 if answer.startswith("no") else 0.5

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        async def run_all() -> list[float]:
            return list(await asyncio.gather(*(self._one(c, r) for c, r in zip(conversations, responses))))

        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(run_all())

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self.backend.aclose())
            self._loop.close()
            self._loop = None


def judge_check(cfg) -> JudgeCheck | None:
    if cfg.check_rm and cfg.check_judge:
        raise UserError("give --check-rm or --check-judge, not both")
    return JudgeCheck(cfg.check_judge) if cfg.check_judge else None


def run_ppo(cfg: PPOConfig) -> str:
    return ppo.train(cfg, check=judge_check(cfg))


def run_grpo(cfg: GRPOConfig) -> str:
    return grpo.train(cfg, check=judge_check(cfg))
