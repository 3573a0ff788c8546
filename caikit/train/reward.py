"""`caikit train reward`: a Bradley-Terry reward model; `caikit score`: its 0-1 scores for responses.

The model is the causal LM backbone with a scalar head (`AutoModelForSequenceClassification`,
num_labels=1); the score is read at the last non-pad token, the EOS that ends every response, so the
pad token must differ from EOS (`caikit.models.load_tokenizer` sees to that). Soft labels
(P(chosen preferred) from the judge) and margins are used when the rows carry them.

`--freeze-backbone` trains only the scalar head on the frozen backbone's features instead (a linear probe,
minutes on CPU: `caikit.train.reward_probe`); it saves the same kind of directory. Either way the held-out
accuracy is written with its 95 % interval beside the length-only baseline on the same pairs, and a verdict in
plain words, to metrics.jsonl and eval.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from caikit.config import option
from caikit.errors import UserError
from caikit.train.config import CommonTrainConfig
from caikit.train.heldout import heldout_summary, write_summary

COMMAND = "train reward"
PROBE_LAYER = 4  # of SmolLM2's 30 blocks: cross-validates as well as any block up to 12, at a seventh of the cost
PLOT_GROUPS = {"loss": ["loss", "eval_loss"], "accuracy": ["accuracy", "eval_accuracy"],
               "score_margin": ["score_margin", "eval_score_margin"], "learning_rate": ["lr"],
               "grad_norm": ["grad_norm"]}


@dataclass
class RewardConfig(CommonTrainConfig):
    """Reward model on preference pairs (RLAIF)."""

    lr: float = option(1e-5, above=0, high=1, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")
    use_soft_labels: bool = option(True, help="train on the judge's P(chosen preferred) where rows carry one "
                                              "(p_chosen); hard labels otherwise")
    use_margin: bool = option(False, help="subtract each row's `margin` from the score difference (Llama 2 margin loss)")
    freeze_backbone: bool = option(False, help="train only the scalar head on the frozen backbone's last-token "
                                               "features (a linear probe: minutes on CPU, features cached); "
                                               "sequences keep their last --max-length tokens")
    probe_layer: int = option(PROBE_LAYER, low=0, high=1000,
                              help="with --freeze-backbone: read features after this many blocks (the saved model is "
                                   "cut there, which also makes it cheaper); 0 = all blocks")
    probe_l2: float = option(0.0, low=0, help="with --freeze-backbone: L2 penalty on the head; 0 picks it by 5-fold "
                                              "cross-validation on the training pairs")

    def validate(self) -> None:
        super().validate()
        if self.freeze_backbone:
            unused = [flag for flag, on in (("--lora", self.lora), ("--resume", self.resume),
                                            ("--gradient-checkpointing", self.gradient_checkpointing),
                                            ("--bf16", self.bf16)) if on]
            if unused:
                raise UserError(f"--freeze-backbone trains only a head on cached features: drop {unused[0]}")


@dataclass
class ScoreConfig:
    """Score responses with a trained reward model."""

    model: str = option("", help="reward model directory written by `caikit train reward`")
    input: str = option("", help="rows to score, in any format `train` reads: `prompt` (text, hh-style text or "
                                 "messages) with `response` or `completion` (text or the assistant's messages), or "
                                 "`messages` ending with the assistant reply")
    split: str = option("", help="split to read from a `datasets` DatasetDict --input (default: train)")
    prompt: str = option("", help="a single prompt (with --response)")
    response: list[str] = option([], help="one or more responses to --prompt")
    batch_size: int = option(8, low=1, high=65_536, help="sequences per forward pass")
    max_length: int = option(1024, low=8, high=1_000_000, help="max tokens per sequence (prompt left-truncated)")
    device: str = option("", help="cpu | cuda | cuda:1 (default: cuda if available)")

    def validate(self) -> None:
        if not self.model:
            raise UserError("--model is required (a directory written by `caikit train reward`)")
        if not self.input and not (self.prompt and self.response):
            raise UserError("give --input FILE, or --prompt TEXT with --response TEXT [TEXT ...]")


def score_head(model) -> torch.nn.Module | None:
    """The scalar head (`score`) of a sequence-classification model, under any wrappers; None if it has none."""
    from caikit.train.logprobs import bare_model

    return getattr(bare_model(model), "score", None)


def pair_scores(model, batch: dict, pad_token_id: int, packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over chosen+rejected: (chosen_scores (B,), rejected_scores (B,)) raw rewards.

    packed: run the 2B sequences as packed rows and read the head at each sequence's last token (the EOS the
    padded path reads too), where the model has a `score` head; the padded forward otherwise."""
    from caikit.train.logprobs import concatenate_pairs, final_hidden
    from caikit.train.packing import pack, row_width

    both = concatenate_pairs(batch, pad_token_id)
    head = score_head(model) if packed else None
    if head is not None:
        rows = pack(both["input_ids"], both["attention_mask"], row_width(model, both["input_ids"].size(1)))
        hidden = final_hidden(model, rows.input_ids, None, rows.position_ids)  # (R, W, H)
        scores = head(hidden.flatten(0, 1)[rows.ends]).squeeze(-1).float()  # (2B,)
    else:
        scores = model(input_ids=both["input_ids"], attention_mask=both["attention_mask"], use_cache=False).logits
        scores = scores.squeeze(-1).float()  # (2B,)
    B = batch["chosen_input_ids"].size(0)
    return scores[:B], scores[B:]


