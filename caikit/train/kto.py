"""`caikit train kto`: Kahneman-Tversky optimisation on unpaired desirable / undesirable examples.

KTO (Ethayarajh et al. 2024) learns from single thumbs-up / thumbs-down labels, which paired losses
cannot use: rows `{"prompt", "completion", "label": true/false}`, preference pairs (split into one
desirable and one undesirable example) and `caikit label` rows all work (`data.unpaired_examples`).

Each example also carries a fixed mismatched sequence (its prompt followed by another example's
completion); the policy's and reference's log-probs of those give the batch's KL estimate, the
reference point z_ref. Reference log-probs of both are computed once before training
(`caikit.train.reference`) and the reference model is freed, as for DPO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from caikit.config import option
from caikit.errors import UserError
from caikit.train.config import CommonTrainConfig
from caikit.train.logprobs import ForwardOptions

COMMAND = "train kto"
PLOT_GROUPS = {"loss": ["loss", "eval_loss"], "rewards": ["reward_desirable", "reward_undesirable"],
               "reward_margin": ["reward_margin", "eval_reward_margin"], "kl": ["kl", "eval_kl"],
               "logps": ["logps_desirable", "logps_undesirable"], "learning_rate": ["lr"], "grad_norm": ["grad_norm"]}


@dataclass
class KTOConfig(CommonTrainConfig):
    """Kahneman-Tversky optimisation on unpaired desirable / undesirable examples (thumbs-style labels)."""

    data: str = option("", help="unpaired rows (prompt, completion, label: true/false), preference pairs (prompt, "
                                "chosen, rejected) or `caikit label` rows: a run dir, JSONL, parquet or datasets dir")
    beta: float = option(0.1, above=0, help="β: strength of the implicit KL penalty towards the reference")
    lambda_d: float = option(1.0, above=0, help="λ_D: weight of desirable examples (with imbalanced data keep λ_D·n_D / "
                                       "(λ_U·n_U) in [1, 4/3], Ethayarajh et al. 2024)")
    lambda_u: float = option(1.0, above=0, help="λ_U: weight of undesirable examples")
    ref_model: str = option("", help="reference model (default: --model, the policy at step 0)")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise UserError("--beta must be > 0")
        if self.lambda_d <= 0 or self.lambda_u <= 0:
            raise UserError("--lambda-d and --lambda-u must be > 0")


def kto_sums(losses, rewards, logps, desirable, z_ref) -> dict[str, float]:
    """Sums and counts of one micro-batch's metrics; `kto_means` turns sums over many into a metrics row."""
    d = desirable.float()
    return {"n": float(len(losses)), "loss": float(losses.detach().sum()), "kl": float(z_ref) * len(losses),
            "n_desirable": float(d.sum()), "n_undesirable": float((1 - d).sum()),
            "reward_desirable": float((rewards * d).sum()), "reward_undesirable": float((rewards * (1 - d)).sum()),
            "logps_desirable": float((logps.detach() * d).sum()),
            "logps_undesirable": float((logps.detach() * (1 - d)).sum())}


