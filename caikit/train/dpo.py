"""`caikit train dpo`: offline preference optimisation on (prompt, chosen, rejected) pairs.

The objective is looked up by name in OBJECTIVES (`--loss`): DPO (sigmoid), conservative DPO (cdpo) and
IPO train against a frozen reference; ORPO and SimPO need none. For the first three the reference
log-probs of every pair are computed once before training (`caikit.train.reference`), cached in
`out/ref_logps.safetensors`, and the reference model is freed, so training holds one model; the
reference-free objectives skip that pass entirely. Each step runs chosen and rejected through the policy
in one concatenated forward and calls the objective's loss in `losses.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from caikit.config import option
from caikit.errors import UserError
from caikit.train.config import CommonTrainConfig
from caikit.train.logprobs import PADDED, ForwardOptions
from caikit.train.losses import dpo_loss, ipo_loss, orpo_loss, simpo_loss

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
    from torch import Tensor

COMMAND = "train dpo"
PLOT_GROUPS = {"loss": ["loss", "eval_loss"], "reward_margin": ["reward_margin", "eval_reward_margin"],
               "reward_accuracy": ["reward_accuracy", "eval_reward_accuracy"],
               "rewards": ["chosen_reward", "rejected_reward"], "logps": ["chosen_logps", "rejected_logps"],
               "learning_rate": ["lr"], "grad_norm": ["grad_norm"]}


@dataclass(frozen=True)
class PairLogps:
    """A micro-batch of pairs as the objectives see it, each (B,): summed response log-probs under the
    policy and the reference (None for reference-free objectives), and response token counts |y|."""

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


@dataclass(frozen=True)
class Objective:
    """One row of the objective table: which inputs it needs, and its loss.

    loss(pairs, cfg, ε) -> (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), ε being the
    per-pair label smoothing (`smoothing`)."""

    uses_reference: bool  # reference log-probs are precomputed for these only
    uses_smoothing: bool  # reads ε from --label-smoothing / --use-soft-labels
    loss: Callable[[PairLogps, "DPOConfig", Tensor | float], tuple[Tensor, Tensor, Tensor]]


# name -> objective, one row each (STYLE.md #11); the functions and their equations live in losses.py
OBJECTIVES: dict[str, Objective] = {
    "sigmoid": Objective(True, True, lambda p, cfg, eps: dpo_loss(p.chosen, p.rejected, p.ref_chosen,
                                                                  p.ref_rejected, cfg.beta, eps)),
    "cdpo": Objective(True, True, lambda p, cfg, eps: dpo_loss(p.chosen, p.rejected, p.ref_chosen,
                                                               p.ref_rejected, cfg.beta, eps)),
    "ipo": Objective(True, False, lambda p, cfg, eps: ipo_loss(*ipo_logps(p, cfg.ipo_normalise), cfg.beta)),
    "orpo": Objective(False, False, lambda p, cfg, eps: orpo_loss(p.chosen / p.chosen_tokens,
                                                                  p.rejected / p.rejected_tokens, cfg.orpo_lambda)),
    "simpo": Objective(False, False, lambda p, cfg, eps: simpo_loss(p.chosen / p.chosen_tokens,
                                                                    p.rejected / p.rejected_tokens, cfg.beta,
                                                                    cfg.simpo_gamma)),
}


def ipo_logps(p: PairLogps, normalise: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """IPO's four log-probs: summed over the response tokens (`sum`, h as Azar et al. 2023 define it on sequence
    likelihoods) or divided by each response's token count first (`length`, as TRL's DPOTrainer does for IPO).
    The target margin 1/(2β) is then per sequence or per token: the same β means very different strengths."""
    if normalise == "length":
        return (p.chosen / p.chosen_tokens, p.rejected / p.rejected_tokens, p.ref_chosen / p.chosen_tokens,
                p.ref_rejected / p.rejected_tokens)
    return p.chosen, p.rejected, p.ref_chosen, p.ref_rejected


@dataclass
class DPOConfig(CommonTrainConfig):
    """Offline preference optimisation on preference pairs: DPO, cDPO, IPO (against a reference), ORPO, SimPO."""

    lr: float = option(1e-6, above=0, high=1, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")
    loss: str = option("sigmoid", help="objective: sigmoid (DPO, Rafailov et al. 2023) | cdpo (DPO with label "
                                       "smoothing, for soft AI labels) | ipo (Azar et al. 2023) | orpo (Hong et al. "
                                       "2024, no reference) | simpo (Meng et al. 2024, no reference)",
                       metadata={"choices": list(OBJECTIVES)})
    loss_type: str = option("", help="older name of --loss (sigmoid | ipo), kept so existing commands and configs run")
    beta: float = option(0.1, above=0, help="β: strength of the implicit KL penalty towards the reference (DPO, cDPO, IPO); "
                                   "the reward scale for SimPO (the paper uses 2-10)")
    label_smoothing: float = option(0.0, low=0, below=0.5, help="ε: assumed label-flip probability (conservative DPO); "
                                              "sigmoid / cdpo only")
    use_soft_labels: bool = option(False, help="per-pair ε = 1 - P(chosen preferred) from the judge where rows carry "
                                               "it (p_chosen); --label-smoothing elsewhere; sigmoid / cdpo only")
    on_conflict: str = option("human", help="a pair the --data sources label both ways: human (the person's choice "
                                            "wins where people agree, else the pair is dropped) | drop | keep; "
                                            "counted in data.json and metrics.jsonl",
                              metadata={"choices": ["human", "drop", "keep"]})
    ipo_normalise: str = option("sum", help="IPO's log-ratios: sum (over the response tokens, as in Azar et al. "
                                            "2023; the default) | length (divided by each response's token count "
                                            "first, as TRL's DPOTrainer does): the target margin 1/(2β) is then "
                                            "per token, so the same β pulls far harder",
                                metadata={"choices": ["sum", "length"]})
    simpo_gamma: float = option(0.5, low=0, help="γ: SimPO's target margin between the chosen and rejected rewards")
    orpo_lambda: float = option(0.1, low=0, help="λ: weight of ORPO's odds-ratio term beside the chosen response's NLL")
    ref_model: str = option("", help="reference model (default: --model, the policy at step 0); "
                                     "not used by orpo, simpo")

    def validate(self) -> None:
        super().validate()
        if self.loss_type:
            if self.loss_type not in OBJECTIVES:
                raise UserError(f"--loss-type must be one of {' | '.join(OBJECTIVES)}, got {self.loss_type!r}")
            if self.loss not in ("sigmoid", self.loss_type):
                raise UserError(f"--loss {self.loss} and --loss-type {self.loss_type} disagree: give --loss only")
            self.loss = self.loss_type
        self.loss_type = self.loss  # one name in the saved config.yaml
        objective = OBJECTIVES[self.loss]
        if self.beta <= 0:
            raise UserError("--beta must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise UserError("--label-smoothing must be in [0, 0.5)")
        if (self.label_smoothing or self.use_soft_labels) and not objective.uses_smoothing:
            raise UserError(f"--label-smoothing and --use-soft-labels apply to --loss sigmoid or cdpo, not {self.loss}")
        if self.loss == "cdpo" and not (self.label_smoothing or self.use_soft_labels):
            raise UserError("--loss cdpo needs --label-smoothing > 0 or --use-soft-labels")
        if self.ref_model and not objective.uses_reference:
            raise UserError(f"--ref-model is not used by --loss {self.loss} (it needs no reference model)")
        if self.orpo_lambda < 0:
            raise UserError("--orpo-lambda must be >= 0")
        if self.ipo_normalise not in ("sum", "length"):
            raise UserError(f"--ipo-normalise must be sum or length, got {self.ipo_normalise!r}")
        if self.ipo_normalise != "sum" and self.loss != "ipo":
            raise UserError(f"--ipo-normalise applies to --loss ipo, not {self.loss}")


def pair_logps(model, batch: dict, pad_token_id: int, ref: dict | None, split: str,
               how: ForwardOptions = PADDED) -> PairLogps:
    """Policy log-probs of a collated batch of pairs (one concatenated forward, run as `how` says), with their
    token counts and, when `ref` holds precomputed reference log-probs, the batch's rows of `<split>_chosen` /
    `<split>_rejected`."""
    from caikit.train.logprobs import concatenated_forward

    chosen, rejected = concatenated_forward(model, batch, pad_token_id, how=how)  # one forward, 2B rows
    ref_chosen = ref_rejected = None
    if ref is not None:
        idx = batch["index"].cpu()
        ref_chosen = ref[f"{split}_chosen"][idx].to(chosen.device)
        ref_rejected = ref[f"{split}_rejected"][idx].to(chosen.device)
    return PairLogps(chosen, rejected, batch["chosen_labels_mask"].sum(-1).clamp_min(1).to(chosen.dtype),
                     batch["rejected_labels_mask"].sum(-1).clamp_min(1).to(chosen.dtype), ref_chosen, ref_rejected)


def preference_reference(cfg: DPOConfig, accelerator, pad_token_id: int,
                         splits: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """{"<split>_chosen", "<split>_rejected": (N,)} summed reference log-probs, computed once and cached."""
    from caikit.train.batches import collate_preferences
    from caikit.train.logprobs import concatenated_forward
    from caikit.train.loop import to_device
    from caikit.train.reference import reference_logps

    def sequences(ref, micro: list[dict], how: ForwardOptions) -> dict[str, torch.Tensor]:
        chosen, rejected = concatenated_forward(ref, to_device(collate_preferences(micro, pad_token_id),
                                                               accelerator.device), pad_token_id, how=how)
        return {"chosen": chosen, "rejected": rejected}

    return reference_logps(cfg, accelerator, COMMAND, splits, ("chosen_input_ids", "chosen_labels_mask",
                                                               "rejected_input_ids", "rejected_labels_mask"), sequences)


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


def evaluate(model, examples: list[dict], ref: dict | None, cfg: DPOConfig, pad_token_id: int,
             device, how: ForwardOptions) -> dict[str, float]:
    """The objective's loss, implicit-reward margin and accuracy on the held-out pairs (example-weighted means)."""
    from caikit.train.batches import batches, collate_preferences
    from caikit.train.loop import to_device

    if not examples:
        return {}
    objective = OBJECTIVES[cfg.loss]
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for micro in batches(examples, cfg.batch_size, cfg.seed, 0, shuffle=False, group_by_length=cfg.group_by_length):
            b = to_device(collate_preferences(micro, pad_token_id), device)
            pairs = pair_logps(model, b, pad_token_id, ref, "eval", how)
            out = objective.loss(pairs, cfg, smoothing(b, cfg))
            for k, v in dpo_step_metrics(*out, pairs.chosen, pairs.rejected).items():
                sums[k] = sums.get(k, 0.0) + v * len(micro)
    model.train()
    return {f"eval_{k}": v / len(examples) for k, v in sums.items()}


