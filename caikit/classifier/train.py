"""`caikit classifier train`: a guard on labelled rows (files through caikit.rows, or the bundled suites).

Recipe (the fast CPU path, `--method frozen`): the backbone cut to its first `--layer` blocks, its feature at
the last token of each row (cached on disk, keyed by the backbone, layer and token ids: a rerun does no forward
pass), and an L2-regularised logistic-regression head fitted on the training split, its L2 strength picked on
the validation split by AUROC. The threshold is the lowest score whose false-positive rate on validation is
<= --max-fpr. Figures on the test split (held out by category and by source prompt: caikit/classifier/split.py)
go into guard.json beside the keyword baseline at equal FPR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from caikit.classifier.model import GUARD_FILE, TARGETS, guard_ids
from caikit.config import option
from caikit.errors import UserError
from caikit.records import canonical_json

if TYPE_CHECKING:
    from torch import Tensor

COMMAND = "classifier train"
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
BUNDLED = "bundled"


@dataclasses.dataclass
class ClassifierTrainConfig:
    data: list[str] = option([], help="labelled rows (prompt or messages, optional response, label, category, "
                                      "source_id): files or directories through the row reader (a `caikit "
                                      "classifier data` directory: data.jsonl, or output_data.jsonl for --target "
                                      "output); `bundled`: the bundled suites (caikit/data/suites, 1,042 "
                                      "human-written requests)")
    extra_train: list[str] = option([], help="more labelled rows for the training split only (e.g. `caikit "
                                             "classifier data` output): never validated or tested on; rows near a "
                                             "validation or test row are dropped")
    target: str = option("input", help="input (the conversation) | output (the response, every prefix)",
                         metadata={"choices": list(TARGETS)})
    model: str = option("smollm2", help="backbone: smollm2 (embedded SmolLM2-135M) | directory | HF id")
    method: str = option("frozen", help="frozen (linear head on frozen features: the fast CPU path) | lora "
                                        "(adapters on the cut backbone too) | full (all its weights)",
                         metadata={"choices": ["frozen", "lora", "full"]})
    epochs: int = option(1, low=1, high=1000, help="--method lora | full: passes over the training rows")
    lr: float = option(1e-4, above=0, high=1, help="--method lora | full: AdamW learning rate")
    lora_r: int = option(8, low=1, high=1024, help="--method lora: adapter rank")
    batch_size: int = option(8, low=1, high=4096, help="--method lora | full: rows per step")
    layer: int = option(12, low=0, high=1000, help="blocks of the backbone the features are taken after (0: all)")
    constitution: str = option("hhh", help="constitution whose categories the guard records")
    max_fpr: float = option(0.02, above=0, below=1, help="the threshold keeps the validation false-positive "
                                                         "rate at or under this")
    max_length: int = option(256, low=8, high=100_000, help="tokens per row (the last ones kept)")
    test_categories: float = option(0.25, low=0, below=1, help="share of categories held out for test")
    test_sources: float = option(0.15, low=0, below=1, help="share of source prompts held out for test")
    val_sources: float = option(0.15, above=0, below=1, help="share of source prompts for validation")
    dedup: float = option(0.8, above=0, high=1, help="drop rows whose word-3-gram Jaccard with a kept row of "
                                                     "the same label is at least this (1: exact copies only)")
    device: str = option("", help="cpu | cuda (default: cuda if available)")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the split")
    out: str = option("outputs/guard", help="output directory")

    def validate(self) -> None:
        if not self.data:
            raise UserError("--data is required: labelled rows, or `bundled`")


def bundled_paths() -> list[Path]:
    from caikit.eval.harm import bundled_suites_dir

    return [bundled_suites_dir() / n for n in ("harmful.jsonl", "benign.jsonl", "guard_extra.jsonl")]


def category_family(category: str) -> str:
    """XSTest pairs each safe type with an unsafe `contrast_` one; a family keeps a pair on one side."""
    family = category.removeprefix("contrast_")
    return {"discr": "discrimination", "real_group_nons_discr": "discrimination",
            "nons_group_real_discr": "discrimination", "privacy_public": "privacy",
            "privacy_fictional": "privacy"}.get(family, family)


def guard_data_file(given: str, target: str) -> Path:
    """A `caikit classifier data` directory gives the rows of the guard being trained: data.jsonl (input) or
    output_data.jsonl (output, from --responses); any other path is read as it is."""
    from caikit.classifier.responses import OUTPUT_DATA

    path = Path(given)
    if target != "output" or not (path / "data.jsonl").is_file() and not (path / OUTPUT_DATA).is_file():
        return path
    if not (path / OUTPUT_DATA).is_file():
        raise UserError(f"no {OUTPUT_DATA}: an output guard trains on replies (`caikit classifier data "
                        "--responses N`)", path=given)
    return path / OUTPUT_DATA


def read_rows(data: list[str], target: str = "input") -> list:
    from caikit.rows import read_guard_rows

    rows = []
    for given in data:
        for path in (bundled_paths() if given == BUNDLED else [guard_data_file(given, target)]):
            rows += read_guard_rows(path).items
    for row in rows:
        row.category = category_family(row.category) or "uncategorised"
    return rows


def check_rows_fit(rows: list, target: str, given: str) -> None:
    """An output guard's rows each need a response. An input guard sees the request alone, so one request must
    not carry both labels: that is what rows labelled for their replies look like (output_data.jsonl: the
    request complied with is harmful, the same request refused is not), and a guard trained on them would be
    taught to flag and to pass the very same input."""
    if target == "output":
        wrong = [r for r in rows if r.response is None]
        what = f"an output guard needs a 'response' in every row; {len(wrong)} of {len(rows)} have none"
    else:
        requests = [canonical_json(r.prompt) for r in rows]
        labels: dict[str, set] = {}
        for request, r in zip(requests, rows):
            labels.setdefault(request, set()).add(r.label)
        both = {request for request, seen in labels.items() if len(seen) == 2}
        wrong = [r for request, r in zip(requests, rows) if request in both]
        what = (f"{len(both)} requests are labelled both harmful and harmless (here and {len(wrong) - 1} other rows); "
                "an input guard sees the request alone. Rows labelled for their replies (output_data.jsonl) train "
                "an output guard: --target output")
    if wrong:
        raise wrong[0].place.error(what) if wrong[0].place else UserError(what, path=given)


def data_hash(rows: list) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r.prompt, r.response, r.label, r.category, r.source_id]).encode("utf-8"))
    return digest.hexdigest()


def fit_logistic(x: Tensor, y: Tensor, l2: float, steps: int = 200) -> tuple[Tensor, float]:
    """(w (H,), b) minimising mean BCE(sigmoid(x w + b), y) + l2 |w|^2 on standardised features (so one L2 grid
    suits any backbone), returned for raw features: w / std, b - (mean / std) . w. x: (N, H), y: (N,) 0/1."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.size(1), dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    target = y.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / std).detach()
    return w_raw, float(b.detach() - (mean / std * w.detach()).sum())


