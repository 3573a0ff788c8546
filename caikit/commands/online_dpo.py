"""`caikit train online-dpo`: iterative DPO on AI feedback, the constitution inside the training loop (online AI
feedback, Guo et al. 2024; iterative DPO as in self-rewarding LMs, Yuan et al. 2024), so the labels follow the
policy as it changes.

Iteration i (1..N) starts from the policy π_{i-1} (π_0 = --policy) and the answers it gave:

  iter-0/samples      K answers per prompt from π_0 (the local backend; samples.jsonl, policy_requests.jsonl)
  iter-i/judge        each prompt's answers from iter-(i-1)/samples judged pair by pair under the constitution's
                      judge principles: the judge stage with its quality gate (a failed gate stops the loop with
                      exit 3 unless --allow-weak-judge), files as `caikit judge --pairs samples` writes them
  iter-i/pairs.jsonl  what DPO trains on: best vs worst answer per prompt, or every judged pair (--pairs-from all)
  iter-i/dpo          π_i: `caikit train dpo` (any --loss) from π_{i-1} against --reference initial (π_0) or
                      previous (π_{i-1})
  iter-i/samples      K answers per prompt from π_i: the next iteration's material, and this iteration's figures

OUT/iterations.json has one row per policy π_0 .. π_N (caikit/commands/online_figures.py): the judge's win-rate of
its answers against π_0's on the same prompts, KL from π_0, mean length and distinct-n; a length that grows past
--max-length-growth × π_0's is warned about (stderr and OUT/warnings.jsonl), the classic hack of judge-driven
loops. OUT/policy links to the last policy. Everything resumes: OUT/progress.json lists the finished stages, which
a rerun skips; a killed judge or sampler resumes from its request log (nothing is asked twice); a killed DPO
resumes from its checkpoint (--save-every) or starts that iteration's training again; a finished DPO is never
retrained. A rerun with a larger --iterations continues from the last policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from caikit.backends.registry import parse_spec
from caikit.commands.judge import JudgeConfig, judge_gated, sample_pairs, samples_identity
from caikit.config import option, save_config, scrubbed
from caikit.errors import UserError
from caikit.gate import GateOptions
from caikit.judge_run import open_judge
from caikit.records import PreferencePair, idempotency_key
from caikit.rundir import RunDir, check_identity, note
from caikit.stages.judge_methods import METHODS
from caikit.store import JsonlFile, latest_by_id, read_json, write_json_atomic, write_jsonl_atomic
from caikit.train.dpo import OBJECTIVES, DPOConfig

COMMAND = "train online-dpo"
STAGE = "online_dpo"  # as `caikit run` names the stage, and run.json
PAIRS_FROM = ("best-worst", "all")
REFERENCES = ("initial", "previous")
STATE, POLICY_LINK = "progress.json", "policy"
# options that may change between reruns without changing what the finished iterations mean
NOT_IDENTITY = (*(f.name for f in dataclasses.fields(GateOptions)), "iterations", "progress", "depth_every", "max_length_growth",
                "max_failure_rate", "judge_max_cost", "resume", "overwrite", "log_every", "save_every", "eval_every",
                "device", "sample_batch_size", "sample_concurrency", "engine", "out", "model", "data")


@dataclasses.dataclass
class OnlineDPOConfig(GateOptions, DPOConfig):
    """Iterative DPO on AI feedback: sample K answers per prompt, judge them, train DPO, repeat."""

    policy: str = option("", help="initial policy π_0: `smollm2`, a local path (e.g. an SFT run dir) or an HF id "
                                  "(default: --model)")
    model: str = option("smollm2", help="alias of --policy, used when --policy is not given")
    prompts: str = option("", help="prompt file (JSONL/JSON/CSV/parquet with `prompt` or `messages`): the same "
                                   "prompts every iteration (default: the bundled red-team sample)")
    data: str = option("", help="alias of --prompts")
    iterations: int = option(2, low=1, high=1000, help="sample -> judge -> DPO rounds (a rerun with more continues)")
    samples_per_prompt: int = option(4, low=2, high=64, help="K: answers sampled per prompt and iteration")
    temperature: float = option(1.0, above=0, high=2, help="sampling temperature of the policy (the KL estimate "
                                                          "in iterations.json is exact at 1)")
    response_length: int = option(128, low=1, high=100_000, help="max new tokens per sampled answer")
    keep_truncated: bool = option(False, help="also use answers cut at --response-length (default: left out and "
                                              "counted; a cut answer would be judged and learnt as if whole)")
    limit: int = option(0, low=0, help="use only the first N prompts (0: all)")
    guard: str = option("", help="an output guard (`caikit classifier train --target output`): a flagged answer is "
                                 "never chosen over an unflagged one, and pairs of two flagged answers are dropped "
                                 "(counted in iter-i/pairs.guard.json)")
    pairs_from: str = option("best-worst", help="best-worst: one pair per prompt, its best and worst answer by mean "
                                                "win probability | all: every judged pair, chosen = the answer the "
                                                "judge preferred, weighted by its margin (its p_chosen as a soft "
                                                "label: --use-soft-labels is on for sigmoid / cdpo)",
                             metadata={"choices": list(PAIRS_FROM)})
    reference: str = option("initial", help="DPO's reference model: initial (π_0, every iteration) | previous "
                                            "(the policy the iteration starts from)",
                            metadata={"choices": list(REFERENCES)})
    min_margin: float = option(0.0, low=0, high=0.5, help="drop pairs whose p_chosen - 0.5 is below this")
    judge: str = option("local", help="judge as PROVIDER[:MODEL][@BASE_URL] (e.g. openai:gpt-4o-mini, "
                                      "openai:Qwen2.5-7B@http://localhost:8000/v1, local:smollm2)")
    constitution: str = option("anthropic-cai", help="constitution YAML file or bundled name whose judge principles "
                                                     "apply")
    judge_method: str = option("auto", help="how the judge answers: logprob | vote | cot; auto: logprob where the "
                                            "backend returns log-probs, else vote",
                               metadata={"choices": ["auto", *METHODS]})
    judge_principles: int = option(1, low=1, high=1000, help="judge principles sampled per pair and averaged")
    judge_max_cost: float = option(0.0, low=0, help="USD each judge directory may spend (0: no limit)")
    max_failure_rate: float = option(0.5, low=0, high=1, help="stop (exit 1) when more than this share of an "
                                                              "iteration's pairs failed to be judged")
    max_length_growth: float = option(1.5, above=0, help="warn when the answers' mean length exceeds this × "
                                                         "π_0's (judges favour length; DPO then learns verbosity)")
    device: str = option("", help="device of the local policy sampler and a local judge (default: cuda if "
                                  "available)")
    sample_batch_size: int = option(0, low=0, high=4096, help="local backend: sequences per generate batch (0: 16 "
                                                              "on CPU, 64 on a GPU)")
    sample_concurrency: int = option(0, low=0, high=4096, help="prompts the local policy answers at once (0: the "
                                                               "backend's default); 1 makes the answers independent "
                                                               "of timing, as the local backend seeds each batch with "
                                                               "its first request's seed")
    engine: str = option("auto", help="what generates the policy's answers (and a local judge's): padded | "
                                      "continuous | vllm (pip install 'caikit[vllm]') | auto = padded",
                         metadata={"choices": ["auto", "padded", "continuous", "vllm"]})
    progress: bool = option(True, help="show progress bars")
    max_steps: int = option(-1, low=-1, help="optimizer steps of each iteration's DPO (-1: --epochs over its pairs)")
    epochs: float = option(1.0, above=0, high=10_000, help="passes over each iteration's pairs when --max-steps is -1")
    eval_fraction: float = option(0.0, low=0, below=1, help="share of each iteration's pairs held out for DPO's "
                                                          "evaluation")
    depth_every: int = option(0, low=0, help="every N iterations, the policy's shift from π_0 (its dimensionality) and "
                                             "the refusal rate with its refusal direction ablated, into depth.jsonl "
                                             "(see `caikit depth`; 0: off)")
    resume: bool = option(False, help="not needed: online-dpo always continues from what OUT holds")
    overwrite: bool = option(False, help="not used: a finished stage is never redone (start again in a new --out)")

    def validate(self) -> None:
        self.policy = self.policy or self.model
        self.prompts = self.prompts or self.data
        if self.ref_model:
            raise UserError("--ref-model is not an online-dpo option: choose --reference initial | previous")
        DPOConfig.validate(self)
        if self.on_weak_judge != "stop":
            raise UserError("--on-weak-judge revision needs revisions; online-dpo has samples: use "
                            "--allow-weak-judge to go on with a weak judge")
        if self.pairs_from not in PAIRS_FROM or self.reference not in REFERENCES:
            raise UserError(f"--pairs-from must be {' | '.join(PAIRS_FROM)} and --reference {' | '.join(REFERENCES)}")
        parse_spec(self.judge, what="--judge")


class TooManyFailures(UserError):
    """More of an iteration's pairs failed to be judged than --max-failure-rate allows: exit 1."""

    exit_code = 1