def soft_labels_and_margin(batch: dict, cfg: RewardConfig) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    p = batch["p_chosen"]
    soft = torch.where(torch.isnan(p), torch.ones_like(p), p) if cfg.use_soft_labels and not torch.isnan(p).all() else None
    margin = batch["margin"] if cfg.use_margin else None
    return soft, margin


def evaluate(model, examples: list[dict], cfg: RewardConfig, pad_token_id: int, device,
             packed: bool) -> dict[str, float]:
    """Held-out pairwise accuracy (chosen scored above rejected), mean loss and mean score gap."""
    from caikit.train.batches import batches, collate_preferences
    from caikit.train.losses import bradley_terry_loss
    from caikit.train.loop import to_device

    if not examples:
        return {}
    model.eval()
    correct, loss_sum, gap_sum = 0.0, 0.0, 0.0
    with torch.no_grad():
        for micro in batches(examples, cfg.batch_size, cfg.seed, 0, shuffle=False, group_by_length=cfg.group_by_length):
            b = to_device(collate_preferences(micro, pad_token_id), device)
            chosen, rejected = pair_scores(model, b, pad_token_id, packed)
            soft, margin = soft_labels_and_margin(b, cfg)
            loss_sum += float(bradley_terry_loss(chosen, rejected, margin, soft).sum())
            correct += float((chosen > rejected).float().sum())
            gap_sum += float((chosen - rejected).sum())
    model.train()
    n = len(examples)
    return {"eval_loss": loss_sum / n, "eval_accuracy": correct / n, "eval_score_margin": gap_sum / n}


def train(cfg: RewardConfig) -> str:
    if cfg.freeze_backbone:
        from caikit.train.reward_probe import train_probe

        return train_probe(cfg)

    from transformers import AutoModelForSequenceClassification

    from caikit.train.data import split_rows, tokenize_preferences
    from caikit.train.batches import collate_preferences
    from caikit.train.losses import bradley_terry_loss
    from caikit.train.loop import (load_pretrained, load_train_tokenizer, make_accelerator, micro_batches, note,
                                   read_training_data, to_device, tokenized_split)
    from caikit.train.session import start_session

    accelerator = make_accelerator(cfg)
    tokenizer = load_train_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id

    # data: preference rows -> held-out split -> chosen / rejected token ids (prompt + response + EOS)
    triples, data_summary = read_training_data(COMMAND, cfg, "pairs")
    train_examples, eval_examples = tokenized_split(COMMAND, cfg, triples, tokenize_preferences, tokenizer, "pairs")

    # scalar head on the backbone; the head reads the last non-pad token, so the config must know the pad id
    model = load_pretrained(AutoModelForSequenceClassification, cfg.model, num_labels=1,
                           attn_implementation=cfg.attn_implementation or None)
    model.config.pad_token_id = pad_id
    session = start_session(cfg, COMMAND, accelerator, model, "SEQ_CLS", len(train_examples), "reward", data_summary)
    model, packed = session.model, session.how.packed  # no vocabulary here: nothing to chunk
    stream = micro_batches(train_examples, cfg, lambda m: collate_preferences(m, pad_id), session.step,
                           accelerator.process_index, accelerator.num_processes)
    while session.step < session.total_steps:
        started, losses_seen, correct, gaps, tokens = time.perf_counter(), [], [], [], 0
        for _ in range(cfg.grad_accum):
            batch = to_device(next(stream), accelerator.device)
            with session.accumulate():
                chosen, rejected = pair_scores(model, batch, pad_id, packed)
                soft, margin = soft_labels_and_margin(batch, cfg)
                loss = bradley_terry_loss(chosen, rejected, margin, soft).mean()
                session.apply(loss)
            # metrics over the global batch: every process's pairs (accelerate's gather; itself with one process)
            chosen, rejected = accelerator.gather(chosen.detach()), accelerator.gather(rejected.detach())
            losses_seen.append(accelerator.reduce(loss.detach(), "mean").item())
            correct.append(float((chosen > rejected).float().mean()))
            gaps.append(float((chosen - rejected).mean()))
            tokens += int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
        row = {"loss": sum(losses_seen) / len(losses_seen), "accuracy": sum(correct) / len(correct),
               "score_margin": sum(gaps) / len(gaps)}
        session.end_step(row, tokens, started,
                         lambda: evaluate(model, eval_examples, cfg, pad_id, accelerator.device, packed),
                         postfix={"loss": f"{row['loss']:.4f}", "acc": f"{row['accuracy']:.2f}"})

    final_eval = evaluate(model, eval_examples, cfg, pad_id, accelerator.device, packed)
    # the same held-out pairs as tokenized_split (split_rows is seeded); truncation drops none at defaults
    eval_triples = split_rows(triples, cfg.eval_fraction, cfg.seed)[1]
    summary = heldout_summary(final_eval.get("eval_accuracy", 0.0), eval_triples)
    if final_eval:
        final_eval.update({k: v for k, v in summary.items() if k.startswith(("eval_accuracy_", "length_", "verdict"))})
    out = session.finish(tokenizer, PLOT_GROUPS, final_eval)
    if accelerator.is_main_process:
        write_summary(out, summary)
    note(COMMAND, f"saved reward model to {out}")
    return out


