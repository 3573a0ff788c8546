"""Online RLAIF throughput: GRPO with an AI judge as its reward, and one `caikit train online-dpo` iteration, on
a random-init model (or any policy). Runs on CUDA when available.

    python scripts/bench_online.py --random-init tiny                    # CPU smoke figures, no weights needed
    python scripts/bench_online.py --random-init 0.48b --bf16 --prompts-per-step 8 --num-generations 8 \\
        --response-length 128                                            # GPU

The judge is a local model, by default the policy itself (`--judge self`): no server, no network, and the
figures measure the machinery (sampling, judging, updates), not the judge's quality; its quality gate is off
(a random-init judge is noise). Both algorithms sample the same answers per step: --prompts-per-step prompts
× --num-generations. Printed last, one line per algorithm:

  grpo-judge   steps/s; the share of each step spent generating, scoring (the judge's pairwise comparisons
               and the log-prob forwards) and updating (the first step, warm-up, left out when there are more)
  online-dpo   one iteration: seconds of each stage (sampling, judging, DPO, the figures' win-rate judging
               and KL), DPO steps/s (its stage time, loading and saving included) and train tokens/s, and the
               share of the iteration spent generating answers
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def grpo_judge(policy: str, judge: str, prompts: str, out: Path, args) -> list[dict]:
    from caikit.commands.rl import GRPOConfig, run_grpo
    from caikit.metrics import read_metrics

    cfg = GRPOConfig(policy=policy, prompts=prompts, out=str(out), max_steps=args.steps,
                     rollout_batch_size=args.prompts_per_step, num_generations=args.num_generations,
                     response_length=args.response_length, bf16=args.bf16, lr=1e-6, sample_every=0, progress=False,
                     engine=args.engine, judge=judge, reward=args.reward, constitution="hhh")
    run_grpo(cfg)
    return read_metrics(out / "metrics.jsonl")


def online_dpo(policy: str, judge: str, prompts: str, out: Path, args) -> tuple[dict, float, list[dict]]:
    from caikit.commands.online_dpo import OnlineDPOConfig, run_online_dpo

    cfg = OnlineDPOConfig(policy=policy, prompts=prompts, limit=args.prompts_per_step, out=str(out), iterations=1,
                          samples_per_prompt=args.num_generations, response_length=args.response_length,
                          keep_truncated=True, judge=judge, constitution="hhh", calibrate=0, bf16=args.bf16,
                          max_steps=args.dpo_steps, batch_size=args.dpo_batch_size, lr=1e-6, engine=args.engine,
                          progress=False)
    started = time.perf_counter()
    run_online_dpo(cfg)
    total = time.perf_counter() - started
    from caikit.metrics import read_metrics

    steps = [r for r in read_metrics(out / "iter-1" / "dpo" / "metrics.jsonl") if "tokens_per_s" in r]
    return json.loads((out / "progress.json").read_text())["seconds"], total, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2")
    parser.add_argument("--random-init", default="", help="CONFIG_OR_SHAPE instead of --policy (tiny, 0.48b, ...)")
    parser.add_argument("--judge", default="self", help="judge spec (PROVIDER:MODEL[@URL]); self: the policy, local")
    parser.add_argument("--reward", default="pairwise", help="GRPO's judge reward: pairwise | rubric")
    parser.add_argument("--algorithms", default="grpo-judge,online-dpo")
    parser.add_argument("--prompts", default=str(REPO / "caikit" / "data" / "red_team_prompts.jsonl"))
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=4, help="G (GRPO) = K (online DPO)")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--dpo-steps", type=int, default=4)
    parser.add_argument("--dpo-batch-size", type=int, default=4)
    parser.add_argument("--engine", default="auto", help="auto | padded | continuous | vllm")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import torch

    from caikit.random_init import random_init_model

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    policy = random_init_model(args.random_init, root / "policy") if args.random_init else args.policy
    judge = f"local:{policy}" if args.judge == "self" else args.judge
    lines = []
    if "grpo-judge" in args.algorithms:
        rows = grpo_judge(policy, judge, args.prompts, root / "grpo", args)
        timed = rows[1:] if len(rows) > 1 else rows
        step = sum(r["step_seconds"] for r in timed)
        gen = sum(r["gen_seconds"] for r in timed)
        scoring = sum(r["rollout_seconds"] - r["gen_seconds"] for r in timed)
        updates = sum(r["train_seconds"] for r in timed)
        lines.append(f"grpo-judge: {len(timed)} timed steps of {args.prompts_per_step} prompts × G = "
                     f"{args.num_generations} ({args.reward} judge); steps/s {len(timed) / step:.3f}; step time "
                     f"{step / len(timed):.2f} s; generation share {gen / step:.0%}, scoring (judge + log-probs) "
                     f"{scoring / step:.0%}, updates {updates / step:.0%}")
    if "online-dpo" in args.algorithms:
        seconds, total, dpo_rows = online_dpo(policy, judge, args.prompts, root / "online", args)
        tokens_per_s = sum(r["tokens_per_s"] for r in dpo_rows) / max(1, len(dpo_rows))
        sampling = seconds.get("iter-0/samples", 0) + seconds.get("iter-1/samples", 0)
        figures = seconds.get("iter-0/figures", 0) + seconds.get("iter-1/figures", 0)
        dpo = seconds.get("iter-1/dpo", 0)
        steps_per_s = len(dpo_rows) / dpo if dpo else 0.0
        lines.append(f"online-dpo: one iteration of {args.prompts_per_step} prompts × K = {args.num_generations} in "
                     f"{total:.1f} s: sampling {sampling:.1f} s (two rounds), judging "
                     f"{seconds.get('iter-1/judge', 0):.1f} s, DPO {dpo:.1f} s for {len(dpo_rows)} steps "
                     f"({steps_per_s:.2f} steps/s with loading, the reference pass and saving; {tokens_per_s:,.0f} "
                     f"train tokens/s within a step), figures {figures:.1f} s; generation share {sampling / total:.0%}")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"policy {args.random_init and 'random-init ' + args.random_init or args.policy} on {device}; judge "
          f"{args.judge}; ≤{args.response_length} answer tokens, --engine {args.engine}"
          f"{', bf16' if args.bf16 else ''}" + ("  [CPU: smoke figures only]" if device.startswith("CPU") else ""),
          file=sys.stderr)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
