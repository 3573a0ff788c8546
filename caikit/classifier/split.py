"""Near-duplicate removal and the held-out split of guard rows.

The split holds out whole categories AND whole source prompts (Constitutional Classifiers evaluate on
held-out categories of harm; paraphrases and augmentations of a training prompt would make a test row an easy
look-alike). A row is in test when its category is a held-out one or its source prompt is; validation (the
threshold is picked there) takes further source prompts of the training categories; no source prompt is on
two sides.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

_WORD = re.compile(r"[a-z0-9]+")


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def drop_near_duplicates(rows: list, text_of, threshold: float = 0.8,
                         label_of=lambda row: getattr(row, "label", None)) -> tuple[list, int]:
    """Rows whose word-3-gram Jaccard similarity with an earlier kept row of the same label is >= `threshold`
    are dropped (Broder 1997, resemblance of shingle sets). Returns (kept, dropped). Quadratic within a label
    over rows sharing a shingle; fine for the tens of thousands of rows a guard trains on. `label_of` reads a
    row's label (an attribute by default; `row["label"]` for the dict rows `caikit classifier data` writes)."""
    kept, dropped = [], 0
    index: dict[tuple, list[int]] = defaultdict(list)  # (label, shingle) -> kept row positions
    sets: list[set] = []
    for row in rows:
        s = shingles(text_of(row))
        label = label_of(row)
        candidates = {j for sh in s for j in index[(label, sh)]}
        if any(jaccard(s, sets[j]) >= threshold for j in candidates):
            dropped += 1
            continue
        for sh in s:
            index[(label, sh)].append(len(kept))
        sets.append(s)
        kept.append(row)
    return kept, dropped


def _draw(keys: list[str], fraction: float, seed: int, salt: str) -> set[str]:
    """A seeded fraction of `keys`, stable under reordering (a hash of the key, not a shuffle)."""
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{salt}:{k}".encode()).hexdigest())
    return set(ranked[:round(len(ranked) * fraction)])


def heldout_split(rows: list, *, test_categories: float = 0.25, test_sources: float = 0.15,
                  val_sources: float = 0.15, seed: int = 0) -> dict[str, list]:
    """{"train", "validation", "test"} by category and by source prompt (rows have .category and .source_id).

    At least one category of each label is held out when there are two or more of that label, so the test
    side can measure both recall and false positives on categories never trained on."""
    by_label: dict[bool, set[str]] = defaultdict(set)
    for row in rows:
        by_label[row.label].add(row.category)
    shared = set.intersection(*by_label.values()) if len(by_label) > 1 else set()
    held: set[str] = set()
    for label, categories in sorted(by_label.items()):
        own = sorted(categories - shared)
        if len(own) >= 2:
            picked = _draw(own, test_categories, seed, f"category-{label}") or {sorted(own)[0]}
            held |= picked
    if len(shared) >= 2:
        held |= _draw(sorted(shared), test_categories, seed, "category-shared")
    sources = sorted({r.source_id for r in rows if r.category not in held})
    test_src = _draw(sources, test_sources, seed, "test")
    val_src = _draw(sorted(set(sources) - test_src), val_sources / max(1e-9, 1 - test_sources), seed, "validation")
    out: dict[str, list] = {"train": [], "validation": [], "test": []}
    for row in rows:
        if row.category in held or row.source_id in test_src:
            out["test"].append(row)
        elif row.source_id in val_src:
            out["validation"].append(row)
        else:
            out["train"].append(row)
    # a source prompt whose rows span a held-out and a kept category goes wholly to test
    test_ids = {r.source_id for r in out["test"]}
    for side in ("train", "validation"):
        moved = [r for r in out[side] if r.source_id in test_ids]
        out[side] = [r for r in out[side] if r.source_id not in test_ids]
        out["test"] += moved
    out["held_out_categories"] = sorted(held)
    return out
