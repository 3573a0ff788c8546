"""An inverse constitution: from preference pairs to the principles that explain them (Findeis et al., "Inverse
Constitutional AI: Compressing Preferences into Principles", ICLR 2025). The model calls live in
stages/propose.py (one candidate principle per pair) and caikit/principle_matrix.py (each candidate judged on
every pair); this module holds what sits between and after them, with no model calls:

1. `cluster`: near-duplicate candidates ("is shorter", "is more concise and shorter") are grouped by the
   cosine similarity of their TF-IDF vectors (plain numpy: no embedding service); each group is tested once,
   under its most common wording, and its size is how many pairs proposed it.
2. `support`: a candidate used as a judge instruction on the pairs. It *takes a side* on a pair when both
   orders prefer the same response (a position-consistent verdict); it *agrees* when that side is the
   preferred response.
3. `SCORE`: net support = (agrees - disagrees) / pairs: the share of the pairs the principle explains, less
   the share it contradicts. A principle that rarely takes a side scores near 0 however accurate it is when
   it does; one that takes the wrong side scores below 0. Candidates are kept best first, only those whose
   sides are the preferred ones more often than chance (the 95 % Wilson interval of that share above 50 %,
   on at least MIN_DECIDED pairs), and one that agrees with an already kept principle on >= REDUNDANT of the pairs both decide is left out as a
   rewording of it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from caikit.stats import wilson_interval

SIMILAR = 0.5  # cosine of TF-IDF vectors at or above which two candidates are one principle
REDUNDANT = 0.9  # agreement of sides (on pairs both decide) above which a kept principle repeats another
MIN_DECIDED = 5  # fewer sides taken than this: the data cannot tell whether a principle is right
SCORE = "net support = (pairs where its side is the preferred one - pairs where it is the other) / pairs"
# words every candidate shares or that carry no content
STOPWORDS = frozenset("""select choose prefer pick the response answer reply that which is are a an and or of to in
on for with as by be it its this more most less least than their they them he she you your not no does do""".split())


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if w not in STOPWORDS]


def tfidf(texts: list[str]) -> np.ndarray:
    """(n, vocabulary) L2-normalised TF-IDF rows; smooth idf = ln((1 + n) / (1 + df)) + 1 (as scikit-learn's
    default, written out here to keep the dependency out)."""
    docs = [Counter(words(t)) for t in texts]
    vocabulary = sorted({w for d in docs for w in d})
    index = {w: i for i, w in enumerate(vocabulary)}
    tf = np.zeros((len(texts), len(vocabulary)))
    for row, doc in enumerate(docs):
        for w, count in doc.items():
            tf[row, index[w]] = count
    idf = np.log((1 + len(texts)) / (1 + (tf > 0).sum(axis=0))) + 1
    x = tf * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class Cluster:
    """Candidates taken for one principle: `text` is its most common wording, `pairs` the pairs proposing it."""

    text: str
    pairs: list[str] = field(default_factory=list)
    wordings: Counter = field(default_factory=Counter)


def cluster(candidates: list[tuple[str, str]], similar: float = SIMILAR) -> list[Cluster]:
    """Group (pair_id, principle text) candidates; largest group first. Greedy: wordings in order of how
    often they were proposed, each joining the group whose representative it is most similar to (cosine >=
    `similar`), else starting its own."""
    counts = Counter(text for _, text in candidates)
    texts = sorted(counts, key=lambda t: (-counts[t], t))
    if not texts:
        return []
    vectors = tfidf(texts)
    groups: list[Cluster] = []
    heads: list[int] = []  # the vector row of each group's representative
    of_text: dict[str, Cluster] = {}
    for row, text in enumerate(texts):
        sims = [float(vectors[row] @ vectors[h]) for h in heads]
        best = int(np.argmax(sims)) if sims else -1
        if best >= 0 and sims[best] >= similar:
            group = groups[best]
        else:
            group = Cluster(text)
            groups.append(group)
            heads.append(row)
        group.wordings[text] += counts[text]
        of_text[text] = group
    for pid, text in candidates:
        of_text[text].pairs.append(pid)
    return sorted(groups, key=lambda g: (-len(g.pairs), g.text))


@dataclass
class Support:
    """How one principle, used as the judge's instruction, fares on preference pairs."""

    pairs: int  # pairs with a readable verdict
    decided: int  # pairs where it took a side (both orders agree)
    agrees: int  # ... and that side is the preferred response
    unreadable: int = 0

    @property
    def decisiveness(self) -> float:
        return self.decided / self.pairs if self.pairs else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.agrees / self.decided if self.decided else None

    @property
    def score(self) -> float:
        return (2 * self.agrees - self.decided) / self.pairs if self.pairs else 0.0  # (agrees - disagrees) / n

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.agrees, self.decided)

    def verdict(self) -> str:
        """supported | contradicted | undecided: is the accuracy of its sides clear of chance (95 %)?"""
        low_high = self.interval
        if self.decided < MIN_DECIDED or low_high is None:
            return "undecided"
        return "supported" if low_high[0] > 0.5 else "contradicted" if low_high[1] < 0.5 else "undecided"

    def to_dict(self) -> dict:
        interval = self.interval
        return {**asdict(self), "decisiveness": round(self.decisiveness, 4),
                "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
                "accuracy_interval": [round(v, 4) for v in interval] if interval else None,
                "score": round(self.score, 4), "verdict": self.verdict()}


