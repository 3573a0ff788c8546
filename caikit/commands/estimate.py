"""`caikit estimate generate|judge [that stage's flags]`: requests, tokens and cost before a run starts.

The same inputs as the real run are loaded (prompts with --limit / --shard, the constitution, traces for
judge --pairs revision) and the stage's own plans are priced (caikit.estimate.DryAsk). For judge --pairs
samples the policy's answers are not known yet: stand-ins of the expected length take their place.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any

from caikit.commands.generate import GenerateConfig, load_inputs, price
from caikit.commands.judge import JudgeConfig, policy_options
from caikit.config import from_dict, option
from caikit.errors import UserError
from caikit.estimate import DEFAULT_FILL, dry_ask, format_estimate
from caikit.judge_run import load_judge_constitution, price_judge
from caikit.preferences import revision_pairs
from caikit.shard import select_shard
from caikit.soft_labels import round_robin_pairs
from caikit.stages.judge import JudgeSetup, Pair, pair_id, resolve_method, split_pair_id

STAGES = {"generate": GenerateConfig, "judge": JudgeConfig}
_OWN = ("stage", "json", "expected_fill", "tokenizer")


@functools.lru_cache(maxsize=None)
def estimate_config() -> type:
    """A config with every GenerateConfig and JudgeConfig option, defaulting to None (= the stage's
    default), so `stage_config` can pass on just what the user set and refuse the other stage's options."""
    merged: dict[str, tuple[Any, dataclasses.Field]] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for stage, cls in STAGES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            defaults.setdefault(f.name, {})[stage] = default
            merged.setdefault(f.name, (hints[f.name], f))
    fields = [
        ("stage", str, dataclasses.field(metadata={"help": "the run to estimate: generate | judge (then its flags)"})),
        ("json", bool, option(False, help="print the estimate as JSON")),
        ("expected_fill", float, option(DEFAULT_FILL, above=0, high=1, help="share of --max-tokens a free-text "
                                                                            "answer is expected to use")),
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
    # cli looks the config class up by name; it is built from the two stages' configs on first use
    if name == "EstimateConfig":
        return estimate_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stage_config(cfg):
    """The GenerateConfig / JudgeConfig the same flags would give that stage, validated."""
    if cfg.stage not in STAGES:
        raise UserError(f"unknown stage '{cfg.stage}' (choose from {', '.join(STAGES)})")
    cls = STAGES[cfg.stage]
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None and k not in _OWN}
    foreign = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} is not a {cfg.stage} option")
    stage_cfg = from_dict(cls, given, source="command line")
    stage_cfg.validate()
    return stage_cfg


def estimate_judge_run(cfg: JudgeConfig, fill: float, tokenizer: str, probe: dict | None = None):
    """The judge run's estimate, with the policy's sampling for --pairs samples."""
    from caikit.prompts import bundled_prompts_path, load_prompts

    constitution = load_judge_constitution(cfg)
    cls = cfg.provider()
    logprobs = (probe or {}).get("logprobs", cls.supports_logprobs)
    honours_n = (probe or {}).get("honours_n", cls.honours_n)
    method = resolve_method(cfg, bool(logprobs), cfg.backend)
    setup = JudgeSetup.make(cfg, method, constitution, {}, {})
    if cfg.pairs == "revision":
        pairs, _ = revision_pairs(cfg.from_dir, cfg.limit, keep_truncated=cfg.keep_truncated,
                                  keep_degenerate=cfg.keep_degenerate)
        pairs = select_shard(pairs, cfg.shard, lambda pair: split_pair_id(pair.id)[0])
        return price_judge(setup, pairs, cfg.backend, cfg.model_name(), honours_n=honours_n, fill=fill,
                           tokenizer=tokenizer, prices=cfg.prices)
    prompts = select_shard(load_prompts(cfg.prompts or bundled_prompts_path(), limit=cfg.limit or None),
                           cfg.shard, lambda row: row.id)
    counter = dry_ask(cfg.model_name(), tokenizer=tokenizer).counter
    answer = counter.placeholder(round(fill * cfg.policy_max_tokens))  # a policy answer of the expected length
    indices = round_robin_pairs(cfg.n, cfg.round_robin or (0 if cfg.n <= 8 else 3))
    pairs = [Pair(pair_id(row.id, i, j), row.messages, f"{answer} {i}", f"{answer} {j}") for row in prompts
             for i, j in indices]
    estimate = price_judge(setup, pairs, cfg.backend, cfg.model_name(), honours_n=honours_n, fill=fill,
                           tokenizer=tokenizer, prices=cfg.prices)
    estimate.policy = price_samples(cfg, prompts, fill, tokenizer)
    return estimate


def price_samples(cfg: JudgeConfig, prompts, fill: float, tokenizer: str):
    """judge --pairs samples: --n policy samples per prompt (online, from the policy provider)."""
    import asyncio

    from caikit.stages import sample

    from caikit.backends.registry import needs_probe, probed_backend

    policy = policy_options(cfg)
    # a self-hosted policy server is asked whether it honours n, as the judge's is: one that answers one choice
    # is topped up sample by sample (fill_to_n), so --n samples cost n requests, each repeating the prompt
    honours_n = policy.provider().honours_n
    if needs_probe(policy):
        honours_n = probed_backend(policy)[0].honours_n
    ask = dry_ask(policy.model_name(), fill=fill, tokenizer=tokenizer, honours_n=honours_n)

    async def all_prompts() -> None:
        for row in prompts:
            await ask([sample.plan(row, cfg)])

    asyncio.run(all_prompts())
    return ask.finish("sample", policy.backend, policy.model_name(), len(prompts), cfg.prices)


def server_probe(stage_cfg) -> dict | None:
    """What a self-hosted server does (n, log-probs): the run directory's probe.json, else asked now."""
    from caikit.backends.registry import probed_backend
    from caikit.rundir import RunDir
    from caikit.store import read_json

    if not stage_cfg.base_url:
        return None
    return probed_backend(stage_cfg, cached=read_json(f"{stage_cfg.out}/{RunDir.PROBE}"))[1]


def run_estimate(cfg) -> int:
    stage_cfg = stage_config(cfg)
    probe = server_probe(stage_cfg)
    if cfg.stage == "generate":
        constitution, prompts, _ = load_inputs(stage_cfg)
        honours_n = (probe or {}).get("honours_n")
        estimate = price(stage_cfg, constitution, prompts, fill=cfg.expected_fill, tokenizer=cfg.tokenizer,
                         honours_n=honours_n)
    else:
        estimate = estimate_judge_run(stage_cfg, cfg.expected_fill, cfg.tokenizer, probe)
    print(json.dumps(estimate.to_dict(), indent=2) if cfg.json else format_estimate(estimate))
    return 0
