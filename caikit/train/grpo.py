"""`caikit train grpo`: critic-free RL with group baselines, GRPO (Shao et al. 2024) or RLOO (Ahmadian et al. 2024).

One step = one rollout batch: --rollout-batch-size prompts, each answered --num-generations (G) times
by the current policy (the same sampling as PPO: temperature T and nothing else); every response is
scored by the reward (`caikit.train.rewards.RewardFn`: a reward model, a Python function, or a judge a
caller passes in, told which responses share a prompt); the KL to the frozen reference is folded into
the reward as in PPO, total = score − β·Σ_t KL_t (fixed or adaptive β, `caikit.train.kl`); advantages
are relative to the group (looked up in ADVANTAGES by --estimator); then --num-iterations passes of
PPO's clipped surrogate (no value model) over --mini-batches minibatches, the sequence advantage on
every response token.

Writes to --out what PPO writes: metrics.jsonl (score, KL, β, entropy, length, diversity, per-detail
reward means, losses, timings), warnings.jsonl (the same monitors), samples.jsonl (greedy answers to
fixed probe prompts), plots/*.png, checkpoint/ (for --resume), config.yaml and the final policy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from caikit.config import option
from caikit.errors import UserError
from caikit.train.config import RLConfig
from caikit.train.losses import grpo_advantages, rloo_advantages
from caikit.train.rewards import RewardFn
from caikit.train.rl import PLOT_GROUPS as RL_PLOT_GROUPS

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
    from torch import Tensor

COMMAND = "train grpo"
PLOT_GROUPS = {**RL_PLOT_GROUPS, "groups": ["reward_std", "zero_std_share"], "losses": ["policy_loss"],
               "ppo_stats": ["clipfrac", "approx_kl"]}

# --estimator -> advantages (N, G) from the group's rewards (N, G); one row each (STYLE.md #11)
ADVANTAGES: dict[str, Callable[[Tensor, "GRPOConfig"], Tensor]] = {
    "grpo": lambda rewards, cfg: grpo_advantages(rewards, cfg.scale_std),
    "rloo": lambda rewards, cfg: rloo_advantages(rewards),
}


@dataclass
class GRPOConfig(RLConfig):
    """GRPO / RLOO on prompts: G samples per prompt, group-relative advantages, KL to the reference in the reward."""

    num_generations: int = option(4, low=2, high=1024, help="G: responses sampled per prompt, the group each one is compared with")
    estimator: str = option("grpo", help="advantage: grpo = (r − group mean) / group std (Shao et al. 2024) | rloo = "
                                         "r − mean of the other G − 1 (Ahmadian et al. 2024)",
                            metadata={"choices": list(ADVANTAGES)})
    scale_std: bool = option(True, help="grpo: divide by the group's std (--no-scale-std keeps r − mean, as Liu et "
                                        "al. 2025 advise against its bias towards near-uniform groups)")
    clip_eps: float = option(0.2, above=0, high=1, help="ε of the clipped policy ratio (PPO's surrogate)")
    num_iterations: int = option(1, low=1, high=1000, help="μ: optimisation passes over each rollout batch (1: strictly on-policy)")
    mini_batches: int = option(1, low=1, high=65_536, help="minibatches per pass (one optimizer step each)")
    rollout_batch_size: int = option(4, low=1, high=65_536, help="prompts per step; each is answered --num-generations times")
    temperature: float = option(1.0, above=0, high=10, help="sampling temperature; log-probs are computed under the same T")
    # judge-based rewards (--judge SPEC, --reward pairwise|rubric) are built above caikit.train and arrive as
    # `train(cfg, reward_fn=...)`; their options join this config in caikit/commands/rl.py

    def validate(self) -> None:
        RLConfig.validate(self)
        if self.num_generations < 2:
            raise UserError("--num-generations must be >= 2: a group baseline needs at least two samples")
        if self.rollout_batch_size < 1 or self.mini_batches < 1 or self.num_iterations < 1:
            raise UserError("--rollout-batch-size, --mini-batches and --num-iterations must be >= 1")
        if self.clip_eps <= 0:
            raise UserError("--clip-eps must be > 0")
        samples = self.rollout_batch_size * self.num_generations
        if samples % (self.mini_batches * self.grad_accum):
            raise UserError(f"--rollout-batch-size × --num-generations = {samples} must be divisible by "
                            f"--mini-batches × --grad-accum = {self.mini_batches * self.grad_accum}")


def sample_responses(engine, prompt_ids: Tensor, prompt_mask: Tensor, cfg: GRPOConfig, pad_token_id: int,
                     eos_token_id: int):
    """The one place GRPO samples: (query_responses, responses, response_mask, has_eos), as PPO's rollout."""
    from caikit.train.rollout import generate_responses

    return generate_responses(engine, prompt_ids, prompt_mask, cfg.response_length, cfg.temperature, pad_token_id,
                              eos_token_id)


