"""An AI judge as the reward of the RL trainers (GRPO / RLOO, PPO): built here, above caikit.train, and passed in
as `train(cfg, reward_fn=...)` (caikit/train imports no provider).

  PairwiseJudgeReward  `--reward pairwise`: the samples of one prompt (a GRPO group) judged pair by pair with the
                       judge stage itself (stages/judge.py: its principles, its method, both orders); each sample
                       scores its mean win probability (`winrate`) or its Bradley–Terry log-strength (`bt`)
  RubricJudgeReward    `--reward rubric`: each judge principle of the constitution asked as a yes/no question per
                       sample (stages/rubric.py); score = Σ_p w_p · p_yes_p / Σ_p w_p over the principles' weights
                       (rule-based rewards, Mu et al. 2024), each principle's p_yes in the details, so the metrics
                       show `detail_rubric_<principle id>`

Every judge request goes through the request log of the trainer's --out (requests.jsonl, via `open_backend`): a
resumed or repeated run replays what it already asked instead of paying for it again; usage.json beside it sums
the judge's tokens and cost. A comparison or question the judge could not answer (unparseable after its
resamples, or a request that failed after its retries) counts as undecided (win probability 0.5, p_yes 0.5) and
shows in `detail_judge_failed`; a provider that refuses the run (wrong key, unknown model) stops training.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from typing import Any, Awaitable

from caikit.backends.base import BackendError
from caikit.backends.registry import BackendOptions, probed_backend
from caikit.errors import UserError
from caikit.judge_run import NOT_IDENTITY, load_judge_constitution
from caikit.records import idempotency_key
from caikit.rundir import RunDir
from caikit.runner import Runner, open_backend
from caikit.soft_labels import bradley_terry, round_robin_pairs, win_scores
from caikit.stages import rubric
from caikit.stages.base import ParseError
from caikit.stages.judge import JudgeOptions, JudgeSetup, Pair, judge_pair, pair_id, resolve_method
from caikit.train.rewards import Messages, RewardBatch, RewardFn

# --pairwise-score -> per-sample scores of one group from its comparisons (i, j, P(i better than j))
PAIRWISE_SCORES = {
    "winrate": lambda comparisons, n: [0.5 if s is None else s for s in win_scores(comparisons, n)],
    "bt": lambda comparisons, n: [0.0 if s is None else s for s in bradley_terry(comparisons, n)],
}


class JudgeReward(RewardFn):
    """What both judge rewards share: the constitution, the backend dressed with --out's request log, a runner
    and one event loop for the whole run (backends keep per-loop clients and queues)."""

    def __init__(self, spec: str, opts: JudgeOptions, out: str, *, device: str = "", what: str = "--judge"):
        self.constitution = load_judge_constitution(opts)
        backend_opts = BackendOptions(device=device).with_spec(spec, what=what)
        backend, _ = probed_backend(backend_opts)
        run = RunDir(out)  # no lock of its own: the trainer holds --out
        run.path.mkdir(parents=True, exist_ok=True)
        self.run, self.opts, self.name = run, opts, f"judge {spec}"
        self.cached, self.meter = open_backend(run, backend, backend_opts)
        self.runner = Runner(self.cached, parse_retries=opts.parse_retries, progress=False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self, work: Awaitable[Any]) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(work)

    @staticmethod
    async def _settled(work: Awaitable[float]) -> float | None:
        """The value of one judge call, or None where it failed for this item only (a fatal error propagates)."""
        try:
            return await work
        except ParseError:
            return None
        except BackendError as e:
            if e.fatal:
                raise
            return None

    def close(self) -> None:
        """Flush the request log, write usage.json (the judge's tokens and cost) and close the event loop."""
        loop = self._loop or asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.cached.aclose())
        finally:
            loop.close()
            self._loop = None
        self.run.write_json(RunDir.USAGE, {"judge": self.meter.summary()})


