"""`caikit train ppo`: PPO against a reward, with a KL penalty to the frozen starting policy.

The reward is a `caikit.train.rewards.RewardFn`: a reward model (--reward-model), a Python function
(--reward-fn), or any RewardFn a caller passes to `train` (a judge). One step = one rollout batch:
sample responses (temperature T, no other sampling tricks), score them (a reward model at their EOS
token), build per-token rewards −β·KL_t with the score added at the last token,
GAE, whitened advantages, then --ppo-epochs passes of clipped policy + value updates over
--mini-batches minibatches. Mechanics follow Huang et al. 2022, "The N implementation details of
RLHF with PPO": zero-initialised value head, log-probs under logits / T, dropout off (the models stay
in eval mode), pad distinct from EOS, left-padded prompts with position ids from the attention mask.

Writes to --out: metrics.jsonl (reward parts, KL, β, entropy, length, diversity, losses, timings),
warnings.jsonl (mode collapse / reward hacking / KL explosion), samples.jsonl (greedy answers to fixed
probe prompts every --sample-every steps), plots/*.png, checkpoint/ (for --resume), config.yaml and
the final policy (safetensors + tokenizer; value_head.safetensors beside it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from caikit.config import option
from caikit.errors import UserError
from caikit.train.config import RLConfig
from caikit.train.rewards import RewardFn
from caikit.train.rl import PLOT_GROUPS as RL_PLOT_GROUPS

COMMAND = "train ppo"
PLOT_GROUPS = {**RL_PLOT_GROUPS, "losses": ["policy_loss", "value_loss"],
               "ppo_stats": ["clipfrac", "vf_clipfrac", "approx_kl"]}


@dataclass
class PPOConfig(RLConfig):
    """PPO on prompts against a reward model, with a per-token KL penalty (RLHF / RLAIF step)."""

    gamma: float = option(1.0, low=0, high=1, help="discount γ of GAE over response tokens")
    gae_lambda: float = option(0.95, low=0, high=1, aliases=("lam",),
                               help="GAE λ: bias-variance trade-off of the advantage estimate (Schulman et al. 2016)")
    cliprange: float = option(0.2, above=0, high=1, help="PPO policy ratio clip ε")
    cliprange_value: float = option(0.2, above=0, help="value clip: new values stay within ±this of the rollout values")
    vf_coef: float = option(0.1, low=0, help="weight of the value loss in the total loss")
    ppo_epochs: int = option(4, low=1, high=1000, help="optimisation passes over each rollout batch")
    mini_batches: int = option(1, low=1, high=65_536, help="minibatches per PPO epoch (one optimizer step each)")
    rollout_batch_size: int = option(16, low=1, high=65_536, help="prompts answered per PPO step")
    whiten_rewards: bool = option(False, help="whiten per-token rewards (scale only) before GAE")

    def validate(self) -> None:
        RLConfig.validate(self)
        if self.rollout_batch_size < 1 or self.mini_batches < 1 or self.ppo_epochs < 1:
            raise UserError("--rollout-batch-size, --mini-batches and --ppo-epochs must be >= 1")
        if self.rollout_batch_size % (self.mini_batches * self.grad_accum):
            raise UserError(f"--rollout-batch-size {self.rollout_batch_size} must be divisible by --mini-batches × "
                            f"--grad-accum = {self.mini_batches * self.grad_accum}")


def train(cfg: PPOConfig, reward_fn: RewardFn | Callable | None = None, check: Callable | None = None,
          engine=None) -> str:
    """Train; `reward_fn` (a RewardFn, or a plain f(prompts, responses) -> scores) and `check` (the independent
    reward-hacking check, f(conversations, responses) -> 0-1 scores) default to what --reward-model /
    --reward-fn and --check-rm / --check-judge name; `engine` (a caikit.generation engine) to what --engine names."""
    from caikit.progress import step_bar
    from transformers import AutoModelForCausalLM

    from caikit.generation import push_weights
    from caikit.train.losses import kl_per_token, masked_mean, ppo_policy_loss, ppo_value_loss
    from caikit.train.loop import (finish, last_used_lr, load_pretrained, make_accelerator, make_optimizer,
                                   make_scheduler, note, prepare_model)
    from caikit.train.rewards import compute_rewards, detail_means
    from caikit.train.rl import RLRun, load_reference, timing_metrics
    from caikit.train.rollout import (PolicyWithValueHead, apply_missing_eos_penalty, decode_responses,
                                      disable_dropout, generate_responses, left_pad, per_token_rewards, ppo_advantages,
                                      prompt_indices, reference_logprobs, response_forward, rollout_attention_mask,
                                      rollout_engine, rollout_stats, update_steps)

    cfg.validate()  # also when called from Python rather than the CLI (fills the --policy/--prompts aliases)
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg)
    device = accelerator.device
    run = RLRun.open(cfg, COMMAND, accelerator, reward_fn, check)  # prompts, reward and check before any model
    conversations, tokenizer = run.conversations, run.tokenizer
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    # policy (+ value head) and frozen reference; under LoRA the reference is the policy with adapters off
    lm = prepare_model(load_pretrained(AutoModelForCausalLM, cfg.policy), cfg, "CAUSAL_LM")
    policy = disable_dropout(PolicyWithValueHead(lm)).to(device)
    ref = load_reference(cfg)
    run.reference = ref  # --depth-every measures the policy against it
    if ref is not None:
        ref.to(device)
    optimizer = make_optimizer(policy, cfg)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(conversations)
                                                                           / cfg.rollout_batch_size))
    updates_per_step = cfg.ppo_epochs * cfg.mini_batches
    scheduler = make_scheduler(optimizer, cfg, total_steps * updates_per_step)
    step = run.start(policy, optimizer, scheduler)  # β controller, monitors, --resume
    kl_ctl = run.kl_ctl
    policy, optimizer = accelerator.prepare(policy, optimizer)
    engine = engine or rollout_engine(cfg, accelerator, accelerator.unwrap_model(policy).lm, tokenizer)
    push_weights(engine, accelerator.unwrap_model(policy).lm)  # a given engine or a resumed policy: start in step

    B, micro = cfg.rollout_batch_size, cfg.rollout_batch_size // (cfg.mini_batches * cfg.grad_accum)
    bar = step_bar(total=total_steps, initial=step, desc="ppo", unit="step",
                   disable=not (cfg.progress and accelerator.is_local_main_process))
    while step < total_steps:
        started = time.perf_counter()
        # every process answers its own slice of the step's prompts
        n_proc, rank = accelerator.num_processes, accelerator.process_index
        batch_idx = prompt_indices(len(conversations), B * n_proc, step, cfg.seed)[rank * B:(rank + 1) * B]
        batch_convs = [conversations[i] for i in batch_idx]
        p_ids, p_mask = left_pad([run.prompt_ids[i] for i in batch_idx], pad_id, device)
        P = p_ids.size(1)

        # 1. rollout: sample, then log-probs / values / entropy of what was sampled, and the reference's
        policy.eval()  # KV cache on; dropout is off in both modes
        with torch.no_grad(), accelerator.autocast():
            qr, responses, rmask, has_eos = generate_responses(engine, p_ids, p_mask, cfg.response_length,
                                                               cfg.temperature, pad_id, eos_id)
            gen_seconds = time.perf_counter() - started
            attn = rollout_attention_mask(p_mask, rmask)
            parts = [response_forward(policy, qr[i:i + micro], attn[i:i + micro], P, cfg.temperature,
                                      with_values=True, with_entropy=True) for i in range(0, B, micro)]
            logprobs, values, entropy = (torch.cat([p[k] for p in parts]) for k in range(3))
            lm = accelerator.unwrap_model(policy).lm
            ref_lp = torch.cat([reference_logprobs(ref, lm, qr[i:i + micro], attn[i:i + micro], P, cfg.temperature)
                                for i in range(0, B, micro)])
        texts = decode_responses(tokenizer, responses, rmask)
        reward_batch = compute_rewards(run.reward, batch_convs, texts)
        rm_scores = torch.tensor(reward_batch.scores, dtype=torch.float32, device=device)
        scores = apply_missing_eos_penalty(rm_scores, has_eos, cfg.missing_eos_penalty)

        # 2. rewards: −β·KL per token, score at the last token; GAE; advantages whitened
        mask = rmask.float()
        logprobs, ref_lp, values = logprobs * mask, ref_lp * mask, values * mask
        kl = kl_per_token(logprobs, ref_lp, cfg.kl_estimator) * mask  # (B, R)
        kl_coef = kl_ctl.value
        rewards, non_score_reward = per_token_rewards(scores, kl, rmask, kl_coef)
        advantages, returns = ppo_advantages(rewards, values, mask, cfg.gamma, cfg.gae_lambda, cfg.whiten_rewards)
        rollout_seconds = time.perf_counter() - started

        # 3. PPO updates: ppo_epochs × mini_batches optimizer steps, grad_accum micro-batches each
        stats = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")}
        train_started, train_tokens = time.perf_counter(), 0
        policy.train()  # only for gradient checkpointing: dropout is disabled
        for idx in update_steps(accelerator, policy, optimizer, scheduler, cfg.ppo_epochs, B, cfg.mini_batches, micro,
                                cfg.max_grad_norm):
            with accelerator.autocast():
                new_lp, new_values, _ = response_forward(policy, qr[idx], attn[idx], P, cfg.temperature,
                                                         with_values=True)
                pg_loss, clipfrac, approx_kl = ppo_policy_loss(new_lp, logprobs[idx], advantages[idx], mask[idx],
                                                               cfg.cliprange)
                vf_loss, vf_clipfrac = ppo_value_loss(new_values, values[idx], returns[idx], mask[idx],
                                                      cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                accelerator.backward(loss)  # divides by --grad-accum (the Accelerator's setting)
            for key, value in zip(stats, (pg_loss, vf_loss, clipfrac, vf_clipfrac, approx_kl)):
                stats[key].append(float(value.detach()))
            train_tokens += int(attn[idx].sum())
        train_seconds = time.perf_counter() - train_started
        # the next rollout and the probe answers sample the updated policy; pushing it is part of generating
        synced = time.perf_counter()
        push_weights(engine, accelerator.unwrap_model(policy).lm)
        gen_seconds += time.perf_counter() - synced

        # 4. β update from the KL measured on this batch (Ziegler et al. 2019, §2.2), the same on every process
        mean_kl = float(accelerator.reduce(kl.sum(1).mean(), reduction="mean"))
        kl_ctl.update(mean_kl, B * n_proc)
        step += 1

        # 5. metrics, monitors, probe samples, checkpoint
        row = {
            "rm_score": float(rm_scores.mean()), "score": float(scores.mean()), "kl": mean_kl, "kl_coef": kl_coef,
            "non_score_reward": float(non_score_reward.sum(1).mean()),
            "total_reward": float(scores.mean()) + float(non_score_reward.sum(1).mean()),
            **rollout_stats(responses, rmask, has_eos, entropy), **detail_means(reward_batch),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "value_mean": float(masked_mean(values, mask)), "lr": last_used_lr(scheduler),
            **timing_metrics(started, gen_seconds, rollout_seconds, train_seconds, B, train_tokens),
        }
        unwrapped = accelerator.unwrap_model(policy)
        run.end_step(step, total_steps, row, batch_convs, texts, engine, unwrapped, optimizer, scheduler)
        bar.set_postfix(score=f"{row['rm_score']:.3f}", kl=f"{mean_kl:.3f}", beta=f"{kl_coef:.3g}")
        bar.update(1)
    bar.close()
    run.close(step, accelerator.unwrap_model(policy), optimizer, scheduler)

    # the value head beside the checkpoint, then the merged policy and the curves
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        unwrapped = accelerator.unwrap_model(policy)
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.v_head.state_dict().items()},
                  str(out / "value_head.safetensors"))
    result = finish(accelerator, accelerator.unwrap_model(policy).lm, tokenizer, cfg, PLOT_GROUPS)
    note(COMMAND, f"saved policy to {result}")
    return result
