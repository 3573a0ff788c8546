"""PPO throughput on the embedded SmolLM2-135M (or any policy): rollouts/s, train tokens/s, and the
share of each step spent generating (the usual PPO bottleneck). Runs on CUDA when available.

    python scripts/bench_ppo.py                       # CPU: 3 steps, 4 prompts, 32-token responses
    python scripts/bench_ppo.py --steps 5 --rollout-batch-size 32 --response-length 128 --bf16   # GPU

The reward is a Python function (response length in words, capped) unless --reward-model is given, so
the figures measure the PPO machinery, not a reward model. The first step (warm-up) is left out of the
averages when there is more than one. The figures are printed last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="smollm2")
    parser.add_argument("--reward-model", default="", help="reward model dir (default: a Python reward function)")
    parser.add_argument("--prompts", default=str(REPO / "caikit" / "data" / "red_team_prompts.jsonl"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rollout-batch-size", type=int, default=4)
    parser.add_argument("--mini-batches", type=int, default=1)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--lora", action="store_true")
    args = parser.parse_args()

    import torch

    from caikit.metrics import read_metrics
    from caikit.train.ppo import PPOConfig, train

    def words_reward(prompts: list[str], responses: list[str]) -> list[float]:
        return [min(len(r.split()), 50) / 50 for r in responses]

    with tempfile.TemporaryDirectory() as out:
        cfg = PPOConfig(policy=args.policy, reward_model=args.reward_model, prompts=args.prompts, out=out,
                        max_steps=args.steps, rollout_batch_size=args.rollout_batch_size,
                        mini_batches=args.mini_batches, ppo_epochs=args.ppo_epochs,
                        response_length=args.response_length, bf16=args.bf16, lora=args.lora, lr=1e-6,
                        sample_every=0, progress=False)
        train(cfg, reward_fn=None if args.reward_model else words_reward)
        rows = read_metrics(Path(out) / "metrics.jsonl")
    timed = rows[1:] if len(rows) > 1 else rows
    gen = sum(r["gen_seconds"] for r in timed)
    step = sum(r["step_seconds"] for r in timed)
    train_s = sum(r["train_seconds"] for r in timed)
    train_tokens = sum(r["train_tokens_per_s"] * r["train_seconds"] for r in timed)
    rollouts = args.rollout_batch_size * len(timed)
    resp_tokens = sum(r["response_length"] for r in timed) * args.rollout_batch_size
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"policy {args.policy} on {device}; {len(timed)} timed steps of {args.rollout_batch_size} rollouts, "
          f"≤{args.response_length} response tokens, {args.ppo_epochs} PPO epochs × {args.mini_batches} minibatches"
          f"{', bf16' if args.bf16 else ''}{', LoRA' if args.lora else ''}", file=sys.stderr)
    print(f"generated tokens/s: {resp_tokens / gen:.1f}; step time {step / len(timed):.2f} s "
          f"(generation {gen / len(timed):.2f} s, PPO updates {train_s / len(timed):.2f} s)")
    print(f"rollouts/s: {rollouts / step:.3f}  train tokens/s: {train_tokens / train_s:.1f}  "
          f"generation share of step time: {gen / step:.0%}")


if __name__ == "__main__":
    main()
