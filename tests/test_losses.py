"""Loss functions against hand-computed values and known limits."""

from __future__ import annotations

import math

import pytest
import torch

from caikit.train.losses import (bradley_terry_loss, dpo_loss, entropy_from_logits, gae, ipo_loss, kl_per_token,
                                 masked_mean, ppo_policy_loss, ppo_value_loss, sft_loss, whiten)

LOG2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def softplus(x: float) -> float:  # -log σ(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------------ SFT

def test_sft_loss_shifts_and_masks_prompt():
    # logits[:, t] predicts labels[:, t+1]; the last position predicts nothing, so huge values there are ignored
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [1e4, -1e4]]])  # (1, 3, 2)
    labels = torch.tensor([[0, 0, 1]])
    # token 1 (label 0) from logits[0] = uniform: -log 1/2; token 2 (label 1) from logits[1]: p = 1/4 -> -log 1/4
    both = sft_loss(logits, labels, torch.tensor([[0, 1, 1]]))
    assert both.item() == pytest.approx((LOG2 + math.log(4.0)) / 2, abs=1e-6)
    only_last = sft_loss(logits, labels, torch.tensor([[0, 0, 1]]))  # prompt token 1 masked out
    assert only_last.item() == pytest.approx(math.log(4.0), abs=1e-6)


def test_sft_loss_is_token_mean_across_batch():
    logits = torch.zeros(2, 3, 5)  # uniform: every token costs log 5
    labels = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert sft_loss(logits, labels, mask).item() == pytest.approx(math.log(5.0), abs=1e-6)


# --------------------------------------------------------------------------------------- Bradley-Terry

def test_bradley_terry_hard_labels_and_margin():
    losses = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0))
    assert losses.shape == (2,)
    assert losses[0].item() == pytest.approx(softplus(-1.0), abs=1e-6)  # -log σ(1)
    assert losses[1].item() == pytest.approx(LOG2, abs=1e-6)
    with_margin = bradley_terry_loss(t(1.0), t(0.0), margin=t(0.5))
    assert with_margin.item() == pytest.approx(softplus(-0.5), abs=1e-6)  # -log σ(1 - 0.5)


def test_bradley_terry_soft_labels():
    # p = 0.5 at Δ = 0: loss log 2 and zero gradient (nothing to learn from a coin flip)
    chosen, rejected = t(0.0).requires_grad_(), t(0.0)
    loss = bradley_terry_loss(chosen, rejected, soft_labels=t(0.5))
    loss.sum().backward()
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(0.0, abs=1e-7)
    # p = 0.8 at Δ = 0: dL/dr_c = σ(Δ) - p = -0.3 (gradient descent raises the chosen score)
    chosen = t(0.0).requires_grad_()
    bradley_terry_loss(chosen, t(0.0), soft_labels=t(0.8)).sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.3, abs=1e-6)
    # value: -[0.8 log σ(2) + 0.2 log σ(-2)]
    value = bradley_terry_loss(t(2.0), t(0.0), soft_labels=t(0.8)).item()
    assert value == pytest.approx(0.8 * softplus(-2.0) + 0.2 * softplus(2.0), abs=1e-6)
    # p = 1 equals the hard-label loss
    assert bradley_terry_loss(t(0.7), t(0.2), soft_labels=t(1.0)).item() == pytest.approx(
        bradley_terry_loss(t(0.7), t(0.2)).item(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ DPO

def test_dpo_is_log2_when_policy_equals_reference():
    logps = t(-3.0, -10.0), t(-5.0, -1.0)
    losses, chosen_rewards, rejected_rewards = dpo_loss(*logps, *logps, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), LOG2))
    assert torch.all(chosen_rewards == 0) and torch.all(rejected_rewards == 0)
    smoothed, _, _ = dpo_loss(*logps, *logps, beta=0.1, label_smoothing=0.3)  # cDPO too: both terms are log 2
    assert torch.allclose(smoothed, torch.full((2,), LOG2))


