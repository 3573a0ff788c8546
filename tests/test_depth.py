"""`caikit depth`: the math on hand-computed values, and planted structures in tiny random Llamas (real SmolLM2
tokenizer) whose right answer is known: a rank-2 change measured as 2 directions, a planted "refusal" direction
found and undone by ablation, a per-token KL concentrated in the first positions reported as such."""

from __future__ import annotations

import json
import math

import pytest
import torch

from caikit.depth.ablation import ablated, depth_verdict, project_out, recovered_share, steered
from caikit.depth.direction import auroc, cosine, diff_in_means, energy_share_along, separation
from caikit.depth.spectrum import (bootstrap_dims, directions_for, effective_dims, participation_ratio,
                                   shift_spectrum, summary_line, top_directions)
from caikit.depth.token_kl import even_share, head_share, head_summary, per_position, token_kl
from caikit.depth.weights import layer_type, lora_verdict, rank_r_share, weight_changes

# ------------------------------------------------------------------------------------ pure math, by hand


@pytest.mark.unit
def test_spectrum_counts_and_participation_ratio_by_hand():
    eig = torch.tensor([4.0, 3.0, 2.0, 1.0])  # cumulative shares .4 .7 .9 1
    assert directions_for(eig, 0.5) == 2 and directions_for(eig, 0.9) == 3 and directions_for(eig, 0.4) == 1
    assert participation_ratio(eig) == pytest.approx(100 / 30)  # (4+3+2+1)^2 / (16+9+4+1)
    assert participation_ratio(torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(2.0)
    assert effective_dims(torch.zeros(3)) == {"k50": 0, "k90": 0, "participation_ratio": 0.0}
    # S = diag(3, 4): singular values 4, 3; eigenvalues of S^T S / N with N = 2 rows
    assert shift_spectrum(torch.tensor([[3.0, 0.0], [0.0, 4.0]])).tolist() == pytest.approx([8.0, 4.5])


@pytest.mark.unit
def test_rank_two_shift_is_two_directions_with_a_tight_interval():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 2, generator=g))[0]  # (d, 2)
    coefficients = torch.randn(40, 3, 2, generator=g)  # 40 prompts x 3 positions, two comparable components
    shift = coefficients @ basis.T  # (40, 3, 32), rank 2
    dims = effective_dims(shift_spectrum(shift.reshape(-1, 32)))
    assert dims["k90"] == 2 and 1.5 < dims["participation_ratio"] <= 2.0
    intervals = bootstrap_dims(shift, resamples=50)
    assert intervals["k90"] == (2, 2)
    found = top_directions(shift.reshape(-1, 32), 2)  # spans the planted plane
    assert torch.linalg.matrix_norm(found.double() @ found.double().T - basis.double() @ basis.double().T) < 1e-6
    rows = [{"layer": 0, "relative_size": 0.0, "k90": 0, "participation_ratio": 0.0},
            {"layer": 1, "relative_size": 0.5, "k90": 2, "participation_ratio": 1.9}]
    assert summary_line(rows).startswith("the shift lives in about 2 directions at layer 1")


@pytest.mark.unit
def test_auroc_cosine_and_share_along_by_hand():
    # pairs (3,1) (3,2) (2,1) win, (2,2) ties: 3.5 / 4
    assert auroc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert auroc([1.0], [2.0]) == 0.0 and math.isnan(auroc([], [1.0]))
    assert diff_in_means(torch.tensor([[2.0, 0.0], [4.0, 2.0]]), torch.tensor([[1.0, 1.0]])).tolist() == [2.0, 0.0]
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    # rows (1, 1) and (2, 0) along (1, 0): (1 + 4) / (2 + 4)
    assert energy_share_along(torch.tensor([[1.0, 1.0], [2.0, 0.0]]), torch.tensor([3.0, 0.0])) == pytest.approx(5 / 6)