def kto_means(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Means per example (loss, kl) and per kind (rewards, log-probs); a kind absent from the batch is left out."""
    row = {"loss": sums["loss"] / sums["n"], "kl": sums["kl"] / sums["n"]}
    for kind in ("desirable", "undesirable"):
        if sums[f"n_{kind}"]:
            row[f"reward_{kind}"] = sums[f"reward_{kind}"] / sums[f"n_{kind}"]
            row[f"logps_{kind}"] = sums[f"logps_{kind}"] / sums[f"n_{kind}"]
    if "reward_desirable" in row and "reward_undesirable" in row:
        row["reward_margin"] = row["reward_desirable"] - row["reward_undesirable"]
    return {prefix + k: v for k, v in row.items()}


def add_sums(total: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    return {k: total.get(k, 0.0) + v for k, v in part.items()}


def kto_step(model, batch: dict, ref: dict, split: str, cfg: KTOConfig, how: ForwardOptions,
             gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
    """Policy log-probs of a collated batch (forwards run as `how` says), the reference point and the KTO losses.

    `gather`: every process's rows of a (B,) tensor (accelerate's gather), so that z_ref is the estimate over the
    global batch, as TRL's KTOTrainer gathers it: one process's few mismatched pairs give a noisier z_ref, and
    each process would then train against a different reference point.
    Returns (losses (B,), rewards (B,), policy_logps (B,), z_ref scalar)."""
    from caikit.train.logprobs import sequence_logps
    from caikit.train.losses import kto_loss, kto_reference_point

    idx = batch["index"].cpu()
    device = batch["input_ids"].device
    policy_logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels_mask"], how=how)
    with torch.no_grad():  # z_ref carries no gradient (Ethayarajh et al. 2024, §4.1)
        policy_kl = sequence_logps(model, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels_mask"],
                                   how=how)
    z_ref = kto_reference_point(gather(policy_kl), gather(ref[f"{split}_kl"][idx].to(device)))
    losses, rewards = kto_loss(policy_logps, ref[f"{split}_completion"][idx].to(device), batch["label"], z_ref,
                               cfg.beta, cfg.lambda_d, cfg.lambda_u)
    return losses, rewards, policy_logps, z_ref


def unpaired_reference(cfg: KTOConfig, accelerator, pad_token_id: int,
                       splits: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """{"<split>_completion", "<split>_kl": (N,)} summed reference log-probs, computed once and cached."""
    from caikit.train.batches import collate_unpaired
    from caikit.train.logprobs import sequence_logps
    from caikit.train.loop import to_device
    from caikit.train.reference import reference_logps

    def sequences(ref, micro: list[dict], how: ForwardOptions) -> dict[str, torch.Tensor]:
        b = to_device(collate_unpaired(micro, pad_token_id), accelerator.device)
        return {"completion": sequence_logps(ref, b["input_ids"], b["attention_mask"], b["labels_mask"], how=how),
                "kl": sequence_logps(ref, b["kl_input_ids"], b["kl_attention_mask"], b["kl_labels_mask"], how=how)}

    return reference_logps(cfg, accelerator, COMMAND, splits,
                           ("input_ids", "labels_mask", "kl_input_ids", "kl_labels_mask"), sequences)


def evaluate(model, examples: list[dict], ref: dict, cfg: KTOConfig, pad_token_id: int, device,
             how: ForwardOptions) -> dict[str, float]:
    """KTO loss, implicit rewards of each kind and their margin on the held-out examples."""
    from caikit.train.batches import batches, collate_unpaired
    from caikit.train.loop import to_device

    if not examples:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for micro in batches(examples, cfg.batch_size, cfg.seed, 0, shuffle=False):
            b = to_device(collate_unpaired(micro, pad_token_id), device)
            losses, rewards, logps, z_ref = kto_step(model, b, ref, "eval", cfg, how)
            sums = add_sums(sums, kto_sums(losses, rewards, logps, b["label"], z_ref))
    model.train()
    return kto_means(sums, "eval_")


def train(cfg: KTOConfig) -> str:
    from transformers import AutoModelForCausalLM

    from caikit.train.data import data_sources, load_rows, tokenize_unpaired, unpaired_examples
    from caikit.train.batches import collate_unpaired
    from caikit.train.loop import (load_pretrained, load_train_tokenizer, make_accelerator, micro_batches, note,
                                   to_device, tokenized_split)
    from caikit.train.session import start_session

    cfg.validate()
    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    # data: rows of any of the three layouts -> (prompt, completion, desirable?) -> held-out split -> token ids
    sources = data_sources(cfg)
    rows = [row for path in sources for row in load_rows(path, "preference", getattr(cfg, "split", "") or None)]
    items, dropped = unpaired_examples(rows, ", ".join(sources))
    n_desirable = sum(item["label"] for item in items)
    note(COMMAND, f"{n_desirable} desirable, {len(items) - n_desirable} undesirable examples"
                  + "".join(f"; {n} {kind} labels dropped" for kind, n in dropped.items() if n))
    if not n_desirable or n_desirable == len(items):
        note(COMMAND, "only one kind of example: KTO still trains, but the desirable / undesirable contrast is missing")
    elif not 1.0 <= cfg.lambda_d * n_desirable / (cfg.lambda_u * (len(items) - n_desirable)) <= 4 / 3:
        note(COMMAND, "λ_D·n_D / (λ_U·n_U) is outside [1, 4/3], the range Ethayarajh et al. 2024 advise; "
                      "see --lambda-d / --lambda-u")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, items, tokenize_unpaired, tokenizer, "examples")

    # reference log-probs first (of each example and of its mismatched KL sequence), then only the policy
    ref = unpaired_reference(cfg, accelerator, pad_id, {"train": train_examples, "eval": eval_examples})

    model = load_pretrained(AutoModelForCausalLM, cfg.model, attn_implementation=cfg.attn_implementation or None)
    session = start_session(cfg, COMMAND, accelerator, model, "CAUSAL_LM", len(train_examples), "kto")
    model, how = session.model, session.how
    stream = micro_batches(train_examples, cfg, lambda m: collate_unpaired(m, pad_id), session.step,
                           accelerator.process_index, accelerator.num_processes)
    while session.step < session.total_steps:
        started, sums, tokens = time.perf_counter(), {}, 0
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            with session.accumulate():
                losses, rewards, logps, z_ref = kto_step(model, batch, ref, "train", cfg, how, accelerator.gather)
                session.apply(losses.mean())
            # metrics over the global batch: every process's examples (accelerate's gather; itself with one process)
            everyone = [accelerator.gather(t.detach()) for t in (losses, rewards, logps, batch["label"].float())]
            sums = add_sums(sums, kto_sums(*everyone, accelerator.reduce(z_ref, "mean")))
            tokens += int(batch["attention_mask"].sum() + batch["kl_attention_mask"].sum())
        row = kto_means(sums)
        session.end_step(row, tokens, started,
                         lambda: evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device, how),
                         postfix={"loss": f"{row['loss']:.4f}", "kl": f"{row['kl']:.3f}"})

    final_eval = evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device, how)
    if "eval_reward_margin" in final_eval:
        note(COMMAND, f"held-out reward margin (desirable - undesirable) {final_eval['eval_reward_margin']:.4f} "
                      f"on {len(eval_examples)} examples")
    out = session.finish(tokenizer, PLOT_GROUPS, final_eval)
    note(COMMAND, f"saved model to {out}")
    return out
