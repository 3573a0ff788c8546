"""What a run will cost before it starts: `caikit estimate generate|judge`, and the --max-cost gate.

The estimate loads the same inputs as the real run (prompts with --limit / --shard, the constitution,
traces for judge --pairs revision) and builds the real requests with the stage templates. What the
model will write is not known yet, so each answer it reads back (the response a critique is about,
the critique a revision follows, a sampled policy response) is a placeholder of the expected length:
`expected_fill` x --max-tokens, or 2 tokens for a judge's one-letter answer. Principles are drawn per
request in the real run; here each takes its expected share of the requests.

Tokens are counted as `limits.estimate_tokens` does (4 characters a token plus 8 characters a
message), or with tiktoken when it is installed and its encoding is at hand.

Costs come four ways: online, --batch-api (half price), and each with prompt caching, where every
request after the first that shares a constant prefix (system prompt, few-shot demonstrations) reads
it from the provider's cache, if that prefix reaches the provider's minimum. That is a best case: a
cache entry lives 5 minutes, and requests sent together before the first one is cached all miss.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from caikit.backends.base import Usage, mark_prefix_end
from caikit.backends.cost import cached_prefix_tokens, cost_usd, format_usd, load_price_overrides, price_for
from caikit.backends.factory import DEFAULT_MODELS
from caikit.backends.limits import token_counter
from caikit.config import from_dict, option
from caikit.errors import UserError
from caikit.stages import critique, generate, judge, revise
from caikit.stages.base import render, with_system

STAGES = ("generate", "judge")
DEFAULT_FILL = 0.6  # share of --max-tokens a free-text answer is expected to use
LETTER_TOKENS = 2  # a judge's direct answer: "A", " (B)"


@dataclass
class Estimate:
    """Expected requests, tokens and USD of one stage's run (or of its policy sampling: `policy`)."""

    stage: str
    backend: str
    model: str
    items: int  # prompts (generate) or pairs (judge)
    requests: int
    prompt_tokens: int
    cacheable_prompt_tokens: int  # of prompt_tokens: in shared prefixes long enough to be cached
    completion_tokens: int  # expected
    max_completion_tokens: int  # if every answer ran to --max-tokens
    cost_usd: float  # online
    cost_usd_cached: float  # online, with prompt caching
    batch_cost_usd: float
    batch_cost_usd_cached: float
    worst_case_usd: float  # online, every answer at --max-tokens, no cache
    price_known: bool
    token_counter: str
    policy: Estimate | None = None  # judge --pairs samples: the policy's sampling, sent online

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        money = "price unknown" if not self.price_known else (
            f"{format_usd(self.cost_usd)} online, {format_usd(self.batch_cost_usd)} with --batch-api"
            + (f", {format_usd(self.cost_usd_cached)} online with prompt caching" if self.cacheable_prompt_tokens
               else ""))
        return (f"{self.requests:,} requests, {self.prompt_tokens:,} prompt tokens ({self.cacheable_prompt_tokens:,} "
                f"cacheable), {self.completion_tokens:,} completion tokens expected (max "
                f"{self.max_completion_tokens:,}): {money}")


