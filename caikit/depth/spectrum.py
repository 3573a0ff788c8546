"""The shift's dimensions: how many directions carry the change M1 - M0 of the residual stream. Pure functions.

The shift matrix S (N, d) holds one row per (prompt, position): the after-model's activation minus the
before-model's on the same tokens. Its spectrum is the eigenvalues of the (uncentred) second moment
S^T S / N, i.e. the squared singular values of S over N: the mean shift is part of the change, not noise to
remove, so the matrix is not centred. Two summaries of how many directions the change needs:
  k(q)  the fewest directions holding a share q of the shift's energy (q = 0.5, 0.9), as in PCA's
        explained variance;
  PR    the participation ratio (sum lambda)^2 / sum lambda^2 (Gao et al. 2017, "A theory of multineuronal
        dimensionality"; Recanatesi et al. 2022 for network representations): 1 for one direction, k for k
        equal ones, a smooth count between.
Intervals resample prompts (all positions of a prompt together), through the Gram matrix S S^T so each
resample is one small symmetric eigen-decomposition.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def shift_spectrum(shift: Tensor) -> Tensor:
    """Eigenvalues of S^T S / N, descending. shift: (N, d) -> (min(N, d),) float64, all >= 0."""
    s = shift.double()
    return (torch.linalg.svdvals(s) ** 2 / max(s.size(0), 1)).clamp_min(0)


def directions_for(eigenvalues: Tensor, share: float) -> int:
    """The fewest leading directions whose eigenvalues sum to at least `share` of the total (0 if all are 0)."""
    total = float(eigenvalues.sum())
    if total <= 0:
        return 0
    cumulative = torch.cumsum(eigenvalues.double().sort(descending=True).values, 0) / total
    return int((cumulative < share - 1e-12).sum()) + 1


def participation_ratio(eigenvalues: Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2: the effective number of directions (Gao et al. 2017, Eq. 3); 0 if all 0."""
    lam = eigenvalues.double()
    denominator = float((lam ** 2).sum())
    return float(lam.sum()) ** 2 / denominator if denominator > 0 else 0.0


def effective_dims(eigenvalues: Tensor) -> dict[str, float]:
    """{k50, k90, participation_ratio} of one spectrum."""
    return {"k50": directions_for(eigenvalues, 0.5), "k90": directions_for(eigenvalues, 0.9),
            "participation_ratio": participation_ratio(eigenvalues)}


def top_directions(shift: Tensor, k: int) -> Tensor:
    """The k leading right singular vectors of S (the shift's main directions), as orthonormal columns (d, k)."""
    _, _, vh = torch.linalg.svd(shift.double(), full_matrices=False)
    return vh[:k].T.to(shift.dtype)


def bootstrap_dims(shift: Tensor, *, resamples: int = 200, seed: int = 0,
                   level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of k50, k90 and the participation ratio, resampling prompts.

    shift: (P, R, d), P prompts with R positions each. None per figure when P < 2."""
    P, R, d = shift.shape
    if P < 2:
        return {"k50": None, "k90": None, "participation_ratio": None}
    rows = shift.reshape(P * R, d).double()
    # (PR, PR): the nonzero eigenvalues of a resample's S^T S are those of its S S^T; float32 halves the cost of
    # the hundreds of decompositions and leaves the counts unchanged
    gram = (rows @ rows.T).float()
    generator = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {"k50": [], "k90": [], "participation_ratio": []}
    for _ in range(resamples):
        prompts = torch.randint(0, P, (P,), generator=generator)
        index = (prompts[:, None] * R + torch.arange(R)[None, :]).reshape(-1)
        eigenvalues = torch.linalg.eigvalsh(gram[index][:, index]).double().clamp_min(0) / (P * R)
        for key, value in effective_dims(eigenvalues).items():
            draws[key].append(float(value))
    # A resample repeats prompts, so it has fewer distinct rows and counts fewer directions than the full sample:
    # the percentile interval can miss the estimate, and the basic interval (2 theta - q) overshoots to the other
    # side. So the percentile interval is moved by the bootstrap's median bias, theta - median(draws) (an additive
    # form of Efron's bias correction, Efron & Tibshirani 1993, Sec. 14.3): its width is the resampling spread,
    # and it holds the estimate whenever the median of the draws lies inside their interval.
    full = effective_dims(shift_spectrum(rows))
    tail = (1 - level) / 2
    out = {}
    for key, values in draws.items():
        values.sort()
        bias = full[key] - values[len(values) // 2]
        low = values[int(math.floor(tail * (resamples - 1)))] + bias
        high = values[int(math.ceil((1 - tail) * (resamples - 1)))] + bias
        out[key] = (max(0.0, low), min(float(P * R), high) if key != "participation_ratio" else high)
    return out


def relative_size(shift: Tensor, before: Tensor) -> float:
    """||M1 - M0|| / ||M0|| over all rows (Frobenius): how large the change is beside the activations themselves."""
    norm = float(before.double().norm())
    return float(shift.double().norm()) / norm if norm > 0 else math.nan


def summary_line(layers: list[dict]) -> str:
    """"the shift lives in about k directions at layer L": L is the layer where the shift is largest relative to
    the activations, k its 90 % count (with the participation ratio beside it)."""
    sized = [row for row in layers if row.get("relative_size") is not None and not math.isnan(row["relative_size"])]
    if not sized or all(row["k90"] == 0 for row in sized):
        return "the two models' activations do not differ: there is no shift to measure"
    row = max(sized, key=lambda r: r["relative_size"])
    half = f"half of it in {row['k50']}; " if "k50" in row else ""
    return (f"the shift lives in about {row['k90']} directions at layer {row['layer']} "
            f"(90 % of its energy; {half}participation ratio {row['participation_ratio']:.1f})")
