"""Weights, when both models are full checkpoints: the singular values of each matrix's change dW = W1 - W0.

By Eckart-Young (1936), the best rank-r approximation of dW keeps the r largest singular values, so the share
of ||dW||_F^2 they hold is the most a LoRA of rank r (Hu et al. 2021, Eq. 3: dW = B A, rank r) could have
reproduced of this change. Per layer type (q_proj, down_proj, ...) the median over layers of the effective
rank (the fewest singular values holding 90 % of the change's energy) and of that rank-r share.
"""

from __future__ import annotations

import re
import statistics

import torch
from torch import Tensor

from caikit.depth.spectrum import directions_for, participation_ratio

LAYER_INDEX = re.compile(r"\.\d+\.")


def layer_type(name: str) -> str:
    """"model.layers.3.self_attn.q_proj.weight" -> "self_attn.q_proj" (the same matrix across layers)."""
    parts = name.split(".")
    digits = [i for i, p in enumerate(parts) if p.isdigit()]
    tail = parts[digits[-1] + 1:] if digits else parts
    return ".".join(p for p in tail if p != "weight") or name


def layer_number(name: str) -> int | None:
    found = LAYER_INDEX.search(name)
    return int(found.group(0).strip(".")) if found else None


def delta_spectrum(before: Tensor, after: Tensor) -> Tensor:
    """Singular values of dW = after - before, descending. (m, n), (m, n) -> (min(m, n),) float64."""
    # the difference in float64 (a small change of a large weight), the decomposition in float32 (its cost)
    return torch.linalg.svdvals((after.double() - before.double()).float()).double()


def rank_r_share(singular_values: Tensor, r: int) -> float:
    """sum_{i<r} s_i^2 / sum s_i^2: the share of ||dW||_F^2 the best rank-r matrix keeps (Eckart-Young). 1 if dW = 0."""
    energy = singular_values.double() ** 2
    total = float(energy.sum())
    return float(energy[:r].sum()) / total if total > 0 else 1.0


def matrix_change(name: str, before: Tensor, after: Tensor, ranks: tuple[int, ...]) -> dict:
    """One weight matrix's change: relative size, effective rank (90 %), participation ratio, rank-r shares."""
    sv = delta_spectrum(before, after)
    energy = sv ** 2
    base = float(before.double().norm())
    return {"name": name, "type": layer_type(name), "layer": layer_number(name), "shape": list(before.shape),
            "relative_change": float(sv.norm()) / base if base > 0 else float("nan"),
            "k90": directions_for(energy, 0.9), "participation_ratio": participation_ratio(energy),
            "rank_share": {str(r): rank_r_share(sv, r) for r in ranks},
            "singular_values": [float(x) for x in sv[:32]]}


def weight_changes(before_params: dict[str, Tensor], after_params: dict[str, Tensor],
                   ranks: tuple[int, ...] = (8, 16, 64), *, skip_embeddings: bool = True) -> dict:
    """Every 2-D weight both checkpoints share with the same shape, summarised per layer type.
    Embeddings and the output layer are left out by default (vocabulary-sized and rarely what a LoRA targets)."""
    matrices = []
    for name, w0 in before_params.items():
        w1 = after_params.get(name)
        if w1 is None or w0.dim() != 2 or w1.shape != w0.shape:
            continue
        if skip_embeddings and ("embed" in name or "lm_head" in name or "wte" in name or "wpe" in name):
            continue
        matrices.append(matrix_change(name, w0, w1, ranks))
    by_type: dict[str, list[dict]] = {}
    for row in matrices:
        by_type.setdefault(row["type"], []).append(row)
    types = []
    for kind, rows in by_type.items():
        changed = [r for r in rows if r["k90"] > 0]
        types.append({"type": kind, "matrices": len(rows), "changed": len(changed),
                      "median_k90": statistics.median([r["k90"] for r in changed]) if changed else 0,
                      "max_k90": max((r["k90"] for r in changed), default=0),
                      "median_relative_change": statistics.median([r["relative_change"] for r in rows]),
                      "median_rank_share": {str(k): statistics.median([r["rank_share"][str(k)] for r in changed])
                                            if changed else 1.0 for k in ranks}})
    return {"ranks": list(ranks), "types": types, "matrices": matrices, "verdict": lora_verdict(types, ranks)}


def lora_verdict(types: list[dict], ranks: tuple[int, ...], keep: float = 0.9) -> str:
    """Would a LoRA of rank r have sufficed? The smallest r in `ranks` whose median share is >= keep in every type."""
    changed = [t for t in types if t["changed"]]
    if not changed:
        return "no weight changed"
    for r in sorted(ranks):
        if all(t["median_rank_share"][str(r)] >= keep for t in changed):
            return (f"a LoRA of rank {r} would have sufficed: rank {r} keeps >= {keep:.0%} of the median matrix "
                    f"change in every layer type")
    worst = min(changed, key=lambda t: t["median_rank_share"][str(max(ranks))])
    return (f"the change is not low-rank: even rank {max(ranks)} keeps only "
            f"{worst['median_rank_share'][str(max(ranks))]:.0%} of the median {worst['type']} change")
