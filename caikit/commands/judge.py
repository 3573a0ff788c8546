"""`caikit judge`: RL-CAI feedback -- an AI judge compares responses under constitution principles.

Writes, in --out (file names: caikit.rundir.RunDir):
  judgments.jsonl   one Judgment per compared pair: both orders, principle ids, method, raw outputs, usage
  preferences.jsonl TRL conversational prompt/chosen/rejected + p_chosen (rebuilt from judgments)
  failures.jsonl    pairs whose judge answers stayed unusable or whose requests failed (retried on rerun)
  requests.jsonl    every judge request (policy_requests.jsonl: the policy's samples)
  usage.json        judge tokens and cost (+ the policy's under "policy"); stats.json: counts and rates
  config.yaml       the resolved config; run.json: the settings that identify these judgments

A pair is judged under K sampled principles (`--principles`), in both orders unless `--no-swap`;
p_a = P(response_a better) is the mean over principles and orders (see caikit.soft_labels).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import Any, Awaitable, Callable

from caikit.backends.registry import BackendOptions, make_backend
from caikit.config import option
from caikit.errors import UserError
from caikit.gate import GateOptions, QualityGateFailed
from caikit.judge_run import judge_with_gate, open_judge, planned
from caikit.preferences import SOURCES, build_preferences, preference_stats, revision_pairs
from caikit.rundir import RunDir, note
from caikit.runner import Runner, exit_status, open_backend, outstanding_failures, pending
from caikit.secrets import public_url
from caikit.shard import select_shard
from caikit.soft_labels import round_robin_pairs
from caikit.stages import sample
from caikit.stages.judge import JudgeOptions, Pair, pair_id
from caikit.store import latest_by_id, write_jsonl_atomic


@dataclasses.dataclass
class JudgeConfig(GateOptions, JudgeOptions, BackendOptions):
    pairs: str = option("revision", help="revision: final revision vs initial response of a generate run (--from); "
                                         "samples: --n policy samples per prompt, judged pairwise",
                        metadata={"choices": list(SOURCES)})
    from_dir: str = option("", help="generate run directory holding traces.jsonl (--pairs revision; --from works)")
    prompts: str = option("", help="prompt file for --pairs samples (default: the bundled red-team sample)")
    n: int = option(4, low=2, high=64, help="responses sampled per prompt (--pairs samples)")
    round_robin: int = option(0, low=0, high=64, help="compare each sample with this many others around a circle "
                                                      "instead of all pairs (0: all pairs up to --n 8, else 3)")
    policy_backend: str = option("local", help="provider that samples responses (--pairs samples)",
                                 metadata={"choices": ["openai", "anthropic", "local"]})
    policy_model: str = option("", help="policy model (default per provider; local: smollm2)")
    policy_base_url: str = option("", help="API base URL of the policy provider")
    policy_temperature: float = option(1.0, low=0, high=2, help="sampling temperature of policy responses")
    policy_max_tokens: int = option(256, low=1, high=1_000_000, help="max new tokens per policy response")
    limit: int = option(0, low=0, help="use only the first N traces / prompts (0: all)")
    min_margin: float = option(0.0, low=0, high=0.5, help="drop preference pairs whose p_chosen - 0.5 is below this")
    keep_truncated: bool = option(False, help="judge responses cut at --max-tokens too (default: counted, left out)")
    keep_degenerate: bool = option(False, help="judge degenerate revisions too (default: counted, left out)")
    max_failure_rate: float = option(0.5, low=0, high=1, help="exit 1 when more than this share of the pairs failed")
    shard: str = option("", help="i/n: judge shard i of n (split by prompt / trace id hash), so n machines can "
                                 "share one run; combine with caikit merge")
    workers: int = option(1, low=1, high=256, help="worker processes sending judge requests (online APIs), and an "
                                                   "API policy's samples for --pairs samples, sharing --out; the "
                                                   "gate's calibration pairs are sent by the command's own process")
    out: str = option("outputs/judge", help="run directory")

    def validate(self) -> None:
        BackendOptions.validate(self)
        if self.pairs == "revision" and not self.from_dir:
            raise UserError("--pairs revision needs --from DIR (a caikit generate run directory)")
        if self.on_weak_judge == "revision" and self.pairs != "revision":
            raise UserError("--on-weak-judge revision needs --pairs revision (a revision to prefer)")


def samples_identity(cfg: JudgeConfig) -> dict[str, Any]:
    extra = {k: getattr(cfg, k) for k in ("n", "round_robin", "policy_backend", "policy_model", "policy_temperature",
                                          "policy_max_tokens")}
    return {**extra, "policy_base_url": public_url(cfg.policy_base_url) or ""}  # never user:password@ in run.json


def policy_options(cfg: JudgeConfig) -> BackendOptions:
    spec = f"{cfg.policy_backend}:{cfg.policy_model}" + (f"@{cfg.policy_base_url}" if cfg.policy_base_url else "")
    return cfg.with_spec(spec, what="--policy-backend")


async def sample_pairs(cfg: JudgeConfig, run: RunDir, prompts, skipped: dict[str, Any], jr=None
                       ) -> tuple[list[Pair], Any]:
    """Sample --n responses per prompt from the policy (samples.jsonl; requests in policy_requests.jsonl) and
    pair them up. With `jr` (the judge run) and --workers N, an API policy samples over N processes too; a
    worker that died marks `jr`, so the command exits 1 with its prompts left for the rerun."""
    policy_opts = policy_options(cfg)
    cached, meter = open_backend(run, make_backend(policy_opts), dataclasses.replace(policy_opts, max_cost=0.0),
                                 log_name=RunDir.POLICY_REQUESTS)
    runner = Runner(cached, parse_retries=0, progress=cfg.progress)
    records, failures = run.jsonl(RunDir.SAMPLES), run.jsonl(RunDir.FAILURE_LOG)
    todo, _ = pending(prompts, lambda row: sample.key_of(row, cfg), records)
    try:
        if jr is not None and cfg.workers > 1 and len(todo) > 1 and not policy_opts.provider().in_process:
            from caikit.workers import StageJob, run_over_workers

            job = StageJob(opts=policy_opts, probe=None, run_path=str(run.path), run_id=run.run_id, stage="sample",
                           records=str(records.path), failures=str(failures.path), parse_retries=0,
                           build=functools.partial(sampled, cfg, run.run_id), requests_log=RunDir.POLICY_REQUESTS)
            totals = await run_over_workers("judge", job, todo, cfg.workers, cfg.requests_in_flight(),
                                            records=records, failures=failures, requests=cached.log, meter=meter,
                                            progress=cfg.progress)
            jr.died = jr.died or bool(totals.died)
        else:
            await runner.run(todo, lambda row, key: sample.sample(runner.ask, row, cfg, key, run.run_id),
                             records=records, failures=failures, stage="sample", run_id=run.run_id,
                             concurrency=cfg.requests_in_flight(), meter=meter, desc="sample")
    finally:
        await cached.aclose()
        records.close()
        failures.close()
    got = {s["prompt_id"]: s for s in latest_by_id(records.iter()).values()}
    neighbours = cfg.round_robin or (0 if cfg.n <= 8 else 3)
    skipped["too_few_distinct_samples"] = sum(len(got[r.id]["texts"]) < 2 for r in prompts if r.id in got)
    skipped["truncated_samples"] = sum(got[r.id]["truncated"] for r in prompts if r.id in got)
    pairs = [Pair(pair_id(row.id, i, j), row.messages, texts[i], texts[j])
             for row in prompts if len(texts := got[row.id]["texts"] if row.id in got else []) >= 2
             for i, j in round_robin_pairs(len(texts), neighbours)]
    return pairs, meter


def sampled(cfg: JudgeConfig, run_id: str, ask, row, key: str):
    """One prompt's samples: the runner's build in a worker process (picklable, unlike a lambda)."""
    return sample.sample(ask, row, cfg, key, run_id)


def sample_failures(cfg: JudgeConfig, run: RunDir, prompts) -> list[dict[str, Any]]:
    """The policy's outstanding failures: prompts whose sampling failed and has not succeeded since."""
    if cfg.pairs != "samples":
        return []
    records = latest_by_id(run.jsonl(RunDir.SAMPLES).iter())
    return outstanding_failures(run.jsonl(RunDir.FAILURE_LOG), records, [sample.key_of(r, cfg) for r in prompts])


