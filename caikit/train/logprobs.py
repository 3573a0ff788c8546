"""Log-probabilities of given tokens under a causal LM, and the concatenated chosen+rejected forward.

Alignment convention (same as `losses.sft_loss`): `labels_mask[:, t] = 1` means token `input_ids[:, t]`
is a response token whose log-prob counts; it is predicted by the logits at position t - 1.
Token log-probs are returned aligned with `input_ids` (position 0 is always 0).

How the forward runs is a `ForwardOptions`; the default is the plain padded forward:
- chunk > 0: the model returns its final hidden states, and the output layer and log-softmax run on the
  response positions only, `chunk` tokens at a time, recomputed in backward (activation checkpointing), so
  the full-vocabulary fp32 logits of a batch never exist at once. Models whose logits are more than the
  output layer (soft-capping, logit scales) take the whole-logits path.
- packed: the micro-batch runs as packed rows without padding (`caikit.train.packing`).
The whole-logits path asks the model for logits from the first response position on only (`logits_to_keep`)
where the model supports it, and takes log-softmax one sequence at a time to bound peak memory.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from caikit.train.packing import pack, row_width

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
    from torch import Tensor

# config fields of models whose logits are not just the output layer's (Gemma 2, Cohere, Granite)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class ForwardOptions:
    """How the trainers run a model for log-probs (see the module docstring)."""

    packed: bool = False  # padding-free: the micro-batch as packed rows, positions restarting per sequence
    chunk: int = 0  # output layer + log-softmax this many tokens at a time (0: whole logits from the model)


PADDED = ForwardOptions()


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


def response_logits(model, input_ids: Tensor, attention_mask: Tensor | None, labels_mask: Tensor,
                    position_ids: Tensor | None = None) -> tuple[Tensor, int]:
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
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    return logits, start


def bare_model(model):
    """The transformers model under accelerate / DDP and peft wrappers."""
    from caikit.train.checkpoint import unwrap

    model = unwrap(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_layer(model) -> torch.nn.Module | None:
    """The output projection when the logits are exactly its output (a Linear, no soft-capping or scale)."""
    inner = bare_model(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return None
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    return head


def final_hidden(model, input_ids: Tensor, attention_mask: Tensor | None,
                 position_ids: Tensor | None = None) -> Tensor:
    """(B, T, H) hidden states after the final norm, from the model's own forward (so DDP and peft wrappers
    see the call); the model computes logits for the last position only where it can."""
    kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True,
                **kwargs)
    return out.hidden_states[-1]


def _picked_logps(hidden: Tensor, head: torch.nn.Module, index: Tensor, temperature: float) -> Tensor:
    logits = head(hidden).float()  # (c, V): one chunk's logits in fp32
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_logps(hidden: Tensor, head: torch.nn.Module, index: Tensor, chunk: int,
                  temperature: float = 1.0) -> Tensor:
    """log softmax(head(hidden) / temperature)[index], `chunk` rows at a time.

    hidden: (M, H); index: (M,) -> (M,) float32. With autograd on, each chunk is checkpointed: its logits
    are recomputed in backward instead of kept, so one chunk's (chunk, V) logits is the most that exists.
    """
    parts = []
    for k in range(0, hidden.size(0), chunk):
        args = (hidden[k:k + chunk], head, index[k:k + chunk], temperature)
        parts.append(torch.utils.checkpoint.checkpoint(_picked_logps, *args, use_reentrant=False)
                     if torch.is_grad_enabled() else _picked_logps(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


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
                temperature: float = 1.0, how: ForwardOptions = PADDED) -> Tensor:
    """Per-token log-probs of the response tokens: (B, T), aligned with input_ids, 0 outside labels_mask.

    `how` changes the cost, not the numbers (tests/test_train_speed.py holds the paths to each other)."""
    ids, mask, positions, counted = input_ids, attention_mask, None, labels_mask
    packed = pack(input_ids, attention_mask, row_width(model, input_ids.size(1))) if how.packed else None
    if packed is not None:  # nothing predicts a sequence's first token: in a packed row that is position 0
        ids, mask, positions = packed.input_ids, None, packed.position_ids
        counted = packed.to_rows(labels_mask) * positions.ne(0)
    head = output_layer(model) if how.chunk > 0 else None
    if head is None:
        logits, start = response_logits(model, ids, mask, counted, positions)
        logps = logps_from_logits(logits, ids, counted, start, temperature)
    else:
        hidden = final_hidden(model, ids, mask, positions)
        predicted = counted[:, 1:].bool()  # hidden[:, t - 1] predicts token t
        picked = chunked_logps(hidden[:, :-1][predicted], head, ids[:, 1:][predicted], how.chunk, temperature)
        logps = F.pad(torch.zeros(predicted.shape, dtype=torch.float32, device=ids.device).masked_scatter(
            predicted, picked), (1, 0))
    if packed is not None:
        logps = packed.to_batch(logps)
    return logps * labels_mask.to(logps.dtype)


def sequence_logps(model, input_ids: Tensor, attention_mask: Tensor, labels_mask: Tensor,
                   temperature: float = 1.0, how: ForwardOptions = PADDED) -> Tensor:
    """Summed log-prob of the response tokens of each sequence: (B,)."""
    return token_logps(model, input_ids, attention_mask, labels_mask, temperature, how).sum(-1)


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


def concatenated_forward(model, batch: dict[str, Tensor], pad_token_id: int, temperature: float = 1.0,
                         how: ForwardOptions = PADDED) -> tuple[Tensor, Tensor]:
    """One forward over chosen+rejected; returns (chosen_logps (B,), rejected_logps (B,)) summed per sequence.

    batch: chosen_/rejected_ input_ids, attention_mask, labels_mask, each (B, T_c) / (B, T_r).
    """
    both = concatenate_pairs(batch, pad_token_id)
    logps = sequence_logps(model, both["input_ids"], both["attention_mask"], both["labels_mask"], temperature, how)
    B = batch["chosen_input_ids"].size(0)
    return logps[:B], logps[B:]
