"""`caikit train sft`: supervised fine-tuning on (prompt, response) rows; the loss counts response tokens only.

Writes to --out: metrics.jsonl (one row per step), plots/*.png, checkpoint/ (for --resume), and the final
model (safetensors + tokenizer + config.yaml), loadable with `AutoModelForCausalLM.from_pretrained(out)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from caikit.config import option, save_config
from caikit.train.config import CommonTrainConfig

COMMAND = "train sft"
PLOT_GROUPS = {"loss": ["loss", "eval_loss"], "learning_rate": ["lr"], "grad_norm": ["grad_norm"],
               "tokens_per_s": ["tokens_per_s"]}


@dataclass
class SFTConfig(CommonTrainConfig):
    """Supervised fine-tuning (SL-CAI): imitate the final revisions."""

    lr: float = option(2e-5, above=0, high=1, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")


def evaluate(model, examples: list[dict], cfg, pad_token_id: int, device, how) -> dict[str, float]:
    """Token-weighted mean response NLL on held-out examples, and its perplexity (forwards run as `how` says)."""
    from caikit.train.batches import batches, collate_sft
    from caikit.train.logprobs import token_logps
    from caikit.train.loop import to_device

    if not examples:
        return {}
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for micro in batches(examples, cfg.batch_size, cfg.seed, 0, shuffle=False, group_by_length=cfg.group_by_length):
            b = to_device(collate_sft(micro, pad_token_id), device)
            logps = token_logps(model, b["input_ids"], b["attention_mask"], b["labels_mask"], how=how)
            mask = b["labels_mask"].clone()
            mask[:, 0] = 0  # nothing predicts the first token (same convention as losses.sft_loss)
            total_nll -= float((logps * mask).sum())
            total_tokens += int(mask.sum())
    model.train()
    loss = total_nll / max(total_tokens, 1)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}


def train(cfg: SFTConfig) -> str:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from caikit.train.checkpoint import save_checkpoint
    from caikit.train.data import tokenize_sft
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import token_logps
    from caikit.train.losses import sft_loss_from_logps
    from caikit.train.loop import (count_steps, finish, forward_options, load_pretrained, load_train_tokenizer,
                                   make_accelerator, make_optimizer, make_scheduler, micro_batches, note,
                                   prepare_model, read_training_data, record_data, resume_or_start, to_device,
                                   tokenized_split)
    from caikit.metrics import MetricsLogger

    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)

    # data: rows -> (prompt, response) -> held-out split -> token ids with the prompt masked
    pairs, data_summary = read_training_data(COMMAND, cfg, "examples")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, pairs, tokenize_sft, tokenizer, "examples")

    model = load_pretrained(AutoModelForCausalLM, cfg.model, attn_implementation=cfg.attn_implementation or None)
    model = prepare_model(model, cfg, "CAUSAL_LM")
    optimizer = make_optimizer(model, cfg)
    total_steps = count_steps(cfg, len(train_examples), accelerator.num_processes)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    step, _ = resume_or_start(cfg, COMMAND, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    how = forward_options(cfg, model, COMMAND, accelerator)
    save_config(cfg, f"{cfg.out}/config.yaml")
    metrics = MetricsLogger(cfg.out, resume=step > 0, writes=accelerator.is_main_process)
    record_data(cfg, data_summary, metrics, step)

    stream = micro_batches(train_examples, cfg, lambda m: collate_sft(m, tokenizer.pad_token_id), step,
                           accelerator.process_index, accelerator.num_processes)
    bar = tqdm(total=total_steps, initial=step, desc="sft", unit="step", disable=not accelerator.is_local_main_process)
    model.train()
    while step < total_steps:
        started, step_losses, tokens, grad_norm = time.perf_counter(), [], 0, None
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            with accelerator.accumulate(model), accelerator.autocast():
                # the output layer runs on response positions only, in chunks: no (B, T, V) logits are kept
                logps = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels_mask"], how=how)
                loss = sft_loss_from_logps(logps, batch["labels_mask"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(accelerator.reduce(loss.detach(), "mean").item())  # over every process's batch
            tokens += int(batch["attention_mask"].sum())
        scheduler.step()
        step += 1

        row = {"loss": sum(step_losses) / len(step_losses), "lr": scheduler.get_last_lr()[0],
               "tokens_per_s": tokens / (time.perf_counter() - started)}
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            row.update(evaluate(model, eval_examples, cfg, tokenizer.pad_token_id, accelerator.device, how))
        if step % cfg.log_every == 0 or step == total_steps:
            metrics.log(step, **row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and accelerator.is_main_process:
            save_checkpoint(cfg.out, step, accelerator.unwrap_model(model), optimizer, scheduler)
    bar.close()

    # held-out evaluation, a checkpoint to continue from, then the merged model and curves
    final_eval = evaluate(model, eval_examples, cfg, tokenizer.pad_token_id, accelerator.device, how)
    if final_eval:
        metrics.log(step, **final_eval)
        note(COMMAND, f"held-out loss {final_eval['eval_loss']:.4f} on {len(eval_examples)} examples")
    metrics.close()
    if accelerator.is_main_process:
        save_checkpoint(cfg.out, step, accelerator.unwrap_model(model), optimizer, scheduler)
    out = finish(accelerator, model, tokenizer, cfg, PLOT_GROUPS)
    note(COMMAND, f"saved model to {out}")
    return out
