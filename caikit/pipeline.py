"""SL-CAI generation over a prompt set: answer -> (critique -> revise) x rounds, resumable.

`caikit generate` writes, in --out:
  traces.jsonl    one Trace per prompt (append-only, the source of truth)
  sft.jsonl       `messages` = prompt + final revision (rebuilt from traces at the end)
  failures.jsonl  prompts that still failed after the retry budget (rebuilt; retried on rerun)
  requests.jsonl  every completed model request (so a rerun never re-requests finished work)
  usage.json      tokens and estimated cost, summed over requests.jsonl
  config.yaml     the resolved config; run.json: the settings that identify these traces
"""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from typing import Any

from caikit.backends.base import BackendError, Usage
from caikit.backends.cache import UsageMeter
from caikit.backends.factory import run_backend
from caikit.config import BackendOptions, option, save_config
from caikit.errors import UserError
from caikit.estimate import confirm_cost, estimate_generate
from caikit.records import Failure, SFTExample, Trace, canonical_json, idempotency_key
from caikit.runner import run_all, run_then_close
from caikit.shard import select_shard
from caikit.stages import critique, generate, revise
from caikit.stages.base import ParseError
from caikit.store import (JsonlFile, check_same_run, latest_by_id, write_json_atomic,
                          write_jsonl_atomic)

# Settings that change what a trace contains: a run directory holds traces of one setting only.
IDENTITY_FIELDS = ("constitution_hash", "backend", "model", "rounds", "seed", "temperature",
                   "max_tokens", "few_shot", "system_prompt")


@dataclasses.dataclass
class GenerateConfig(BackendOptions):
    constitution: str = option("anthropic-cai", help="constitution YAML file, or a bundled name: anthropic-cai | hhh")
    prompts: str = option("", help="prompt file: JSONL/JSON/CSV/parquet (prompt or messages column) or hh-rlhf "
                                   "(.jsonl.gz); default: the bundled red-team sample")
    out: str = option("outputs/generate", help="run directory")
    rounds: int = option(1, help="critique -> revision rounds per prompt (the CAI paper used up to 4)")
    limit: int = option(0, help="use only the first N prompts (0: all)")
    seed: int = option(0, help="seed for principle sampling and model sampling")
    temperature: float = option(0.7, help="sampling temperature for answers, critiques and revisions")
    max_tokens: int = option(256, help="max new tokens per model answer")
    few_shot: int = option(1, help="few-shot critique/revision demonstrations prepended (-1: all in the constitution)")
    system_prompt: str = option("", help="system prompt for every request")
    parse_retries: int = option(2, help="resamples of an empty/unusable answer before it becomes a failure row")
    shard: str = option("", help="i/n: work on shard i of n of the prompts (split by prompt id hash), so n "
                                 "machines can share one prompt set; combine with caikit merge")
    progress: bool = option(True, help="show a progress bar")

    def validate(self) -> None:
        BackendOptions.validate(self)
        if self.rounds < 1:
            raise UserError("--rounds must be >= 1")
        if self.limit < 0:
            raise UserError("--limit must be >= 0")


def _identity(cfg: GenerateConfig, constitution_hash: str) -> dict[str, Any]:
    values = dataclasses.asdict(cfg) | {"constitution_hash": constitution_hash}
    return {k: values[k] for k in IDENTITY_FIELDS}


class TraceBuilder:
    """Runs one prompt through generator -> critic -> reviser, rounds times."""

    def __init__(self, backend, constitution, cfg: GenerateConfig, run_id: str):
        self.backend, self.constitution, self.cfg, self.run_id = backend, constitution, cfg, run_id
        demos = constitution.few_shot if cfg.few_shot < 0 else constitution.few_shot[: cfg.few_shot]
        self.few_shot = critique.few_shot_turns(demos)

    async def _ask(self, messages, parse, seed: int) -> tuple[str, Usage]:
        """One request + parse, resampling an unusable answer up to parse_retries times."""
        for attempt in range(self.cfg.parse_retries + 1):
            (completion,) = await self.backend.generate(
                messages, n=1, temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                seed=seed + 7919 * attempt)
            try:
                return parse(completion.text), completion.usage
            except ParseError:
                if attempt == self.cfg.parse_retries:
                    raise
        raise AssertionError("unreachable")

    async def build(self, row, key: str) -> Trace:
        cfg = self.cfg
        # Per-prompt RNG and seeds: the same prompt gets the same principles whatever the order of work.
        base_seed = int(idempotency_key("seed", cfg.seed, row.id)[-8:], 16)
        rng = random.Random(base_seed)
        usage = Usage()
        response, u = await self._ask(generate.build_prompt(row.messages, system_prompt=cfg.system_prompt),
                                      generate.parse_answer, base_seed)
        usage.add(u)
        initial, rounds = response, []
        for r in range(cfg.rounds):
            (principle,) = self.constitution.sample(rng, kind="critique", k=1)
            critique_messages = critique.build_prompt(row.messages, response, principle.critique,
                                                      few_shot=self.few_shot, system_prompt=cfg.system_prompt)
            critique_text, u = await self._ask(critique_messages, critique.parse_answer, base_seed + 2 * r + 1)
            usage.add(u)
            revision_messages = revise.build_prompt(critique_messages, critique_text, principle.revision)
            response, u = await self._ask(revision_messages, revise.parse_answer, base_seed + 2 * r + 2)
            usage.add(u)
            rounds.append({"principle_id": principle.id, "critique_request": principle.critique,
                           "critique": critique_text, "revision_request": principle.revision, "revision": response})
        return Trace(id=key, run_id=self.run_id, prompt_id=row.id, prompt=row.messages, initial_response=initial,
                     rounds=rounds, final_revision=response, backend=self.backend.describe(),
                     params={"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed,
                             "rounds": cfg.rounds, "few_shot": cfg.few_shot,
                             "constitution": self.constitution.name,
                             "constitution_hash": self.constitution.hash},
                     usage=usage.to_dict())


