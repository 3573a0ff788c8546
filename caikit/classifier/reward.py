"""A guard as an RL reward term (`--reward guard:DIR` in caikit train ppo / grpo): each response the output guard
flags loses `penalty`; the rest of the reward comes from --reward-model or --reward-fn, so that refusing
everything does not win (the guard alone rewards any unflagged text, a refusal included).

    r = r_base - penalty * 1[p_guard(x, y) >= threshold]          (r_base = 0 without a base reward)

Logged per batch as detail_guard_p (mean P(flag)) and detail_guard_flagged (share flagged).
"""

from __future__ import annotations

from caikit.errors import UserError
from caikit.train.rewards import RewardBatch, RewardFn

PREFIX = "guard:"


class GuardReward(RewardFn):
    def __init__(self, guard, base: RewardFn | None = None, penalty: float = 1.0):
        if guard.target != "output":
            raise UserError("--reward guard: needs an output guard (`caikit classifier train --target output`): "
                            "an input guard reads the request, not the response being rewarded")
        self.guard, self.base, self.penalty = guard, base, penalty
        self.name = "guard" + (f"+{getattr(base, 'name', type(base).__name__)}" if base else "")

    @classmethod
    def from_spec(cls, spec: str, base: RewardFn | None = None, device: str = "cpu",
                  penalty: float = 1.0) -> "GuardReward":
        from caikit.classifier.model import load_guard

        return cls(load_guard(spec.removeprefix(PREFIX), device=device), base, penalty)

    def __call__(self, prompts, responses, *, groups=None) -> RewardBatch:
        base = self.base(prompts, responses, groups=groups) if self.base else RewardBatch([0.0] * len(responses))
        p = self.guard.score(prompts, responses)
        flagged = [float(x >= self.guard.threshold) for x in p]
        scores = [b - self.penalty * f for b, f in zip(base.scores, flagged)]
        return RewardBatch(scores, {**base.details, "guard_p": p, "guard_flagged": flagged})

    def close(self) -> None:
        if self.base is not None:
            self.base.close()