@dataclass
class _Tally:
    """Sums of expected requests and tokens, and how often each shared prefix is used."""

    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    max_completion_tokens: float = 0.0
    prefix_uses: dict[str, list[float]] = field(default_factory=dict)  # label -> [uses, tokens]

    def add(self, prompt: int, expected: int, maximum: int, *, share: float = 1.0, n: int = 1,
            copies: int = 1, prefix: tuple[str, int] | None = None) -> None:
        """`share` such requests, each with `n` samples, sent as `copies` requests (Anthropic: n)."""
        self.requests += share * copies
        self.prompt_tokens += share * copies * prompt
        self.completion_tokens += share * n * expected
        self.max_completion_tokens += share * n * maximum
        if prefix is not None:
            label, tokens = prefix
            self.prefix_uses.setdefault(label, [0.0, tokens])[0] += share * copies

    def finish(self, stage: str, cfg, model: str, items: int, counter) -> Estimate:
        backend = cfg.backend
        reads = writes = 0.0
        for uses, tokens in self.prefix_uses.values():
            cached = cached_prefix_tokens(backend, model, int(tokens))
            if cached and uses > 0:  # the first use writes the cache, the others read it
                writes += cached * min(1.0, uses)
                reads += cached * max(0.0, uses - 1.0)
        prompt, completion = round(self.prompt_tokens), round(self.completion_tokens)
        plain = Usage(prompt_tokens=prompt, completion_tokens=completion)
        # OpenAI bills a cache write as plain input; Anthropic counts it apart (1.25x)
        cached = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=round(reads),
                       cache_write_tokens=round(writes) if backend == "anthropic" else 0)
        overrides = load_price_overrides(cfg.prices) if getattr(cfg, "prices", "") else None

        def usd(usage: Usage, batch: bool = False) -> float:
            return round(cost_usd(model, usage, overrides=overrides, batch=batch, backend=backend), 6)

        worst = Usage(prompt_tokens=prompt, completion_tokens=round(self.max_completion_tokens))
        return Estimate(stage=stage, backend=backend, model=model, items=items, requests=round(self.requests),
                        prompt_tokens=prompt, cacheable_prompt_tokens=round(reads + writes),
                        completion_tokens=completion, max_completion_tokens=round(self.max_completion_tokens),
                        cost_usd=usd(plain), cost_usd_cached=usd(cached), batch_cost_usd=usd(plain, True),
                        batch_cost_usd_cached=usd(cached, True), worst_case_usd=usd(worst),
                        price_known=price_for(model, overrides=overrides, backend=backend).known,
                        token_counter=counter.name)


def _model(cfg) -> str:
    return cfg.model or DEFAULT_MODELS[cfg.backend]


def _shares(principles) -> list[tuple[Any, float]]:
    """Each principle with its probability of being drawn for one request (weight / total weight)."""
    total = sum(p.weight for p in principles)
    return [(p, p.weight / total) for p in principles]


def estimate_generate(cfg, constitution, prompts, *, fill: float = DEFAULT_FILL, counter=None) -> Estimate:
    """One answer, then `rounds` x (critique + revision) per prompt, as `pipeline.TraceBuilder` asks."""
    model = _model(cfg)
    counter = counter or token_counter(model)
    expected, maximum = round(fill * cfg.max_tokens), cfg.max_tokens
    reply = counter.placeholder(expected)  # the answer a critique is about; the critique a revision follows
    demos = constitution.few_shot if cfg.few_shot < 0 else constitution.few_shot[: cfg.few_shot]
    few_shot = critique.few_shot_turns(demos)
    system = with_system([], cfg.system_prompt)
    system_prefix = ("system", counter.tokens(counter.units(system))) if system else None
    shared = with_system(mark_prefix_end(few_shot), cfg.system_prompt)
    few_shot_prefix = ("few-shot", counter.tokens(counter.units(shared))) if few_shot else system_prefix
    # a principle's requests enter the templates once each: their length adds to the rest
    principles = [(counter.text_units(p.critique), counter.text_units(p.revision), share)
                  for p, share in _shares(constitution.critique_principles)]
    tally = _Tally()
    for row in prompts:
        answer = generate.build_prompt(row.messages, system_prompt=cfg.system_prompt)
        tally.add(counter.tokens(counter.units(answer)), expected, maximum, prefix=system_prefix)
        critique_messages = critique.build_prompt(row.messages, reply, "", few_shot=few_shot,
                                                  system_prompt=cfg.system_prompt)
        base_critique = counter.units(critique_messages)
        base_revision = counter.units(revise.build_prompt(critique_messages, reply, ""))
        for critique_units, revision_units, share in principles:
            tally.add(counter.tokens(base_critique + critique_units), expected, maximum, share=share * cfg.rounds,
                      prefix=few_shot_prefix)
            tally.add(counter.tokens(base_revision + critique_units + revision_units), expected, maximum,
                      share=share * cfg.rounds, prefix=few_shot_prefix)
    return tally.finish("generate", cfg, model, len(prompts), counter)


