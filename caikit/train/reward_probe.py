"""`caikit train reward --freeze-backbone`: a Bradley-Terry linear probe on a frozen backbone.

Only a scalar head w is trained, on the backbone's features at the last token of each sequence (the EOS
that closes the response), taken after the first `--probe-layer` blocks and the model's final norm:
r(x) = w · norm(h_k(x)). The saved model is the backbone cut to those k blocks with w as its score head,
a plain `AutoModelForSequenceClassification`, so `caikit score` and `caikit eval --reward-model` load it
like a fully trained reward model and reproduce the probe's scores. Cutting the blocks also makes every
forward pass cheaper: on SmolLM2 the features after 4 of 30 blocks cross-validate as well as any up to block
12 (deeper ones gain about a point at 4-5x the cost; docs/reward-probe.md has the measurements).

Sequences keep their last --max-length tokens (the end of the conversation and the whole final reply).
Features are cached on disk under `caikit.models.cache_root()/features`, keyed by the backbone's
fingerprint, the layer, the pooling and a hash of the token ids (which already encode the template and
--max-length), so a rerun skips every forward pass.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from caikit.errors import UserError
from caikit.store import temporary_path
from caikit.train.loop import note

if TYPE_CHECKING:  # annotations only: `--help` answers without loading torch
    from torch import Tensor

COMMAND = "train reward"
POOLING = "last-token"
EXTRACT_BATCH = 16  # sequences per forward pass when extracting features (length-sorted, little padding)
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # --probe-l2 0 picks one by cross-validation
CV_FOLDS = 5


# ------------------------------------------------------------------------------------------ sequences

def probe_sequences(tokenizer, triples: list[dict], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids [chosen_0, rejected_0, chosen_1, ...], each the chat-templated prompt + reply + EOS cut to
    its last `max_length` tokens; and how many were cut. Up to max_length they equal what `caikit score`
    feeds the saved model (`reward.reward_input_ids`)."""
    from caikit.train.data import encode_prompt_response

    sequences, cut = [], 0
    for t in triples:
        for side in ("chosen", "rejected"):
            prompt_ids, response_ids = encode_prompt_response(tokenizer, t["prompt"], t[side])
            ids = prompt_ids + response_ids
            cut += len(ids) > max_length
            sequences.append(ids[-max_length:])
    return sequences, cut


# ------------------------------------------------------------------------------------------- features

def cut_backbone(model, layers: int):
    """Keep the first `layers` blocks of a causal-LM backbone in place (0: all); returns the model.

    The final norm stays, so the cut model's last hidden state is norm(h_k): the probe's features."""
    backbone = getattr(model, model.base_model_prefix, model)
    total = len(backbone.layers)
    if layers < 0 or layers > total:
        raise UserError(f"--probe-layer {layers}: the backbone has {total} blocks (use 1..{total}, or 0 for all)")
    if layers and layers < total:
        backbone.layers = backbone.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    return model