def run_judge(cfg: JudgeConfig) -> int:
    from caikit.prompts import bundled_prompts_path, load_prompts
    from caikit.workers import check_workers

    check_workers(cfg.workers, cfg)
    extra: dict[str, Any] = {"pairs": cfg.pairs}
    prompts, pairs, skipped, sizes = [], [], {}, {}
    if cfg.pairs == "samples":
        every = load_prompts(cfg.prompts or bundled_prompts_path(), limit=cfg.limit or None)
        prompts = select_shard(every, cfg.shard, lambda row: row.id)
        sizes = {"planned_items": len(every), "items": len(prompts)}
        extra |= samples_identity(cfg)
    else:
        pairs, skipped = revision_pairs(cfg.from_dir, cfg.limit, cfg.shard, keep_truncated=cfg.keep_truncated,
                                        keep_degenerate=cfg.keep_degenerate, sizes=sizes)
    jr = open_judge(cfg, cfg.out, "judge", extra)
    sampler = (lambda: sample_pairs(cfg, jr.run, prompts, skipped, jr)) if cfg.pairs == "samples" else None
    stats = judge_gated(cfg, jr, pairs, skipped, prompts=prompts, sampler=sampler, extra_stats=sizes)
    return report_judge(cfg, stats, jr)


def judge_gated(cfg: JudgeConfig, jr, pairs: list[Pair], skipped: dict[str, Any], *, prompts=(),
                sampler: Callable[[], Awaitable[tuple[list[Pair], Any]]] | None = None,
                extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The judge over an open JudgeRun: the pairs (or what `sampler` samples and pairs up first), the quality gate,
    every pair the gate lets through, then the files (`finalize_judge`). Returns stats.json's contents; a gate
    that failed raises QualityGateFailed (exit 3) once the files say so."""
    policy_meter, gate = None, None

    async def main() -> None:
        nonlocal pairs, policy_meter, gate
        try:
            if sampler is not None:
                pairs, policy_meter = await sampler()
            gate = await judge_with_gate(jr, cfg, pairs)
        finally:
            await jr.cached.aclose()

    try:
        asyncio.run(main())
    finally:
        stats = finalize_judge(cfg, jr, pairs, skipped, sample_failures(cfg, jr.run, prompts), policy_meter, gate,
                               extra_stats)
        jr.close()
    if gate is not None and gate["status"] == "failed":
        raise QualityGateFailed(gate["verdict"])
    return stats


def finalize_judge(cfg: JudgeConfig, jr, pairs: list[Pair], skipped: dict[str, Any],
                   sample_failures: list[dict[str, Any]], policy_meter, gate: dict[str, Any] | None,
                   extra_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild failures.jsonl, preferences.jsonl, stats.json and usage.json from the append-only logs. A judge
    stopped by its gate leaves no preferences (none would mean anything); one that fell back to the revision
    leaves revision-over-initial pairs that say so."""
    run, setup = jr.run, jr.setup
    judgments, outstanding = planned(jr, pairs)
    write_jsonl_atomic(run.file(RunDir.FAILURES), [*outstanding, *sample_failures])
    status = gate["status"] if gate else "not run"
    source = SOURCES[cfg.pairs]
    provenance = {"method": setup.method.name, "judge": jr.cached.describe(), "constitution": jr.constitution.name,
                  "constitution_hash": jr.constitution.hash, "judge_gate": status}
    if status == "failed":
        preferences, counts = [], {"groups": 0, "ties": 0, "dropped_below_min_margin": 0, "chosen_first": 0,
                                   "with_cut_side": 0}
    elif status == "fell-back-to-revision":
        source = "revision-vs-initial (unjudged: the judge failed its gate)"
        preferences, counts = revision_preferences(pairs, run.run_id, provenance)
    else:
        preferences, counts = build_preferences(judgments, source=source, min_margin=cfg.min_margin,
                                                run_id=run.run_id, provenance=provenance)
    write_jsonl_atomic(run.file(RunDir.PREFERENCES), (p.to_dict() for p in preferences))
    stats = preference_stats(source, run.identity, judgments, preferences, counts, pairs=len(pairs),
                             failures=len(outstanding) + len(sample_failures), min_margin=cfg.min_margin,
                             skipped=skipped, human=calibration_sides(run))
    stats["gate"] = gate
    stats |= extra_stats or {}
    if sample_failures:
        stats["sample_failures"] = len(sample_failures)
    if status in ("failed", "fell-back-to-revision"):
        stats["stopped_by_gate"] = True
    run.write_json(RunDir.STATS, stats)
    usage = {**jr.meter.summary(), "pairs": len(pairs), "judged": len(judgments)}
    if policy_meter is not None:
        usage["policy"] = policy_meter.summary()
    run.write_json(RunDir.USAGE, usage)
    return stats


def calibration_sides(run: RunDir) -> list[tuple[dict[str, Any], str]]:
    """The gate's human-labelled judgments, each with the side people preferred (response_a, as judged)."""
    return [(j, "a") for j in latest_by_id(run.sub(RunDir.CALIBRATION).jsonl(RunDir.JUDGMENTS).iter()).values()]


def revision_preferences(pairs: list[Pair], run_id: str, provenance: dict[str, Any]):
    """Every revision preferred over its initial answer, without a judge (the Hugging Face CAI recipe's pairs)."""
    from caikit.records import PreferencePair, idempotency_key
    from caikit.stages.judge import split_pair_id

    preferences = [PreferencePair(id=idempotency_key("preference", run_id, split_pair_id(p.id)[0]), run_id=run_id,
                                  prompt=p.prompt, chosen=[{"role": "assistant", "content": p.response_a}],
                                  rejected=[{"role": "assistant", "content": p.response_b}], p_chosen=1.0,
                                  source="revision-vs-initial (unjudged: the judge failed its gate)",
                                  provenance={**provenance, "group_id": split_pair_id(p.id)[0],
                                              **({"cut_at_max_tokens": [("chosen", "rejected")[i] for i in p.cut]}
                                                 if p.cut else {})}) for p in pairs]
    return preferences, {"groups": len(pairs), "ties": 0, "dropped_below_min_margin": 0, "chosen_first": len(pairs),
                         "with_cut_side": sum(bool(p.cut) for p in pairs)}


def report_judge(cfg: JudgeConfig, stats: dict[str, Any], jr) -> int:
    consistency = stats["position_consistency_rate"]
    note("judge", f"{stats['judged']}/{stats['pairs']} pairs judged, {stats['preferences']} preference pairs "
                  f"({stats['ties']} ties, {stats['dropped_below_min_margin']} below --min-margin, "
                  f"{stats['failures']} failures), position consistency "
                  f"{'n/a' if consistency is None else f'{consistency:.1%}'}, {jr.meter.usage.total_tokens:,} tokens, "
                  f"${jr.meter.cost_usd:.4f} -> {cfg.out}/preferences.jsonl")
    # a prompt whose sampling failed made no pair at all: it counts once among the items tried, so a dead
    # policy server reads 100 % failed, not failures / 0 pairs
    code = exit_status("judge", made=stats["judged"], made_what="pairs judged", failures=stats["failures"],
                       attempted=stats["pairs"] + stats.get("sample_failures", 0), what="pairs (and prompts sampled)"
                       if stats.get("sample_failures") else "pairs", max_failure_rate=cfg.max_failure_rate,
                       failures_file=f"{cfg.out}/failures.jsonl")
    return max(code, 1) if jr.died else code  # a worker died: its pairs are left for the rerun
