"""The refusal direction: the difference in mean activations between harmful and harmless prompts. Pure functions.

Arditi et al. 2024 ("Refusal in language models is mediated by a single direction", Sec. 2.3): at a layer l
and the post-instruction position, r = mean_harmful(x) - mean_harmless(x); projecting activations onto r
separates the two sets, and removing r from the residual stream (ablation.py) removes refusal. Here each
model gets its own direction per layer; its separation is the AUROC of the projection on prompts the
direction was not fitted on (two folds, even and odd rows), since with a few dozen prompts in hundreds of
dimensions an in-sample difference of means separates almost anything.
"""

from __future__ import annotations

import math

from torch import Tensor

from caikit.stats import bootstrap_interval


def diff_in_means(harmful: Tensor, harmless: Tensor) -> Tensor:
    """r = mean(harmful) - mean(harmless) (Arditi et al. 2024, Eq. 1). (n1, d), (n0, d) -> (d,)."""
    return harmful.double().mean(0) - harmless.double().mean(0)


def unit(vector: Tensor) -> Tensor:
    """vector / ||vector|| (a zero vector stays zero)."""
    norm = vector.norm()
    return vector / norm if float(norm) > 0 else vector


def cosine(a: Tensor, b: Tensor) -> float:
    """cos(a, b); 0 when either is zero."""
    denominator = float(a.double().norm() * b.double().norm())
    return float(a.double() @ b.double()) / denominator if denominator > 0 else 0.0


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(a positive's score > a negative's), ties counting half: the Mann-Whitney U statistic over n1 * n0
    (Hanley & McNeil 1982, Eq. 1). 0.5 is chance, 1.0 perfect separation. NaN if either side is empty."""
    if not positive or not negative:
        return math.nan
    # U from the rank sum of the positives, tied scores sharing their mean rank: O(n log n), not n1 * n0
    scored = sorted([(x, 1) for x in positive] + [(x, 0) for x in negative])
    rank_sum, i = 0.0, 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j
        rank_sum += mean_rank * sum(label for _, label in scored[i:j])
        i = j
    n1, n0 = len(positive), len(negative)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def heldout_projections(harmful: Tensor, harmless: Tensor) -> tuple[list[float], list[float]]:
    """Each prompt's projection onto the unit direction fitted on the other fold (even rows <-> odd rows).
    (n1, d), (n0, d) -> (n1 scores, n0 scores); needs at least 2 prompts per side."""
    scores: tuple[list[float], list[float]] = ([0.0] * len(harmful), [0.0] * len(harmless))
    for fold in (0, 1):
        fit = unit(diff_in_means(harmful[1 - fold::2], harmless[1 - fold::2]))
        for side, rows in enumerate((harmful, harmless)):
            for i in range(fold, len(rows), 2):
                scores[side][i] = float(rows[i].double() @ fit)
    return scores


def separation(harmful: Tensor, harmless: Tensor, *, seed: int = 0) -> dict:
    """Held-out AUROC of the projection with its bootstrap interval (prompts resampled within each side), and d',
    the held-out mean difference in pooled standard deviations (the tie-break when AUROCs saturate at 1)."""
    pos, neg = heldout_projections(harmful, harmless)
    n_pos = len(pos)
    pooled = pos + neg

    def stat(sample_index):  # a resample of prompt indices; positives and negatives resampled together
        p = [pooled[i] for i in sample_index if i < n_pos]
        q = [pooled[i] for i in sample_index if i >= n_pos]
        return auroc(p, q) if p and q else 0.5

    mean_p, mean_q = sum(pos) / len(pos), sum(neg) / len(neg)
    var = (sum((x - mean_p) ** 2 for x in pos) + sum((x - mean_q) ** 2 for x in neg)) / max(len(pooled) - 2, 1)
    return {"auroc": auroc(pos, neg), "auroc_interval": bootstrap_interval(list(range(len(pooled))), stat,
                                                                           resamples=300, seed=seed),
            "d_prime": (mean_p - mean_q) / math.sqrt(var) if var > 0 else math.inf, "n_harmful": len(pos),
            "n_harmless": len(neg)}


def energy_share_along(shift: Tensor, direction: Tensor) -> float:
    """Share of the shift's energy along a direction: sum_i (s_i . r)^2 / sum_i ||s_i||^2 for unit r.
    shift: (N, d), direction: (d,). 1/d is what a random direction gets on average."""
    r = unit(direction.double())
    total = float((shift.double() ** 2).sum())
    return float(((shift.double() @ r) ** 2).sum()) / total if total > 0 else math.nan


def pick_layer(rows: list[dict], n_layers: int) -> int:
    """The layer whose after-model direction separates best (held-out AUROC, then d'), among the first 80 % of
    layers: Arditi et al. leave out the last layers, where a direction reads the output more than it steers it."""
    allowed = [r for r in rows if r["layer"] < max(1, math.ceil(0.8 * n_layers))] or rows
    best = max(allowed, key=lambda r: (round(r["after"]["auroc"], 6), r["after"]["d_prime"]))
    return int(best["layer"])