def trace_key(row, cfg: GenerateConfig, constitution_hash: str) -> str:
    return idempotency_key("trace", row.messages, constitution_hash, _identity(cfg, constitution_hash))


def finalize_generate(out: Path, prompt_order: list[str], meter: UsageMeter | None = None) -> dict[str, int]:
    """Rebuild the derived files (sft.jsonl, failures.jsonl, usage.json) from the append-only logs."""
    traces = latest_by_id(JsonlFile(out / "traces.jsonl").iter())
    order = {pid: i for i, pid in enumerate(prompt_order)}
    ordered = sorted(traces.values(), key=lambda t: order.get(t.get("prompt_id"), len(order)))
    write_jsonl_atomic(out / "sft.jsonl", (SFTExample.from_trace(Trace.from_dict(t)).to_dict() for t in ordered))
    failures = latest_by_id(JsonlFile(out / "failures.log.jsonl").iter())
    outstanding = [f for k, f in failures.items() if k not in traces]
    write_jsonl_atomic(out / "failures.jsonl", outstanding)
    counts = {"prompts": len(prompt_order), "traces": len(traces), "failures": len(outstanding)}
    if meter is not None:
        write_json_atomic(out / "usage.json", {**meter.summary(), **counts})
    return counts


def run_generate(cfg: GenerateConfig) -> int:
    from caikit.constitution import load_constitution
    from caikit.prompts import bundled_prompts_path, load_prompts

    # Validate every input before anything is written or any request is sent.
    constitution = load_constitution(cfg.constitution)
    if not constitution.critique_principles:
        raise UserError("has no critique/revision principles", path=str(constitution.path))
    prompts = select_shard(load_prompts(cfg.prompts or bundled_prompts_path(), limit=cfg.limit or None),
                           cfg.shard, lambda row: row.id)
    out = Path(cfg.out)
    identity = _identity(cfg, constitution.hash)
    check_same_run(out, "generate", identity)
    backend = cfg.make_backend()  # a missing API key fails here, before any work

    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json_atomic(out / "run.json", {"stage": "generate", "identity": identity, "shard": cfg.shard})
    run_id = idempotency_key("run", canonical_json(identity))[-12:]
    traces_file = JsonlFile(out / "traces.jsonl")
    failures_file = JsonlFile(out / "failures.log.jsonl")
    done = set(latest_by_id(traces_file.iter()))
    todo = [(row, trace_key(row, cfg, constitution.hash)) for row in prompts]
    todo = [(row, key) for row, key in todo if key not in done]
    confirm_cost(estimate_generate(cfg, constitution, [row for row, _ in todo]), cfg)
    cached, meter = run_backend(backend, cfg, out)
    builder = TraceBuilder(cached, constitution, cfg, run_id)
    print(f"caikit generate: {len(prompts)} prompts, {len(prompts) - len(todo)} already done, "
          f"{len(todo)} to go -> {out}", file=sys.stderr)

    async def work(item) -> bool:
        row, key = item
        try:
            trace = await builder.build(row, key)
        except (BackendError, ParseError) as e:
            raw = getattr(e, "raw", None)
            failures_file.append(Failure(id=key, run_id=run_id, stage="generate", prompt_id=row.id,
                                         error=str(e).splitlines()[0][:500], raw=raw).to_dict())
            return False
        traces_file.append(trace.to_dict())
        return True

    try:
        # with --batch-api every prompt is in flight at once, so each round's requests go in one batch;
        # online, twice --concurrency prompts are worked on, so one waiting out a retry backoff leaves its
        # place to another (the rate limiter still holds requests in flight to --concurrency)
        concurrency = max(1, len(todo)) if cfg.batch_api else cfg.concurrency * (1 if cfg.backend == "local" else 2)
        run_then_close(run_all(todo, work, concurrency=concurrency, desc="generate", meter=meter,
                               progress=cfg.progress), cached)
    finally:
        traces_file.close()
        failures_file.close()
        counts = finalize_generate(out, [row.id for row in prompts], meter)
    print(f"caikit generate: {counts['traces']}/{counts['prompts']} traces, {counts['failures']} failures, "
          f"{meter.usage.total_tokens:,} tokens, ${meter.cost_usd:.4f} -> {out}/traces.jsonl, {out}/sft.jsonl",
          file=sys.stderr)
    if counts["failures"]:
        print(f"caikit generate: {counts['failures']} prompts failed after retries (see {out}/failures.jsonl); "
              "rerun the same command to retry them", file=sys.stderr)
    return 0
