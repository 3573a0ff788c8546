"""RL-CAI feedback: an AI judge compares responses under constitution principles -> preference pairs.

`caikit judge` writes, in --out:
  judgments.jsonl   one Judgment per compared pair: both orders, principle ids, method, raw outputs
  preferences.jsonl TRL conversational prompt/chosen/rejected + scores (rebuilt from judgments)
  failures.jsonl    pairs whose judge answers stayed unusable or whose requests failed (retried on rerun)
  requests.jsonl    every completed judge request (policy_requests.jsonl: the policy's samples)
  usage.json        judge tokens and cost (+ the policy's under "policy"); stats.json: counts and rates
  config.yaml       the resolved config; run.json: the settings that identify these judgments

A pair is judged under K sampled principles (`--principles`), in both orders unless `--no-swap`;
p_a = P(response_a better) is the mean over principles and orders (see caikit.soft_labels).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
from pathlib import Path
from typing import Any

from caikit.backends.base import BackendError, LogprobsUnsupported, Usage
from caikit.backends.cache import CachingBackend, UsageMeter
from caikit.backends.factory import run_backend
from caikit.backends.limits import public_url
from caikit.config import BackendOptions, option, save_config
from caikit.errors import UserError
from caikit.estimate import confirm_cost, estimate_judge
from caikit.records import Failure, Judgment, PreferencePair, canonical_json, idempotency_key
from caikit.runner import run_all, run_sync
from caikit.shard import select_shard
from caikit.soft_labels import (best_and_worst, clamp, mean, position_consistent, round_robin_pairs, soft_label,
                                swap_average, vote_share, win_scores)
from caikit.stages import generate, judge
from caikit.stages.base import ParseError, render
from caikit.store import (JsonlFile, check_same_run, latest_by_id, write_json_atomic,
                          write_jsonl_atomic)

METHODS = ("auto", "logprob", "cot", "vote")
ORDERS = ("first", "swapped")  # first: response_a shown as (A); swapped: response_a shown as (B)


@dataclasses.dataclass
class JudgeOptions:
    """How the judge decides; shared by `caikit judge` and `caikit eval judge`."""

    constitution: str = option("anthropic-cai", help="constitution YAML file or bundled name whose judge principles apply")
    method: str = option("auto", help="logprob: soft label from option log-probs; cot: reason then answer; "
                                      "vote: share of sampled answers; auto: logprob where the backend has "
                                      "log-probs, else vote", metadata={"choices": list(METHODS)})
    swap: bool = option(True, help="judge every pair in both orders and average (--no-swap: one order per "
                                   "pair, picked by a seeded coin)")
    principles: int = option(1, help="judge principles sampled per pair (seeded) and averaged")
    votes: int = option(0, help="sampled answers per order for vote/cot (0: 5 for vote, 1 for cot)")
    cot_clamp: float = option(0.4, help="cot: clamp p to [c, 1-c] as in the CAI paper (0: no clamp)")
    cot_scoring: str = option("parse", help="cot: parse the stated answer, or score the options' log-probs "
                                            "after the reasoning (logprobs backends)",
                              metadata={"choices": ["parse", "logprobs"]})
    few_shot: int = option(0, help="judge demonstrations from the constitution prepended, not for cot (-1: all)")
    temperature: float = option(1.0, help="sampling temperature of vote / cot answers")
    max_tokens: int = option(0, help="max tokens of a judge answer (0: 24 for vote, 512 for cot)")
    system_prompt: str = option("", help="system prompt for every judge request")
    parse_retries: int = option(2, help="resamples of an unparseable or refused answer before the pair fails")
    seed: int = option(0, help="seed for principle sampling, order coins and sampled answers")
    progress: bool = option(True, help="show a progress bar")

    def validate_judge(self) -> None:
        if self.principles < 1:
            raise UserError("--principles must be >= 1")
        if self.votes < 0 or self.parse_retries < 0 or self.max_tokens < 0:
            raise UserError("--votes, --parse-retries and --max-tokens must be >= 0")
        if not 0 <= self.cot_clamp <= 0.5:
            raise UserError("--cot-clamp must be in [0, 0.5]")


@dataclasses.dataclass
class Pair:
    """Two responses to one conversation. id = '<group>#<i>-<j>': responses i and j of group."""

    id: str
    prompt: list[dict[str, str]]
    response_a: str
    response_b: str


def pair_id(group: str, i: int, j: int) -> str:
    return f"{group}#{i}-{j}"


def split_pair_id(pid: str) -> tuple[str, int, int]:
    group, _, ij = pid.rpartition("#")
    i, j = ij.split("-")
    return group, int(i), int(j)


def resolve_method(opts: JudgeOptions, backend) -> str:
    if opts.method == "auto":
        return "logprob" if backend.supports_logprobs else "vote"
    if opts.method == "logprob" or (opts.method == "cot" and opts.cot_scoring == "logprobs"):
        if not backend.supports_logprobs:
            raise UserError(f"--method {opts.method} needs option log-probs, which the {backend.name} backend "
                            "cannot return: use --method vote or --method cot")
    return opts.method


class PairJudge:
    """Judges one pair under sampled principles, in one or both orders."""

    def __init__(self, backend, constitution, opts: JudgeOptions, method: str, identity: dict[str, Any]):
        self.backend, self.constitution, self.opts, self.method = backend, constitution, opts, method
        self.votes = opts.votes or (5 if method == "vote" else 1)
        self.max_tokens = opts.max_tokens or (512 if method == "cot" else 24)
        demos = constitution.judge_few_shot if opts.few_shot < 0 else constitution.judge_few_shot[: opts.few_shot]
        self.demos = [] if method == "cot" else demos
        self.identity_hash = idempotency_key("identity", identity)

    def key(self, pair: Pair) -> str:
        return idempotency_key("judgment", pair.prompt, pair.response_a, pair.response_b, self.identity_hash)

    async def _sampled_choices(self, messages, seed: int, usage: Usage) -> tuple[list[str], list[str]]:
        """`votes` answers, each unparseable one resampled up to parse_retries times; never a guessed vote."""
        opts = self.opts
        completions = await self.backend.generate(messages, n=self.votes, temperature=opts.temperature,
                                                  max_tokens=self.max_tokens, seed=seed)
        texts, choices = [], []
        for i, completion in enumerate(completions):
            usage.add(completion.usage)
            text = completion.text
            for attempt in range(opts.parse_retries + 1):
                try:
                    choices.append(judge.parse_answer(text))
                    break
                except ParseError as e:
                    if attempt == opts.parse_retries:
                        raise ParseError(f"{e} (after {opts.parse_retries} resamples)", text) from None
                (completion,) = await self.backend.generate(
                    messages, n=1, temperature=opts.temperature, max_tokens=self.max_tokens,
                    seed=seed + 7919 * (attempt + 1) + 104729 * (i + 1))
                usage.add(completion.usage)
                text = completion.text
            texts.append(text)
        return choices, texts

    async def _shown_a(self, messages, seed: int, usage: Usage) -> tuple[float, dict[str, Any]]:
        """P(the response shown as (A) is better) and the raw outputs behind it."""
        if self.method == "logprob":
            logprobs = await self.backend.option_logprobs(messages, ["A", "B"])
            p = soft_label(logprobs)
            if p is None:
                raise ParseError("the judge put no probability on A or B", canonical_json(logprobs))
            return p, {"logprobs": logprobs}
        if self.method == "cot" and self.opts.cot_scoring == "logprobs":
            (completion,) = await self.backend.generate(messages, n=1, temperature=self.opts.temperature,
                                                        max_tokens=self.max_tokens, seed=seed)
            usage.add(completion.usage)
            follow_up = [*messages, {"role": "assistant", "content": completion.text.strip()},
                         {"role": "user", "content": render("judge_cot_final")}]
            logprobs = await self.backend.option_logprobs(follow_up, ["A", "B"])
            p = soft_label(logprobs)
            if p is None:
                raise ParseError("the judge put no probability on A or B after reasoning", completion.text)
            return clamp(p, self.opts.cot_clamp), {"texts": [completion.text], "logprobs": logprobs}
        choices, texts = await self._sampled_choices(messages, seed, usage)
        p = vote_share(choices)
        if self.method == "cot":
            p = clamp(p, self.opts.cot_clamp)  # CoT answers are overconfident (CAI paper, sec. 4.1)
        return p, {"texts": texts, "choices": choices}

    async def judge(self, pair: Pair, key: str, run_id: str) -> Judgment:
        opts = self.opts
        rng = random.Random(int(idempotency_key("judge-seed", opts.seed, key)[-8:], 16))
        principles = self.constitution.sample(rng, kind="judge", k=opts.principles)
        orders = ORDERS if opts.swap else (ORDERS[rng.random() < 0.5],)
        usage = Usage()

        async def one(principle, order):
            a, b = (pair.response_a, pair.response_b) if order == "first" else (pair.response_b, pair.response_a)
            few_shot = judge.few_shot_turns(self.demos, principle.judge)
            messages = judge.build_prompt(pair.prompt, a, b, principle.judge, cot=self.method == "cot",
                                          few_shot=few_shot, system_prompt=opts.system_prompt)
            call_key = idempotency_key("judge-call", key, principle.id, order)  # pair + principle + order
            p_shown_a, raw = await self._shown_a(messages, int(call_key[-8:], 16), usage)
            p_a = p_shown_a if order == "first" else 1.0 - p_shown_a  # back to P(response_a better)
            return {"key": call_key, "principle_id": principle.id, "order": order, "p_shown_a": p_shown_a,
                    "p_a": p_a, **raw}

        calls = [one(p, order) for p in principles for order in orders]
        results = await asyncio.gather(*calls, return_exceptions=True)  # all at once: the local backend batches
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, ParseError)), errors[0])
        per_principle = []
        for principle in principles:
            got = {r["order"]: r["p_a"] for r in results if r["principle_id"] == principle.id}
            first, swapped = got.get("first"), got.get("swapped")
            per_principle.append({"principle_id": principle.id, "p_a_first": first, "p_a_swapped": swapped,
                                  "p_a": swap_average(first, swapped),
                                  "position_consistent": position_consistent(first, swapped)})
        p_a_first = mean(x["p_a_first"] for x in per_principle if x["p_a_first"] is not None)
        p_a_swapped = mean(x["p_a_swapped"] for x in per_principle if x["p_a_swapped"] is not None)
        return Judgment(id=key, run_id=run_id, pair_id=pair.id, prompt=pair.prompt, response_a=pair.response_a,
                        response_b=pair.response_b, principle_ids=[p.id for p in principles],
                        p_a_first=p_a_first, p_a_swapped=p_a_swapped, p_a=mean(x["p_a"] for x in per_principle),
                        per_principle=per_principle, method=self.method,
                        position_consistent=position_consistent(p_a_first, p_a_swapped), raw=results,
                        backend=self.backend.describe(), usage=usage.to_dict())


@dataclasses.dataclass
class JudgeSession:
    """A prepared judge run directory: what `judge_all` needs, set up before any request is sent."""

    out: Path
    run_id: str
    judge: PairJudge
    cached: CachingBackend
    meter: UsageMeter
    stage: str


def open_session(cfg, out: Path, stage: str, extra_identity: dict[str, Any]) -> JudgeSession:
    """Validate inputs, make the backend (a missing key fails here), check and record the run settings."""
    from caikit.constitution import load_constitution

    constitution = load_constitution(cfg.constitution)
    if not constitution.judge_principles:
        raise UserError("has no judge principles", path=str(constitution.path))
    if cfg.principles > len(constitution.judge_principles):
        raise UserError(f"--principles {cfg.principles}: the constitution has only "
                        f"{len(constitution.judge_principles)} judge principles", path=str(constitution.path))
    backend = cfg.make_backend()
    method = resolve_method(cfg, backend)
    judge_fields = [f.name for f in dataclasses.fields(JudgeOptions) if f.name not in ("constitution", "progress",
                                                                                        "parse_retries")]
    values = dataclasses.asdict(cfg)
    identity = {"constitution": getattr(constitution, "name", ""), "constitution_hash": constitution.hash,
                "backend": cfg.backend, "model": backend.model,  # not base_url: shards on n replicas must merge
                **{k: values[k] for k in judge_fields}, "method": method, **extra_identity}
    check_same_run(out, stage, identity)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json_atomic(out / "run.json", {"stage": stage, "identity": identity, "shard": getattr(cfg, "shard", "")})
    cached, meter = run_backend(backend, cfg, out)
    run_id = idempotency_key("run", canonical_json(identity))[-12:]
    return JudgeSession(out, run_id, PairJudge(cached, constitution, cfg, method, identity), cached, meter, stage)


async def judge_all(session: JudgeSession, pairs: list[Pair], *, concurrency: int, progress: bool) -> None:
    """Judge every pair not yet in judgments.jsonl; each result or failure is persisted as it completes."""
    judgments = JsonlFile(session.out / "judgments.jsonl")
    failures = JsonlFile(session.out / "failures.log.jsonl")
    done = set(latest_by_id(judgments.iter()))
    todo = [(pair, key) for pair in pairs if (key := session.judge.key(pair)) not in done]
    print(f"caikit {session.stage}: {len(pairs)} pairs, {len(pairs) - len(todo)} already judged, {len(todo)} to go "
          f"({session.judge.method}) -> {session.out}", file=sys.stderr)
    opts = session.judge.opts
    confirm_cost(estimate_judge(opts, session.judge.constitution, [p for p, _ in todo], session.judge.method), opts)
    if getattr(opts, "batch_api", False):  # every pair in flight at once: each round of requests is one batch
        concurrency = max(1, len(todo))

    async def work(item) -> bool:
        pair, key = item
        try:
            judgment = await session.judge.judge(pair, key, session.run_id)
        except LogprobsUnsupported as e:
            raise UserError(f"{e}: use --method vote or --method cot") from None
        except (BackendError, ParseError) as e:
            failures.append(Failure(id=key, run_id=session.run_id, stage="judge", prompt_id=pair.id,
                                    error=str(e).splitlines()[0][:500], raw=getattr(e, "raw", None),
                                    attempts=session.judge.opts.parse_retries + 1).to_dict())
            return False
        judgments.append(judgment.to_dict())
        return True

    try:
        await run_all(todo, work, concurrency=concurrency, desc=session.stage, meter=session.meter, progress=progress)
    finally:
        judgments.close()
        failures.close()


def planned_judgments(session: JudgeSession, pairs: list[Pair]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(stored judgments of `pairs`, in their order; logged failures of `pairs` not judged since)."""
    stored = latest_by_id(JsonlFile(session.out / "judgments.jsonl").iter())
    keys = [session.judge.key(p) for p in pairs]
    logged = latest_by_id(JsonlFile(session.out / "failures.log.jsonl").iter())
    outstanding = [logged[k] for k in keys if k in logged and k not in stored]
    return [stored[k] for k in keys if k in stored], outstanding


