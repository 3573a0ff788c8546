"""`caikit generate`: SL-CAI over a prompt set -- answer -> (critique -> revise) x rounds, resumable.

Writes, in --out (file names: caikit.rundir.RunDir):
  traces.jsonl    one Trace per prompt (append-only, the source of truth), with stop reasons, `truncated`
                  and `degenerate` flags
  sft.jsonl       prompt + completion (the final revision), rebuilt from traces; cut or degenerate
                  revisions are left out unless --keep-truncated / --keep-degenerate
  failures.jsonl  prompts that still failed after the retry budget, with attempts and usage (retried on rerun)
  requests.jsonl  every model request: final (usable) answers are never asked for again; unusable ones are
  usage.json      tokens and estimated cost, summed over requests.jsonl; stats.json: counts
  config.yaml     the resolved config; run.json: the settings that identify these traces

Exit status: 0 when the failures are within --max-failure-rate, 1 beyond it (after writing everything
it got), 2 for bad input or a provider that refuses the run (wrong key, unknown model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from caikit.backends.registry import BackendOptions, probed_backend
from caikit.config import option
from caikit.errors import UserError
from caikit.estimate import confirm_cost, dry_ask, sample_of
from caikit.rundir import RunDir, check_identity, check_members, note
from caikit.store import read_json, write_json_atomic
from caikit.runner import Runner, exit_status, open_backend, pending, run_then_close
from caikit.sft_data import finalize_generate
from caikit.shard import select_shard
from caikit.stages.trace import TraceSetup, build_trace, identity, trace_keys


@dataclasses.dataclass
class GenerateConfig(BackendOptions):
    constitution: str = option("anthropic-cai", help="constitution YAML file, or a bundled name: anthropic-cai | hhh")
    prompts: str = option("", help="prompt file: JSONL/JSON/CSV/parquet (prompt or messages column) or hh-rlhf "
                                   "(.jsonl.gz); default: the bundled red-team sample")
    out: str = option("outputs/generate", help="run directory")
    rounds: int = option(1, low=1, high=32, help="critique -> revision rounds per prompt (the CAI paper used up to 4)")
    limit: int = option(0, low=0, help="use only the first N prompts (0: all)")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed for principle sampling and model sampling")
    temperature: float = option(0.7, low=0, high=2, help="sampling temperature for answers, critiques and revisions")
    max_tokens: int = option(256, low=1, high=1_000_000, help="max new tokens per model answer")
    few_shot: int = option(1, low=-1, high=1000, help="few-shot critique/revision demonstrations prepended (-1: all "
                                                      "in the constitution)")
    system_prompt: str = option("", help="system prompt for every request")
    parse_retries: int = option(2, low=0, high=20, help="resamples of an empty/unusable answer before it becomes a "
                                                        "failure row")
    prefetch: int = option(2, low=1, high=64, help="prompts worked on per request in flight (online APIs): a prompt "
                                                   "waiting out a retry leaves its place to another")
    keep_truncated: bool = option(False, help="use revisions cut at --max-tokens as SFT examples (default: counted, "
                                              "left out)")
    keep_degenerate: bool = option(False, help="use degenerate revisions (unchanged, the critique again, empty) as "
                                               "SFT examples (default: counted, left out)")
    max_failure_rate: float = option(0.5, low=0, high=1, help="exit 1 when more than this share of the prompts "
                                                              "failed (everything finished is still written)")
    shard: str = option("", help="i/n: work on shard i of n of the prompts (split by prompt id hash), so n "
                                 "machines can share one prompt set; combine with caikit merge")
    progress: bool = option(True, help="show a progress bar")
    guard: str = option("", help="a guard directory (`caikit classifier train`): an input guard screens the prompts, "
                                 "an output guard the final revisions; counted in stats.json and the dataset card")
    guard_action: str = option("flag", help="what happens to what the guard flags: flag (counted, kept) | drop "
                                            "(counted, left out)", metadata={"choices": ["flag", "drop"]})
    workers: int = option(1, low=1, high=256, help="worker processes sending requests (online APIs), sharing --out: "
                                                   "one process tops out at about a core's worth of requests; "
                                                   "`caikit probe` suggests a number for a server")


def load_inputs(cfg: GenerateConfig, constitution=None):
    """The constitution, this shard's prompts and the prompt set's facts, validated before anything is
    written or sent. The facts: `ids` (of every prompt in the file, before --limit and --shard: what the run
    directory's traces must belong to) and `planned` (the prompts of the whole set after --limit: what the
    shards of one run cover together). `constitution`: already loaded from cfg.constitution."""
    from caikit.constitution import load_constitution
    from caikit.prompts import bundled_prompts_path, load_prompts

    constitution = constitution or load_constitution(cfg.constitution)
    if not constitution.critique_principles:
        raise UserError("has no critique/revision principles", path=str(constitution.path))
    every = load_prompts(cfg.prompts or bundled_prompts_path())
    limited = every[:cfg.limit] if cfg.limit else every
    prompts = select_shard(limited, cfg.shard, lambda row: row.id)
    prompt_set = {"ids": {row.id for row in every}, "planned": len(limited)}
    return constitution, prompts, prompt_set


def price(cfg: GenerateConfig, constitution, prompts, *, fill: float, tokenizer: str = "auto", honours_n=None):
    """The estimate of generating `prompts`: the chains run against a DryAsk."""
    import asyncio

    cls = cfg.provider()
    ask = dry_ask(cfg.model_name(), fill=fill, tokenizer=tokenizer,
                  honours_n=cls.honours_n if honours_n is None else honours_n)
    setup = TraceSetup.make(cfg, constitution, run_id="estimate", backend={})

    priced = sample_of(prompts)

    async def all_chains() -> None:
        for row in priced:
            await build_trace(ask, setup, row, "estimate")

    asyncio.run(all_chains())
    if len(priced) < len(prompts):
        ask.scale(len(prompts) / len(priced))
    estimate = ask.finish("generate", cfg.backend, cfg.model_name(), len(prompts), cfg.prices)
    estimate.sampled = len(priced) if len(priced) < len(prompts) else 0
    return estimate


FINISHED = ".finished.json"  # beside the run's files: what a finished run was made from (see finished_inputs)


def finished_inputs(cfg: GenerateConfig, constitution_hash: str) -> str | None:
    """A digest of everything a finished run is a function of: every option, the constitution, the prompt file's
    bytes and the sizes of the run's files. When a rerun's digest equals the one the finished run left, there is
    nothing to send and nothing to rebuild, and the prompts need not be parsed and keyed again (a 100,000-prompt
    resume: 3.4 s -> a read of the file). None where it does not apply: prompts that are not one plain file,
    and --guard, whose model can change under the same name."""
    import hashlib
    import json

    from caikit.prompts import bundled_prompts_path

    prompts = Path(cfg.prompts or bundled_prompts_path())
    if not prompts.is_file() or cfg.guard:
        return None
    digest = hashlib.sha256()
    with open(prompts, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    files = {name: (Path(cfg.out) / name).stat().st_size if (Path(cfg.out) / name).exists() else -1
             for name in (RunDir.TRACES, RunDir.FAILURE_LOG, RunDir.SFT, RunDir.FAILURES, RunDir.STATS, RunDir.USAGE)}
    from caikit import __version__

    return hashlib.sha256(json.dumps([vars(cfg), constitution_hash, str(prompts.resolve()), digest.hexdigest(), files,
                                      __version__], sort_keys=True, default=str).encode()).hexdigest()


def already_finished(cfg: GenerateConfig, constitution) -> bool:
    """A rerun of a finished run with the same inputs: say so as a resume would, from its stats and usage."""
    marker = read_json(f"{cfg.out}/{FINISHED}")
    if not isinstance(marker, dict):
        return False
    if marker.get("digest") != finished_inputs(cfg, constitution.hash):
        return False
    stats, usage = read_json(f"{cfg.out}/{RunDir.STATS}"), read_json(f"{cfg.out}/{RunDir.USAGE}")
    if not isinstance(stats, dict) or not isinstance(usage, dict) or not all(
            isinstance(stats.get(k), int) for k in ("prompts", "traces", "failures", "sft_examples")):
        return False  # (their sizes are in the digest; this is only for a file rewritten to the same size)
    note("generate", f"{stats['prompts']} prompts, {stats['prompts']} already done, 0 to go -> {cfg.out} (unchanged "
                     "since the run finished)")
    note("generate", f"{stats['traces']}/{stats['prompts']} traces, {stats['failures']} failures, "
                     f"{stats['sft_examples']} SFT examples, {usage.get('total_tokens', 0):,} tokens, "
                     f"${usage.get('cost_usd', 0.0):.4f} -> {cfg.out}/sft.jsonl")
    return True


def run_generate(cfg: GenerateConfig) -> int:
    from caikit.workers import check_workers

    check_workers(cfg.workers, cfg)
    from caikit.constitution import load_constitution

    constitution = load_constitution(cfg.constitution)
    if already_finished(cfg, constitution):
        return 0
    constitution, prompts, prompt_set = load_inputs(cfg, constitution)
    from caikit.classifier.screen import screen_prompts

    prompts, screen = screen_prompts(cfg, prompts)
    key_identity = identity(cfg, constitution.hash)
    # the prompt set belongs to the run: traces of two prompt sets never mix in one directory. A larger --limit,
    # another shard or the same file with prompts added resume it; a file without the prompts already done is
    # another set (checked before a server is probed, and again under the lock)
    check_identity(cfg.out, "generate", key_identity)
    check_members(cfg.out, prompt_set["ids"], (RunDir.TRACES, RunDir.FAILURE_LOG), "prompt_id", locked=False,
                  what=f"prompts that --prompts {cfg.prompts or 'the bundled red-team sample'} does not hold")
    # a missing API key fails here, before anything is written; a self-hosted server is probed (or its probe
    # read back from the run directory) and the run fits itself to what it found
    backend, probe = probed_backend(cfg, cached=read_json(f"{cfg.out}/{RunDir.PROBE}") if cfg.base_url else None)
    with RunDir.open(cfg.out, "generate", key_identity, cfg, shard=cfg.shard, command="generate") as run:
        check_members(run.path, prompt_set["ids"], (RunDir.TRACES, RunDir.FAILURE_LOG), "prompt_id",
                      what=f"prompts that --prompts {cfg.prompts or 'the bundled red-team sample'} does not hold")
        if probe:
            run.write_json(RunDir.PROBE, probe)
        traces, failures = run.jsonl(RunDir.TRACES), run.jsonl(RunDir.FAILURE_LOG)
        todo, done = pending(prompts, trace_keys(cfg, constitution.hash), traces)
        if not cfg.provider().in_process:
            confirm_cost(price(cfg, constitution, [row for row, _ in todo], fill=0.6, honours_n=backend.honours_n), cfg)
        cached, meter = open_backend(run, backend, cfg)
        setup = TraceSetup.make(cfg, constitution, run.run_id, cached.describe())
        runner = Runner(cached, parse_retries=cfg.parse_retries, progress=cfg.progress)
        note("generate", f"{len(prompts)} prompts, {done} already done, {len(todo)} to go -> {run.path}")
        if cfg.batch_api:  # every prompt in flight at once: each round's requests go out as one batch
            concurrency = max(1, len(todo))
        elif cfg.provider().in_process:
            concurrency = backend.batch_size  # a batch's worth of prompts keeps the model busy
        else:
            concurrency = cfg.requests_in_flight(probe) * cfg.prefetch
        died = False
        try:
            if cfg.workers > 1 and len(todo) > 1:
                died = run_workers(cfg, run, todo, probe, cached, meter, setup, traces, failures)
            else:
                run_then_close(runner.run(todo, lambda row, key: build_trace(runner.ask, setup, row, key),
                                          records=traces, failures=failures, stage="generate", run_id=run.run_id,
                                          concurrency=concurrency, meter=meter,
                                          per_item={"answer": 1, "critique": cfg.rounds, "revise": cfg.rounds}),
                               cached)
        finally:
            traces.close()
            failures.close()
            counts = finalize_generate(run, [row.id for row in prompts], keep_truncated=cfg.keep_truncated,
                                       keep_degenerate=cfg.keep_degenerate, meter=meter, screen=screen,
                                       extra_stats={"planned_prompts": prompt_set["planned"]})
    code = report_generate(cfg, counts, meter)
    if code == 0 and not died and counts["traces"] == counts["prompts"] and not counts["failures"]:
        digest = finished_inputs(cfg, constitution.hash)  # every prompt done: a rerun has nothing to do
        if digest:
            write_json_atomic(Path(cfg.out) / FINISHED, {"digest": digest})
    return max(code, 1) if died else code


def run_workers(cfg: GenerateConfig, run: RunDir, todo, probe, cached, meter, setup, traces, failures) -> bool:
    """`todo` over --workers processes (caikit.workers); this process writes what they send. True when a worker
    died (its unfinished prompts are left for the next run)."""
    import functools

    from caikit.workers import StageJob, run_over_workers

    job = StageJob(opts=cfg, probe=probe, run_path=str(run.path), run_id=run.run_id, stage="generate",
                   records=str(traces.path), failures=str(failures.path), build=functools.partial(chain_of, setup),
                   parse_retries=cfg.parse_retries)
    totals = run_then_close(run_over_workers("generate", job, todo, cfg.workers, cfg.requests_in_flight(probe),
                                             records=traces, failures=failures, requests=cached.log, meter=meter,
                                             progress=cfg.progress, prefetch=cfg.prefetch), cached)
    return bool(totals.died)


def chain_of(setup: TraceSetup, ask, row, key: str):
    """A worker's build: one prompt's chain (picklable, unlike a lambda)."""
    return build_trace(ask, setup, row, key)


def report_generate(cfg: GenerateConfig, counts: dict[str, int], meter) -> int:
    """The closing lines, and the exit status they imply."""
    left_out = []
    if counts["truncated"] and not cfg.keep_truncated:
        left_out.append(f"{counts['truncated']} cut at --max-tokens")
    if counts["degenerate"] and not cfg.keep_degenerate:
        left_out.append(f"{counts['degenerate']} degenerate")
    note("generate", f"{counts['traces']}/{counts['prompts']} traces, {counts['failures']} failures, "
                     f"{counts['sft_examples']} SFT examples" + (f" ({', '.join(left_out)} left out: see stats.json)"
                                                                if left_out else "")
         + f", {meter.usage.total_tokens:,} tokens, ${meter.cost_usd:.4f} -> {cfg.out}/sft.jsonl")
    if counts["traces"] and not counts["sft_examples"]:
        note("generate", "no trace made a usable SFT example (every revision was cut at --max-tokens or "
                         "degenerate): raise --max-tokens, or pass --keep-truncated / --keep-degenerate; exit 1")
        return 1
    return exit_status("generate", made=counts["traces"], made_what="traces", failures=counts["failures"],
                       attempted=counts["prompts"], what="prompts", max_failure_rate=cfg.max_failure_rate,
                       failures_file=f"{cfg.out}/failures.jsonl")