def train(cfg: DPOConfig) -> str:
    from transformers import AutoModelForCausalLM

    from caikit.train.data import tokenize_preferences
    from caikit.train.batches import collate_preferences
    from caikit.train.loop import (load_pretrained, load_train_tokenizer, make_accelerator, micro_batches, note,
                                   read_training_data, to_device, tokenized_split)
    from caikit.train.session import start_session

    cfg.validate()  # also when called from Python rather than the CLI (resolves --loss-type into --loss)
    objective = OBJECTIVES[cfg.loss]
    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    # data: preference rows -> held-out split -> chosen / rejected token ids with the prompt masked
    triples, data_summary = read_training_data(COMMAND, cfg, "pairs")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, triples, tokenize_preferences, tokenizer, "pairs")

    # reference log-probs first, so only one model is ever resident during training; none for ORPO / SimPO
    ref = None
    if objective.uses_reference:
        ref = preference_reference(cfg, accelerator, pad_id, {"train": train_examples, "eval": eval_examples})

    model = load_pretrained(AutoModelForCausalLM, cfg.model, attn_implementation=cfg.attn_implementation or None)
    session = start_session(cfg, COMMAND, accelerator, model, "CAUSAL_LM", len(train_examples), cfg.loss,
                            data_summary)
    model, how = session.model, session.how
    if cfg.loss == "ipo":  # which IPO was trained travels with its curves (the same β means another margin)
        session.metrics.first_row["ipo_normalise"] = cfg.ipo_normalise
    stream = micro_batches(train_examples, cfg, lambda m: collate_preferences(m, pad_id), session.step,
                           accelerator.process_index, accelerator.num_processes)
    while session.step < session.total_steps:
        started, rows, tokens = time.perf_counter(), [], 0
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            with session.accumulate():
                pairs = pair_logps(model, batch, pad_id, ref, "train", how)
                losses, chosen_rewards, rejected_rewards = objective.loss(pairs, cfg, smoothing(batch, cfg))
                session.apply(losses.mean())
            # metrics over the global batch: every process's pairs (accelerate's gather; itself with one process)
            everyone = [accelerator.gather(t.detach()) for t in (losses, chosen_rewards, rejected_rewards, pairs.chosen,
                                                                 pairs.rejected)]
            rows.append(dpo_step_metrics(*everyone))
            tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
        row = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        session.end_step(row, tokens, started,
                         lambda: evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device, how),
                         postfix={"loss": f"{row['loss']:.4f}", "margin": f"{row['reward_margin']:.3f}"})

    final_eval = evaluate(model, eval_examples, ref, cfg, pad_id, accelerator.device, how)
    if final_eval:
        note(COMMAND, f"held-out reward margin {final_eval['eval_reward_margin']:.4f}, accuracy "
                      f"{final_eval['eval_reward_accuracy']:.3f} on {len(eval_examples)} pairs")
    out = session.finish(tokenizer, PLOT_GROUPS, final_eval)
    note(COMMAND, f"saved model to {out}")
    return out