def judge_stats(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Position consistency and confidence of a set of judgments."""
    both = [j for j in judgments if j.get("position_consistent") is not None]
    return {"judged": len(judgments),
            "position_consistency_rate": mean(float(j["position_consistent"]) for j in both),
            "position_checked": len(both),
            "mean_abs_margin": mean(abs(j["p_a"] - 0.5) for j in judgments),
            "exact_ties": sum(j["p_a"] == 0.5 for j in judgments)}



def build_preferences(judgments: list[dict[str, Any]], *, source: str, min_margin: float, run_id: str,
                      provenance: dict[str, Any]) -> tuple[list[PreferencePair], dict[str, int]]:
    """One pair per group (prompt): chosen/rejected = best/worst response by mean win probability s.

    p_chosen = 0.5 + (s_chosen - s_rejected) / 2, which is the judge's P(chosen better) for a single
    comparison (both orders and principles averaged) and stays in [0.5, 1] for a group of samples. A group
    is a tie when p_chosen == 0.5 and is dropped when p_chosen - 0.5 is below `min_margin`.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for j in judgments:
        groups.setdefault(split_pair_id(j["pair_id"])[0], []).append(j)
    preferences, counts = [], {"groups": len(groups), "ties": 0, "dropped_below_min_margin": 0, "chosen_first": 0}
    for group, items in groups.items():
        texts: dict[int, str] = {}
        comparisons = []
        for j in items:
            _, i, k = split_pair_id(j["pair_id"])
            texts[i], texts[k] = j["response_a"], j["response_b"]
            comparisons.append((i, k, j["p_a"]))
        scores = win_scores(comparisons, max(texts) + 1)
        picked = best_and_worst(scores)
        if picked is None:
            continue
        best, worst = picked
        p_chosen = 0.5 + (scores[best] - scores[worst]) / 2
        if p_chosen == 0.5:
            counts["ties"] += 1
            continue
        if p_chosen - 0.5 < min_margin - 1e-12:
            counts["dropped_below_min_margin"] += 1
            continue
        counts["chosen_first"] += best == 0  # for revision pairs: the revision won
        preferences.append(PreferencePair(
            id=idempotency_key("preference", run_id, group), run_id=run_id, prompt=items[0]["prompt"],
            chosen=[{"role": "assistant", "content": texts[best]}],
            rejected=[{"role": "assistant", "content": texts[worst]}],
            p_chosen=p_chosen, source=source,
            provenance={**provenance, "group_id": group, "chosen_index": best, "rejected_index": worst,
                        "win_rates": {"chosen": scores[best], "rejected": scores[worst]}, "comparisons": len(items), "judgment_ids": [j["id"] for j in items],
                        "principle_ids": sorted({p for j in items for p in j["principle_ids"]})}))
    return preferences, counts


@dataclasses.dataclass
class JudgeConfig(JudgeOptions, BackendOptions):
    pairs: str = option("revision", help="revision: final revision vs initial response of a generate run (--from); "
                                         "samples: --n policy samples per prompt, judged pairwise",
                        metadata={"choices": ["revision", "samples"]})
    from_dir: str = option("", help="generate run directory holding traces.jsonl (--pairs revision; --from works)")
    prompts: str = option("", help="prompt file for --pairs samples (default: the bundled red-team sample)")
    n: int = option(4, help="responses sampled per prompt (--pairs samples)")
    round_robin: int = option(0, help="compare each sample with this many others around a circle instead of all "
                                      "pairs (0: all pairs up to --n 8, else 3)")
    policy_backend: str = option("local", help="backend that samples responses (--pairs samples)",
                                 metadata={"choices": ["openai", "anthropic", "local"]})
    policy_model: str = option("", help="policy model (default per backend; local: smollm2)")
    policy_base_url: str = option("", help="API base URL of the policy backend")
    policy_temperature: float = option(1.0, help="sampling temperature of policy responses")
    policy_max_tokens: int = option(256, help="max new tokens per policy response")
    limit: int = option(0, help="use only the first N traces / prompts (0: all)")
    min_margin: float = option(0.0, help="drop preference pairs whose |p - 0.5| is below this")
    shard: str = option("", help="i/n: judge shard i of n (split by prompt / trace id hash), so n machines can "
                                 "share one run; combine with caikit merge")
    out: str = option("outputs/judge", help="run directory")

    def validate(self) -> None:
        BackendOptions.validate(self)
        self.validate_judge()
        if self.pairs == "revision" and not self.from_dir:
            raise UserError("--pairs revision needs --from DIR (a caikit generate run directory)")
        if self.pairs == "samples" and self.n < 2:
            raise UserError("--pairs samples needs --n >= 2")
        if self.limit < 0 or self.round_robin < 0 or not 0 <= self.min_margin <= 0.5:
            raise UserError("--limit and --round-robin must be >= 0, --min-margin in [0, 0.5]")


def revision_pairs(from_dir: str, limit: int, shard: str = "") -> tuple[list[Pair], int]:
    """(final revision = response 0, initial response = 1) per trace of the first `limit` in shard `shard`;
    traces whose revision changed nothing skipped (and counted, per shard, so merged shards add up)."""
    path = Path(from_dir) / "traces.jsonl"
    if not path.exists():
        raise UserError("no traces.jsonl here (run caikit generate first)", path=from_dir)
    # by id, not file order: traces.jsonl is in completion order, which differs from run to run
    traces = sorted(latest_by_id(JsonlFile(path).iter()).values(), key=lambda trace: trace["id"])
    traces = select_shard(traces[:limit] if limit else traces, shard, lambda trace: trace["id"])
    pairs, unchanged = [], 0
    for trace in traces:
        revision, initial = trace.get("final_revision", ""), trace.get("initial_response", "")
        prompt = trace.get("prompt")
        if not (isinstance(revision, str) and isinstance(initial, str) and isinstance(prompt, list) and prompt
                and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in prompt)):
            raise UserError(f"trace {trace['id']}: prompt must be chat messages and final_revision / "
                            "initial_response text (was the file edited by hand?)", path=str(path))
        if not trace.get("rounds") or revision.strip() == initial.strip():
            unchanged += 1
            continue
        pairs.append(Pair(pair_id(trace["id"], 0, 1), trace["prompt"], revision, initial))
    return pairs, unchanged


