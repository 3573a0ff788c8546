"""`caikit classifier train --method lora | full`: the guard's backbone trained too, not only its head.

Starts from the frozen recipe's fit (the head w, b fitted on frozen features), then minimises the binary
cross-entropy of sigmoid(w · h_last + b) over the training rows for --epochs with AdamW, through LoRA adapters
on every linear layer of the cut backbone (Hu et al. 2021; merged into the weights before saving) or through all
of its weights. The saved guard has the same layout as a frozen one, so scoring, streaming and evaluation are
unchanged.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import torch

from caikit.classifier.model import no_grad

if TYPE_CHECKING:
    from torch import Tensor


def last_token_logits(backbone, head: torch.nn.Linear, seqs: list[list[int]], pad: int, device) -> Tensor:
    """(B,) head logits at each sequence's last token; sequences right-padded."""
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs], device=device)
    hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
    last = hidden[torch.arange(len(seqs), device=device), mask.sum(1) - 1]  # (B, H)
    return head(last.to(head.weight.dtype)).squeeze(-1)


def finetune(backbone, w: Tensor, b: float, sequences: list[list[int]], labels: list[float], *, method: str,
             epochs: int, lr: float, lora_r: int, batch_size: int, pad: int, device, seed: int):
    """(backbone with the training folded in, w, b) after --epochs over (sequences, labels)."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(w.numel(), 1).to(device)
    with torch.no_grad():
        head.weight.copy_(w.float()[None, :])
        head.bias.fill_(b)
    backbone = backbone.to(device)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                       target_modules="all-linear"))
    backbone.train()
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = list(range(len(sequences)))
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            logits = last_token_logits(backbone, head, [sequences[i] for i in idx], pad, device)
            target = torch.tensor([labels[i] for i in idx], device=device, dtype=logits.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    backbone.eval()
    if method == "lora":
        backbone = backbone.merge_and_unload()
    return backbone, head.weight.detach()[0].double().cpu(), float(head.bias.detach().item())


@no_grad
def scores(backbone, w: Tensor, b: float, sequences: list[list[int]], pad: int, device,
           batch_size: int = 16) -> list[float]:
    """P(flag) of each sequence under (backbone, w, b), in input order."""
    head = torch.nn.Linear(w.numel(), 1).to(device)
    head.weight.copy_(w.float()[None, :])
    head.bias.fill_(b)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = [0.0] * len(sequences)
    backbone = backbone.to(device).eval()
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        for i, p in zip(idx, torch.sigmoid(last_token_logits(backbone, head, [sequences[j] for j in idx], pad,
                                                             device)).tolist()):
            out[i] = p
    return out
