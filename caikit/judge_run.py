"""The judge stage over a run directory: what `caikit judge`, `caikit eval judge` and `caikit eval` share.

`open_judge` validates the constitution, makes the backend (a missing key fails before anything is
written), resolves the method, opens the RunDir with the judge's identity and dresses the backend with the
run's request log; `judge_pairs` runs every pair not yet judged through the runner, in this process or over
--workers processes (the quality gate's pairs are always judged in this one, before any worker starts, so
the gate reads a whole sample); `planned` reads back the stored judgments of a pair list, in its order, and
the failures still outstanding; `price_judge` prices pairs with the stage's own plans.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any

from caikit.backends.cache import CachingBackend, UsageMeter
from caikit.backends.registry import probed_backend
from caikit.errors import UserError
from caikit.estimate import Estimate, confirm_cost, dry_ask
from caikit.gate import assess, calibration_sample, human_calibration_pairs
from caikit.rundir import RunDir, note
from caikit.runner import Outcome, Runner, open_backend, outstanding_failures, pending
from caikit.stages.judge import JudgeOptions, JudgeSetup, Pair, judge_pair, resolve_method
from caikit.store import latest_by_id, read_json
from caikit.workers import StageJob, run_over_workers

# JudgeOptions fields that do not change what a judgment says
NOT_IDENTITY = ("constitution", "progress", "parse_retries")


@dataclasses.dataclass
class JudgeRun:
    """A judge run directory, set up before any request is sent."""

    run: RunDir
    setup: JudgeSetup
    cached: CachingBackend
    meter: UsageMeter
    runner: Runner
    stage: str
    constitution: Any
    probe: dict[str, Any] | None = None  # what `caikit probe` found at a self-hosted server (workers reuse it)
    died: bool = False  # a --workers process ended without finishing: its pairs are left for the next run

    def close(self) -> None:
        self.run.close()


def load_judge_constitution(cfg: JudgeOptions):
    from caikit.constitution import load_constitution

    constitution = load_constitution(cfg.constitution)
    if not constitution.judge_principles:
        raise UserError("has no judge principles", path=str(constitution.path))
    if cfg.principles > len(constitution.judge_principles):
        raise UserError(f"--principles {cfg.principles}: the constitution has only "
                        f"{len(constitution.judge_principles)} judge principles", path=str(constitution.path))
    return constitution


def judge_identity(cfg, constitution, model: str, method: str, extra: dict[str, Any]) -> dict[str, Any]:
    values = dataclasses.asdict(cfg)
    judge_fields = [f.name for f in dataclasses.fields(JudgeOptions) if f.name not in NOT_IDENTITY]
    return {"constitution": getattr(constitution, "name", ""), "constitution_hash": constitution.hash,
            "backend": cfg.backend, "model": model,  # not base_url: shards on n replicas must merge
            **{k: values[k] for k in judge_fields}, "method": method, **extra}


def open_judge(cfg, out: str, stage: str, extra_identity: dict[str, Any], *, constitution=None,
               principles: list | None = None) -> JudgeRun:
    """Validate inputs, make (and for a self-hosted server, probe) the backend, check and record the run
    settings, dress the backend with the run's request log."""
    constitution = constitution or load_judge_constitution(cfg)
    backend, probe = probed_backend(cfg, cached=read_json(f"{out}/{RunDir.PROBE}") if cfg.base_url else None)
    method = resolve_method(cfg, backend.supports_logprobs, backend.name)
    identity = judge_identity(cfg, constitution, backend.model, method, extra_identity)
    run = RunDir.open(out, stage, identity, cfg, shard=getattr(cfg, "shard", ""), command=stage.replace("-", " "))
    try:
        if probe:
            run.write_json(RunDir.PROBE, probe)
        cached, meter = open_backend(run, backend, cfg)
        setup = JudgeSetup.make(cfg, method, constitution, identity, cached.describe(), principles=principles)
        runner = Runner(cached, parse_retries=cfg.parse_retries, progress=cfg.progress)
    except BaseException:
        run.close()
        raise
    return JudgeRun(run, setup, cached, meter, runner, stage, constitution, probe)


async def confirm_judge_cost(jr: JudgeRun, pairs: list[Pair]) -> None:
    """Show (and gate on --max-cost) the estimate of the pairs not judged yet, before any is sent."""
    if jr.cached.in_process:
        return
    stored = set(latest_by_id(jr.run.jsonl(RunDir.JUDGMENTS).iter()))
    todo = [p for p in pairs if jr.setup.key(p) not in stored]
    # priced on a thread: the plans run on an event loop of their own
    confirm_cost(await asyncio.to_thread(price_judge, jr.setup, todo, jr.cached.name, jr.cached.model,
                                         honours_n=jr.cached.honours_n, prices=getattr(jr.setup.opts, "prices", "")),
                 jr.setup.opts)


