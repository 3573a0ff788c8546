"""`caikit train ppo`: PPO against a reward model, with a KL penalty to the frozen starting policy.

One step = one rollout batch: sample responses (temperature T, no other sampling tricks), score them
with the RM at their EOS token, build per-token rewards −β·KL_t with the score added at the last token,
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

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from caikit.config import option, save_config
from caikit.errors import UserError
from caikit.train.config import CommonTrainConfig

COMMAND = "train ppo"
RewardFn = Callable[[list[str], list[str]], list[float]]  # (prompts, responses) -> scores
PLOT_GROUPS = {
    "reward": ["rm_score", "score", "total_reward", "check_score"],
    "kl_beta": ["kl", "kl_coef"],
    "entropy": ["entropy"],
    "length": ["response_length"],
    "diversity": ["distinct_1", "distinct_2", "identical_share"],
    "losses": ["policy_loss", "value_loss"],
    "ppo_stats": ["clipfrac", "vf_clipfrac", "approx_kl"],
    "timing": ["gen_share"],
}


@dataclass
class PPOConfig(CommonTrainConfig):
    """PPO on prompts against a reward model, with a per-token KL penalty (RLHF / RLAIF step)."""

    policy: str = option("", help="policy to train: `smollm2`, a local path (e.g. an SFT run dir) or an HF id "
                                  "(default: --model)")
    model: str = option("smollm2", help="alias of --policy, used when --policy is not given")
    reward_model: str = option("", help="reward model directory from `caikit train reward` (sigmoid score 0-1)")
    prompts: str = option("", help="prompt file: JSONL/JSON/CSV/parquet with `prompt` or `messages` (default: --data)")
    data: str = option("", help="alias of --prompts")
    batch_size: int = option(4, help="not used by PPO: see --rollout-batch-size, --mini-batches and --grad-accum")
    kl_coef: float = option(0.05, help="β: weight of the per-token KL penalty to the reference (initial β when "
                                       "--kl-target is set)")
    kl_target: float = option(0.0, help="target KL (nats per response) for the adaptive β of Ziegler et al. 2019: "
                                        "β rises when KL is above it, falls when below (0: fixed β)")
    kl_horizon: int = option(10000, help="adaptive β horizon in rollouts: larger reacts more slowly")
    kl_estimator: str = option("k1", help="per-token KL estimator in the reward: k1 = log π − log π_ref, "
                                          "k3 = (r − 1) − log r (always >= 0)", metadata={"choices": ["k1", "k3"]})
    gamma: float = option(1.0, help="discount γ of GAE over response tokens")
    lam: float = option(0.95, help="GAE λ: bias-variance trade-off of the advantage estimate")
    cliprange: float = option(0.2, help="PPO policy ratio clip ε")
    cliprange_value: float = option(0.2, help="value clip: new values stay within ±this of the rollout values")
    vf_coef: float = option(0.1, help="weight of the value loss in the total loss")
    ppo_epochs: int = option(4, help="optimisation passes over each rollout batch")
    mini_batches: int = option(1, help="minibatches per PPO epoch (one optimizer step each)")
    rollout_batch_size: int = option(16, help="prompts answered per PPO step")
    response_length: int = option(64, help="max new tokens per response")
    temperature: float = option(0.7, help="sampling temperature; log-probs are computed under the same T")
    missing_eos_penalty: float = option(0.0, help="subtracted from the score of responses that never end with EOS "
                                                  "(e.g. 1.0 with a 0-1 RM)")
    whiten_rewards: bool = option(False, help="whiten per-token rewards (scale only) before GAE")
    check_rm: str = option("", help="second, held-out reward model dir: the independent check for reward hacking")
    check_judge: str = option("", help="judge as BACKEND:MODEL[@BASE_URL] (e.g. local:smollm2): independent check "
                                       "asking if each response is harmless and helpful")
    check_every: int = option(1, help="score the independent check every N steps")
    probe_prompts: str = option("", help="prompt file of fixed probe prompts (default: the first --probe-count prompts)")
    probe_count: int = option(4, help="probe prompts taken from --prompts when --probe-prompts is not given")
    sample_every: int = option(10, help="greedy answers to the probe prompts into samples.jsonl every N steps (0: off)")
    collapse_share: float = option(0.5, help="mode-collapse warning when more than this share of responses repeat")
    kl_max: float = option(20.0, help="warning when the KL to the reference exceeds this many nats per response")
    hack_window: int = option(10, help="steps over which RM score and check trends are compared")
    progress: bool = option(True, help="show a progress bar")

    def validate(self) -> None:
        self.policy = self.policy or self.model
        self.prompts = self.prompts or self.data
        CommonTrainConfig.validate(self)
        if not self.prompts:
            raise UserError("--prompts is required (a prompt file)")
        if self.temperature <= 0:
            raise UserError("--temperature must be > 0 (PPO samples; log-probs use logits / T)")
        if self.rollout_batch_size < 1 or self.mini_batches < 1 or self.ppo_epochs < 1 or self.response_length < 1:
            raise UserError("--rollout-batch-size, --mini-batches, --ppo-epochs and --response-length must be >= 1")
        if self.rollout_batch_size % (self.mini_batches * self.grad_accum):
            raise UserError(f"--rollout-batch-size {self.rollout_batch_size} must be divisible by --mini-batches × "
                            f"--grad-accum = {self.mini_batches * self.grad_accum}")
        if self.kl_target < 0 or self.kl_coef < 0:
            raise UserError("--kl-coef and --kl-target must be >= 0")
        if self.check_every < 1:
            raise UserError("--check-every must be >= 1")


def _truncate_jsonl(path: Path, after_step: int) -> None:
    """On resume, drop rows a crashed run wrote after its last checkpoint."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")


