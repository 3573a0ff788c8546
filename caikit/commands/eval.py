"""`caikit eval`: the trained model against its starting model, on held-out red-team and benign prompts.

Both models answer every prompt (local, batched; greedy by default). Then, per model:
  harmlessness win-rate   red-team pairs judged under the constitution's `harmless` judge principles,
                          each pair in both orders (soft labels averaged): mean P(after better)
  helpfulness win-rate    the same on benign prompts under the `helpful` principles (over-refusal shows
                          as a drop here)
  refusal rate            red-team and benign, by the keyword detector in `caikit.eval.refusal`
  mean reward             under --reward-model (sigmoid score 0-1), when one is given
  KL(after || before)     mean over the after-model's answers y of log p_after(y|x) - log p_before(y|x),
                          per response and per token
  length, distinct-1/2    whitespace words; distinct-n over all of a model's answers (Li et al. 2016)

Every row carries its 95 % interval and whether the change exceeds its noise (`beyond_noise`, with `verdict`
in plain words): a win-rate's `interval` of P(after better) must exclude 0.5; a rate's or mean's
`interval_change`, a paired t interval of the per-prompt changes, must exclude 0 (`interval_before` /
`interval_after` are each side's own: Wilson for rates, t for means); below 10 pairs the verdict is "too few pairs
to tell". Why these choices: caikit/eval/noise.py. A --reward-model's own held-out accuracy (its eval.json) is copied beside its scores.

Writes, in --out: report.json (models, judge, counts, table: rows {metric, before, after, note, n, interval
or interval_before / interval_after / interval_change, beyond_noise, verdict, role, better}, reward_model),
samples.jsonl (prompt, before, after, kind, judge_p_after), answers.jsonl (the answer cache: a rerun
regenerates nothing whose model weights, prompt and settings are unchanged), judgments.jsonl,
requests.jsonl and usage.json (judge requests, reused on rerun), config.yaml.

Which model is which: `--model` (or `after`, which `caikit run` sets) is the trained model, `--before`
the starting model; the judge is `--judge PROVIDER[:MODEL][@BASE_URL]`, e.g. `local:smollm2`,
`openai:gpt-4o-mini`, `openai:Qwen2.5-7B@http://localhost:8000/v1` (the same spec as --check-judge).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any

from caikit.backends.registry import BackendOptions, make_backend, parse_concurrency, parse_spec
from caikit.config import option
from caikit.errors import UserError
from caikit.eval.compare import (JUDGE_TAG, KINDS, build_table, check_model, format_table, generate_answers,
                                 kl_estimate, load_eval_prompts, reward_scores)
from caikit.report.sources import reward_heldout
from caikit.report.verdict import describe_heldout
from caikit.rundir import RunDir, note
from caikit.runner import Runner, open_backend, pending
from caikit.stages.judge import METHODS, JudgeOptions, JudgeSetup, Pair, judge_pair, resolve_method
from caikit.store import latest_by_id, write_jsonl_atomic
from caikit.train.monitors import before_after_warnings
from caikit.workers import StageJob, run_over_workers


@dataclasses.dataclass
class EvalConfig:
    model: str = option("", help="the trained model to evaluate: a directory or HF id (same as --after)")
    after: str = option("", help="the trained model (what `caikit run` sets; same as --model)")
    before: str = option("smollm2", help="the starting model it is compared with: smollm2 | directory | HF id")
    prompts: str = option("", help="red-team eval prompts (JSONL/JSON/CSV/parquet/hh-rlhf); default: the bundled "
                                   "red-team prompts that the demo's generate stage does not use (rows 33-50)")
    benign_prompts: str = option("", help="benign prompts for the helpfulness / over-refusal check; "
                                          "default: the bundled benign set")
    limit: int = option(0, low=0, help="at most N prompts from each set (0: all)")
    constitution: str = option("hhh", help="constitution whose judge principles tagged harmless (red-team) and "
                                           "helpful (benign) judge the pairs; untagged: all judge principles")
    principles: int = option(1, low=0, high=1000, help="judge principles per pair, drawn per prompt with the seed "
                                                       "(0: all tagged)")
    judge: str = option("local:smollm2", help="judge model as PROVIDER[:MODEL][@BASE_URL] with PROVIDER "
                                              "local | openai | anthropic")
    judge_method: str = option("auto", help="how the judge decides (see `caikit judge --help`): auto | "
                                            + " | ".join(METHODS), metadata={"choices": ["auto", *METHODS]})
    concurrency: str = option("auto", help="judge requests in flight (see caikit judge --help)",
                              metadata={"valid": "auto, or a whole number 1 to 4,096"})
    rpm: float = option(0.0, low=0, help="judge requests-per-minute limit (0: none)")
    tpm: float = option(0.0, low=0, help="judge tokens-per-minute limit (0: none)")
    timeout: float = option(60.0, above=0, high=86400, help="seconds before a judge request is abandoned and retried")
    max_retries: int = option(6, low=1, high=100, help="attempts per judge request before it counts as failed")
    prices: str = option("", help="YAML/JSON price table overriding built-in USD per 1M tokens "
                                  "{model: {input, output}}")
    device: str = option("", help="device for the local models, judge and reward model: cpu | cuda | cuda:1 "
                                  "(default: cuda if available)")
    batch_size: int = option(8, low=1, high=4096, help="prompts per batch when the before/after models generate "
                                                       "and are scored (and the local judge's batch)")
    reward_model: str = option("", help="reward model directory (`caikit train reward`): adds mean reward rows")
    max_tokens: int = option(128, low=1, high=1_000_000, help="max new tokens per answer")
    temperature: float = option(0.0, low=0, high=2, help="sampling temperature of the answers (0: greedy)")
    harm_suite: str = option("bundled", help="harm / over-refusal yardstick: bundled (400 harmful, 322 benign "
                                             "requests; caikit/data/NOTICE.md) | none | a directory with "
                                             "harmful.jsonl and benign.jsonl (--limit keeps an evenly spaced N)")
    refusal_detector: str = option("regex", help="what decides that an answer refuses: regex (caikit.eval.refusal) "
                                                 "| judge (the --judge model asked) | guard (--refusal-guard)",
                                   metadata={"choices": ["regex", "judge", "guard"]})
    refusal_guard: str = option("", help="output guard directory (`caikit classifier train`) for "
                                         "--refusal-detector guard")
    harm_guard: str = option("", help="output guard directory (`caikit classifier train --target output`): adds "
                                      "the share of answers to the harmful suite it flags, beside the refusal rates")
    out: str = option("outputs/eval", help="output directory")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed for sampling answers and drawing judge principles")
    progress: bool = option(True, help="show a progress bar while judging")
    workers: int = option(1, low=1, high=256, help="worker processes sending the judge's requests (an online API "
                                                   "--judge), sharing --out; the models answer in this process")

    @property
    def trained(self) -> str:
        return self.after or self.model

    def validate(self) -> None:
        if self.model and self.after and self.model != self.after:
            raise UserError(f"--model ({self.model}) and --after ({self.after}) name different trained models; "
                            "give one (the judge is set with --judge PROVIDER:MODEL)")
        if not self.trained:
            raise UserError("--model is required: the trained model directory or HF id")
        parse_concurrency(self.concurrency)
        parse_spec(self.judge)
        if self.refusal_detector == "guard" and not self.refusal_guard:
            raise UserError("--refusal-detector guard needs --refusal-guard DIR (an output guard from "
                            "`caikit classifier train`)")

    def judge_options(self) -> BackendOptions:
        base = BackendOptions(concurrency=self.concurrency, batch_size=self.batch_size, rpm=self.rpm, tpm=self.tpm,
                              timeout=self.timeout, max_retries=self.max_retries, device=self.device,
                              prices=self.prices)
        return base.with_spec(self.judge)


def judge_principles(constitution, kind: str) -> list:
    """The judge principles tagged for this prompt kind (harmless / helpful), else all of them."""
    pool = constitution.judge_principles
    if not pool:
        raise UserError("has no judge principles", path=str(constitution.path))
    return [p for p in pool if JUDGE_TAG[kind] in p.tags] or pool


def run_judging(cfg: EvalConfig, pairs: list[dict], constitution, run: RunDir) -> tuple[dict[str, Any], int, bool]:
    """Fill pair["judge_p_after"] with P(after better) from the judge stage (both orders, `--principles`
    sampled per pair from the kind's tagged principles). Returns (judge description, pairs that could not
    be judged, whether a --workers process died). Judgments and judge requests are stored in the run directory
    and reused on rerun."""
    opts = cfg.judge_options()
    backend = make_backend(opts)
    cached, meter = open_backend(run, backend, opts)
    runner = Runner(cached, progress=cfg.progress)
    setups, pools = {}, {}
    for kind in KINDS:
        pools[kind] = judge_principles(constitution, kind)
        judge_opts = JudgeOptions(constitution=cfg.constitution, method=cfg.judge_method, seed=cfg.seed,
                                  progress=False, principles=min(cfg.principles or len(pools[kind]), len(pools[kind])))
        method = resolve_method(judge_opts, backend.supports_logprobs, backend.name)
        identity = {"eval": kind, "judge": cfg.judge, "model": backend.model, "method": method,
                    "principles": judge_opts.principles, "constitution_hash": constitution.hash,
                    "pool": [p.id for p in pools[kind]], "seed": cfg.seed}
        setups[kind] = JudgeSetup.make(judge_opts, method, constitution, identity, cached.describe(),
                                       principles=pools[kind])
    items = [(p, Pair(id=p["kind"], prompt=p["prompt"], response_a=p["after"], response_b=p["before"])) for p in pairs]
    judgments, failures = run.jsonl(RunDir.JUDGMENTS), run.jsonl(RunDir.FAILURE_LOG)
    todo, _ = pending(items, lambda item: setups[item[0]["kind"]].key(item[1]), judgments)

    died = False

    async def main() -> None:
        nonlocal died
        try:
            if cfg.workers > 1 and len(todo) > 1:
                job = StageJob(opts=opts, probe=None, run_path=str(run.path), run_id=run.run_id, stage="eval-judge",
                               records=str(judgments.path), failures=str(failures.path),
                               build=functools.partial(eval_judgment, setups, run.run_id),
                               parse_retries=runner.parse_retries, item_label=pair_kind)
                totals = await run_over_workers("eval", job, todo, cfg.workers, opts.requests_in_flight(),
                                                records=judgments, failures=failures, requests=cached.log,
                                                meter=meter, progress=cfg.progress)
                died = bool(totals.died)
            else:
                await runner.run(todo, lambda item, key: eval_judgment(setups, run.run_id, runner.ask, item, key),
                                 records=judgments, failures=failures, stage="eval-judge", run_id=run.run_id,
                                 concurrency=cfg.batch_size if opts.provider().in_process else opts.requests_in_flight(),
                                 meter=meter, desc="eval judge", item_label=pair_kind)
        finally:
            judgments.close()
            failures.close()
            await cached.aclose()

    asyncio.run(main())
    stored = latest_by_id(judgments.iter())
    failed = 0
    for pair, item in items:
        judgment = stored.get(setups[pair["kind"]].key(item))
        failed += judgment is None
        pair["judge_p_after"] = None if judgment is None else judgment["p_a"]  # response_a is the trained model's
    run.write_json(RunDir.USAGE, meter.summary())
    description = {**backend.describe(), "spec": cfg.judge, "method": setups["red-team"].method.name, "orders": 2,
                   "principles_per_pair": setups["red-team"].opts.principles, "constitution": constitution.name,
                   "harmless_principles": [p.id for p in pools["red-team"]],
                   "helpful_principles": [p.id for p in pools["benign"]], "usage": meter.summary()}
    return description, failed, died


def eval_judgment(setups: dict[str, JudgeSetup], run_id: str, ask, item, key: str):
    """One (sample, pair)'s judgment under its kind's setup: the runner's build, here or in a worker process."""
    return judge_pair(ask, setups[item[0]["kind"]], item[1], key, run_id)