async def judge_pairs(jr: JudgeRun, pairs: list[Pair], *, concurrency: int, confirm: bool = True,
                      where: RunDir | None = None, what: str = "pairs", workers: int = 1) -> Outcome:
    """Judge every pair not yet in judgments.jsonl (of `where`, default the run directory); each result or
    failure row is stored as it completes. `workers` > 1: over that many processes (caikit.workers), this
    one writing what they send."""
    where = where or jr.run
    judgments, failures = where.jsonl(RunDir.JUDGMENTS), where.jsonl(RunDir.FAILURE_LOG)
    todo, done = pending(pairs, jr.setup.key, judgments)
    note(jr.stage, f"{len(pairs)} {what}, {done} already judged, {len(todo)} to go ({jr.setup.method.name}) -> "
                   f"{where.path}")
    if confirm:
        await confirm_judge_cost(jr, pairs)
    if jr.cached.in_process:
        concurrency = jr.cached.inner.batch_size  # a batch's worth of pairs keeps the model busy
    if getattr(jr.setup.opts, "batch_api", False):  # every pair in flight at once: each round is one batch
        concurrency = max(1, len(todo))
    try:
        if workers > 1 and len(todo) > 1:
            job = StageJob(opts=jr.setup.opts, probe=jr.probe, run_path=str(jr.run.path), run_id=jr.run.run_id,
                           stage="judge", records=str(judgments.path), failures=str(failures.path),
                           build=functools.partial(judgment_of, jr.setup, jr.run.run_id),
                           parse_retries=jr.runner.parse_retries)
            totals = await run_over_workers(jr.stage, job, todo, workers, concurrency, records=judgments,
                                            failures=failures, requests=jr.cached.log, meter=jr.meter,
                                            progress=jr.runner.progress)
            jr.died = jr.died or bool(totals.died)
            outcome = Outcome(done=totals.done, failed=totals.failed, skipped=0)
        else:
            outcome = await jr.runner.run(todo, lambda pair, key: judgment_of(jr.setup, jr.run.run_id, jr.runner.ask,
                                                                              pair, key),
                                          records=judgments, failures=failures, stage="judge", run_id=jr.run.run_id,
                                          concurrency=concurrency, meter=jr.meter, desc=jr.stage)
    finally:
        judgments.close()
        failures.close()
    outcome.skipped = done
    return outcome


def judgment_of(setup: JudgeSetup, run_id: str, ask, pair: Pair, key: str):
    """One pair's judgment: the runner's build, here or in a worker process (picklable, unlike a lambda)."""
    return judge_pair(ask, setup, pair, key, run_id)


def planned(jr: JudgeRun, pairs: list[Pair], where: RunDir | None = None
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(stored judgments of `pairs`, in their order; logged failures of `pairs` not judged since)."""
    where = where or jr.run
    stored = latest_by_id(where.jsonl(RunDir.JUDGMENTS).iter())
    keys = [jr.setup.key(p) for p in pairs]
    return [stored[k] for k in keys if k in stored], outstanding_failures(where.jsonl(RunDir.FAILURE_LOG),
                                                                          stored, keys)


async def run_gate(jr: JudgeRun, cfg, pairs: list[Pair], *, concurrency: int, human_are_pairs: bool = False
                   ) -> dict[str, Any] | None:
    """The quality gate (caikit/gate.py): judge the calibration sample (kept: the full run reuses it) and the
    human-labelled pairs, measure, write gate.json. `human_are_pairs`: the pairs are human-labelled themselves
    (eval judge), so the sample measures accuracy too. None when the gate is off."""
    from caikit.stages.judge import pair_id

    if not cfg.calibrate and not cfg.calibration_pairs:
        return None
    sample = calibration_sample(pairs, cfg.calibrate, cfg.seed) if cfg.calibrate else []
    human_pairs = [] if human_are_pairs or not cfg.calibration_pairs else human_calibration_pairs(cfg, Pair, pair_id)
    calibration = jr.run.sub(RunDir.CALIBRATION)
    await confirm_judge_cost(jr, [*pairs, *human_pairs])
    if sample:
        await judge_pairs(jr, sample, concurrency=concurrency, confirm=False, what="calibration pairs")
    if human_pairs:
        calibration.path.mkdir(parents=True, exist_ok=True)
        await judge_pairs(jr, human_pairs, concurrency=concurrency, confirm=False, where=calibration,
                          what="human-labelled pairs")
    judged, failed = planned(jr, sample)
    human = planned(jr, human_pairs, calibration)[0] if human_pairs else (judged if human_are_pairs else None)
    gate = assess(cfg, judged, sum(f.get("kind") == "unparseable" for f in failed), human, len(human_pairs))
    jr.run.write_json(RunDir.GATE, gate)
    if gate["status"] != "failed":  # a failed gate is said once, as the command's error (exit 3)
        note(jr.stage, gate["verdict"])
    return gate


def price_judge(setup: JudgeSetup, pairs: list[Pair], backend: str, model: str, *, honours_n: bool = True,
                fill: float = 0.6, tokenizer: str = "auto", prices: str = "") -> Estimate:
    """The estimate of judging `pairs`: the judge stage's plans run against a DryAsk."""
    ask = dry_ask(model, fill=fill, honours_n=honours_n, tokenizer=tokenizer)

    async def all_pairs() -> None:
        for pair in pairs:
            await judge_pair(ask, setup, pair, setup.key(pair), "estimate")

    asyncio.run(all_pairs())
    return ask.finish("judge", backend, model, len(pairs), prices)


GOES_ON = ("passed", "allowed-weak", "skipped")  # gate statuses after which the rest of the pairs are judged


async def judge_with_gate(jr: JudgeRun, cfg, pairs: list[Pair], *, human_are_pairs: bool = False
                          ) -> dict[str, Any] | None:
    """The gate first (when on), then every pair, unless the gate said the judge is not worth the rest."""
    gate = await run_gate(jr, cfg, pairs, concurrency=jr.cached.inner_limit(), human_are_pairs=human_are_pairs)
    if gate is None or gate["status"] in GOES_ON:
        await judge_pairs(jr, pairs, concurrency=jr.cached.inner_limit(), confirm=gate is None,
                          workers=getattr(cfg, "workers", 1))
    return gate