def _load_prompts(path: str, what: str, split: str = "") -> list[list[dict]]:
    from caikit.prompts import load_prompts

    rows = load_prompts(path, split=split or None)
    if not rows:
        raise UserError(f"{what}: no prompts in file", path=path)
    return [row.messages for row in rows]


def train(cfg: PPOConfig, reward_fn: RewardFn | None = None, check=None) -> str:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from caikit.diversity import diversity_metrics
    from caikit.train.checkpoint import save_checkpoint
    from caikit.train.kl import make_kl_controller
    from caikit.train.losses import gae, kl_per_token, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
    from caikit.train.loop import (finish, load_pretrained, make_accelerator, make_optimizer, make_scheduler, note,
                                   prepare_model, resume_or_start)
    from caikit.metrics import MetricsLogger
    from caikit.train.monitors import MonitorThresholds, TrainingMonitor, make_check
    from caikit.train.rollout import (PolicyWithValueHead, RewardScorer, apply_missing_eos_penalty, disable_dropout,
                                      encode_prompt, generate_responses, last_user_text, left_pad, per_token_rewards,
                                      prompt_indices, response_forward, rollout_attention_mask)
    from caikit.models import load_tokenizer

    cfg.validate()  # also when called from Python rather than the CLI (fills the --policy/--prompts aliases)
    out = Path(cfg.out)
    accelerator = make_accelerator(cfg)
    device = accelerator.device

    # inputs first, so a bad path fails before any model loads
    conversations = _load_prompts(cfg.prompts, "--prompts", cfg.split)
    probes = _load_prompts(cfg.probe_prompts, "--probe-prompts", cfg.split) if cfg.probe_prompts else conversations[:cfg.probe_count]
    scorer = None if reward_fn is not None else RewardScorer.from_dir(cfg.reward_model, device=str(device))
    check = check if check is not None else make_check(cfg.check_rm, device=str(device))
    try:
        tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    except OSError as e:
        raise UserError(f"cannot load tokenizer for '{cfg.policy}': {str(e).splitlines()[0]}") from None
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad_id == eos_id:
        raise UserError(f"tokenizer of '{cfg.policy}' has no pad token distinct from EOS; PPO masks need one")
    prompt_ids = [encode_prompt(tokenizer, c, cfg.max_prompt_length) for c in conversations]
    probe_ids = [encode_prompt(tokenizer, c, cfg.max_prompt_length) for c in probes]

    # policy (+ value head) and frozen reference; under LoRA the reference is the policy with adapters off
    lm = prepare_model(load_pretrained(AutoModelForCausalLM, cfg.policy), cfg, "CAUSAL_LM")
    policy = disable_dropout(PolicyWithValueHead(lm)).to(device)
    ref = None
    if not cfg.lora:
        ref = load_pretrained(AutoModelForCausalLM, cfg.policy, dtype=torch.bfloat16 if cfg.bf16 else None)
        ref.requires_grad_(False)
        ref.to(device).eval()
    optimizer = make_optimizer(policy, cfg)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(conversations)
                                                                           / cfg.rollout_batch_size))
    updates_per_step = cfg.ppo_epochs * cfg.mini_batches
    scheduler = make_scheduler(optimizer, cfg, total_steps * updates_per_step)
    kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    monitor = TrainingMonitor(out, MonitorThresholds(identical_share=cfg.collapse_share, kl_max=cfg.kl_max,
                                                     window=cfg.hack_window))
    step, extra = resume_or_start(cfg, COMMAND, policy, optimizer, scheduler)
    if step:
        kl_ctl.load_state_dict(extra["kl_ctl"])
        monitor.load_state_dict(extra.get("monitor", {}))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("warnings.jsonl", "samples.jsonl"):
        (_truncate_jsonl(out / name, step) if step else (out / name).unlink(missing_ok=True))
    (out / "warnings.jsonl").touch()  # present (maybe empty) in every run dir: "no warnings" is an answer too
    policy, optimizer = accelerator.prepare(policy, optimizer)
    save_config(cfg, out / "config.yaml")
    metrics = MetricsLogger(out, resume=step > 0)

    def score(convs: list[list[dict]], texts: list[str]) -> torch.Tensor:
        if reward_fn is not None:
            values = [float(v) for v in reward_fn([last_user_text(c) for c in convs], texts)]
            if len(values) != len(texts):
                raise UserError(f"reward function returned {len(values)} scores for {len(texts)} responses")
        else:
            values = scorer.score(convs, texts)
        return torch.tensor(values, dtype=torch.float32, device=device)

    def ref_logprobs(qr, attn, P):
        if ref is not None:
            return response_forward(ref, qr, attn, P, cfg.temperature, with_values=False)[0]
        with accelerator.unwrap_model(policy).lm.disable_adapter():
            return response_forward(accelerator.unwrap_model(policy).lm, qr, attn, P, cfg.temperature,
                                    with_values=False)[0]

    def decode(responses, mask) -> list[str]:
        return [tokenizer.decode(r[m].tolist(), skip_special_tokens=True) for r, m in zip(responses, mask)]

    def write_probe_samples(step: int) -> None:
        ids, mask = left_pad(probe_ids, pad_id, device)
        with torch.no_grad(), accelerator.autocast():
            _, responses, rmask, has_eos = generate_responses(
                accelerator.unwrap_model(policy).lm, ids, mask, cfg.response_length, cfg.temperature, pad_id, eos_id,
                greedy=True)
        texts = decode(responses, rmask)
        scores = score(probes, texts).tolist()
        with open(out / "samples.jsonl", "a", encoding="utf-8") as fh:
            for conv, text, s, eos in zip(probes, texts, scores, has_eos.tolist()):
                fh.write(json.dumps({"step": step, "prompt": last_user_text(conv), "response": text, "score": s,
                                     "has_eos": eos}, ensure_ascii=False) + "\n")

    B, micro = cfg.rollout_batch_size, cfg.rollout_batch_size // (cfg.mini_batches * cfg.grad_accum)
    bar = tqdm(total=total_steps, initial=step, desc="ppo", unit="step", disable=not (cfg.progress and
                                                                                   accelerator.is_local_main_process))
    while step < total_steps:
        started = time.perf_counter()
        # every process answers its own slice of the step's prompts
        n_proc, rank = accelerator.num_processes, accelerator.process_index
        batch_idx = prompt_indices(len(conversations), B * n_proc, step, cfg.seed)[rank * B:(rank + 1) * B]
        batch_convs = [conversations[i] for i in batch_idx]
        p_ids, p_mask = left_pad([prompt_ids[i] for i in batch_idx], pad_id, device)
        P = p_ids.size(1)

        # 1. rollout: sample, then log-probs / values / entropy of what was sampled, and the reference's
        policy.eval()  # KV cache on; dropout is off in both modes
        with torch.no_grad(), accelerator.autocast():
            qr, responses, rmask, has_eos = generate_responses(
                accelerator.unwrap_model(policy).lm, p_ids, p_mask, cfg.response_length, cfg.temperature, pad_id,
                eos_id)
            gen_seconds = time.perf_counter() - started
            attn = rollout_attention_mask(p_mask, rmask)
            parts = [response_forward(policy, qr[i:i + micro], attn[i:i + micro], P, cfg.temperature,
                                      with_values=True, with_entropy=True) for i in range(0, B, micro)]
            logprobs, values, entropy = (torch.cat([p[k] for p in parts]) for k in range(3))
            ref_lp = torch.cat([ref_logprobs(qr[i:i + micro], attn[i:i + micro], P) for i in range(0, B, micro)])
        texts = decode(responses, rmask)
        rm_scores = score(batch_convs, texts)
        scores = apply_missing_eos_penalty(rm_scores, has_eos, cfg.missing_eos_penalty)

        # 2. rewards: −β·KL per token, score at the last token; GAE; advantages whitened
        mask = rmask.float()
        logprobs, ref_lp, values = logprobs * mask, ref_lp * mask, values * mask
        kl = kl_per_token(logprobs, ref_lp, cfg.kl_estimator) * mask  # (B, R)
        kl_coef = kl_ctl.value
        rewards, non_score_reward = per_token_rewards(scores, kl, rmask, kl_coef)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)
        rollout_seconds = time.perf_counter() - started

        # 3. PPO updates: ppo_epochs × mini_batches optimizer steps, grad_accum micro-batches each
        stats = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl")}
        train_started, train_tokens = time.perf_counter(), 0
        policy.train()  # only for gradient checkpointing: dropout is disabled
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, device=device)
            for mb_start in range(0, B, B // cfg.mini_batches):
                mb_idx = order[mb_start:mb_start + B // cfg.mini_batches]
                for i in range(0, len(mb_idx), micro):
                    idx = mb_idx[i:i + micro]
                    # gradients are all-reduced once per minibatch, after its last micro-batch
                    sync = contextlib.nullcontext() if i + micro >= len(mb_idx) else accelerator.no_sync(policy)
                    with sync, accelerator.autocast():
                        new_lp, new_values, _ = response_forward(policy, qr[idx], attn[idx], P, cfg.temperature,
                                                                 with_values=True)
                        pg_loss, clipfrac, approx_kl = ppo_policy_loss(new_lp, logprobs[idx], advantages[idx],
                                                                       mask[idx], cfg.cliprange)
                        vf_loss, vf_clipfrac = ppo_value_loss(new_values, values[idx], returns[idx], mask[idx],
                                                              cfg.cliprange_value)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        accelerator.backward(loss)  # divides by --grad-accum (the Accelerator's setting)
                    for key, value in zip(stats, (pg_loss, vf_loss, clipfrac, vf_clipfrac, approx_kl)):
                        stats[key].append(float(value.detach()))
                    train_tokens += int(attn[idx].sum())
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
        train_seconds = time.perf_counter() - train_started

        # 4. β update from the KL measured on this batch (Ziegler et al. 2019, §2.2), the same on every process
        mean_kl = float(accelerator.reduce(kl.sum(1).mean(), reduction="mean"))
        kl_ctl.update(mean_kl, B * n_proc)
        step += 1

        # 5. metrics and monitors
        step_seconds = time.perf_counter() - started
        lengths = rmask.sum(1)
        token_lists = [r[:n - int(e)].tolist() for r, n, e in zip(responses, lengths.tolist(), has_eos.tolist())]
        diversity = diversity_metrics(token_lists)
        row = {
            "rm_score": float(rm_scores.mean()), "score": float(scores.mean()), "kl": mean_kl, "kl_coef": kl_coef,
            "non_score_reward": float(non_score_reward.sum(1).mean()),
            "total_reward": float(scores.mean()) + float(non_score_reward.sum(1).mean()),
            "entropy": float(masked_mean(entropy, mask)), "response_length": float(lengths.float().mean()),
            "eos_rate": float(has_eos.float().mean()), "distinct_1": diversity["distinct_1"],
            "distinct_2": diversity["distinct_2"], "identical_share": diversity["identical_share"],
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "value_mean": float(masked_mean(values, mask)), "lr": scheduler.get_last_lr()[0],
            "gen_seconds": gen_seconds, "rollout_seconds": rollout_seconds, "train_seconds": train_seconds,
            "step_seconds": step_seconds, "gen_share": gen_seconds / step_seconds,
            "rollouts_per_s": B / step_seconds, "train_tokens_per_s": train_tokens / max(train_seconds, 1e-9),
        }
        if check is not None and step % cfg.check_every == 0:
            row["check_score"] = sum(check(batch_convs, texts)) / B
        if accelerator.is_main_process:
            monitor.check(step, row)
            if step % cfg.log_every == 0 or step == total_steps:
                metrics.log(step, **row)
            if cfg.sample_every and (step == 1 or step % cfg.sample_every == 0 or step == total_steps):
                write_probe_samples(step)
        bar.set_postfix(score=f"{row['rm_score']:.3f}", kl=f"{mean_kl:.3f}", beta=f"{kl_coef:.3g}")
        bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and accelerator.is_main_process:
            save_checkpoint(out, step, accelerator.unwrap_model(policy), optimizer, scheduler,
                            {"kl_ctl": kl_ctl.state_dict(), "monitor": monitor.state_dict()})
    bar.close()
    metrics.close()
    if hasattr(check, "close"):
        check.close()

    # a checkpoint to continue from, the value head, then the merged policy and the curves
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        unwrapped = accelerator.unwrap_model(policy)
        save_checkpoint(out, step, unwrapped, optimizer, scheduler,
                        {"kl_ctl": kl_ctl.state_dict(), "monitor": monitor.state_dict()})
        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.v_head.state_dict().items()},
                  str(out / "value_head.safetensors"))
    result = finish(accelerator, accelerator.unwrap_model(policy).lm, tokenizer, cfg, PLOT_GROUPS)
    note(COMMAND, f"saved policy to {result}")
    return result
