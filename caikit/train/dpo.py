"""`caikit train dpo`: direct preference optimisation against a frozen reference.

The reference log-probs of every pair are computed once before training (one no-grad pass), cached in
`out/ref_logps.safetensors` under a hash of the reference model and the token ids, and the reference
model is freed, so training holds one model. Each step runs chosen and rejected through the policy in
one concatenated forward and calls `losses.dpo_loss`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from caikit.config import option, save_config
from caikit.errors import UserError
from caikit.train.config import CommonTrainConfig

COMMAND = "train dpo"
REF_CACHE = "ref_logps.safetensors"
PLOT_GROUPS = {"loss": ["loss", "eval_loss"], "reward_margin": ["reward_margin", "eval_reward_margin"],
               "reward_accuracy": ["reward_accuracy", "eval_reward_accuracy"],
               "rewards": ["chosen_reward", "rejected_reward"], "logps": ["chosen_logps", "rejected_logps"],
               "learning_rate": ["lr"], "grad_norm": ["grad_norm"]}


@dataclass
class DPOConfig(CommonTrainConfig):
    """Direct preference optimisation on preference pairs."""

    lr: float = option(1e-6, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")
    beta: float = option(0.1, help="β: strength of the implicit KL penalty towards the reference")
    loss_type: str = option("sigmoid", help="sigmoid (DPO, Rafailov et al. 2023) | ipo (Azar et al. 2023)",
                            metadata={"choices": ["sigmoid", "ipo"]})
    label_smoothing: float = option(0.0, help="ε: assumed label-flip probability (conservative DPO); sigmoid loss only")
    use_soft_labels: bool = option(False, help="per-pair ε = 1 - P(chosen preferred) from the judge where rows carry "
                                               "it (p_chosen); --label-smoothing elsewhere")
    ref_model: str = option("", help="reference model (default: --model, the policy at step 0)")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise UserError("--beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise UserError("--label-smoothing must be in [0, 0.5)")


def data_hash(model_name: str, splits: dict[str, list[dict]]) -> str:
    """Key of the reference cache: reference model path + every token id and mask of every split."""
    from caikit.models import resolve_model_path

    h = hashlib.sha256(resolve_model_path(model_name).encode())
    for name, examples in splits.items():
        h.update(name.encode())
        for e in examples:
            h.update(json.dumps([e["chosen_input_ids"], e["chosen_labels_mask"], e["rejected_input_ids"],
                                 e["rejected_labels_mask"]]).encode())
    return h.hexdigest()[:32]


def reference_logps(cfg: DPOConfig, accelerator, pad_token_id: int,
                    splits: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """{"<split>_chosen": (N,), "<split>_rejected": (N,)} summed reference log-probs, indexed by example index."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from caikit.train.data import batches, collate_preferences
    from caikit.train.logprobs import concatenated_forward
    from caikit.train.loop import load_pretrained, note, to_device

    ref_name = cfg.ref_model or cfg.model
    key = data_hash(ref_name, splits)
    path = Path(cfg.out) / REF_CACHE
    if accelerator.is_main_process and not _cache_matches(path, key):
        started = time.perf_counter()
        kwargs = {"dtype": torch.bfloat16} if cfg.bf16 else {}
        ref = load_pretrained(AutoModelForCausalLM, ref_name, **kwargs).to(accelerator.device).eval()
        tensors = {}
        with torch.no_grad():
            for name, examples in splits.items():
                chosen, rejected = torch.zeros(len(examples)), torch.zeros(len(examples))
                for micro in batches(examples, cfg.batch_size * 2, cfg.seed, 0, shuffle=False):
                    b = to_device(collate_preferences(micro, pad_token_id), accelerator.device)
                    c, r = concatenated_forward(ref, b, pad_token_id)
                    chosen[b["index"].cpu()], rejected[b["index"].cpu()] = c.float().cpu(), r.float().cpu()
                tensors[f"{name}_chosen"], tensors[f"{name}_rejected"] = chosen, rejected
        # the reference is only needed for these numbers: free it before the policy trains
        del ref
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"data_hash": key, "ref_model": ref_name})
        note(COMMAND, f"reference log-probs for {sum(len(e) for e in splits.values())} pairs in "
                      f"{time.perf_counter() - started:.1f}s -> {path}")
    accelerator.wait_for_everyone()
    return load_file(str(path))


def _cache_matches(path: Path, key: str) -> bool:
    from safetensors import safe_open

    if not path.exists():
        return False
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("data_hash") == key


def smoothing(batch: dict, cfg: DPOConfig) -> torch.Tensor | float:
    """ε per pair: 1 - p_chosen where the judge gave one (with --use-soft-labels), else --label-smoothing."""
    if not cfg.use_soft_labels:
        return cfg.label_smoothing
    p = batch["p_chosen"]
    return torch.where(torch.isnan(p), torch.full_like(p, cfg.label_smoothing), (1.0 - p).clamp(0.0, 1.0))


