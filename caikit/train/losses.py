"""Pure loss functions of tensors. Trainers compute log-probs / scores and call these; nothing else.

Shape letters: B batch, T tokens, V vocabulary. Masks are 1 (or True) on positions that count.
Every function is differentiable where a gradient makes sense and has no side effects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor | None, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is 1. x, mask: same shape. Empty mask -> 0 (not NaN)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor | None, unbiased: bool = True) -> Tensor:
    """Variance of `x` over masked positions (scalar); Bessel-corrected by default, as in TRL's whitening."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum() if mask is not None else torch.tensor(float(x.numel()), dtype=x.dtype)
        var = var * n / (n - 1).clamp_min(1.0)
    return var


def sft_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Mean next-token negative log-likelihood over response tokens (prompt and padding masked).

    logits: (B, T, V) model outputs; `logits[:, t]` predicts `labels[:, t + 1]` (the usual causal shift,
    done here, so pass the model's logits and the *unshifted* input ids).
    labels: (B, T) token ids. mask: (B, T) 1 where `labels[:, t]` is a response token to imitate
    (mask[:, 0] is ignored: nothing predicts the first token).
    Returns a scalar: the token-level mean over the whole batch.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    shift_mask = mask[:, 1:].to(shift_logits.dtype)
    # -log p(y_t | y_<t, x), summed over response tokens only
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          reduction="none").view_as(shift_mask)
    return (nll * shift_mask).sum() / shift_mask.sum().clamp_min(1.0)


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor, margin: Tensor | float | None = None,
                       soft_labels: Tensor | None = None) -> Tensor:
    """Pairwise reward-model loss, one value per pair.

    chosen_scores, rejected_scores: (B,) scalar rewards r_c, r_r.
    margin: (B,) or float, subtracted from the score difference (Llama 2 style margin loss).
    soft_labels: (B,) p = P(chosen preferred) from the judge; p = 1 is the hard-label loss.
    Returns (B,) losses.
    """
    delta = chosen_scores.float() - rejected_scores.float()  # Δ = r_c - r_r
    if margin is not None:
        delta = delta - torch.as_tensor(margin, dtype=delta.dtype, device=delta.device)  # Eq. 2, Touvron et al. 2023
    if soft_labels is None:
        return -F.logsigmoid(delta)  # -log σ(r_c - r_r): Bradley & Terry 1952; Eq. 1, Ouyang et al. 2022
    p = soft_labels.to(delta.dtype)
    # cross-entropy against the soft label: -[p log σ(Δ) + (1 - p) log σ(-Δ)]
    return -(p * F.logsigmoid(delta) + (1.0 - p) * F.logsigmoid(-delta))


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float, label_smoothing: float | Tensor = 0.0,
             loss_type: str = "sigmoid") -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation losses from summed sequence log-probs.

    All inputs: (B,) summed log-probs of the response tokens under the policy / frozen reference.
    beta: KL strength β. label_smoothing: ε, float or (B,) per-pair, the probability that the label is
    flipped (conservative DPO, for soft AI labels); only used by loss_type "sigmoid".
    loss_type: "sigmoid" (DPO) or "ipo".
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are detached β·log(π/π_ref).
    """
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    h = (pi_logratios - ref_logratios).float()  # h = log π(y_w)/π_ref(y_w) - log π(y_l)/π_ref(y_l)
    if loss_type == "sigmoid":
        eps = torch.as_tensor(label_smoothing, dtype=h.dtype, device=h.device)
        # Eq. 7, Rafailov et al. 2023: -log σ(β h); cDPO (Mitchell 2023): mix with the flipped label by ε
        losses = -F.logsigmoid(beta * h) * (1.0 - eps) - F.logsigmoid(-beta * h) * eps
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2  # IPO, Azar et al. 2023: (h - 1/(2τ))², τ = β
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid | ipo)")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # implicit reward, §5 Rafailov et al.
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: (B, T); mask is 1 on valid response tokens. The value after the last valid
    token is 0 (the episode ends at EOS), and nothing flows across masked positions.
    Returns (advantages (B, T), returns (B, T)), both 0 where mask is 0; returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        next_values = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]  # TD residual δ_t = r_t + γV(s_{t+1}) - V(s_t)
        # A_t = Σ_l (γλ)^l δ_{t+l}, Eq. 16 Schulman et al. 2016, as the recursion A_t = δ_t + γλ A_{t+1}
        last_gae = (delta + gamma * lam * next_mask * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    returns = (advantages + values) * mask
    return advantages.detach(), returns.detach()


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked positions (Bessel-corrected variance); shift_mean=False keeps the mean.

    x, mask: same shape. Masked-out positions are returned as 0.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype) if mask is not None else out


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    cliprange: float) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate policy loss.

    logprobs: (B, T) per-token log-probs under the current policy; old_logprobs: (B, T) at rollout time;
    advantages: (B, T); mask: (B, T) valid response tokens.
    Returns (loss scalar, clipfrac scalar, approx_kl scalar); approx_kl is Schulman's k3 estimate of
    KL(π_old || π) over the masked tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)  # r_t(θ) = π_θ / π_old
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)  # Eq. 7, Schulman et al. 2017 (negated)
    with torch.no_grad():
        clipfrac = masked_mean((pg_losses_clipped > pg_losses).to(logprobs.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, clipfrac, approx_kl


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   cliprange_value: float) -> tuple[Tensor, Tensor]:
    """Clipped value loss 0.5 · max((V - R)², (V_clip - R)²), V_clip within ±cliprange_value of the old V.

    values, old_values, returns, mask: (B, T). Returns (loss scalar, clipfrac scalar).
    """
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)  # value clipping, Ziegler et al. 2019
    with torch.no_grad():
        clipfrac = masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask)
    return loss, clipfrac


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π. Both inputs (B, T); returns (B, T).

    Schulman, "Approximating KL divergence" (2020), with r = π_ref / π:
    k1 = -log r = log π - log π_ref (unbiased, can be negative); k3 = (r - 1) - log r (unbiased, >= 0);
    k2 = ½ (log r)² (biased, >= 0).
    """
    log_r = ref_logprobs - logprobs  # log r = log q - log p
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r ** 2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r} (k1 | k2 | k3)")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position. logits (B, T, V) -> (B, T).

    H = logsumexp(z) - Σ softmax(z)·z, which never forms log-probs of the whole vocabulary twice.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)