def backbone_fingerprint(model_path: str) -> str:
    """Cheap identity of a model directory: its config plus the names, sizes and mtimes of its weights (a hub id
    is taken by name: a new upload under the same id needs the cache folder cleared)."""
    path = Path(model_path)
    if not path.is_dir():
        return f"hub:{model_path}"
    parts = [(path / "config.json").read_text(encoding="utf-8")]
    for weights in sorted(path.glob("*.safetensors")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def feature_cache_path(fingerprint: str, layer: int, sequences: list[list[int]]) -> Path:
    from caikit.models import cache_root

    digest = hashlib.sha256()
    digest.update(json.dumps([fingerprint, layer, POOLING]).encode("utf-8"))
    for ids in sequences:
        digest.update(json.dumps(ids).encode("utf-8"))
    return cache_root() / "features" / f"{digest.hexdigest()[:24]}.safetensors"


def extract_features(backbone, sequences: list[list[int]], pad_token_id: int, device) -> Tensor:
    """(N, H) last-token features of `backbone` (a base model: its last_hidden_state is normed), one row per
    sequence in input order; batches are length-sorted and right-padded."""
    from caikit.progress import step_bar

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: Tensor | None = None
    bar = step_bar(total=len(sequences), desc="features", unit="seq")
    with torch.no_grad():
        for k in range(0, len(order), EXTRACT_BATCH):
            idx = order[k:k + EXTRACT_BATCH]
            T = max(len(sequences[i]) for i in idx)
            ids = torch.tensor([sequences[i] + [pad_token_id] * (T - len(sequences[i])) for i in idx], device=device)
            mask = torch.tensor([[1] * len(sequences[i]) + [0] * (T - len(sequences[i])) for i in idx], device=device)
            hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
            last = hidden[torch.arange(len(idx), device=device), mask.sum(1) - 1].float().cpu()  # (B, H)
            if out is None:
                out = torch.empty(len(sequences), last.size(1))
            out[idx] = last
            bar.update(len(idx))
    bar.close()
    return out


def reward_model(backbone, w: Tensor, pad_token_id: int):
    """An `AutoModelForSequenceClassification` (num_labels=1) made of `backbone`'s weights and `w` as the
    score head: r(x) = w · last_hidden_state[last non-pad token], what the probe was fitted on."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(backbone.config)
    config.num_labels, config.pad_token_id = 1, pad_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    getattr(model, model.base_model_prefix).load_state_dict(backbone.state_dict())
    with torch.no_grad():
        model.score.weight.copy_(w[None, :].to(model.score.weight.dtype))
    return model.eval()


def cached_features(backbone, model_path: str, layer: int, sequences: list[list[int]], pad_token_id: int,
                    device) -> tuple[Tensor, bool]:
    """(features (N, H) of `backbone`, whether they came from the cache); computed ones are stored for the
    next run."""
    from safetensors.torch import load_file, save_file

    path = feature_cache_path(backbone_fingerprint(model_path), layer, sequences)
    if path.exists():
        return load_file(str(path))["features"], True
    features = extract_features(backbone.to(device).eval(), sequences, pad_token_id, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    save_file({"features": features.contiguous()}, str(tmp))
    tmp.replace(path)  # atomic: a killed run leaves no half-written cache entry
    return features, False


# ------------------------------------------------------------------------------------------ the head

def fit_head(chosen: Tensor, rejected: Tensor, soft_labels: Tensor | None, margin: Tensor | None,
             l2: float) -> Tensor:
    """Score-head weights w (H,) so that r(x) = w · x, fitted by Bradley-Terry with an L2 penalty.

    chosen, rejected: (B, H) features of each pair's two sequences; soft_labels: (B,) P(chosen preferred) or
    None (hard labels); margin: (B,) or None. Features are standardised per dimension for the fit (so one l2
    suits any backbone) and w is mapped back to raw features. Bradley-Terry fixes only score differences; the
    fit is kept orthogonal to the mean feature, so the mean score over these sequences is 0 and σ(r) centres
    on 0.5 instead of wherever the unidentified level happened to land.
    """
    from caikit.train.losses import bradley_terry_loss

    both = torch.cat([chosen, rejected]).double()  # (2B, H)
    scale = both.std(0).clamp_min(1e-6)  # (H,)
    mean_dir = both.mean(0) / scale
    mean_dir = mean_dir / mean_dir.norm().clamp_min(1e-12)
    diff = (chosen.double() - rejected.double()) / scale  # (B, H) standardised x_c - x_r
    diff = diff - (diff @ mean_dir)[:, None] * mean_dir  # no component along the mean: the level stays 0
    w = torch.zeros(diff.size(1), dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(diff.size(0), dtype=torch.float64)
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # Δ = w·(x_c - x_r) enters as r_c - r_r; Bradley & Terry 1952 (Eq. 1, Ouyang et al. 2022) plus ridge
        loss = bradley_terry_loss(diff @ w, zero, margin, soft_labels).mean() + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (w.detach() / scale).float()


def pair_accuracy(w: Tensor, chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs with r(chosen) > r(rejected); 0 pairs -> nan."""
    if len(chosen) == 0:
        return float("nan")
    return float((chosen @ w > rejected @ w).double().mean())


def choose_l2(chosen: Tensor, rejected: Tensor, soft_labels: Tensor | None, margin: Tensor | None,
              seed: int) -> tuple[float, list[dict]]:
    """The L2 strength from L2_GRID with the lowest k-fold cross-validated Bradley-Terry loss on the training
    pairs (a probe on ~1,000 pairs of 576 features overfits without it: 0.98 train accuracy was seen), and
    the table [{"l2", "cv_loss", "cv_accuracy"}] it was chosen from. Needs at least CV_FOLDS pairs."""
    from caikit.train.losses import bradley_terry_loss

    def pick(values: Tensor | None, rows: list[int]) -> Tensor | None:
        return None if values is None else values[rows]

    n = len(chosen)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    folds = [order[i::CV_FOLDS] for i in range(CV_FOLDS)]
    table = []
    for l2 in L2_GRID:
        loss, correct = 0.0, 0.0
        for held in folds:
            kept = sorted(set(order) - set(held))
            w = fit_head(chosen[kept], rejected[kept], pick(soft_labels, kept), pick(margin, kept), l2)
            delta = chosen[held] @ w - rejected[held] @ w
            loss += float(bradley_terry_loss(delta, torch.zeros_like(delta), pick(margin, held),
                                             pick(soft_labels, held)).sum())
            correct += float((delta > 0).sum())
        table.append({"l2": l2, "cv_loss": loss / n, "cv_accuracy": correct / n})
    best = min(table, key=lambda row: row["cv_loss"])
    return best["l2"], table


# ------------------------------------------------------------------------------------------- training

def train_probe(cfg) -> str:
    """Train and save the probe for a RewardConfig with freeze_backbone set; returns the output dir."""
    from dataclasses import asdict

    from transformers import AutoModel

    from caikit.metrics import MetricsLogger
    from caikit.models import resolve_model_path
    from caikit.train.checkpoint import save_pretrained
    from caikit.train.data import split_rows
    from caikit.train.loop import load_pretrained, load_train_tokenizer, read_training_data
    from caikit.train.heldout import heldout_summary, write_summary
    from caikit.trackers import open_tracker

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_train_tokenizer(cfg.model)

    # data: the same held-out split as the full trainer (split_rows, --eval-fraction, --seed)
    triples, _ = read_training_data(COMMAND, cfg, "pairs")  # caikit.rows: hh transcripts split into turns
    train_triples, eval_triples = split_rows(triples, cfg.eval_fraction, cfg.seed)
    if len(train_triples) < CV_FOLDS:
        raise UserError(f"--freeze-backbone needs at least {CV_FOLDS} training pairs, got {len(train_triples)}",
                        path=", ".join(cfg.data) if isinstance(cfg.data, list) else cfg.data)
    sequences, cut = probe_sequences(tokenizer, train_triples + eval_triples, cfg.max_length)
    if cut:
        note(COMMAND, f"{cut} of {len(sequences)} sequences longer than --max-length {cfg.max_length} keep "
                      "their last tokens")

    # features: the backbone cut to --probe-layer blocks, one forward pass per sequence (or the cache)
    backbone = cut_backbone(load_pretrained(AutoModel, cfg.model), cfg.probe_layer)
    layer = backbone.config.num_hidden_layers
    extract_started = time.perf_counter()
    features, hit = cached_features(backbone, resolve_model_path(cfg.model), layer, sequences,
                                    tokenizer.pad_token_id, device)
    feature_seconds = time.perf_counter() - extract_started
    note(COMMAND, f"features of {len(sequences)} sequences after block {layer}: "
                  + ("from the cache" if hit else f"{feature_seconds:.0f} s"))
    chosen, rejected = features[0::2], features[1::2]  # (P, H) each, pairs in train + eval order
    n_train = len(train_triples)

    # the head: L2 strength by cross-validation on the training pairs, then one fit on all of them;
    # soft labels where any training row carries p_chosen (the rest count as 1.0, a human or rule label)
    p_chosen = [t["p_chosen"] for t in train_triples]
    soft = torch.tensor([1.0 if p is None else p for p in p_chosen], dtype=torch.float64) \
        if cfg.use_soft_labels and any(p is not None for p in p_chosen) else None
    margin = torch.tensor([t["margin"] for t in train_triples], dtype=torch.float64) if cfg.use_margin else None
    train_c, train_r = chosen[:n_train], rejected[:n_train]
    l2, cv_table = (cfg.probe_l2, []) if cfg.probe_l2 > 0 else choose_l2(train_c, train_r, soft, margin, cfg.seed)
    w = fit_head(train_c, train_r, soft, margin, l2)

    # honest figures: held-out accuracy with its interval beside the length-only baseline on the same pairs
    summary = heldout_summary(pair_accuracy(w, chosen[n_train:], rejected[n_train:]), eval_triples,
                              train_accuracy=pair_accuracy(w, train_c, train_r), train_pairs=n_train)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    metrics = MetricsLogger(cfg.out, tracker=open_tracker(cfg.report_to, cfg.out, asdict(cfg)))
    for step, row in enumerate(cv_table):
        metrics.log(step, **row)
    metrics.log(len(cv_table), **summary)
    metrics.close()
    summary["probe"] = {"layer": layer, "pooling": POOLING, "max_length": cfg.max_length, "l2": l2,
                        "cross_validation": cv_table, "features_cached": hit,
                        "feature_seconds": round(feature_seconds, 1)}

    # save: the cut backbone with w as its score head, loadable by `caikit score` / `caikit eval`
    save_pretrained(reward_model(backbone.cpu(), w, tokenizer.pad_token_id), tokenizer, cfg, cfg.out)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_summary(cfg.out, summary)
    note(COMMAND, f"saved reward probe to {cfg.out}")
    return str(cfg.out)