@pytest.mark.unit
def test_heldout_separation_of_a_clean_direction_is_perfect_and_of_noise_is_not():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(24, 16, generator=g)
    direction = torch.zeros(16)
    direction[3] = 6.0
    clean = separation(noise[:12] + direction, noise[12:])
    assert clean["auroc"] == 1.0 and clean["n_harmful"] == 12 and clean["auroc_interval"][0] > 0.9
    pure_noise = separation(noise[:12], noise[12:])
    assert pure_noise["auroc_interval"][0] < 0.5 < pure_noise["auroc_interval"][1] or pure_noise["auroc"] < 0.8


@pytest.mark.unit
def test_projection_recovered_share_and_verdicts():
    assert project_out(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0], [0.0], [0.0]])).tolist() == [[0, 2, 3]]
    assert recovered_share(0.1, 0.9, 0.5) == pytest.approx(0.5)  # (0.9 - 0.5) / (0.9 - 0.1)
    assert recovered_share(0.3, 0.3, 0.1) is None
    assert depth_verdict(0.9, (0.7, 1.0), True).startswith("shallow")
    assert depth_verdict(0.1, (0.0, 0.3), True).startswith("deep")
    assert depth_verdict(0.5, (0.2, 0.8), True).startswith("undecided")
    assert depth_verdict(0.9, (0.7, 1.0), False).startswith("no verdict")


@pytest.mark.unit
def test_token_kl_by_hand_and_head_share():
    # p_after = (1/2, 1/2), p_before = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    logits_a = torch.log(torch.tensor([[[0.5, 0.5]]]))
    logits_b = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert float(token_kl(logits_a, logits_b)[0, 0]) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    assert float(token_kl(logits_a, logits_a)[0, 0]) == pytest.approx(0.0, abs=1e-7)
    kl = torch.tensor([[2.0, 1.0, 0.5, 0.5], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert head_share(kl, mask, head=1) == pytest.approx(5 / 7)  # (2 + 3) / (2 + 1 + .5 + .5 + 3)
    assert even_share(mask, head=1) == pytest.approx(2 / 6)
    assert [p["n"] for p in per_position(kl, mask)] == [2, 2, 1, 1]
    assert per_position(kl, mask)[0]["kl"] == pytest.approx(2.5)


@pytest.mark.unit
def test_kl_concentrated_in_the_first_positions_is_reported_as_such():
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(30, 40, dtype=torch.bool)
    early = torch.rand(30, 40, generator=g) * 0.01
    early[:, :3] += 1.0 + torch.rand(30, 3, generator=g)  # most KL in positions 0-2, as Qi et al. 2024 find
    summary = head_summary(early, mask)
    assert summary["share"] > 0.8 and summary["interval"][0] > summary["even_share"] == pytest.approx(5 / 40)
    assert summary["verdict"].startswith("concentrated in the first 5 tokens")
    flat = torch.rand(30, 40, generator=g)
    assert not head_summary(flat, mask)["verdict"].startswith("concentrated")


@pytest.mark.unit
def test_weight_change_rank_and_lora_sufficiency_by_hand():
    assert layer_type("model.layers.3.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert rank_r_share(torch.tensor([2.0, 1.0]), 1) == pytest.approx(0.8)  # 4 / (4 + 1)
    g = torch.Generator().manual_seed(0)
    before = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(16, 24, generator=g) for i in range(2)}
    after = {k: v + torch.randn(16, 2, generator=g) @ torch.randn(2, 24, generator=g) for k, v in before.items()}
    before["model.embed_tokens.weight"] = after["model.embed_tokens.weight"] = torch.zeros(5, 16)
    result = weight_changes(before, after, ranks=(1, 2, 8))
    (row,) = result["types"]
    assert row["type"] == "mlp.down_proj" and row["changed"] == 2 and row["max_k90"] <= 2
    assert row["median_rank_share"]["2"] == pytest.approx(1.0)
    assert result["verdict"].startswith("a LoRA of rank 2 would have sufficed")
    assert lora_verdict([], (8,)) == "no weight changed"