def pair_kind(item) -> str:
    return item[0]["kind"]


def make_detector(cfg: EvalConfig, run: RunDir):
    """The --refusal-detector; a judge detector's requests are logged in the run dir (reused on rerun)."""
    from caikit.eval.harm import guard_detector, judge_detector, regex_detector

    if cfg.refusal_detector == "guard":
        return guard_detector(cfg.refusal_guard, device=cfg.device or "cpu")
    if cfg.refusal_detector == "judge":
        opts = cfg.judge_options()
        return judge_detector(lambda: open_backend(run, make_backend(opts), opts,
                                                   log_name="refusal_requests.jsonl")[0],
                              cfg.judge, concurrency=cfg.batch_size)
    return regex_detector()


def harm_yardstick(cfg: EvalConfig, suites: dict, cache, detector) -> tuple[list[dict], dict | None]:
    """Both models' answers to the harm suites (cached like the others) -> the yardstick's rows and summary."""
    from caikit.eval.harm import harm_rows

    if not suites:
        return [], None
    rows = [row for kind in ("harmful", "benign") for row in suites[kind]]
    answers = {side: generate_answers(cfg, name, rows, cache)[0] for side, name in
               (("before", cfg.before), ("after", cfg.trained))}
    split = len(suites["harmful"])
    by_kind = {"harmful": {side: [a["text"] for a in answers[side][:split]] for side in answers},
               "benign": {side: [a["text"] for a in answers[side][split:]] for side in answers}}
    prompts = {kind: [row.messages for row in suites[kind]] for kind in suites}
    rows, summary = harm_rows(by_kind, prompts, detector, cfg.seed)
    if cfg.harm_guard:
        from caikit.classifier.model import load_guard
        from caikit.eval.noise import paired_row

        guard = load_guard(cfg.harm_guard, device=cfg.device or "cpu")
        if guard.target != "output":
            raise UserError("--harm-guard needs an output guard (it reads the answers)", path=cfg.harm_guard)
        flags = {side: [float(p >= guard.threshold) for p in guard.score(prompts["harmful"], by_kind["harmful"][side])]
                 for side in ("before", "after")}
        measured = (guard.config.get("heldout") or {})
        how = (f"output guard {cfg.harm_guard} (held-out recall {measured.get('recall', float('nan')):.3f}, "
               f"FPR {measured.get('fpr', float('nan')):.3f})")
        rows.append(paired_row("harmful answers flagged by the guard (harm suite)", flags["before"], flags["after"],
                               f"share of {len(flags['after'])} answers to harmful requests the {how} flags",
                               cfg.seed, proportion=True, role="watch", better="lower"))
        summary["guard"] = {"path": cfg.harm_guard, **{side: rows[-1][side] for side in ("before", "after")}}
    return rows, summary


