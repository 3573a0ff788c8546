"""PPO and GRPO throughput on the embedded SmolLM2-135M (or any policy, or a random-init model): rollouts/s,
train tokens/s, and the share of each step spent generating (the usual RL bottleneck). Runs on CUDA when
available.

    python scripts/bench_ppo.py                       # CPU: 3 steps, 4 prompts, 32-token responses
    python scripts/bench_ppo.py --random-init tiny    # CPU smoke run, no weights needed
    python scripts/bench_ppo.py --random-init 0.48b --steps 4 --rollout-batch-size 64 --response-length 128 --bf16

The reward is a Python function (response length in words, capped) unless --reward-model is given, so
the figures measure the RL machinery, not a reward model. GRPO answers rollout-batch-size / num-generations
prompts num-generations times each, so both trainers generate the same number of rollouts per step. The
first step (warm-up: compiling happens there) is left out of the averages when there is more than one. The
figures are printed last, one line per trainer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def words_reward(prompts: list[str], responses: list[str]) -> list[float]:
    return [min(len(r.split()), 50) / 50 for r in responses]


def run(trainer: str, policy: str, args) -> list[dict]:
    """One short training run; its metrics rows."""
    from caikit.metrics import read_metrics

    common = dict(policy=policy, reward_model=args.reward_model, prompts=args.prompts, max_steps=args.steps,
                  mini_batches=args.mini_batches, response_length=args.response_length, bf16=args.bf16,
                  lora=args.lora, lr=1e-6, sample_every=0, progress=False, engine=args.engine)
    reward = None if args.reward_model else words_reward
    with tempfile.TemporaryDirectory() as out:
        if trainer == "ppo":
            from caikit.train.ppo import PPOConfig, train

            train(PPOConfig(**common, out=out, rollout_batch_size=args.rollout_batch_size, ppo_epochs=args.ppo_epochs),
                  reward_fn=reward)
        else:
            from caikit.train.grpo import GRPOConfig, train

            G = args.num_generations
            train(GRPOConfig(**common, out=out, rollout_batch_size=max(1, args.rollout_batch_size // G),
                             num_generations=G, num_iterations=args.ppo_epochs), reward_fn=reward)
        return read_metrics(Path(out) / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2")
    parser.add_argument("--random-init", default="", help="CONFIG_OR_SHAPE instead of --policy: a preset (tiny, 135m, "
                                                          "360m, 0.48b, 1.7b), a config.json or key=value Llama shape")
    parser.add_argument("--trainers", default="ppo,grpo", help="comma-separated: ppo, grpo")
    parser.add_argument("--reward-model", default="", help="reward model dir (default: a Python reward function)")
    parser.add_argument("--prompts", default=str(REPO / "caikit" / "data" / "red_team_prompts.jsonl"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollout-batch-size", type=int, default=4, help="rollouts per step (GRPO: prompts × G)")
    parser.add_argument("--num-generations", type=int, default=2, help="GRPO's G")
    parser.add_argument("--mini-batches", type=int, default=1)
    parser.add_argument("--ppo-epochs", type=int, default=2, help="PPO epochs; GRPO's --num-iterations")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--engine", default="auto", help="rollout engine: auto | padded | continuous | vllm")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()

    import torch

    from caikit.random_init import random_init_model

    tmp = tempfile.TemporaryDirectory()
    policy = random_init_model(args.random_init, tmp.name) if args.random_init else args.policy
    results = {trainer: run(trainer, policy, args) for trainer in args.trainers.split(",")}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"policy {args.random_init and 'random-init ' + args.random_init or args.policy} on {device}; "
          f"{args.rollout_batch_size} rollouts per step, ≤{args.response_length} response tokens, {args.ppo_epochs} "
          f"epochs × {args.mini_batches} minibatches, --engine {args.engine}{', bf16' if args.bf16 else ''}"
          f"{', LoRA' if args.lora else ''}" + ("  [CPU: smoke figures only]" if device.startswith("CPU") else ""),
          file=sys.stderr)
    for trainer, rows in results.items():
        timed = rows[1:] if len(rows) > 1 else rows
        gen = sum(r["gen_seconds"] for r in timed)
        step = sum(r["step_seconds"] for r in timed)
        train_s = sum(r["train_seconds"] for r in timed)
        train_tokens = sum(r["train_tokens_per_s"] * r["train_seconds"] for r in timed)
        rollouts = sum(r["rollouts_per_s"] * r["step_seconds"] for r in timed)
        resp_tokens = sum(r["response_length"] * r["rollouts_per_s"] * r["step_seconds"] for r in timed)
        print(f"{trainer}: {len(timed)} timed steps; generated tokens/s {resp_tokens / gen:,.1f}; step time "
              f"{step / len(timed):.2f} s (generation {gen / len(timed):.2f} s, updates {train_s / len(timed):.2f} s); "
              f"rollouts/s {rollouts / step:.3f}; train tokens/s {train_tokens / train_s:,.1f}; "
              f"generation share of step time: {gen / step:.0%}")


if __name__ == "__main__":
    main()