# ---------------------------------------------------------------- the configs of each step

def judge_config(cfg: OnlineDPOConfig, policy: str, out: Path) -> JudgeConfig:
    """`caikit judge --pairs samples` as one iteration runs it: `policy` samples, --judge judges, into `out`."""
    gate = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GateOptions)}
    judge = JudgeConfig(**gate, constitution=cfg.constitution, method=cfg.judge_method,
                        principles=cfg.judge_principles, seed=cfg.seed, progress=cfg.progress, pairs="samples",
                        prompts=cfg.prompts, n=cfg.samples_per_prompt, policy_backend="local", policy_model=policy,
                        policy_temperature=cfg.temperature, policy_max_tokens=cfg.response_length,
                        keep_truncated=cfg.keep_truncated, min_margin=cfg.min_margin,
                        max_failure_rate=cfg.max_failure_rate, device=cfg.device, batch_size=cfg.sample_batch_size,
                        engine=cfg.engine, max_cost=cfg.judge_max_cost, out=str(out))
    return judge.with_spec(cfg.judge, what="--judge")


def dpo_config(cfg: OnlineDPOConfig, start: str, pairs: Path, out: Path) -> DPOConfig:
    """`caikit train dpo` from `start` on `pairs`, against the reference --reference names."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(DPOConfig)}
    uses_reference = OBJECTIVES[cfg.loss].uses_reference
    soft = cfg.use_soft_labels or (cfg.pairs_from == "all" and OBJECTIVES[cfg.loss].uses_smoothing)
    values |= {"model": start, "data": [str(pairs)], "split": "", "out": str(out), "use_soft_labels": soft,
               "ref_model": cfg.policy if cfg.reference == "initial" and uses_reference else "",
               "resume": (out / "checkpoint").is_dir(), "overwrite": False}
    return DPOConfig(**values)


# ---------------------------------------------------------------- the steps

def sample(cfg: OnlineDPOConfig, policy: str, where: Path, prompts) -> None:
    """K answers per prompt from `policy` into `where` (a sample run directory with its own request log)."""
    judge = judge_config(cfg, policy, where)
    if cfg.sample_concurrency:
        judge = dataclasses.replace(judge, concurrency=str(cfg.sample_concurrency))
    identity = {**samples_identity(judge), "seed": cfg.seed, "keep_truncated": cfg.keep_truncated}
    run = RunDir.open(where, "sample", identity, judge, command=COMMAND)
    try:
        asyncio.run(sample_pairs(judge, run, prompts, {}))
    finally:
        run.close()


def judge_iteration(cfg: OnlineDPOConfig, policy: str, samples: Path, where: Path, prompts) -> dict[str, Any]:
    """The pairs among `samples` (π_{i-1}'s answers, already sampled) judged into `where`, behind the gate."""
    judge = judge_config(cfg, policy, where)
    skipped: dict[str, Any] = {}
    jr = open_judge(judge, str(where), "judge", {"pairs": "samples", **samples_identity(judge)})
    sampler = lambda: sample_pairs(judge, RunDir(samples), prompts, skipped)  # noqa: E731 -- reads, asks nothing new
    stats = judge_gated(judge, jr, [], skipped, sampler=sampler)
    rate = stats["failures"] / max(1, stats["pairs"])
    if rate > cfg.max_failure_rate:
        raise TooManyFailures(f"{rate:.0%} of the pairs failed to be judged, more than --max-failure-rate "
                              f"{cfg.max_failure_rate:g} (see failures.jsonl); rerun to retry them",
                              path=str(where))
    return stats


def training_pairs(cfg: OnlineDPOConfig, judge_dir: Path, out: Path) -> int:
    """Write what DPO trains on: the judge's best-vs-worst preferences, or every judged pair oriented by its
    verdict (ties and pairs below --min-margin left out). Returns the number of pairs."""
    if cfg.pairs_from == "best-worst":
        rows = list(JsonlFile(judge_dir / RunDir.PREFERENCES).iter())
    else:
        rows = []
        for j in latest_by_id(JsonlFile(judge_dir / RunDir.JUDGMENTS).iter()).values():
            p = j["p_a"]
            if p == 0.5 or max(p, 1 - p) - 0.5 < cfg.min_margin - 1e-12:
                continue
            chosen, rejected = (j["response_a"], j["response_b"]) if p > 0.5 else (j["response_b"], j["response_a"])
            rows.append(PreferencePair(
                id=idempotency_key("preference", j["id"]), run_id=j.get("run_id", ""), prompt=j["prompt"],
                chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}], p_chosen=max(p, 1 - p),
                source="judged-samples (all pairs)",
                provenance={"judgment_id": j["id"], "pair_id": j["pair_id"], "principle_ids": j["principle_ids"],
                            "method": j.get("method")}).to_dict())
    if rows and cfg.guard:
        import json

        from caikit.classifier.model import load_guard
        from caikit.classifier.screen import screen_pairs

        rows, counts = screen_pairs(rows, load_guard(cfg.guard))
        out.with_suffix(".guard.json").write_text(json.dumps({"guard": cfg.guard, **counts}), encoding="utf-8")
    if not rows:
        raise UserError("the judge preferred no answer over another (all ties, or below --min-margin), or the guard "
                        "flagged both answers of every pair: nothing to train on; raise --samples-per-prompt or "
                        "--temperature", path=str(judge_dir))
    write_jsonl_atomic(out, rows)
    return len(rows)


