"""`caikit train sft`: supervised fine-tuning on (prompt, response) rows; the loss counts response tokens only.

Writes to --out: metrics.jsonl (one row per step), plots/*.png, checkpoint/ (for --resume), and the final
model (safetensors + tokenizer + config.yaml), loadable with `AutoModelForCausalLM.from_pretrained(out)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from caikit.config import option
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
    from transformers import AutoModelForCausalLM

    from caikit.train.data import tokenize_sft
    from caikit.train.batches import collate_sft
    from caikit.train.logprobs import token_logps
    from caikit.train.losses import sft_loss_from_logps
    from caikit.train.loop import (load_pretrained, load_train_tokenizer, make_accelerator, micro_batches, note,
                                   read_training_data, to_device, tokenized_split)
    from caikit.train.session import start_session

    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    # data: rows -> (prompt, response) -> held-out split -> token ids with the prompt masked
    pairs, data_summary = read_training_data(COMMAND, cfg, "examples")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, pairs, tokenize_sft, tokenizer, "examples")

    model = load_pretrained(AutoModelForCausalLM, cfg.model, attn_implementation=cfg.attn_implementation or None)
    session = start_session(cfg, COMMAND, accelerator, model, "CAUSAL_LM", len(train_examples), "sft", data_summary)
    model, how = session.model, session.how
    stream = micro_batches(train_examples, cfg, lambda m: collate_sft(m, pad_id), session.step,
                           accelerator.process_index, accelerator.num_processes)
    while session.step < session.total_steps:
        started, step_losses, tokens = time.perf_counter(), [], 0
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            with session.accumulate():
                # the output layer runs on response positions only, in chunks: no (B, T, V) logits are kept
                logps = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels_mask"], how=how)
                loss = sft_loss_from_logps(logps, batch["labels_mask"])
                session.apply(loss)
            step_losses.append(accelerator.reduce(loss.detach(), "mean").item())  # over every process's batch
            tokens += int(batch["attention_mask"].sum())
        row = {"loss": sum(step_losses) / len(step_losses)}
        session.end_step(row, tokens, started, lambda: evaluate(model, eval_examples, cfg, pad_id, accelerator.device,
                                                                how),
                         postfix={"loss": f"{row['loss']:.4f}"})

    # held-out evaluation, a checkpoint to continue from, then the merged model and curves
    final_eval = evaluate(model, eval_examples, cfg, pad_id, accelerator.device, how)
    if final_eval:
        note(COMMAND, f"held-out loss {final_eval['eval_loss']:.4f} on {len(eval_examples)} examples")
    out = session.finish(tokenizer, PLOT_GROUPS, final_eval)
    note(COMMAND, f"saved model to {out}")
    return out
