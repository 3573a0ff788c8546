"""One reward interface for the RL trainers (PPO, GRPO / RLOO; online DPO builds on it too).

A reward is any `RewardFn`: called with the conversations up to the last user turn and the sampled
responses, it returns a `RewardBatch` of one score per response plus optional `details` (per-principle
or per-part scores, logged as metrics `detail_<name>`). Implementations here:

  RewardModelReward   a reward model from `caikit train reward` (sigmoid score in 0-1 at the EOS token)
  FunctionReward      a plain Python function, e.g. a rule; `--reward-fn module:function` or `path.py:function`

Judge-based rewards (pairwise win rates, rubric yes/no log-probs) live above `caikit.train`, which must
not import backends: they subclass RewardFn in caikit/commands/judge_rewards.py and are passed to a
trainer's entry function (`train(cfg, reward_fn=...)`). Samples of one prompt arrive with the same
`groups` id (GRPO / RLOO pass them; PPO passes None), so a pairwise judge can compare within a group.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from caikit.errors import UserError

Messages = list[dict[str, str]]


@dataclass
class RewardBatch:
    """Scores of one batch of responses, in order; details: name -> one value per response (for metrics)."""

    scores: list[float]
    details: dict[str, list[float]] = field(default_factory=dict)


class RewardFn:
    """Base of every reward: subclass and implement `__call__` (and `close` if it holds resources)."""

    def __call__(self, prompts: list[Messages], responses: list[str], *,
                 groups: list[int] | None = None) -> RewardBatch:
        raise NotImplementedError

    def close(self) -> None:
        """Release models, event loops or connections; called once when training ends."""


class RewardModelReward(RewardFn):
    """A trained reward model: σ(logit) in 0-1 of (conversation, response), encoded exactly as the reward
    trainer encodes its pairs (chat template, response ending at EOS), so the score is read at that EOS."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @classmethod
    def from_dir(cls, path: str, device: str = "cpu", what: str = "--reward-model") -> "RewardModelReward":
        from caikit.train.reward import load_reward_model

        if not path:
            raise UserError(f"{what} is required: a reward model directory from `caikit train reward`")
        if not Path(path).is_dir():
            raise UserError(f"{what}: reward model directory does not exist", path=path)
        if not (Path(path) / "config.json").exists():
            raise UserError(f"{what}: not a reward model directory (no config.json)", path=path)
        return cls(*load_reward_model(path, device=device))

    def __call__(self, prompts: list[Messages], responses: list[str], *,
                 groups: list[int] | None = None) -> RewardBatch:
        from caikit.train.reward import score

        return RewardBatch(score((self.model, self.tokenizer), list(zip(prompts, responses)), self.batch_size,
                                 self.max_length))


class FunctionReward(RewardFn):
    """A Python function `f(prompts: list[str], responses: list[str])` -> list of floats, or a dict
    {part: list of floats} (the score is the sum of the parts, each logged), or a RewardBatch.

    `prompts` are the last user turns as text, which is what a rule usually needs (and what PPO's
    `reward_fn` always received)."""

    def __init__(self, fn: Callable[..., Any], name: str = ""):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "reward function")

    def __call__(self, prompts: list[Messages], responses: list[str], *,
                 groups: list[int] | None = None) -> RewardBatch:
        out = self.fn([last_user_text(p) for p in prompts], responses)
        if isinstance(out, RewardBatch):
            return out
        if isinstance(out, dict):
            parts = {str(k): [float(v) for v in values] for k, values in out.items()}
            return RewardBatch([sum(values) for values in zip(*parts.values())], parts)
        return RewardBatch([float(v) for v in out])


def last_user_text(conversation: Messages) -> str:
    """The prompt as one string, for reward functions and samples.jsonl: the last user turn."""
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def load_function(spec: str) -> Callable[..., Any]:
    """`package.module:function` (importable) or `path/to/file.py:function` -> the function."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise UserError(f"--reward-fn must be MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError("--reward-fn: file does not exist", path=target)
        module_spec = importlib.util.spec_from_file_location(f"caikit_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # so pickling / dataclasses inside the file work
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"--reward-fn: cannot import {target!r}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"--reward-fn: {target} has no function {name!r}")
    return fn


def as_reward_fn(reward: RewardFn | Callable[..., Any]) -> RewardFn:
    """A RewardFn as is; any other callable is a FunctionReward."""
    return reward if isinstance(reward, RewardFn) else FunctionReward(reward)


def make_reward_fn(reward_model: str, reward_fn: str, device: str = "cpu") -> RewardFn:
    """The reward a trainer's flags name: --reward-model DIR or --reward-fn SPEC (exactly one).

    Judge-based rewards (--judge / --reward pairwise|rubric) are built above caikit.train and passed in."""
    if reward_model and reward_fn:
        raise UserError("give --reward-model or --reward-fn, not both")
    if reward_fn:
        return FunctionReward(load_function(reward_fn), name=reward_fn)
    if not reward_model:
        raise UserError("--reward-model is required: a reward model directory from `caikit train reward` "
                        "(or --reward-fn MODULE:FUNCTION)")
    return RewardModelReward.from_dir(reward_model, device=device)


def detail_means(batch: RewardBatch) -> dict[str, float]:
    """{"detail_<name>": mean} of a batch's per-part scores, for the metrics row."""
    return {f"detail_{name}": sum(values) / len(values) for name, values in batch.details.items() if values}


def compute_rewards(reward: RewardFn, prompts: list[Messages], responses: list[str],
                    groups: list[int] | None = None) -> RewardBatch:
    """Call `reward` and check what came back: one finite score (and one value per detail) per response."""
    batch = reward(prompts, responses, groups=groups)
    name = getattr(reward, "name", type(reward).__name__)
    if len(batch.scores) != len(responses):
        raise UserError(f"reward {name} returned {len(batch.scores)} scores for {len(responses)} responses")
    bad = next((s for s in batch.scores if not math.isfinite(s)), None)
    if bad is not None:
        raise UserError(f"reward {name} returned a non-finite score ({bad})")
    for part, values in batch.details.items():
        if len(values) != len(responses):
            raise UserError(f"reward {name}: detail {part!r} has {len(values)} values for {len(responses)} responses")
    return batch
