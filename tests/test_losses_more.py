"""KTO, ORPO, SimPO and the group-relative advantages (GRPO, RLOO) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from caikit.train.losses import (grpo_advantages, kto_loss, kto_reference_point, log_odds, orpo_loss,
                                 rloo_advantages, simpo_loss)

pytestmark = pytest.mark.unit

LOG2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ ORPO

def test_log_odds_by_hand_and_finite_at_certainty():
    # P = 0.5 -> odds 1 -> 0; P = 0.2 -> odds 0.25; P = 0.8 -> odds 4
    assert log_odds(t(math.log(0.5), math.log(0.2), math.log(0.8))).tolist() == pytest.approx(
        [0.0, math.log(0.25), math.log(4.0)], abs=1e-5)
    assert math.isfinite(log_odds(t(0.0)).item())  # P = 1 is clamped, not inf


def test_orpo_value_is_sft_plus_lambda_odds_ratio_term():
    # chosen P = 0.5 (log odds 0), rejected P = 0.2 (log odds log ¼): log OR = log 4,
    # L_OR = -log σ(log 4) = -log(4/5) = log 1.25; L_SFT = -log 0.5 = log 2
    losses, chosen_odds, rejected_odds = orpo_loss(t(math.log(0.5)), t(math.log(0.2)), lam=0.1)
    assert losses.item() == pytest.approx(LOG2 + 0.1 * math.log(1.25), abs=1e-5)
    assert chosen_odds.item() == pytest.approx(0.0, abs=1e-5)
    assert rejected_odds.item() == pytest.approx(math.log(0.25), abs=1e-5)
    # equal responses: the odds-ratio term is log 2 whatever P is
    same, _, _ = orpo_loss(t(math.log(0.3)), t(math.log(0.3)), lam=1.0)
    assert same.item() == pytest.approx(-math.log(0.3) + LOG2, abs=1e-5)


def test_orpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = t(-1.0).requires_grad_(), t(-1.0).requires_grad_()
    orpo_loss(chosen, rejected, lam=0.5)[0].sum().backward()
    assert chosen.grad.item() < 0 and rejected.grad.item() > 0
    # the SFT part alone moves the chosen response at -1 per unit of its mean log-prob
    chosen = t(-1.0).requires_grad_()
    orpo_loss(chosen, t(-1.0), lam=0.0)[0].sum().backward()
    assert chosen.grad.item() == pytest.approx(-1.0)


# ----------------------------------------------------------------------------------------------- SimPO

def test_simpo_values_rewards_and_margin():
    # β = 2: rewards -2 and -4; margin 2 - γ 0.5 = 1.5 -> -log σ(1.5)
    losses, chosen_rewards, rejected_rewards = simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=0.5)
    assert losses.item() == pytest.approx(-math.log(sigmoid(1.5)), abs=1e-6)
    assert (chosen_rewards.item(), rejected_rewards.item()) == pytest.approx((-2.0, -4.0))
    # a reward gap exactly at the target margin γ is the coin-flip loss log 2
    assert simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=2.0)[0].item() == pytest.approx(LOG2, abs=1e-6)


def test_simpo_gradient_is_length_normalised_direction():
    chosen, rejected = t(-3.0).requires_grad_(), t(-3.0).requires_grad_()
    simpo_loss(chosen, rejected, beta=2.0, gamma=0.0)[0].sum().backward()
    # dL/dc = -β σ(-(Δ - γ)) = -2 · ½ at Δ = 0
    assert chosen.grad.item() == pytest.approx(-1.0) and rejected.grad.item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------- KTO

def test_kto_reference_point_is_clamped_detached_mean():
    # mean(log π - log π_ref) over the mismatched pairs: (1 + 2) / 2
    assert kto_reference_point(t(-1.0, -1.0), t(-2.0, -3.0)).item() == pytest.approx(1.5)
    assert kto_reference_point(t(-1.0, -3.0), t(-2.0, -2.0)).item() == pytest.approx(0.0)  # mean 0
    assert kto_reference_point(t(-3.0), t(-1.0)).item() == 0.0  # -2 is clamped at 0
    policy = t(-1.0, -1.0).requires_grad_()
    assert not kto_reference_point(policy, t(-2.0, -3.0)).requires_grad  # no gradient through z_ref


def test_kto_values_by_hand():
    # r = [1, -0.5], z = 0.5, β = 2: desirable 1·(1 - σ(2·0.5)); undesirable 1.5·(1 - σ(2·(0.5 + 0.5)))
    losses, rewards = kto_loss(t(-1.0, -1.0), t(-2.0, -0.5), torch.tensor([True, False]), t(0.5), beta=2.0,
                               lambda_d=1.0, lambda_u=1.5)
    assert losses.tolist() == pytest.approx([1.0 - sigmoid(1.0), 1.5 * (1.0 - sigmoid(2.0))], abs=1e-6)
    assert rewards.tolist() == pytest.approx([2.0, -1.0])
    # policy = reference and z = 0: every example sits at λ_y (1 - σ(0)) = λ_y / 2
    at_start, _ = kto_loss(t(-4.0, -6.0), t(-4.0, -6.0), torch.tensor([True, False]), 0.0, beta=0.1,
                           lambda_d=1.0, lambda_u=2.0)
    assert at_start.tolist() == pytest.approx([0.5, 1.0])


def test_kto_gradient_raises_desirable_and_lowers_undesirable():
    policy = t(-4.0, -4.0).requires_grad_()
    losses, _ = kto_loss(policy, t(-4.0, -4.0), torch.tensor([True, False]), 0.0, beta=0.1)
    losses.sum().backward()
    # dL/dr at r = z: -λ β σ'(0) = -0.1 · ¼ for the desirable one, +0.1 · ¼ for the undesirable one
    assert policy.grad.tolist() == pytest.approx([-0.025, 0.025], abs=1e-7)


# --------------------------------------------------------------------------------------- GRPO and RLOO

def test_grpo_advantages_by_hand():
    rewards = t(1.0, 0.0, 0.0, 1.0).view(1, 4)
    # mean ½, Bessel std √(4·¼/3) = √⅓: ±½ / √⅓ = ±0.8660
    expected = 0.5 / math.sqrt(1.0 / 3.0)
    assert grpo_advantages(rewards, eps=0.0).view(-1).tolist() == pytest.approx(
        [expected, -expected, -expected, expected], abs=1e-5)
    assert grpo_advantages(rewards, scale_std=False).view(-1).tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    # a group whose samples all scored alike carries no signal, and groups do not mix
    two = grpo_advantages(t(2.0, 2.0, 2.0, 0.0, 3.0, 6.0).view(2, 3))
    assert two[0].tolist() == [0.0, 0.0, 0.0]
    assert two[1].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-3)  # mean 3, std 3


def test_rloo_advantages_leave_one_out():
    rewards = t(1.0, 0.0, 0.0, 1.0, 10.0, 10.0, 10.0, 10.0).view(2, 4)
    adv = rloo_advantages(rewards)
    # r = 1: baseline (0 + 0 + 1) / 3 = ⅓ -> ⅔; r = 0: baseline ⅔ -> -⅔; a flat group -> 0
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-6)
    assert adv[1].tolist() == [0.0] * 4
    # leave-one-out equals G/(G-1) times the mean-centred reward
    r = t(0.3, -1.2, 2.5).view(1, 3)
    assert adv.new_tensor(rloo_advantages(r).tolist()).allclose(1.5 * grpo_advantages(r, scale_std=False), atol=1e-6)
