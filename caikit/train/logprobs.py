"""Log-probabilities of given tokens under a causal LM, and the concatenated chosen+rejected forward.

Alignment convention (same as `losses.sft_loss`): `labels_mask[:, t] = 1` means token `input_ids[:, t]`
is a response token whose log-prob counts; it is predicted by the logits at position t - 1.
Token log-probs are returned aligned with `input_ids` (position 0 is always 0).

The lm_head over a 49k-token vocabulary dominates small models' cost, so the forward asks the model
for logits only from the first response position on (`logits_to_keep`) where the model supports it,
and log-softmax is taken one sequence at a time to bound peak memory.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor


def _accepts_logits_to_keep(model) -> bool:
    inner = model
    for attr in ("module", "base_model", "model"):  # DDP / peft wrappers pass kwargs through
        if "logits_to_keep" in inspect.signature(inner.forward).parameters:
            return True
        inner = getattr(inner, attr, None)
        if inner is None or not hasattr(inner, "forward"):
            return False
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """log softmax(logits)[index] without materialising the whole (B, T, V) log-softmax at once.

    logits: (B, T, V); index: (B, T) -> (B, T) float32.
    """
    out = []
    for row_logits, row_index in zip(logits, index):  # one sequence at a time bounds peak memory
        row_logits = row_logits.float()
        picked = torch.gather(row_logits, -1, row_index.unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(out)


def response_logits(model, input_ids: Tensor, attention_mask: Tensor, labels_mask: Tensor) -> tuple[Tensor, int]:
    """Forward pass returning logits for positions >= `start` only, and `start`.

    logits[:, j] are the model outputs at position start + j. `start` is one before the earliest
    response token in the batch, so every response token's predicting logits are included.
    """
    T = input_ids.size(1)
    has_response = labels_mask.bool().any(0).nonzero()
    first = int(has_response[0]) if len(has_response) else T - 1
    start = max(first - 1, 0)
    kwargs = {}
    if start > 0 and _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = T - start
    else:
        start = 0
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    return logits, start


def logps_from_logits(logits: Tensor, input_ids: Tensor, labels_mask: Tensor, start: int = 0,
                      temperature: float = 1.0) -> Tensor:
    """Per-token log-probs (B, T) of `input_ids` from logits covering positions start..T-1 (B, T-start, V)."""
    if temperature != 1.0:
        logits = logits / temperature
    B, T = input_ids.shape
    token_logps = torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)
    # logits at position p predict the token at p + 1
    token_logps[:, start + 1:] = selective_log_softmax(logits[:, :-1], input_ids[:, start + 1:])
    return token_logps * labels_mask.to(token_logps.dtype)


def token_logps(model, input_ids: Tensor, attention_mask: Tensor, labels_mask: Tensor,
                temperature: float = 1.0) -> Tensor:
    """Per-token log-probs of the response tokens: (B, T), aligned with input_ids, 0 outside labels_mask."""
    logits, start = response_logits(model, input_ids, attention_mask, labels_mask)
    return logps_from_logits(logits, input_ids, labels_mask, start, temperature)


def sequence_logps(model, input_ids: Tensor, attention_mask: Tensor, labels_mask: Tensor,
                   temperature: float = 1.0) -> Tensor:
    """Summed log-prob of the response tokens of each sequence: (B,)."""
    return token_logps(model, input_ids, attention_mask, labels_mask, temperature).sum(-1)


def pad_to(x: Tensor, length: int, value: int | float) -> Tensor:
    """Right-pad the last dimension of a (B, T) tensor to `length`."""
    if x.size(1) >= length:
        return x
    return torch.nn.functional.pad(x, (0, length - x.size(1)), value=value)


def concatenate_pairs(batch: dict[str, Tensor], pad_token_id: int) -> dict[str, Tensor]:
    """Stack chosen over rejected: (2B, T) input_ids / attention_mask / labels_mask, chosen first."""
    T = max(batch["chosen_input_ids"].size(1), batch["rejected_input_ids"].size(1))
    out = {}
    for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("labels_mask", 0)):
        out[key] = torch.cat([pad_to(batch[f"chosen_{key}"], T, value), pad_to(batch[f"rejected_{key}"], T, value)])
    return out


def concatenated_forward(model, batch: dict[str, Tensor], pad_token_id: int,
                         temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """One forward over chosen+rejected; returns (chosen_logps (B,), rejected_logps (B,)) summed per sequence.

    batch: chosen_/rejected_ input_ids, attention_mask, labels_mask, each (B, T_c) / (B, T_r).
    """
    both = concatenate_pairs(batch, pad_token_id)
    logps = sequence_logps(model, both["input_ids"], both["attention_mask"], both["labels_mask"], temperature)
    B = batch["chosen_input_ids"].size(0)
    return logps[:B], logps[B:]
