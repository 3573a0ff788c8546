"""Which tokens changed: KL between the after- and before-model at each response position.

Qi et al. 2024 ("Safety alignment should be made more than just a few tokens deep", Sec. 2, Fig. 1) measure
the per-token KL(pi_aligned || pi_base) along the aligned model's responses to harmful prompts and find it
concentrated in the first few positions: the aligned model differs from its base mostly in how a response
starts. Here the same curve, on the after-model's own responses and on the before-model's, with the share
of the total KL in the first 5 positions beside the share those positions would hold if KL were spread
evenly over the tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from caikit.stats import bootstrap_interval

HEAD = 5  # "the first few tokens": Qi et al. show most of the KL within about 5 positions


def token_kl(logits_after: Tensor, logits_before: Tensor) -> Tensor:
    """Exact KL(p_after || p_before) of the next-token distributions: sum_v p_a (log p_a - log p_b).
    (B, R, V), (B, R, V) -> (B, R) float32, >= 0."""
    log_a = F.log_softmax(logits_after.float(), -1)
    log_b = F.log_softmax(logits_before.float(), -1)
    return (log_a.exp() * (log_a - log_b)).sum(-1).clamp_min(0)


def per_position(kl: Tensor, mask: Tensor) -> list[dict]:
    """Mean KL at each response position over the responses that reach it. kl, mask: (B, R) ->
    [{position, kl, n}] for positions with at least one response."""
    mask = mask.bool()
    out = []
    for t in range(kl.size(1)):
        n = int(mask[:, t].sum())
        if n:
            out.append({"position": t, "kl": float(kl[:, t][mask[:, t]].mean()), "n": n})
    return out


def head_share(kl: Tensor, mask: Tensor, head: int = HEAD) -> float:
    """Share of the total KL (summed over responses and positions) that falls in the first `head` positions.
    NaN when the total is 0."""
    masked = kl.double() * mask.double()
    total = float(masked.sum())
    return float(masked[:, :head].sum()) / total if total > 0 else math.nan


def even_share(mask: Tensor, head: int = HEAD) -> float:
    """The share the first `head` positions would hold if every token carried the same KL."""
    m = mask.double()
    total = float(m.sum())
    return float(m[:, :head].sum()) / total if total > 0 else math.nan


def head_summary(kl: Tensor, mask: Tensor, *, head: int = HEAD, seed: int = 0) -> dict:
    """Head share with its bootstrap interval over responses, the even-spread share, and plain words."""
    share = head_share(kl, mask, head)
    interval = bootstrap_interval(list(range(kl.size(0))),
                                  lambda index: head_share(kl[list(index)], mask[list(index)], head),
                                  resamples=500, seed=seed)
    even = even_share(mask, head)
    return {"head": head, "share": share, "interval": interval, "even_share": even, "n": int(kl.size(0)),
            "mean_kl_per_token": float((kl.double() * mask.double()).sum() / mask.double().sum().clamp_min(1)),
            "verdict": head_verdict(share, interval, even, head)}


def head_verdict(share: float, interval: tuple[float, float] | None, even: float, head: int = HEAD) -> str:
    """Is the change concentrated in the first `head` tokens (interval above the even-spread share)?"""
    if math.isnan(share):
        return "no KL: the two models give the same next-token distributions on these responses"
    if interval is not None and interval[0] > even:
        return (f"concentrated in the first {head} tokens: they hold {share:.0%} of the KL "
                f"(an even spread would give them {even:.0%})")
    if interval is not None and interval[1] < even:
        return f"spread past the first {head} tokens: they hold {share:.0%} of the KL, less than an even {even:.0%}"
    return (f"not concentrated beyond noise: the first {head} tokens hold {share:.0%} of the KL "
            f"(even spread: {even:.0%})")


def forward_logits(model):
    """A function (input_ids, attention_mask) -> logits for `model` (for `response_kl`)."""
    return lambda ids, attention: model(input_ids=ids, attention_mask=attention, use_cache=False).logits


@torch.no_grad()
def response_kl(after_logits, before_logits, sequences: list[tuple[list[int], list[int]]], *, pad_token_id: int,
                batch_size: int = 8, device: str = "cpu") -> dict[str, Tensor]:
    """Per-position KL(after || before) along given (prompt_ids, response_ids) sequences, teacher-forced.

    after_logits / before_logits: functions (input_ids, attention_mask) -> logits (`forward_logits(model)`, or
    one running the model under hooks). Returns {kl, mask, logp_after, logp_before}, each (B, R) with R the
    longest response; logp_* are the log-probs of the response tokens themselves (for perplexity)."""
    R = max((len(r) for _, r in sequences), default=0)
    out = {"kl": torch.zeros(len(sequences), R), "mask": torch.zeros(len(sequences), R, dtype=torch.bool),
           "logp_after": torch.zeros(len(sequences), R), "logp_before": torch.zeros(len(sequences), R)}
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        rows = [p + r for p, r in chunk]
        width = max(len(x) for x in rows)
        ids = torch.tensor([x + [pad_token_id] * (width - len(x)) for x in rows], device=device)
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows], device=device)
        logits_a, logits_b = after_logits(ids, attention), before_logits(ids, attention)
        for j, (p, r) in enumerate(chunk):
            if not r:
                continue
            span = slice(len(p) - 1, len(p) - 1 + len(r))  # logits at t predict token t + 1
            target = torch.tensor(r, device=logits_a.device)[:, None]
            out["kl"][start + j, :len(r)] = token_kl(logits_a[j, span], logits_b[j, span]).cpu()
            out["mask"][start + j, :len(r)] = True
            for key, logits in (("logp_after", logits_a), ("logp_before", logits_b)):
                logp = F.log_softmax(logits[j, span].float(), -1).gather(-1, target)[:, 0]
                out[key][start + j, :len(r)] = logp.cpu()
    return out


def perplexity(logp: Tensor, mask: Tensor) -> float:
    """exp(- mean token log-prob) over the masked tokens. (B, R), (B, R) -> float."""
    m = mask.double()
    return math.exp(-float((logp.double() * m).sum() / m.sum().clamp_min(1)))