async def sample_responses(policy, prompts, cfg: JudgeConfig, failures: list[dict[str, Any]], run_id: str,
                           meter: UsageMeter) -> dict[str, list[str]]:
    """Up to n distinct non-empty policy responses per prompt (prompt id -> texts)."""
    samples: dict[str, list[str]] = {}

    async def work(row) -> bool:
        seed = int(idempotency_key("sample-seed", cfg.seed, row.id)[-8:], 16)
        try:
            completions = await policy.generate(generate.build_prompt(row.messages), n=cfg.n,
                                                temperature=cfg.policy_temperature,
                                                max_tokens=cfg.policy_max_tokens, seed=seed)
        except BackendError as e:
            failures.append(Failure(id=idempotency_key("sample", row.id, seed), run_id=run_id, stage="sample",
                                    prompt_id=row.id, error=str(e).splitlines()[0][:500]).to_dict())
            return False
        texts = [c.text.strip() for c in completions if c.text.strip()]
        samples[row.id] = list(dict.fromkeys(texts))
        return True

    await run_all(prompts, work, concurrency=cfg.concurrency, desc="sample", meter=meter, progress=cfg.progress)
    return samples


def run_judge(cfg: JudgeConfig) -> int:
    from caikit.backends.factory import make_backend
    from caikit.prompts import bundled_prompts_path, load_prompts

    out = Path(cfg.out)
    extra: dict[str, Any] = {"pairs": cfg.pairs}
    prompts, pairs, skipped = [], [], {}
    if cfg.pairs == "samples":
        prompts = select_shard(load_prompts(cfg.prompts or bundled_prompts_path(), limit=cfg.limit or None),
                               cfg.shard, lambda row: row.id)
        extra |= {k: getattr(cfg, k) for k in ("n", "round_robin", "policy_backend", "policy_model",
                                                "policy_temperature", "policy_max_tokens")}
        extra["policy_base_url"] = public_url(cfg.policy_base_url) or ""  # never user:password@ in run.json
    else:
        pairs, skipped["revision_unchanged"] = revision_pairs(cfg.from_dir, cfg.limit, cfg.shard)
    session = open_session(cfg, out, "judge", extra)
    sample_failures: list[dict[str, Any]] = []
    policy_meter = None

    async def main() -> None:
        nonlocal pairs, policy_meter
        try:
            if cfg.pairs == "samples":
                policy = make_backend(cfg.policy_backend, cfg.policy_model or None,
                                      base_url=cfg.policy_base_url or None, concurrency=cfg.concurrency,
                                      timeout=cfg.timeout, max_retries=cfg.max_retries, batch_size=cfg.concurrency,
                                      device=cfg.device or None)
                policy_meter = UsageMeter(policy.model)
                cached_policy = CachingBackend(policy, JsonlFile(out / "policy_requests.jsonl"), policy_meter)
                try:
                    samples = await sample_responses(cached_policy, prompts, cfg, sample_failures, session.run_id,
                                                     policy_meter)
                finally:
                    await cached_policy.aclose()
                neighbours = cfg.round_robin or (0 if cfg.n <= 8 else 3)
                skipped["too_few_distinct_samples"] = sum(len(samples[r.id]) < 2 for r in prompts if r.id in samples)
                pairs = [Pair(pair_id(row.id, i, j), row.messages, texts[i], texts[j])
                         for row in prompts if len(texts := samples.get(row.id, [])) >= 2
                         for i, j in round_robin_pairs(len(texts), neighbours)]
            await judge_all(session, pairs, concurrency=cfg.concurrency, progress=cfg.progress)
        finally:
            await session.cached.aclose()

    try:
        run_sync(main())
    finally:
        judgments, outstanding = planned_judgments(session, pairs)
        write_jsonl_atomic(out / "failures.jsonl", [*outstanding, *sample_failures])
        source = "revision-vs-initial" if cfg.pairs == "revision" else "judged-samples"
        judge_info = session.judge
        provenance = {"method": judge_info.method, "judge": session.cached.describe(),
                      "constitution": judge_info.constitution.name, "constitution_hash": judge_info.constitution.hash}
        preferences, counts = build_preferences(judgments, source=source, min_margin=cfg.min_margin,
                                                run_id=session.run_id, provenance=provenance)
        write_jsonl_atomic(out / "preferences.jsonl", (p.to_dict() for p in preferences))
        stats = {"source": source, "method": judge_info.method, "swap": cfg.swap, "principles": cfg.principles,
                 "pairs": len(pairs), **judge_stats(judgments), "failures": len(outstanding) + len(sample_failures),
                 "preferences": len(preferences), **{k: v for k, v in counts.items() if k != "chosen_first"},
                 "min_margin": cfg.min_margin, "skipped": skipped}
        if cfg.pairs == "revision":
            stats["revision_preferred_rate"] = counts["chosen_first"] / len(preferences) if preferences else None
        write_json_atomic(out / "stats.json", stats)
        usage = {**session.meter.summary(), "pairs": len(pairs), "judged": len(judgments)}
        if policy_meter is not None:
            usage["policy"] = policy_meter.summary()
        write_json_atomic(out / "usage.json", usage)
    consistency = stats["position_consistency_rate"]
    print(f"caikit judge: {len(judgments)}/{len(pairs)} pairs judged, {len(preferences)} preference pairs "
          f"({counts['ties']} ties, {counts['dropped_below_min_margin']} below --min-margin, "
          f"{stats['failures']} failures), position consistency "
          f"{'n/a' if consistency is None else f'{consistency:.1%}'}, {session.meter.usage.total_tokens:,} tokens, "
          f"${session.meter.cost_usd:.4f} -> {out}/preferences.jsonl", file=sys.stderr)
    if stats["failures"]:
        print(f"caikit judge: {stats['failures']} failed (see {out}/failures.jsonl); rerun the same command to "
              "retry them", file=sys.stderr)
    return 0