def estimate_judge(cfg, constitution, pairs, method: str, *, fill: float = DEFAULT_FILL, counter=None) -> Estimate:
    """Per pair: --principles principles x both orders (unless --no-swap), each as `judging.PairJudge` asks."""
    model = _model(cfg)
    counter = counter or token_counter(model)
    cot = method == "cot"
    votes = cfg.votes or (5 if method == "vote" else 1)
    maximum = cfg.max_tokens or (512 if cot else 24)
    expected = 1 if method == "logprob" else (round(fill * maximum) if cot else min(maximum, LETTER_TOKENS))
    copies = votes if cfg.backend == "anthropic" else 1  # Anthropic has no `n`: one request per sample
    orders = 2 if cfg.swap else 1
    demos = [] if cot else (constitution.judge_few_shot if cfg.few_shot < 0 else
                            constitution.judge_few_shot[: cfg.few_shot])
    pool = constitution.judge_principles
    scoring_turns = counter.units([{"role": "assistant", "content": counter.placeholder(expected)},
                                   {"role": "user", "content": render("judge_cot_final")}])
    per_principle = []  # (extra units of its instruction and demonstrations, expected calls per pair, prefix)
    for principle, share in _shares(pool):
        few_shot = judge.few_shot_turns(demos, principle.judge)
        shared = with_system(mark_prefix_end(few_shot), cfg.system_prompt)
        label = f"judge:{principle.id}" if few_shot else "system"  # demonstrations name the principle
        prefix = (label, counter.tokens(counter.units(shared))) if shared else None
        calls = min(1.0, share * cfg.principles) * orders  # drawn without replacement: at most once a pair
        per_principle.append((counter.text_units(principle.judge.strip()) + counter.units(few_shot), calls, prefix))
    tally = _Tally()
    for pair in pairs:
        base = counter.units(judge.build_prompt(pair.prompt, pair.response_a, pair.response_b, "", cot=cot,
                                                system_prompt=cfg.system_prompt))
        for extra, calls, prefix in per_principle:
            prompt = counter.tokens(base + extra)
            if method == "logprob":
                tally.add(prompt, 1, 1, share=calls, prefix=prefix)
                continue
            scored_after = cot and getattr(cfg, "cot_scoring", "parse") == "logprobs"
            tally.add(prompt, expected, maximum, share=calls, n=1 if scored_after else votes,
                      copies=1 if scored_after else copies, prefix=prefix)
            if scored_after:  # then the options are scored after the reasoning
                tally.add(counter.tokens(base + extra + scoring_turns), 1, 1, share=calls, prefix=prefix)
    return tally.finish("judge", cfg, model, len(pairs), counter)


def estimate_samples(cfg, prompts, *, fill: float = DEFAULT_FILL, counter=None) -> Estimate:
    """judge --pairs samples: --n policy samples per prompt (online, from --policy-backend)."""
    policy = SimpleNamespace(backend=cfg.policy_backend, model=cfg.policy_model, prices=cfg.prices)
    model = _model(policy)
    counter = counter or token_counter(model)
    expected = round(fill * cfg.policy_max_tokens)
    copies = cfg.n if cfg.policy_backend == "anthropic" else 1
    tally = _Tally()
    for row in prompts:
        prompt = counter.tokens(counter.units(generate.build_prompt(row.messages)))
        tally.add(prompt, expected, cfg.policy_max_tokens, n=cfg.n, copies=copies)
    return tally.finish("sample", policy, model, len(prompts), counter)