def dpo_step_metrics(losses, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict[str, float]:
    return {"loss": float(losses.mean()), "chosen_reward": float(chosen_rewards.mean()),
            "rejected_reward": float(rejected_rewards.mean()),
            "reward_margin": float((chosen_rewards - rejected_rewards).mean()),
            "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
            "chosen_logps": float(chosen_logps.detach().mean()), "rejected_logps": float(rejected_logps.detach().mean())}


def evaluate(model, examples: list[dict], ref: dict, cfg: DPOConfig, pad_token_id: int, device) -> dict[str, float]:
    """DPO loss, implicit-reward margin and accuracy on the held-out pairs (example-weighted means)."""
    from caikit.train.data import batches, collate_preferences
    from caikit.train.logprobs import concatenated_forward
    from caikit.train.losses import dpo_loss
    from caikit.train.loop import to_device

    if not examples:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for micro in batches(examples, cfg.batch_size, cfg.seed, 0, shuffle=False):
            b = to_device(collate_preferences(micro, pad_token_id), device)
            chosen, rejected = concatenated_forward(model, b, pad_token_id)
            idx = b["index"].cpu()
            out = dpo_loss(chosen, rejected, ref["eval_chosen"][idx].to(device), ref["eval_rejected"][idx].to(device),
                           cfg.beta, smoothing(b, cfg), cfg.loss_type)
            for k, v in dpo_step_metrics(*out, chosen, rejected).items():
                sums[k] = sums.get(k, 0.0) + v * len(micro)
    model.train()
    return {f"eval_{k}": v / len(examples) for k, v in sums.items()}


def train(cfg: DPOConfig) -> str:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from caikit.train.checkpoint import save_checkpoint
    from caikit.train.data import collate_preferences, tokenize_preferences
    from caikit.train.logprobs import concatenated_forward
    from caikit.train.losses import dpo_loss
    from caikit.train.loop import (count_steps, finish, load_pretrained, load_train_tokenizer, make_accelerator,
                                   make_optimizer, make_scheduler, micro_batches, note, prepare_model,
                                   read_training_data, record_data, resume_or_start, to_device,
                                   tokenized_split)
    from caikit.metrics import MetricsLogger

    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    # data: preference rows -> held-out split -> chosen / rejected token ids with the prompt masked
    triples, data_summary = read_training_data(COMMAND, cfg, "pairs")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, triples, tokenize_preferences, tokenizer, "pairs")

    # reference log-probs first, so only one model is ever resident during training
    ref = reference_logps(cfg, accelerator, pad_id, {"train": train_examples, "eval": eval_examples})

    model = load_pretrained(AutoModelForCausalLM, cfg.model)
    model = prepare_model(model, cfg, "CAUSAL_LM")
    optimizer = make_optimizer(model, cfg)
    total_steps = count_steps(cfg, len(train_examples), accelerator.num_processes)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    step, _ = resume_or_start(cfg, COMMAND, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    save_config(cfg, f"{cfg.out}/config.yaml")
    metrics = MetricsLogger(cfg.out, resume=step > 0)
    record_data(cfg, data_summary, metrics, step)

    stream = micro_batches(train_examples, cfg, lambda m: collate_preferences(m, pad_id), step,
                           accelerator.process_index, accelerator.num_processes)
    bar = tqdm(total=total_steps, initial=step, desc="dpo", unit="step", disable=not accelerator.is_local_main_process)
    model.train()
    while step < total_steps:
        started, rows, tokens, grad_norm = time.perf_counter(), [], 0, None
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            idx = batch["index"].cpu()
            ref_chosen = ref["train_chosen"][idx].to(accelerator.device)
            ref_rejected = ref["train_rejected"][idx].to(accelerator.device)
            with accelerator.accumulate(model):
                chosen_logps, rejected_logps = concatenated_forward(model, batch, pad_id)  # one forward, 2B rows
                losses, chosen_rewards, rejected_rewards = dpo_loss(
                    chosen_logps, rejected_logps, ref_chosen, ref_rejected, cfg.beta, smoothing(batch, cfg), cfg.loss_type)
                accelerator.backward(losses.mean())
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            rows.append(dpo_step_metrics(losses.detach(), chosen_rewards, rejected_rewards, chosen_logps, rejected_logps))
            tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
        scheduler.step()
        step += 1

        row = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        row.update(lr=scheduler.get_last_lr()[0], tokens_per_s=tokens / (time.perf_counter() - started))
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            row.update(evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device))
        if step % cfg.log_every == 0 or step == total_steps:
            metrics.log(step, **row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", margin=f"{row['reward_margin']:.3f}",
                        tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and accelerator.is_main_process:
            save_checkpoint(cfg.out, step, accelerator.unwrap_model(model), optimizer, scheduler)
    bar.close()

    final_eval = evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device)
    if final_eval:
        metrics.log(step, **final_eval)
        note(COMMAND, f"held-out reward margin {final_eval['eval_reward_margin']:.4f}, accuracy "
                      f"{final_eval['eval_reward_accuracy']:.3f} on {len(eval_examples)} pairs")
    metrics.close()
    if accelerator.is_main_process:
        save_checkpoint(cfg.out, step, accelerator.unwrap_model(model), optimizer, scheduler, final_eval)
    out = finish(accelerator, model, tokenizer, cfg, PLOT_GROUPS)
    note(COMMAND, f"saved model to {out}")
    return out