def test_dpo_sigmoid_values_and_rewards():
    # h = (-1 - -2) - (-1.5 - -1.5) = 1; β = 0.5 -> -log σ(0.5)
    losses, chosen_rewards, rejected_rewards = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)
    assert losses.item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.25)  # β (log π - log π_ref) = 0.5 * 0.5
    assert rejected_rewards.item() == pytest.approx(-0.25)


def test_cdpo_label_smoothing_value():
    losses, _, _ = dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.9 * softplus(-0.5) + 0.1 * softplus(0.5), abs=1e-6)
    # per-pair ε as a tensor gives the same numbers row by row
    per_pair, _, _ = dpo_loss(t(-1.0, -1.0), t(-2.0, -2.0), t(-1.5, -1.5), t(-1.5, -1.5), beta=0.5,
                              label_smoothing=t(0.0, 0.1))
    assert per_pair[0].item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert per_pair[1].item() == pytest.approx(losses.item(), abs=1e-6)
    # ε = 0.5 carries no preference: the loss is symmetric in h (swapping chosen and rejected changes nothing)
    assert dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), 0.5, 0.5)[0].item() == pytest.approx(
        dpo_loss(t(-2.0), t(-1.0), t(-1.5), t(-1.5), 0.5, 0.5)[0].item(), abs=1e-6)


def test_ipo_values():
    # h = 1: (h - 1/(2β))² is 0 at β = 0.5 and 1 at β = 0.25
    assert ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.5)[0].item() == pytest.approx(0.0)
    assert ipo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.25)[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_dpo_gradient_pushes_chosen_up_rejected_down(loss_type, smoothing):
    chosen, rejected = t(-4.0).requires_grad_(), t(-4.0).requires_grad_()
    if loss_type == "sigmoid":
        losses, _, _ = dpo_loss(chosen, rejected, t(-4.0), t(-4.0), beta=0.1, label_smoothing=smoothing)
    else:
        losses, _, _ = ipo_loss(chosen, rejected, t(-4.0), t(-4.0), beta=0.1)
    losses.sum().backward()
    assert chosen.grad.item() < 0  # descent raises log π(chosen)
    assert rejected.grad.item() > 0  # and lowers log π(rejected)
    if loss_type == "sigmoid":  # at h = 0: dL/dh = -β(1-ε)(1-σ(0)) + βεσ(0) = -β(1 - 2ε)/2
        assert chosen.grad.item() == pytest.approx(-0.1 * (1 - 2 * smoothing) / 2, abs=1e-6)


# ------------------------------------------------------------------------------------------------ PPO

def test_gae_three_steps_with_mask():
    rewards = t(1.0, 0.0, 2.0, 7.0).unsqueeze(0)
    values = t(0.5, 1.0, 1.5, 9.0).unsqueeze(0)
    mask = t(1, 1, 1, 0).unsqueeze(0)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, gae_lambda=0.8)
    # t=2 (last valid, V after it = 0): δ = 2 - 1.5 = 0.5, A = 0.5
    # t=1: δ = 0 + 0.9·1.5 - 1.0 = 0.35, A = 0.35 + 0.72·0.5 = 0.71
    # t=0: δ = 1 + 0.9·1.0 - 0.5 = 1.4,  A = 1.4 + 0.72·0.71 = 1.9112
    assert advantages[0].tolist() == pytest.approx([1.9112, 0.71, 0.5, 0.0], abs=1e-5)
    assert returns[0].tolist() == pytest.approx([2.4112, 1.71, 2.0, 0.0], abs=1e-5)


def test_gae_rows_are_independent_and_lam_one_is_discounted_return():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [1.0, 5.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.3, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.5, gae_lambda=1.0)
    # λ = 1: returns are Monte-Carlo discounted returns
    assert returns[0].tolist() == pytest.approx([0.25, 0.5, 1.0], abs=1e-6)
    assert advantages[1].tolist() == pytest.approx([0.7, 0.0, 0.0], abs=1e-6)  # one-step episode: 1 - 0.3