def user_text(messages) -> str:
    """The user's words of a conversation, what an answer that parrots the user repeats."""
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user")


def run_eval(cfg: EvalConfig) -> int:
    from caikit.constitution import load_constitution
    from caikit.workers import check_workers

    check_workers(cfg.workers, cfg.judge_options())
    check_model(cfg.trained, "--model")
    check_model(cfg.before, "--before")
    if cfg.reward_model and not (Path(cfg.reward_model) / "config.json").exists():
        raise UserError("--reward-model: not a reward model directory (no config.json)", path=cfg.reward_model)
    constitution = load_constitution(cfg.constitution)
    for kind in KINDS:
        judge_principles(constitution, kind)
    prompt_sets = load_eval_prompts(cfg)
    from caikit.eval.harm import format_yardstick, load_harm_suites

    suites = load_harm_suites(cfg.harm_suite, cfg.limit or None)
    with RunDir.open(cfg.out, "eval", {}, cfg, command="eval") as run:
        start = time.time()
        rows = [(kind, row) for kind in KINDS for row in prompt_sets[kind]]
        cache = run.jsonl(RunDir.ANSWERS)
        try:
            answers = {side: generate_answers(cfg, name, [row for _, row in rows], cache)
                       for side, name in (("before", cfg.before), ("after", cfg.trained))}
            detector = make_detector(cfg, run)
            harm_table, yardstick = harm_yardstick(cfg, suites, cache, detector)
        finally:
            cache.close()
        pairs = [{"prompt": row.messages, "before": b["text"], "after": a["text"], "kind": kind,
                  "judge_p_after": None, "after_ended": a["finish_reason"] != "length"}
                 for (kind, row), b, a in zip(rows, answers["before"][0], answers["after"][0])]

        import torch

        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        seconds = {"answers": time.time() - start}
        kl = kl_estimate(cfg, [(p["prompt"], p["after"], p["after_ended"]) for p in pairs], device)
        rewards = reward_scores(cfg, pairs, device) if cfg.reward_model else None
        seconds["kl_and_reward"] = time.time() - start - seconds["answers"]
        judge, failed, died = run_judging(cfg, pairs, constitution, run)
        seconds["judge"] = time.time() - start - sum(seconds.values())
        note("eval", "seconds " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))

        table = build_table(pairs, kl, rewards, cfg, detector) + harm_table
        counts = {"red_team_prompts": len(prompt_sets["red-team"]), "benign_prompts": len(prompt_sets["benign"]),
                  "judged_pairs": sum(p["judge_p_after"] is not None for p in pairs), "judge_failures": failed,
                  "answers_generated": answers["before"][1] + answers["after"][1], "kl_tokens": kl.get("tokens", 0),
                  **{f"truncated_answers_{side}": sum(a["finish_reason"] == "length" for a in answers[side][0])
                     for side in ("before", "after")}}
        models = {"before": cfg.before, "after": cfg.trained}
        monitors = before_after_warnings([user_text(p["prompt"]) for p in pairs], [p["before"] for p in pairs],
                                         [p["after"] for p in pairs], kl.get("per_response"))
        report = {"models": models, "judge": judge, "counts": counts, "table": table, "monitors": monitors}
        if yardstick:
            report["harm_yardstick"] = yardstick
        if cfg.reward_model:  # the yardstick's own held-out accuracy travels with the scores it gave
            report["reward_model"] = {"path": cfg.reward_model, **reward_heldout(Path(cfg.reward_model))}
        run.write_json(RunDir.REPORT, report)
        write_jsonl_atomic(run.file(RunDir.SAMPLES), ({k: p[k] for k in ("prompt", "before", "after", "kind",
                                                                          "judge_p_after")} for p in pairs))
    print(f"caikit eval: {cfg.trained} (after) vs {cfg.before} (before), judge {cfg.judge}")
    print(format_table(table))
    if yardstick:
        print(format_yardstick(yardstick))
    else:
        print(f"caikit eval: refusal rates by {detector.describe()}")
    if cfg.reward_model:
        print(f"caikit eval: reward model {cfg.reward_model}: {describe_heldout(report['reward_model'])}")
    for warning in monitors:
        print(f"caikit eval: warning: {warning['message']}", file=sys.stderr)
    print(f"caikit eval: {run.file(RunDir.REPORT)}, {run.file(RunDir.SAMPLES)}"
          + (f"; {failed} pairs could not be judged (rerun to retry)" if failed else ""))
    if pairs and not counts["judged_pairs"]:
        note("eval", "nothing usable came out (0 pairs judged): exit 1")
        return 1
    return 1 if died else 0  # a worker died: its pairs are left for the rerun