# ---------------------------------------------------------------- the loop

def run_online_dpo(cfg: OnlineDPOConfig) -> int:
    from caikit.commands.online_figures import ITERATIONS, Figures
    from caikit.prompts import bundled_prompts_path, load_prompts
    from caikit.train.dpo import train as train_dpo

    cfg.validate()
    out = Path(cfg.out)
    source = cfg.prompts or bundled_prompts_path()
    prompts = load_prompts(source, limit=cfg.limit or None, split=cfg.split or None)
    if not prompts:
        raise UserError("no prompts in file", path=str(source))
    # scrubbed: a judge spec's user:password@ never reaches run.json
    identity = scrubbed({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IDENTITY
                         and not (k == "guard" and not v)})  # runs without a guard resume as before
    check_identity(out, STAGE, identity)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / RunDir.CONFIG)
    write_json_atomic(out / RunDir.RUN, {"stage": STAGE, "identity": identity})
    state = read_json(out / STATE) or {"stages": {}}
    state.setdefault("seconds", {})

    def step(name: str, work) -> Any:
        """Run `work` unless progress.json says stage `name` finished; then record it and its time."""
        if state["stages"].get(name) == "done":
            return None
        started = time.perf_counter()
        result = work()
        state["stages"][name] = "done"
        state["seconds"][name] = round(time.perf_counter() - started, 3)
        write_json_atomic(out / STATE, state)
        return result

    policies = [cfg.policy] + [str(out / f"iter-{i}" / "dpo") for i in range(1, cfg.iterations + 1)]
    from caikit.trackers import open_tracker

    tracker = open_tracker(cfg.report_to, out, dataclasses.asdict(cfg))  # the loop's rows; each DPO logs its own
    figures = Figures(cfg, out, lambda where: judge_config(cfg, cfg.policy, where), tracker=tracker)
    step("iter-0/samples", lambda: sample(cfg, policies[0], out / "iter-0" / "samples", prompts))
    step("iter-0/figures", lambda: figures.row(0, policies[0], out / "iter-0" / "samples"))
    for i in range(1, cfg.iterations + 1):
        here, before = out / f"iter-{i}", out / f"iter-{i - 1}" / "samples"
        step(f"iter-{i}/judge", lambda: judge_iteration(cfg, policies[i - 1], before, here / "judge", prompts))
        step(f"iter-{i}/pairs", lambda: training_pairs(cfg, here / "judge", here / "pairs.jsonl"))
        step(f"iter-{i}/dpo", lambda: train_dpo(dpo_config(cfg, policies[i - 1], here / "pairs.jsonl", here / "dpo")))
        step(f"iter-{i}/samples", lambda: sample(cfg, policies[i], here / "samples", prompts))
        step(f"iter-{i}/figures", lambda: figures.row(i, policies[i], here / "samples", judge_dir=here / "judge"))
        if cfg.depth_every and (i % cfg.depth_every == 0 or i == cfg.iterations):
            step(f"iter-{i}/depth", lambda: depth_row(cfg, policies[0], policies[i], i, out))
    link_policy(out, Path(policies[-1]))
    figures.close()
    note(COMMAND, f"{cfg.iterations} iterations; the last policy is {out / POLICY_LINK}; figures in {out / ITERATIONS}")
    return 0


def depth_row(cfg: OnlineDPOConfig, initial: str, policy: str, iteration: int, out: Path) -> dict:
    """--depth-every: π_i against π_0 on the depth probe's prompts (caikit/depth/probe.py), a row of depth.jsonl."""
    import torch

    from caikit.depth.activations import load_model, tokenizer_for
    from caikit.depth.probe import DepthProbe

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = tokenizer_for(policy, initial)
    row = DepthProbe(tokenizer, out, device=device).record(iteration, load_model(policy, device=device),
                                                           load_model(initial, device=device))
    note(COMMAND, f"iteration {iteration}: depth: shift in {row['k90']} directions at layer {row['layer']}; refusal "
                  f"{row['refusal']:.0%}, with its direction ablated {row['refusal_ablated']:.0%} "
                  f"(π_0 {row['refusal_reference']:.0%})")
    return row


def link_policy(out: Path, policy: Path) -> None:
    """OUT/policy -> the last iteration's model (relative, so the run directory can move)."""
    link, tmp = out / POLICY_LINK, out / f".{POLICY_LINK}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(policy, out), tmp)
    os.replace(tmp, link)
