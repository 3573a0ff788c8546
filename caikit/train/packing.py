"""Padding-free packing: a right-padded micro-batch run as rows of sequences laid back to back.

Each sequence keeps its own positions (position ids restart at 0 where it starts) and attends only to
itself: given restarting position ids and no attention mask, transformers (5.x) builds a per-sequence
causal mask for sdpa, eager and flex_attention (`masking_utils.find_packed_sequence_indices`, any number
of rows), and flash-attention runs varlen (`_is_packed_sequence`: a batch of one row only). Older
versions and some models let packed sequences attend to each other, so `keeps_sequences_apart` asks the
model itself, once, before a trainer packs anything.

Row width: with a varlen kernel (flash-attention, FlexAttention) the whole micro-batch is one row; with
a dense kernel (sdpa, eager: the mask is materialised, cost grows with the row length squared) sequences
are packed first-fit into rows as wide as the padded batch, so packing never costs more attention than
padding did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
    from torch import Tensor

VARLEN_KERNELS = ("flash_attention", "flex_attention", "kernels-community/flash")  # prefixes of attn names


@dataclass(frozen=True)
class Packed:
    """A (B, T) right-padded batch as (R, W) packed rows, and the way back."""

    input_ids: Tensor     # (R, W): sequences back to back; row tails hold token 0
    position_ids: Tensor  # (R, W): 0, 1, ... from each sequence's start (a row tail counts as one more sequence)
    keep: Tensor          # (B, T) bool: the real tokens of the padded batch
    index: Tensor         # (n,): where each real token, in (B, T) row-major order, sits in the flattened rows
    ends: Tensor          # (B,): where each sequence's last token sits in the flattened rows

    def to_rows(self, x: Tensor) -> Tensor:
        """A (B, T) tensor laid out like the packed rows (R, W); tails get 0."""
        flat = x.new_zeros(self.input_ids.numel())
        flat[self.index] = x[self.keep]
        return flat.view_as(self.input_ids)

    def to_batch(self, x: Tensor) -> Tensor:
        """Packed (R, W) values back to the padded (B, T) layout; padding gets 0."""
        return torch.zeros(self.keep.shape, dtype=x.dtype, device=x.device).masked_scatter(
            self.keep, x.reshape(-1)[self.index])


def attention_name(model) -> str:
    from caikit.train.checkpoint import unwrap

    config = getattr(unwrap(model), "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def row_width(model, padded_width: int) -> int | None:
    """Packed row width for this model: None (one row) with a varlen kernel, else the padded batch's width."""
    return None if attention_name(model).startswith(VARLEN_KERNELS) else padded_width


def pack(input_ids: Tensor, attention_mask: Tensor, width: int | None) -> Packed:
    """Pack right-padded sequences (attention_mask 1 on a prefix of each row) into rows of `width` tokens,
    first-fit longest first (width None: one row holding every token). Row tails hold token 0: they come
    after every real token of their row and form a sequence of their own, so no real token sees them."""
    lengths = attention_mask.sum(-1).tolist()
    width = width or max(sum(lengths), 1)
    rows: list[int] = []  # tokens used per row
    start = [0] * len(lengths)  # flat offset of each sequence
    for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, used in enumerate(rows) if used + lengths[b] <= width), None)
        if r is None:
            rows.append(0)
            r = len(rows) - 1
        start[b] = r * width + rows[r]
        rows[r] += lengths[b]
    device = input_ids.device
    n_rows = max(len(rows), 1)
    keep = attention_mask.bool()
    steps = torch.arange(input_ids.size(1), device=device)
    if not torch.equal(keep, steps[None] < attention_mask.sum(-1, keepdim=True)):
        raise ValueError("pack() takes right-padded rows (attention_mask 1 on a prefix of each row)")
    starts = torch.tensor(start, device=device)
    index = (starts[:, None] + steps[None])[keep]
    ids = torch.zeros(n_rows * width, dtype=input_ids.dtype, device=device)
    ids[index] = input_ids[keep]
    # row tails count up from 0 as a sequence of their own, so no real token attends to them
    tail = torch.tensor([[0] * used + list(range(width - used)) for used in rows] or [[0] * width], device=device)
    positions = tail.view(-1)
    positions[index] = steps[None].expand_as(keep)[keep]
    ends = starts + torch.tensor(lengths, device=device) - 1
    return Packed(ids.view(n_rows, width), positions.view(n_rows, width), keep, index, ends)


def keeps_sequences_apart(model) -> bool:
    """Whether `model` gives two sequences packed into one row (position ids restarting, no attention mask)
    the same final hidden states as it gives each alone: the check that packing is exact for this model."""
    from caikit.train.checkpoint import unwrap

    try:  # the call goes through any DDP / FSDP wrapper (every process runs it); the config is the model's own
        device = next(model.parameters()).device
        vocab = int(getattr(unwrap(model).config, "vocab_size", 0) or 100)
        g = torch.Generator().manual_seed(0)
        first, second = (torch.randint(3, vocab, (1, n), generator=g).to(device) for n in (7, 5))
        row = torch.cat([first, second], 1)
        positions = torch.cat([torch.arange(7), torch.arange(5)])[None].to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                alone = torch.cat([_last_hidden(model, x, None) for x in (first, second)], 1)
                packed = _last_hidden(model, row, positions)
        finally:
            model.train(was_training)
    except Exception:  # a model that cannot even run this (sharded on a meta device, odd inputs): do not pack
        return False
    tolerance = 2e-2 if alone.dtype in (torch.bfloat16, torch.float16) else 1e-4
    return bool((packed.float() - alone.float()).abs().max() <= tolerance * alone.float().abs().max().clamp_min(1.0))


def _last_hidden(model, input_ids: Tensor, position_ids: Tensor | None) -> Tensor:
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, output_hidden_states=True)
    return out.hidden_states[-1]