def probabilities(x: Tensor, w: Tensor, b: float) -> list[float]:
    return torch.sigmoid(x.double() @ w + b).tolist()


def row_text(row) -> str:
    return " ".join(m["content"] for m in row.prompt) + (" " + row.response if row.response else "")


def train_guard(cfg: ClassifierTrainConfig) -> int:
    from transformers import AutoModel

    from caikit.categories import categories_hash
    from caikit.classifier.metrics import (
        binary_metrics,
        keyword_flag,
        recall_at_fpr,
        scored_metrics,
        threshold_for_fpr,
    )
    from caikit.classifier.split import drop_near_duplicates, heldout_split
    from caikit.constitution import load_constitution
    from caikit.models import resolve_model_path
    from caikit.store import write_jsonl_atomic
    from caikit.train.checkpoint import save_pretrained
    from caikit.train.loop import load_pretrained, load_train_tokenizer, note
    from caikit.train.reward_probe import cached_features, cut_backbone, reward_model

    started = time.perf_counter()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    constitution = load_constitution(cfg.constitution)
    rows = read_rows(cfg.data, cfg.target)
    check_rows_fit(rows, cfg.target, ", ".join(cfg.data))
    rows, dropped = drop_near_duplicates(rows, row_text, cfg.dedup)
    split = heldout_split(rows, test_categories=cfg.test_categories, test_sources=cfg.test_sources,
                          val_sources=cfg.val_sources, seed=cfg.seed)
    for side in ("train", "validation", "test"):
        labels = {r.label for r in split[side]}
        if labels != {True, False}:
            raise UserError(f"the {side} split has {len(split[side])} rows and not both labels; give more rows or "
                            "other --test-* / --val-sources shares", path=", ".join(cfg.data))
    extra_added = 0
    if cfg.extra_train:
        held = split["validation"] + split["test"]
        extra = read_rows(cfg.extra_train, cfg.target)
        check_rows_fit(extra, cfg.target, ", ".join(cfg.extra_train))
        extra = [r for r in extra if r.category not in split["held_out_categories"]]
        kept, _ = drop_near_duplicates(held + extra, row_text, cfg.dedup)
        extra_ids = {id(r) for r in extra}
        survivors = [r for r in kept if id(r) in extra_ids]
        split["train"] += survivors
        extra_added = len(survivors)
    note(COMMAND, f"{len(rows)} rows ({dropped} near-duplicates dropped; {extra_added} --extra-train rows): train {len(split['train'])}, validation "
                  f"{len(split['validation'])}, test {len(split['test'])} (held-out categories: "
                  f"{', '.join(split['held_out_categories']) or 'none'})")

    tokenizer = load_train_tokenizer(cfg.model)
    ordered = split["train"] + split["validation"] + split["test"]
    sequences = [guard_ids(tokenizer, r.prompt, r.response if cfg.target == "output" else None)[0][-cfg.max_length:]
                 for r in ordered]
    backbone = cut_backbone(load_pretrained(AutoModel, cfg.model), cfg.layer)
    layer = backbone.config.num_hidden_layers
    t0 = time.perf_counter()
    features, hit = cached_features(backbone, resolve_model_path(cfg.model), layer, sequences,
                                    tokenizer.pad_token_id, device)
    feature_seconds = time.perf_counter() - t0
    n_train, n_val = len(split["train"]), len(split["validation"])
    x = {"train": features[:n_train], "validation": features[n_train:n_train + n_val],
         "test": features[n_train + n_val:]}
    y = {side: torch.tensor([float(r.label) for r in split[side]]) for side in x}

    # the head: L2 picked on validation AUROC, then the threshold for --max-fpr on validation
    from caikit.classifier.metrics import auroc

    grid = []
    for l2 in L2_GRID:
        w, b = fit_logistic(x["train"], y["train"], l2)
        grid.append((auroc(probabilities(x["validation"], w, b), y["validation"].bool().tolist()) or 0.0, -l2, w, b))
    best = max(grid, key=lambda g: (g[0], g[1]))
    w, b, l2 = best[2], best[3], -best[1]
    val_scores = probabilities(x["validation"], w, b)
    if cfg.method != "frozen":  # the backbone trains too, from the frozen fit
        from caikit.classifier.finetune import finetune, scores

        backbone, w, b = finetune(backbone, w, b, sequences[:n_train], y["train"].tolist(), method=cfg.method,
                                  epochs=cfg.epochs, lr=cfg.lr, lora_r=cfg.lora_r, batch_size=cfg.batch_size,
                                  pad=tokenizer.pad_token_id, device=device, seed=cfg.seed)
        val_scores = scores(backbone, w, b, sequences[n_train:n_train + n_val], tokenizer.pad_token_id, device)
        test_scores = scores(backbone, w, b, sequences[n_train + n_val:], tokenizer.pad_token_id, device)
    threshold = threshold_for_fpr(val_scores, y["validation"].bool().tolist(), cfg.max_fpr)

    # honest figures on the held-out test split, overall and per category, beside the keyword baseline
    if cfg.method == "frozen":
        test_scores = probabilities(x["test"], w, b)
    test_labels = y["test"].bool().tolist()
    overall = scored_metrics(test_scores, test_labels, threshold, cfg.seed)
    keyword = binary_metrics([keyword_flag(row_text(r)) for r in split["test"]], test_labels)
    equal_fpr = recall_at_fpr(test_scores, test_labels, keyword["fpr"] or 0.0)
    per_category = {}
    for category in sorted({r.category for r in split["test"]}):
        idx = [i for i, r in enumerate(split["test"]) if r.category == category]
        per_category[category] = scored_metrics([test_scores[i] for i in idx], [test_labels[i] for i in idx],
                                                threshold, cfg.seed)
    heldout = {"on": f"{len(split['test'])} test rows held out by category and source prompt", **overall,
               "keyword_baseline": keyword, "recall_at_keyword_fpr": equal_fpr, "per_category": per_category,
               "validation_auroc": auroc(val_scores, y["validation"].bool().tolist())}

    out = Path(cfg.out)
    save_pretrained(reward_model(backbone.cpu(), w.float(), tokenizer.pad_token_id), tokenizer, cfg, out)
    config = {"target": cfg.target, "method": cfg.method, "base_model": cfg.model, "layer": layer,
              "bias": b, "threshold": threshold, "max_fpr": cfg.max_fpr, "l2": l2, "max_length": cfg.max_length,
              "categories": [dataclasses.asdict(c) for c in constitution.categories],
              "categories_hash": categories_hash(constitution.categories), "constitution": constitution.name,
              "data": cfg.data, "data_hash": data_hash(rows), "rows": {side: len(split[side]) for side in x},
              "near_duplicates_dropped": dropped, "extra_train": cfg.extra_train, "extra_train_rows": extra_added,
              "held_out_categories": split["held_out_categories"],
              "features_cached": hit, "feature_seconds": round(feature_seconds, 1),
              "seconds": round(time.perf_counter() - started, 1), "heldout": heldout}
    (out / GUARD_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_jsonl_atomic(out / "test_rows.jsonl", ({"id": r.id, "prompt": r.prompt, "response": r.response,
                                                  "label": r.label, "category": r.category,
                                                  "source_id": r.source_id} for r in split["test"]))
    print(format_heldout(heldout, threshold, cfg.max_fpr))
    print(f"caikit classifier train: {cfg.target} guard saved to {out} ({config['seconds']:.0f} s, features "
          + ("from the cache" if hit else f"{feature_seconds:.0f} s") + ")")
    return 0


def _iv(m: dict, key: str) -> str:
    value, interval = m.get(key), m.get(f"{key}_interval")
    if value is None:
        return f"{key} -"
    return f"{key} {value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def format_heldout(h: dict, threshold: float, max_fpr: float) -> str:
    k, eq = h["keyword_baseline"], h["recall_at_keyword_fpr"]
    return "\n".join([
        f"caikit classifier: {h['on']}; threshold {threshold:.4f} (validation FPR <= {max_fpr})",
        f"  guard:    {_iv(h, 'auroc')}  {_iv(h, 'recall')}  {_iv(h, 'precision')}  {_iv(h, 'fpr')}",
        f"  keyword:  {_iv(k, 'recall')}  {_iv(k, 'precision')}  {_iv(k, 'fpr')}",
        f"  guard at the keyword's FPR: {_iv(eq, 'recall')}  {_iv(eq, 'fpr')}"])
