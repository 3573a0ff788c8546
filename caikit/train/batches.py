"""Micro-batches of tokenised examples (caikit/train/data.py): their seeded order, grouped by length so a
batch carries little padding, and their right-padded tensors (collate_*)."""

from __future__ import annotations

import math
import random

import torch

def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    T = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (T - len(s)) for s in seqs], dtype=torch.long)


def _collate_sequences(examples: list[dict], prefix: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) <prefix>input_ids, <prefix>attention_mask, <prefix>labels_mask."""
    ids = [e[f"{prefix}input_ids"] for e in examples]
    return {f"{prefix}input_ids": _pad(ids, pad_token_id),
            f"{prefix}attention_mask": _pad([[1] * len(s) for s in ids], 0),
            f"{prefix}labels_mask": _pad([e[f"{prefix}labels_mask"] for e in examples], 0)}


def collate_sft(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask, labels_mask."""
    return _collate_sequences(examples, "", pad_token_id)


def collate_unpaired(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids / attention_mask / labels_mask and kl_ ones, label (B,) bool, index (B,)."""
    return {**_collate_sequences(examples, "", pad_token_id), **_collate_sequences(examples, "kl_", pad_token_id),
            "label": torch.tensor([e["label"] for e in examples], dtype=torch.bool),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}


def collate_preferences(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded chosen_/rejected_ (B, T) tensors, plus p_chosen (NaN: no label), margin (B,) and index (B,)."""
    batch = {**_collate_sequences(examples, "chosen_", pad_token_id),
             **_collate_sequences(examples, "rejected_", pad_token_id)}
    # NaN marks pairs without a judge label; trainers substitute their default
    batch["p_chosen"] = torch.tensor([math.nan if e["p_chosen"] is None else e["p_chosen"] for e in examples],
                                     dtype=torch.float32)
    batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def example_length(example: dict) -> int:
    """Tokens of an example's longest sequence (SFT: input_ids; pairs: chosen or rejected; KTO: example or KL)."""
    return max(len(v) for k, v in example.items() if k.endswith("input_ids"))


def batches(examples: list[dict], batch_size: int, seed: int, epoch: int, shuffle: bool = True,
            group_by_length: bool = False, group_batches: int = 64) -> list[list[dict]]:
    """The micro-batches of one epoch, in a seeded order (so a resumed run can skip exactly what it did).

    group_by_length: shuffle, cut the order into mega-batches of `group_batches` micro-batches, sort each
    mega-batch longest first, cut it into micro-batches and shuffle those (the batch holding the longest
    example goes first, so a run that runs out of memory does so at once). Without `shuffle` the whole
    list is sorted by length (evaluation, reference log-probs: order-free sums, less padding).
    """
    order = list(range(len(examples)))
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    if not group_by_length:
        return [[examples[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    mega = batch_size * group_batches if shuffle else max(len(order), 1)
    groups = []
    for k in range(0, len(order), mega):
        by_length = sorted(order[k:k + mega], key=lambda i: -example_length(examples[i]))  # stable: seeded ties
        groups += [by_length[j:j + batch_size] for j in range(0, len(by_length), batch_size)]
    if shuffle and groups:
        rng.shuffle(groups)
        longest = max(range(len(groups)), key=lambda g: example_length(examples[groups[g][0]]))
        groups.insert(0, groups.pop(longest))
    return [[examples[i] for i in group] for group in groups]