# ------------------------------------------------------------------------------------------- scoring

def load_reward_model(model_dir: str, device: str | None = None):
    """(model, tokenizer) of a saved reward model, in eval mode; the tokenizer pads on the right."""
    from transformers import AutoModelForSequenceClassification

    from caikit.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load reward model: {str(e).splitlines()[0]}", path=model_dir) from None
    tokenizer = load_tokenizer(path, padding_side="right")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def reward_input_ids(tokenizer, prompt, response, max_length: int) -> list[int]:
    """Token ids the reward model scores: chat-templated prompt + response + EOS, as in training.

    prompt: text (hh style: turns, as every command reads it) or messages; response: text or the
    assistant's messages."""
    from caikit.rows import as_prompt, as_reply, is_hh
    from caikit.train.data import TruncationCount, encode_prompt_response, fit

    turns = as_prompt(prompt)
    reply = as_reply(response, turns, isinstance(prompt, str) and is_hh(prompt))
    prompt_ids, response_ids = encode_prompt_response(tokenizer, turns, reply)
    kept = fit(prompt_ids, response_ids, max_length, max_length, TruncationCount())
    return (kept[0] + kept[1]) if kept else (prompt_ids + response_ids)[-max_length:]


def score(model_dir, prompts_and_responses: list[tuple], batch_size: int = 8, max_length: int = 1024,
          device: str | None = None) -> list[float]:
    """σ(reward) in 0-1 for each (prompt, response); each a string or chat messages (see reward_input_ids).

    model_dir: a reward model directory, or a (model, tokenizer) pair from `load_reward_model`.
    """
    from caikit.train.batches import collate_sft

    model, tokenizer = model_dir if isinstance(model_dir, tuple) else load_reward_model(model_dir, device)
    device = next(model.parameters()).device
    ids = [reward_input_ids(tokenizer, p, r, max_length) for p, r in prompts_and_responses]
    out: list[float] = []
    with torch.no_grad():
        for k in range(0, len(ids), batch_size):
            batch = collate_sft([{"input_ids": s, "labels_mask": [1] * len(s)} for s in ids[k:k + batch_size]],
                                tokenizer.pad_token_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
            out.extend(torch.sigmoid(logits.squeeze(-1).float()).tolist())
    return out


def _score_rows(path: str, split: str = "") -> list[tuple]:
    from caikit.rows import read_scored

    return [(item.prompt, item.response) for item in read_scored(path, split=split or None).items]


def score_command(cfg: ScoreConfig) -> int:
    """Print one score (0-1) per response, in input order; for --input, JSON lines {"index", "score"}."""
    if not Path(cfg.model).expanduser().exists():
        raise UserError("reward model directory does not exist", path=cfg.model)
    pairs = _score_rows(cfg.input, cfg.split) if cfg.input else [(cfg.prompt, r) for r in cfg.response]
    scores = score(cfg.model, pairs, cfg.batch_size, cfg.max_length, cfg.device or None)
    for i, s in enumerate(scores):
        print(json.dumps({"index": i, "score": round(s, 6)}) if cfg.input else f"{s:.4f}")
    return 0