def test_whiten():
    out = whiten(t(1.0, 2.0, 3.0, 4.0))
    std = math.sqrt(5.0 / 3.0)  # Bessel-corrected
    assert out.tolist() == pytest.approx([-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std], abs=1e-5)
    masked = whiten(t(1.0, 3.0, 100.0), t(1, 1, 0))  # mean 2, var 2 over the first two
    assert masked.tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], abs=1e-5)
    kept_mean = whiten(t(1.0, 3.0), shift_mean=False)
    assert kept_mean.tolist() == pytest.approx([2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)], abs=1e-5)


def test_ppo_policy_clipping():
    old = torch.zeros(1, 3)
    # ratios 1.5 (A=+1: clipped at 1.2), 0.5 (A=+1: unclipped), 1.5 (A=-1: unclipped, pessimistic)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.5]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipfrac, approx_kl = ppo_policy_loss(logprobs, old, advantages, torch.ones(1, 3), cliprange=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3)
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 1.5)]
    assert approx_kl.item() == pytest.approx(sum(k3) / 3, abs=1e-6)
    loss.backward()
    assert logprobs.grad[0, 0].item() == 0.0  # clipped: no gradient
    assert logprobs.grad[0, 1].item() == pytest.approx(-0.5 / 3, abs=1e-6)  # d(-A r)/dlogp = -A r / n
    assert logprobs.grad[0, 2].item() == pytest.approx(1.5 / 3, abs=1e-6)


def test_ppo_policy_loss_respects_mask():
    logprobs, old = torch.tensor([[0.0, 5.0]]), torch.zeros(1, 2)
    loss, clipfrac, _ = ppo_policy_loss(logprobs, old, torch.ones(1, 2), torch.tensor([[1, 0]]), cliprange=0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert clipfrac.item() == 0.0


def test_ppo_value_loss_clipping():
    loss, clipfrac = ppo_value_loss(t(2.0), t(1.0), t(3.0), t(1.0), cliprange_value=0.5)
    # V_clip = 1.5: max((2-3)², (1.5-3)²) = 2.25 -> 0.5 · 2.25
    assert loss.item() == pytest.approx(1.125)
    assert clipfrac.item() == 1.0
    loss, clipfrac = ppo_value_loss(t(2.9), t(2.6), t(3.0), t(1.0), cliprange_value=0.5)  # within the clip range
    assert loss.item() == pytest.approx(0.5 * 0.01, abs=1e-6)
    assert clipfrac.item() == 0.0


def test_kl_estimators():
    logp, ref = torch.log(t(0.5)), torch.log(t(0.25))
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(LOG2, abs=1e-6)  # log p - log q
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx((0.5 - 1) + LOG2, abs=1e-6)  # r = q/p = 0.5
    assert kl_per_token(logp, logp, "k3").item() == 0.0
    # k1 can be negative, k3 cannot
    assert kl_per_token(ref, logp, "k1").item() < 0 < kl_per_token(ref, logp, "k3").item()
    with pytest.raises(ValueError):
        kl_per_token(logp, ref, "k9")


def test_kl_estimators_are_unbiased_for_exact_kl():
    # expectation over p of k1 and k3 equals KL(p||q) for categorical p, q
    p, q = t(0.7, 0.2, 0.1), t(0.3, 0.3, 0.4)
    exact = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        assert float((p * kl_per_token(p.log(), q.log(), est)).sum()) == pytest.approx(exact, abs=1e-6)


def test_masked_mean_and_entropy():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])
    assert masked_mean(x, torch.zeros(2, 2)).item() == 0.0  # empty mask: 0, not NaN
    entropy = entropy_from_logits(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]]))
    assert entropy.shape == (1, 2)
    assert entropy[0].tolist() == pytest.approx([math.log(4.0), 0.0], abs=1e-5)