def train(cfg: GRPOConfig, reward_fn: RewardFn | Callable | None = None, check: Callable | None = None,
          engine=None) -> str:
    """Train; `reward_fn` (a RewardFn, or a plain f(prompts, responses) -> scores), `check` (the independent
    reward-hacking check) and `engine` (a caikit.generation engine) default to what --reward-model /
    --reward-fn, --check-rm / --check-judge and --engine name."""
    from caikit.progress import step_bar
    from transformers import AutoModelForCausalLM

    from caikit.generation import push_weights
    from caikit.train.losses import kl_per_token, ppo_policy_loss
    from caikit.train.loop import (finish, last_used_lr, load_pretrained, make_accelerator, make_optimizer,
                                   make_scheduler, note, prepare_model)
    from caikit.train.rewards import compute_rewards, detail_means
    from caikit.train.rl import RLRun, load_reference, timing_metrics
    from caikit.train.rollout import (apply_missing_eos_penalty, decode_responses, disable_dropout, left_pad,
                                      prompt_indices, reference_logprobs, response_forward, rollout_attention_mask,
                                      rollout_engine, rollout_stats, update_steps)

    cfg.validate()  # also when called from Python rather than the CLI (fills the --policy/--prompts aliases)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    run = RLRun.open(cfg, COMMAND, accelerator, reward_fn, check)  # prompts, reward and check before any model
    conversations, tokenizer = run.conversations, run.tokenizer
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # policy and frozen reference (under LoRA: the policy with adapters off); no value model
    policy = disable_dropout(prepare_model(load_pretrained(AutoModelForCausalLM, cfg.policy), cfg, "CAUSAL_LM"))
    policy.to(device)
    ref = load_reference(cfg)
    run.reference = ref  # --depth-every measures the policy against it
    if ref is not None:
        ref.to(device)
    optimizer = make_optimizer(policy, cfg)
    N, G = cfg.rollout_batch_size, cfg.num_generations
    B, micro = N * G, N * G // (cfg.mini_batches * cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(conversations) / N))
    scheduler = make_scheduler(optimizer, cfg, total_steps * cfg.num_iterations * cfg.mini_batches)
    step = run.start(policy, optimizer, scheduler)  # β controller, monitors, --resume
    kl_ctl = run.kl_ctl
    policy, optimizer = accelerator.prepare(policy, optimizer)
    engine = engine or rollout_engine(cfg, accelerator, accelerator.unwrap_model(policy), tokenizer)
    push_weights(engine, accelerator.unwrap_model(policy))  # a given engine or a resumed policy: start in step

    bar = step_bar(total=total_steps, initial=step, desc=cfg.estimator, unit="step",
                   disable=not (cfg.progress and accelerator.is_local_main_process))
    while step < total_steps:
        started = time.perf_counter()
        # every process answers its own slice of the step's prompts, each G times in a row: row g of a group
        # is sample g of that prompt, so (B,) tensors view as (N, G)
        n_proc, rank = accelerator.num_processes, accelerator.process_index
        batch_idx = prompt_indices(len(conversations), N * n_proc, step, cfg.seed)[rank * N:(rank + 1) * N]
        sample_idx = [i for i in batch_idx for _ in range(G)]
        batch_convs = [conversations[i] for i in sample_idx]
        p_ids, p_mask = left_pad([run.prompt_ids[i] for i in sample_idx], pad_id, device)
        P = p_ids.size(1)

        # 1. rollout: G samples per prompt, their log-probs and entropy, and the reference's log-probs
        policy.eval()  # KV cache on; dropout is off in both modes
        lm = accelerator.unwrap_model(policy)
        with torch.no_grad(), accelerator.autocast():
            qr, responses, rmask, has_eos = sample_responses(engine, p_ids, p_mask, cfg, pad_id, eos_id)
            gen_seconds = time.perf_counter() - started
            attn = rollout_attention_mask(p_mask, rmask)
            parts = [response_forward(policy, qr[i:i + micro], attn[i:i + micro], P, cfg.temperature,
                                      with_values=False, with_entropy=True) for i in range(0, B, micro)]
            logprobs, entropy = torch.cat([p[0] for p in parts]), torch.cat([p[2] for p in parts])
            ref_lp = torch.cat([reference_logprobs(ref, lm, qr[i:i + micro], attn[i:i + micro], P, cfg.temperature)
                                for i in range(0, B, micro)])
        texts = decode_responses(tokenizer, responses, rmask)
        reward_batch = compute_rewards(run.reward, batch_convs, texts, groups=[k // G for k in range(B)])
        rm_scores = torch.tensor(reward_batch.scores, dtype=torch.float32, device=device)
        scores = apply_missing_eos_penalty(rm_scores, has_eos, cfg.missing_eos_penalty)

        # 2. KL folded into the reward as in PPO (Ziegler et al. 2019, eq. 2: r = s − β·KL), then the group baseline
        mask = rmask.float()
        logprobs, ref_lp = logprobs * mask, ref_lp * mask
        kl = kl_per_token(logprobs, ref_lp, cfg.kl_estimator) * mask  # (B, R)
        kl_coef = kl_ctl.value
        non_score_reward = -kl_coef * kl.sum(1)  # (B,)
        total_reward = scores + non_score_reward
        advantages = ADVANTAGES[cfg.estimator](total_reward.view(N, G), cfg).view(B)
        token_advantages = advantages[:, None] * mask  # every token of a response shares its advantage
        rollout_seconds = time.perf_counter() - started

        # 3. clipped surrogate updates: num_iterations × mini_batches optimizer steps, grad_accum micro-batches each
        stats = {k: [] for k in ("policy_loss", "clipfrac", "approx_kl")}
        train_started, train_tokens = time.perf_counter(), 0
        policy.train()  # only for gradient checkpointing: dropout is disabled
        for idx in update_steps(accelerator, policy, optimizer, scheduler, cfg.num_iterations, B, cfg.mini_batches,
                                micro, cfg.max_grad_norm):
            with accelerator.autocast():
                new_lp, _, _ = response_forward(policy, qr[idx], attn[idx], P, cfg.temperature, with_values=False)
                pg_loss, clipfrac, approx_kl = ppo_policy_loss(new_lp, logprobs[idx], token_advantages[idx], mask[idx],
                                                               cfg.clip_eps)
                accelerator.backward(pg_loss)  # divides by --grad-accum (the Accelerator's setting)
            for key, value in zip(stats, (pg_loss, clipfrac, approx_kl)):
                stats[key].append(float(value.detach()))
            train_tokens += int(attn[idx].sum())
        train_seconds = time.perf_counter() - train_started
        # the next rollout and the probe answers sample the updated policy; pushing it is part of generating
        synced = time.perf_counter()
        push_weights(engine, accelerator.unwrap_model(policy))
        gen_seconds += time.perf_counter() - synced

        # 4. β update from the KL measured on this batch (Ziegler et al. 2019, §2.2), the same on every process
        mean_kl = float(accelerator.reduce(kl.sum(1).mean(), reduction="mean"))
        kl_ctl.update(mean_kl, B * n_proc)
        step += 1

        # 5. metrics, monitors, probe samples, checkpoint
        group_std = total_reward.view(N, G).std(1)
        row = {
            "rm_score": float(rm_scores.mean()), "score": float(scores.mean()), "kl": mean_kl, "kl_coef": kl_coef,
            "non_score_reward": float(non_score_reward.mean()), "total_reward": float(total_reward.mean()),
            "reward_std": float(group_std.mean()), "zero_std_share": float((group_std < 1e-6).float().mean()),
            **rollout_stats(responses, rmask, has_eos, entropy), **detail_means(reward_batch),
            **{k: sum(v) / len(v) for k, v in stats.items()}, "lr": last_used_lr(scheduler),
            **timing_metrics(started, gen_seconds, rollout_seconds, train_seconds, B, train_tokens),
        }
        run.end_step(step, total_steps, row, batch_convs, texts, engine, accelerator.unwrap_model(policy), optimizer,
                     scheduler)
        bar.set_postfix(score=f"{row['rm_score']:.3f}", kl=f"{mean_kl:.3f}", beta=f"{kl_coef:.3g}")
        bar.update(1)
    bar.close()
    run.close(step, accelerator.unwrap_model(policy), optimizer, scheduler)

    # the merged policy and the curves
    result = finish(accelerator, accelerator.unwrap_model(policy), tokenizer, cfg, PLOT_GROUPS)
    note(COMMAND, f"saved policy to {result}")
    return result