def _spent(cfg) -> float:
    """What the run directory has spent already (usage.json), which --max-cost counts too."""
    try:
        return float(json.loads((Path(cfg.out) / "usage.json").read_text(encoding="utf-8")).get("cost_usd") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def confirm_cost(estimate: Estimate | None, cfg) -> None:
    """Show the estimate on stderr; above --max-cost ask on a terminal, else stop unless --yes.

    Going on means spending up to --max-cost: the CachingBackend stops the run there."""
    if estimate is None or estimate.backend == "local" or estimate.requests == 0:
        return
    spent = _spent(cfg)
    print(f"caikit estimate: {estimate.summary()}" + (f"; {format_usd(spent)} spent already" if spent else ""),
          file=sys.stderr)
    max_cost = getattr(cfg, "max_cost", 0.0) or 0.0
    if not max_cost:
        return
    if not estimate.price_known:
        raise UserError(f"--max-cost needs the price of '{estimate.model}': pass --prices FILE")
    expected = estimate.batch_cost_usd if getattr(cfg, "batch_api", False) else estimate.cost_usd
    if spent + expected <= max_cost:
        return
    over = (f"the estimated cost {format_usd(expected)}" + (f" (+ {format_usd(spent)} spent)" if spent else "")
            + f" exceeds --max-cost {format_usd(max_cost)}")
    if getattr(cfg, "yes", False):
        print(f"caikit estimate: {over}; --yes: going on until --max-cost is spent", file=sys.stderr)
        return
    if sys.stdin is not None and sys.stdin.isatty():
        print(f"caikit estimate: {over}. Continue, stopping at --max-cost? [y/N] ", end="", file=sys.stderr,
              flush=True)
        if sys.stdin.readline().strip().lower() in ("y", "yes"):
            return
        raise UserError(f"{over}: stopped before any request")
    raise UserError(f"{over}: raise --max-cost, or pass --yes to go on until it is spent")


# -- `caikit estimate STAGE [that stage's flags]` ------------------------------------------------------

_OWN = ("stage", "json", "expected_fill", "tokenizer")


@functools.lru_cache(maxsize=None)
def _estimate_config() -> type:
    """A config with every GenerateConfig and JudgeConfig option, defaulting to None (= the stage's
    default), so `stage_config` can pass on just what the user set and refuse the other stage's options."""
    from caikit.judging import JudgeConfig
    from caikit.pipeline import GenerateConfig

    merged: dict[str, tuple[Any, dataclasses.Field]] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for stage, cls in zip(STAGES, (GenerateConfig, JudgeConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            defaults.setdefault(f.name, {})[stage] = default
            merged.setdefault(f.name, (hints[f.name], f))
    fields = [
        ("stage", str, dataclasses.field(metadata={"help": "the run to estimate: generate | judge (then its flags)"})),
        ("json", bool, option(False, help="print the estimate as JSON")),
        ("expected_fill", float, option(DEFAULT_FILL, help="share of --max-tokens a free-text answer is expected "
                                                           "to use (the rest of the max is counted apart)")),
        ("tokenizer", str, option("auto", help="auto: tiktoken if installed, else 4 characters a token; chars",
                                  metadata={"choices": ["auto", "chars"]})),
    ]
    for name, (tp, f) in merged.items():
        values = defaults[name]
        only = "" if len(values) == 2 else f"{next(iter(values))} only; "
        if len(set(map(repr, values.values()))) == 1:
            value = next(iter(values.values()))
            where = f"({only}default: {value})" if value not in ("", None) else (f"({only[:-2]})" if only else "")
        else:
            where = "(default " + "; ".join(f"{stage}: {value}" for stage, value in values.items()) + ")"
        meta = {**f.metadata, "help": f"{f.metadata.get('help', '')} {where}".rstrip()}
        fields.append((name, tp | None, dataclasses.field(default=None, metadata=meta)))
    return dataclasses.make_dataclass("EstimateConfig", fields,
                                      namespace={"validate": stage_config, "__module__": __name__})


def __getattr__(name: str):
    # Built on first use: pipeline and judging import this module, so it cannot import them on load.
    if name == "EstimateConfig":
        return _estimate_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stage_config(cfg):
    """The GenerateConfig / JudgeConfig the same flags would give that stage, validated."""
    from caikit.judging import JudgeConfig
    from caikit.pipeline import GenerateConfig

    if cfg.stage not in STAGES:
        raise UserError(f"unknown stage '{cfg.stage}' (choose from {', '.join(STAGES)})")
    cls = GenerateConfig if cfg.stage == "generate" else JudgeConfig
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None and k not in _OWN}
    foreign = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} is not a {cfg.stage} option")
    if not 0 < cfg.expected_fill <= 1:
        raise UserError("--expected-fill must be in (0, 1]")
    stage_cfg = from_dict(cls, given, source="command line")
    stage_cfg.validate()
    return stage_cfg


def run_estimate(cfg) -> int:
    from caikit.constitution import load_constitution
    from caikit.prompts import bundled_prompts_path, load_prompts
    from caikit.shard import select_shard

    stage_cfg = stage_config(cfg)
    counter = token_counter(_model(stage_cfg), cfg.tokenizer)
    fill = cfg.expected_fill
    constitution = load_constitution(stage_cfg.constitution)
    if cfg.stage == "generate":
        if not constitution.critique_principles:
            raise UserError("has no critique/revision principles", path=str(constitution.path))
        prompts = select_shard(load_prompts(stage_cfg.prompts or bundled_prompts_path(), limit=stage_cfg.limit or None),
                               stage_cfg.shard, lambda row: row.id)
        estimate = estimate_generate(stage_cfg, constitution, prompts, fill=fill, counter=counter)
    else:
        estimate = _estimate_judge_run(stage_cfg, constitution, fill, counter)
    print(json.dumps(estimate.to_dict(), indent=2) if cfg.json else format_estimate(estimate))
    return 0


def _estimate_judge_run(cfg, constitution, fill: float, counter) -> Estimate:
    from caikit.judging import Pair, pair_id, resolve_method, revision_pairs, split_pair_id
    from caikit.prompts import bundled_prompts_path, load_prompts
    from caikit.shard import select_shard
    from caikit.soft_labels import round_robin_pairs

    if not constitution.judge_principles:
        raise UserError("has no judge principles", path=str(constitution.path))
    if cfg.principles > len(constitution.judge_principles):
        raise UserError(f"--principles {cfg.principles}: the constitution has only "
                        f"{len(constitution.judge_principles)} judge principles", path=str(constitution.path))
    method = resolve_method(cfg, SimpleNamespace(name=cfg.backend, supports_logprobs=cfg.backend != "anthropic"))
    if cfg.pairs == "revision":
        pairs, _ = revision_pairs(cfg.from_dir, cfg.limit)
        pairs = select_shard(pairs, cfg.shard, lambda pair: split_pair_id(pair.id)[0])
        return estimate_judge(cfg, constitution, pairs, method, fill=fill, counter=counter)
    prompts = select_shard(load_prompts(cfg.prompts or bundled_prompts_path(), limit=cfg.limit or None),
                           cfg.shard, lambda row: row.id)
    sample = counter.placeholder(round(fill * cfg.policy_max_tokens))  # a policy response of the expected length
    indices = round_robin_pairs(cfg.n, cfg.round_robin or (0 if cfg.n <= 8 else 3))
    pairs = [Pair(pair_id(row.id, i, j), row.messages, sample, sample) for row in prompts for i, j in indices]
    estimate = estimate_judge(cfg, constitution, pairs, method, fill=fill, counter=counter)
    estimate.policy = estimate_samples(cfg, prompts, fill=fill, counter=counter)
    return estimate


def format_estimate(e: Estimate) -> str:
    def money(online: float, cached: float) -> str:
        if not e.price_known:
            return "unknown (pass --prices FILE)"
        caching = f"   with prompt caching {format_usd(cached)}" if e.cacheable_prompt_tokens else ""
        return format_usd(online) + caching

    what = "prompts" if e.stage == "generate" else "pairs"
    lines = [f"caikit estimate {e.stage}: {e.items:,} {what}, {e.backend} {e.model} (tokens: {e.token_counter})",
             f"  requests            {e.requests:,}",
             f"  prompt tokens       {e.prompt_tokens:,}   cacheable {e.cacheable_prompt_tokens:,}",
             f"  completion tokens   {e.completion_tokens:,} expected   {e.max_completion_tokens:,} max",
             f"  cost online         {money(e.cost_usd, e.cost_usd_cached)}",
             f"  cost --batch-api    {money(e.batch_cost_usd, e.batch_cost_usd_cached)}",
             "  worst case online   " + (f"{format_usd(e.worst_case_usd)} (every answer at --max-tokens, no cache)"
                                         if e.price_known else "unknown"),
             f"  price known         {'yes' if e.price_known else 'no'}"]
    if e.policy is not None:
        p = e.policy
        lines.append(f"  policy samples      {p.requests:,} requests to {p.backend} {p.model}, "
                     f"{p.prompt_tokens:,} prompt + {p.completion_tokens:,} completion tokens: "
                     + (f"{format_usd(p.cost_usd)} online" if p.price_known else "price unknown"))
    return "\n".join(lines)