def sides(cells: list, preferred_a: list[bool]) -> list[int | None]:
    """Per pair: +1 the principle took the preferred side, -1 the other, 0 no side, None unreadable.
    `cells` are principle_matrix.Cell of one principle, in the order of `preferred_a`."""
    out: list[int | None] = []
    for cell, chose_a in zip(cells, preferred_a):
        if not cell.readable:
            out.append(None)
        elif not cell.consistent or cell.p_a == 0.5:
            out.append(0)
        else:
            out.append(1 if (cell.p_a > 0.5) == chose_a else -1)
    return out


def support_of(side: list[int | None]) -> Support:
    read = [s for s in side if s is not None]
    return Support(pairs=len(read), decided=sum(s != 0 for s in read), agrees=sum(s == 1 for s in read),
                   unreadable=len(side) - len(read))


def overlap(x: list[int | None], y: list[int | None]) -> float | None:
    """Share of the pairs both decide where they take the same side (None: fewer than MIN_DECIDED such pairs)."""
    both = [(a, b) for a, b in zip(x, y) if a and b]
    return sum(a == b for a, b in both) / len(both) if len(both) >= MIN_DECIDED else None


def select(ids: list[str], side: dict[str, list[int | None]], max_principles: int
           ) -> tuple[list[str], dict[str, str]]:
    """The kept principles, best score first, and why each other one was left out."""
    supports = {pid: support_of(side[pid]) for pid in ids}
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for pid in sorted(ids, key=lambda p: -supports[p].score):
        s = supports[pid]
        same = next((k for k in kept if (overlap(side[pid], side[k]) or 0) >= REDUNDANT), None)
        if s.score <= 0:
            dropped[pid] = "net support <= 0: it contradicts as often as it explains, or takes no side"
        elif s.verdict() != "supported":
            dropped[pid] = "its side is not the preferred one clearly more often than chance (95 % interval)"
        elif same is not None:
            dropped[pid] = f"a rewording of {same}: same side on >= {REDUNDANT:.0%} of the pairs both decide"
        elif len(kept) >= max_principles:
            dropped[pid] = f"beyond --max-principles {max_principles}"
        else:
            kept.append(pid)
    return kept, dropped


def slug(text: str, taken: set[str]) -> str:
    """A stable principle id from its words ('Select the response that is shorter.' -> 'shorter')."""
    base = "-".join(words(text)[:4]) or "principle"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def percent(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"