class PairwiseJudgeReward(JudgeReward):
    """Score the samples of each group by pairwise judgments (all pairs, both orders unless --no-swap)."""

    def __init__(self, spec: str, opts: JudgeOptions, out: str, *, score: str = "winrate", device: str = ""):
        if score not in PAIRWISE_SCORES:
            raise UserError(f"--pairwise-score must be one of {' | '.join(PAIRWISE_SCORES)}, got {score!r}")
        super().__init__(spec, opts, out, device=device)
        method = resolve_method(opts, self.cached.supports_logprobs, self.cached.name)
        identity = {"constitution_hash": self.constitution.hash, "backend": self.cached.name,
                    "model": self.cached.model, "method": method, "use": "reward",
                    **{k: v for k, v in dataclasses.asdict(opts).items() if k not in NOT_IDENTITY}}
        self.setup = JudgeSetup.make(opts, method, self.constitution, identity, self.cached.describe())
        self.score = score

    def __call__(self, prompts: list[Messages], responses: list[str], *,
                 groups: list[int] | None = None) -> RewardBatch:
        # without groups (PPO's batch, the probe answers) no two samples share a prompt: nothing to compare
        groups = list(range(len(responses))) if groups is None else groups
        members: dict[int, list[int]] = defaultdict(list)
        for k, g in enumerate(groups):
            members[g].append(k)
        planned = []  # (group, i, j, coroutine or 0.5 for identical answers)
        for g, idx in members.items():
            for i, j in round_robin_pairs(len(idx), 0):
                a, b = responses[idx[i]], responses[idx[j]]
                if a.strip() == b.strip():  # the same answer cannot beat itself: no request
                    planned.append((g, i, j, None))
                    continue
                pair = Pair(pair_id(f"g{g}", i, j), prompts[idx[i]], a, b)
                planned.append((g, i, j, self._p_a(pair)))

        async def judge_all() -> list[float | None]:
            return list(await asyncio.gather(*(self._settled(w) for *_, w in planned if w is not None)))

        judged = iter(self._run(judge_all()))
        comparisons: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
        failed = [0] * len(responses)
        for g, i, j, work in planned:
            p = 0.5 if work is None else next(judged)
            if p is None:  # undecided: a draw, counted as a failure for both sides
                p = 0.5
                failed[members[g][i]] += 1
                failed[members[g][j]] += 1
            comparisons[g].append((i, j, p))
        scores = [0.0] * len(responses)
        for g, idx in members.items():
            for k, s in zip(idx, PAIRWISE_SCORES[self.score](comparisons[g], len(idx))):
                scores[k] = s
        per_sample = [max(1, len(members[g]) - 1) for g in groups]  # comparisons each sample takes part in
        return RewardBatch(scores, {"judge_failed": [f / n for f, n in zip(failed, per_sample)]})

    async def _p_a(self, pair: Pair) -> float:
        judgment = await judge_pair(self.runner.ask, self.setup, pair, self.setup.key(pair), "reward")
        return judgment.p_a


class RubricJudgeReward(JudgeReward):
    """Score each sample by the judge's yes/no answers to every judge principle, weighted by the principles'
    weights."""

    def __init__(self, spec: str, opts: JudgeOptions, out: str, *, device: str = ""):
        super().__init__(spec, opts, out, device=device)
        method = resolve_method(opts, self.cached.supports_logprobs, self.cached.name)
        self.logprobs = method == "logprob"  # vote / cot: one answer at temperature 0, parsed
        self.principles = self.constitution.judge_principles
        self.total_weight = sum(p.judge_share for p in self.principles)
        if self.total_weight <= 0:
            raise UserError("the judge principles' weights sum to 0: nothing to combine",
                            path=str(self.constitution.path))

    def __call__(self, prompts: list[Messages], responses: list[str], *,
                 groups: list[int] | None = None) -> RewardBatch:
        items = [rubric.RubricItem(prompts[k], responses[k], p.id, p.judge)
                 for k in range(len(responses)) for p in self.principles]

        async def grade_all() -> list[float | None]:
            return list(await asyncio.gather(*(self._settled(self._grade(item)) for item in items)))

        grades = iter(self._run(grade_all()))
        details: dict[str, list[float]] = {f"rubric_{p.id}": [] for p in self.principles}
        scores, failed = [], []
        for _ in responses:
            total, misses = 0.0, 0
            for p in self.principles:
                p_yes = next(grades)
                if p_yes is None:  # unanswered: undecided
                    p_yes, misses = 0.5, misses + 1
                details[f"rubric_{p.id}"].append(p_yes)
                total += p.judge_share * p_yes
            scores.append(total / self.total_weight)
            failed.append(misses / len(self.principles))
        return RewardBatch(scores, {**details, "judge_failed": failed})

    async def _grade(self, item: rubric.RubricItem) -> float:
        seed = int(idempotency_key("rubric-seed", self.opts.seed, item.prompt, item.response, item.principle_id)[-8:],
                   16)
        return await rubric.grade(self.runner.ask, item, logprobs=self.logprobs,
                                  system_prompt=self.opts.system_prompt, seed=seed)


def make_judge_reward(kind: str, spec: str, opts: JudgeOptions, out: str, *, score: str = "winrate",
                      device: str = "") -> JudgeReward:
    """`--reward pairwise|rubric` with `--judge SPEC` into the trainer's --out."""
    if kind == "pairwise":
        return PairwiseJudgeReward(spec, opts, out, score=score, device=device)
    if kind == "rubric":
        return RubricJudgeReward(spec, opts, out, device=device)
    raise UserError(f"--reward must be pairwise or rubric, got {kind!r}")
