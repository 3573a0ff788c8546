"""Pure loss functions of tensors. Trainers compute log-probs / scores and call these; nothing else.

Shape letters: B batch, T tokens, V vocabulary. Masks are 1 (or True) on positions that count.
Every function is differentiable where a gradient makes sense and has no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
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


def sft_loss_from_logps(token_logps: Tensor, mask: Tensor) -> Tensor:
    """`sft_loss` from per-token log-probs (as `caikit.train.logprobs.token_logps` returns them) instead of logits.

    token_logps: (B, T) log p(token t | tokens < t), aligned with the tokens (position 0: nothing predicts it).
    mask: (B, T) 1 on response tokens (mask[:, 0] ignored). Returns a scalar: the token-level mean of
    -log p(y_t | y_<t, x) over the batch, the same number `sft_loss` gives on the logits.
    """
    counted = mask[:, 1:].to(token_logps.dtype)
    return -(token_logps[:, 1:] * counted).sum() / counted.sum().clamp_min(1.0)


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
             ref_rejected_logps: Tensor, beta: float,
             label_smoothing: float | Tensor = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Direct preference optimisation (the sigmoid loss), conservative DPO when label_smoothing > 0.

    All inputs: (B,) summed log-probs of the response tokens under the policy / frozen reference.
    beta: KL strength β. label_smoothing: ε, float or (B,) per-pair, the probability that the label is
    flipped (cDPO, for soft AI labels); ε = 0 is plain DPO.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are detached β·log(π/π_ref).
    """
    h = _dpo_h(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    eps = torch.as_tensor(label_smoothing, dtype=h.dtype, device=h.device)
    # Eq. 7, Rafailov et al. 2023: -log σ(β h); cDPO (Mitchell 2023): mix with the flipped label by ε
    losses = -F.logsigmoid(beta * h) * (1.0 - eps) - F.logsigmoid(-beta * h) * eps
    return (losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps, beta))


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Identity preference optimisation: a squared loss that keeps h at 1/(2τ) instead of pushing it to ∞.

    Inputs and outputs as `dpo_loss` (τ = β); no label smoothing (IPO's regulariser already bounds h).
    """
    h = _dpo_h(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = (h - 1.0 / (2.0 * beta)) ** 2  # IPO, Azar et al. 2023: (h - 1/(2τ))², τ = β
    return (losses, *_implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps, beta))


def _dpo_h(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor) -> Tensor:
    """h = log π(y_w)/π_ref(y_w) - log π(y_l)/π_ref(y_l), (B,) float32."""
    return ((policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)).float()


def _implicit_rewards(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                      ref_rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # implicit reward, §5 Rafailov et al.
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return chosen_rewards, rejected_rewards


def log_odds(avg_logps: Tensor) -> Tensor:
    """log(P / (1 - P)) of a sequence whose length-normalised probability is P = exp(avg_logps). (B,) -> (B,).

    avg_logps must be < 0 (P < 1); it is clamped just below 0 so a certain sequence gives a large finite value.
    """
    x = avg_logps.float().clamp(max=-1e-6)
    return x - torch.log(-torch.expm1(x))  # log P - log(1 - P), with 1 - P = -expm1(log P) accurate near P = 1


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """Odds-ratio preference optimisation (Hong et al. 2024): SFT on the chosen response plus an odds-ratio
    penalty on the rejected one, with no reference model.

    chosen_avg_logps, rejected_avg_logps: (B,) length-normalised log-probs (1/|y|) Σ_t log π(y_t | x, y_<t),
    the log P_θ(y|x) of §4.1. lam: λ, the weight of the odds-ratio term.
    Returns (losses (B,), chosen_log_odds (B,), rejected_log_odds (B,)); the log-odds are detached and
    stand in for implicit rewards in the metrics (their difference is the log odds ratio).
    """
    chosen_log_odds, rejected_log_odds = log_odds(chosen_avg_logps), log_odds(rejected_avg_logps)
    sft = -chosen_avg_logps.float()  # L_SFT: the chosen response's mean token NLL
    ratio_loss = -F.logsigmoid(chosen_log_odds - rejected_log_odds)  # Eq. 7, Hong et al. 2024: -log σ(log OR)
    losses = sft + lam * ratio_loss  # Eq. 6, Hong et al. 2024: L_SFT + λ·L_OR
    return losses, chosen_log_odds.detach(), rejected_log_odds.detach()


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float,
               gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Simple preference optimisation (Meng et al. 2024): a Bradley-Terry loss on length-normalised
    log-probs with a target reward margin, and no reference model.

    chosen_avg_logps, rejected_avg_logps: (B,) (1/|y|) log π(y|x). beta: β, reward scale; gamma: γ, the
    target margin between the chosen and rejected rewards.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are detached β/|y|·log π(y|x).
    """
    chosen_rewards = beta * chosen_avg_logps.float()  # Eq. 4, Meng et al. 2024: r = β/|y| log π(y|x)
    rejected_rewards = beta * rejected_avg_logps.float()
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)  # Eq. 6, Meng et al. 2024
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z_ref: a detached, clamped batch estimate of KL(π || π_ref).

    policy_kl_logps, ref_kl_logps: (B,) summed log-probs of *mismatched* pairs (prompt x_i with the
    completion of another example), so the completions are unrelated to the prompts they follow.
    Returns a scalar >= 0 that carries no gradient (Ethayarajh et al. 2024, §4.1: the estimate is biased,
    clamped at 0, and not backpropagated through).
    """
    kl = (policy_kl_logps.float() - ref_kl_logps.float()).mean().clamp_min(0.0)  # ẑ_ref = max(0, mean log π/π_ref)
    return kl.detach()


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, desirable: Tensor, z_ref: Tensor | float, beta: float,
             lambda_d: float = 1.0, lambda_u: float = 1.0) -> tuple[Tensor, Tensor]:
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired desirable / undesirable examples.

    policy_logps, ref_logps: (B,) summed response log-probs under the policy / frozen reference.
    desirable: (B,) bool, True for a desirable (thumbs-up) completion. z_ref: the reference point
    (`kto_reference_point`). beta: β; lambda_d, lambda_u: λ_D, λ_U, the weights of desirable and
    undesirable examples (λ_D n_D / (λ_U n_U) in [1, 4/3] is the paper's advice for imbalanced data).
    Returns (losses (B,), rewards (B,)); rewards are detached r_θ = β·log π/π_ref.
    """
    r = (policy_logps - ref_logps).float()  # r_θ(x, y) = log π_θ(y|x) / π_ref(y|x)
    z = torch.as_tensor(z_ref, dtype=r.dtype, device=r.device)
    desirable = desirable.bool()
    # v(x, y) = λ_D σ(β(r_θ - z_ref)) if desirable, λ_U σ(β(z_ref - r_θ)) if not  (§4.1, Ethayarajh et al.)
    value = torch.where(desirable, lambda_d * torch.sigmoid(beta * (r - z)), lambda_u * torch.sigmoid(beta * (z - r)))
    weight = torch.where(desirable, torch.full_like(r, lambda_d), torch.full_like(r, lambda_u))
    losses = weight - value  # L_KTO = E[λ_y - v(x, y)]   (§4.1, Ethayarajh et al. 2024)
    return losses, (beta * r).detach()


def grpo_advantages(rewards: Tensor, scale_std: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024, §4.1.2 outcome supervision).

    rewards: (N, G) one scalar per sample, G samples per prompt. Returns (N, G): r - mean(group), divided
    by the group's standard deviation (Bessel-corrected, + eps) unless scale_std is False (Liu et al. 2025
    drop the division: it up-weights groups whose rewards barely differ). A group of equal rewards gets 0.
    """
    rewards = rewards.float()
    centred = rewards - rewards.mean(1, keepdim=True)  # Â_i = (r_i - mean(r)) / std(r)
    if not scale_std:
        return centred
    return centred / (rewards.std(1, keepdim=True) + eps)


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages (RLOO, Ahmadian et al. 2024, after Kool et al. 2019).

    rewards: (N, G), G >= 2 samples per prompt. Returns (N, G): r_i - mean_{j≠i} r_j, the baseline of
    each sample being the mean reward of the other G - 1 (unbiased: it does not depend on sample i).
    """
    rewards = rewards.float()
    G = rewards.size(1)
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (G - 1)  # b_i = 1/(G-1) Σ_{j≠i} r_j
    return rewards - baseline


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
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
        last_gae = (delta + gamma * gae_lambda * next_mask * last_gae) * mask[:, t]
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

