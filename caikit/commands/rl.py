"""`caikit train ppo` and `caikit train grpo`: the RL trainers (caikit/train/ppo.py, grpo.py), with an AI judge as
the reward (`--judge SPEC --reward pairwise|rubric`, caikit/commands/judge_rewards.py) or as the independent check.

`--check-judge PROVIDER:MODEL[@BASE_URL]` asks a model, per sampled answer, whether it is harmless and helpful
(stages/templates/check_judge.txt); its P(Yes) is the check score the reward-hacking monitor compares with
the reward model's. The judge is built here, above the trainers, and handed to them like a reward function:
caikit/train imports no provider.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from caikit.backends.base import LogprobsUnsupported
from caikit.backends.registry import BackendOptions, make_backend, parse_spec
from caikit.config import option
from caikit.errors import UserError
from caikit.commands.judge_rewards import PAIRWISE_SCORES, make_judge_reward
from caikit.stages.base import render
from caikit.stages.judge import JudgeOptions
from caikit.stages.judge_methods import METHODS
from caikit.train import grpo, ppo


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


@dataclass
class JudgeRewardOptions:
    """An AI judge as the reward (instead of --reward-model / --reward-fn)."""

    judge: str = option("", help="an AI judge as the reward: PROVIDER:MODEL[@BASE_URL] (e.g. openai:gpt-4o-mini, "
                                 "local:smollm2); its requests are logged in OUT/requests.jsonl, so a resumed run "
                                 "pays for none twice, and its tokens and cost go to OUT/usage.json")
    reward: str = option("pairwise", help="with --judge: pairwise = the samples of one prompt judged against each "
                                          "other in both orders, scored by --pairwise-score (grpo only) | rubric = "
                                          "each judge principle asked as a yes/no question per sample, P(yes) "
                                          "combined by the principles' weights (logged per principle as "
                                          "detail_rubric_<id>) | guard:DIR = an output guard's penalty "
                                          "(`caikit classifier train`), added to --reward-model or --reward-fn",
                        metadata={"valid": "pairwise, rubric, or guard:DIR"})
    guard_penalty: float = option(1.0, above=0, high=1000, help="--reward guard:DIR: what a flagged response loses")
    pairwise_score: str = option("winrate", help="--reward pairwise: winrate = mean win probability over the "
                                                 "group (0-1) | bt = Bradley-Terry log-strength, centred on the group",
                                 metadata={"choices": list(PAIRWISE_SCORES)})
    constitution: str = option("anthropic-cai", help="constitution YAML file or bundled name whose judge principles "
                                                     "the judge applies")
    judge_method: str = option("auto", help="how the judge answers: logprob (option log-probs) | vote / cot (parsed "
                                            "answers); auto: logprob where the backend returns log-probs",
                               metadata={"choices": ["auto", *METHODS]})
    judge_principles: int = option(1, low=1, high=1000, help="--reward pairwise: judge principles sampled per pair "
                                                             "and averaged (rubric asks every principle)")

    def judge_options(self) -> JudgeOptions:
        return JudgeOptions(constitution=self.constitution, method=self.judge_method,
                            principles=self.judge_principles, seed=getattr(self, "seed", 0), progress=False)

    def check_reward(self, groups: bool) -> None:
        given = [flag for flag, value in (("--reward-model", getattr(self, "reward_model", "")),
                                          ("--reward-fn", getattr(self, "reward_fn", "")), ("--judge", self.judge))
                 if value]
        if len(given) > 1:
            raise UserError(f"give one reward: {' or '.join(given)}, not both")
        if self.reward.startswith("guard:"):
            if self.judge:
                raise UserError("--reward guard:DIR combines with --reward-model or --reward-fn, not --judge")
            if not self.reward.removeprefix("guard:"):
                raise UserError("--reward guard:DIR needs a guard directory after 'guard:'")
            return
        if self.reward not in ("pairwise", "rubric"):
            raise UserError(f"--reward must be pairwise, rubric or guard:DIR, got {self.reward!r}")
        if self.judge:
            parse_spec(self.judge, what="--judge")
            if self.reward == "pairwise" and not groups:
                raise UserError("--reward pairwise compares the samples of one prompt, and PPO samples one per "
                                "prompt: use --reward rubric, or caikit train grpo")

    def make_reward(self):
        """The judge reward these options name, or None (the trainer then builds --reward-model / --reward-fn)."""
        if self.reward.startswith("guard:"):
            from caikit.classifier.reward import GuardReward
            from caikit.train.rewards import make_reward_fn

            model, fn = getattr(self, "reward_model", ""), getattr(self, "reward_fn", "")
            base = make_reward_fn(model, fn, device=getattr(self, "device", "") or "cpu") if (model or fn) else None
            return GuardReward.from_spec(self.reward, base, penalty=self.guard_penalty)
        if not self.judge:
            return None
        return make_judge_reward(self.reward, self.judge, self.judge_options(), self.out,
                                 score=self.pairwise_score)


@dataclass
class PPOConfig(JudgeRewardOptions, ppo.PPOConfig):
    """PPO on prompts against a reward model, a Python function or an AI judge (--reward rubric), with a per-token
    KL penalty (RLHF / RLAIF step)."""

    def validate(self) -> None:
        ppo.PPOConfig.validate(self)
        self.check_reward(groups=False)


@dataclass
class GRPOConfig(JudgeRewardOptions, grpo.GRPOConfig):
    """GRPO / RLOO on prompts against a reward model, a Python function or an AI judge (pairwise or rubric)."""

    def validate(self) -> None:
        grpo.GRPOConfig.validate(self)
        self.check_reward(groups=True)


def run_trainer(train, cfg) -> str:
    """Build the judge reward and the check here (above caikit/train), train, and release both."""
    cfg.validate()
    check, reward = judge_check(cfg), None
    try:
        reward = cfg.make_reward()
        return train(cfg, reward_fn=reward, check=check)
    finally:
        for part in (reward, check):
            if part is not None:
                part.close()


def run_ppo(cfg: PPOConfig) -> str:
    return run_trainer(ppo.train, cfg)


def run_grpo(cfg: GRPOConfig) -> str:
    return run_trainer(grpo.train, cfg)
