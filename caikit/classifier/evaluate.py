"""`caikit classifier eval` and `caikit classify`.

eval: a guard on labelled rows (default: the test split it saved, held out by category and source prompt):
precision, recall, false-positive rate (Wilson intervals) and AUROC (bootstrap interval), overall and per
category, on the same rows as a keyword baseline (caikit.classifier.metrics.HARM_KEYWORDS) and, with --judge, the
judge model asked zero-shot (template stages/templates/guard_judge.txt; P(Yes) as its score).
classify: scores and decisions for a file or stdin, one JSON line per row.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from caikit.config import option
from caikit.errors import UserError


@dataclasses.dataclass
class ClassifierEvalConfig:
    guard: str = option("", help="guard directory (`caikit classifier train`)")
    data: str = option("", help="labelled rows (prompt or messages, optional response, label, category); "
                                "default: the guard's own held-out test rows (test_rows.jsonl)")
    judge: str = option("", help="also ask this judge zero-shot, PROVIDER[:MODEL][@BASE_URL] (e.g. local:smollm2)")
    device: str = option("cpu", help="cpu | cuda")
    batch_size: int = option(16, low=1, high=4096, help="rows per forward pass")
    seed: int = option(0, low=0, high=2**32 - 1, help="seed of the bootstrap intervals")
    out: str = option("", help="write the figures here as JSON (default: GUARD/eval.json)")

    def validate(self) -> None:
        if not self.guard:
            raise UserError("--guard is required: a directory from `caikit classifier train`")


@dataclasses.dataclass
class ClassifyConfig:
    guard: str = option("", help="guard directory (`caikit classifier train`)")
    input: str = option("-", help="rows to score (prompt or messages, and response for an output guard); - : stdin")
    out: str = option("-", help="JSONL of id, score, flagged; - : stdout")
    device: str = option("cpu", help="cpu | cuda")
    batch_size: int = option(16, low=1, high=4096, help="rows per forward pass")

    def validate(self) -> None:
        if not self.guard:
            raise UserError("--guard is required: a directory from `caikit classifier train`")


def judge_scores(spec: str, rows: list, target: str) -> list[float]:
    """P(Yes) of the judge asked whether each request (or response) should be flagged, zero-shot."""
    import asyncio
    import math

    from caikit.backends.registry import BackendOptions, make_backend
    from caikit.stages.base import render
    from caikit.stages.judge import render_conversation

    backend = make_backend(BackendOptions().with_spec(spec))

    async def one(gate, row):
        text = render("guard_judge", conversation=render_conversation(row.prompt),
                      response=row.response if target == "output" and row.response else "(none)")
        messages = [{"role": "user", "content": text}]
        async with gate:
            if backend.supports_logprobs:
                lp = await backend.option_logprobs(messages, ["Yes", "No"])
                return 1 / (1 + math.exp(lp["No"] - lp["Yes"]))
            (c,) = await backend.generate(messages, n=1, temperature=0.0, max_tokens=3, seed=0)
            return 1.0 if c.text.strip().lower().startswith("yes") else 0.0

    async def main():
        try:
            gate = asyncio.Semaphore(8)
            return await asyncio.gather(*(one(gate, r) for r in rows))
        finally:
            await backend.aclose()

    return list(asyncio.run(main()))


def run_classifier_eval(cfg: ClassifierEvalConfig) -> int:
    from caikit.classifier.metrics import (
        binary_metrics,
        keyword_flag,
        recall_at_fpr,
        scored_metrics,
    )
    from caikit.classifier.model import load_guard
    from caikit.classifier.train import _iv, category_family, check_rows_fit, row_text
    from caikit.rows import read_guard_rows

    guard = load_guard(cfg.guard, cfg.device)
    path = cfg.data or str(Path(cfg.guard) / "test_rows.jsonl")
    rows = read_guard_rows(path).items
    check_rows_fit(rows, guard.target, path)
    for r in rows:
        r.category = category_family(r.category) or "uncategorised"
    labels = [r.label for r in rows]
    scores = guard.score([r.prompt for r in rows], [r.response for r in rows] if guard.target == "output" else None,
                         batch_size=cfg.batch_size)
    keyword = [keyword_flag(row_text(r)) for r in rows]
    systems = {"guard": scored_metrics(scores, labels, guard.threshold, cfg.seed),
               "keyword baseline": binary_metrics(keyword, labels)}
    systems["guard at the keyword's FPR"] = recall_at_fpr(scores, labels, systems["keyword baseline"]["fpr"] or 0.0)
    if cfg.judge:
        judged = judge_scores(cfg.judge, rows, guard.target)
        systems[f"judge {cfg.judge} zero-shot"] = scored_metrics(judged, labels, 0.5, cfg.seed)
    per_category = {}
    for category in sorted({r.category for r in rows}):
        idx = [i for i, r in enumerate(rows) if r.category == category]
        per_category[category] = {
            "guard": scored_metrics([scores[i] for i in idx], [labels[i] for i in idx], guard.threshold, cfg.seed),
            "keyword baseline": binary_metrics([keyword[i] for i in idx], [labels[i] for i in idx])}
    report = {"guard": cfg.guard, "data": path, "rows": len(rows), "threshold": guard.threshold,
              "overall": systems, "per_category": per_category}
    out = Path(cfg.out or Path(cfg.guard) / "eval.json")
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"caikit classifier eval: {cfg.guard} on {len(rows)} rows of {path} (threshold {guard.threshold:.4f})")
    for name, m in systems.items():
        print(f"  {name:<34} " + "  ".join(_iv(m, k) for k in ("auroc", "recall", "precision", "fpr") if k in m))
    for category, m in per_category.items():
        g = m["guard"]
        print(f"  [{category}] n {g['n']}: " + "  ".join(_iv(g, k) for k in ("recall", "fpr")))
    print(f"caikit classifier eval: {out}")
    return 0


def run_classify(cfg: ClassifyConfig) -> int:
    import tempfile

    from caikit.classifier.model import load_guard
    from caikit.rows import read_scored

    guard = load_guard(cfg.guard, cfg.device)
    path = cfg.input
    if path == "-":
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
            f.write(sys.stdin.read())
            path = f.name
    if guard.target == "output":
        from caikit.rows import text_of

        items = read_scored(path).items
        prompts, responses = [i.prompt for i in items], [text_of(i.response) if isinstance(i.response, list)
                                                         else i.response for i in items]
        ids = [getattr(i, "id", None) or str(n) for n, i in enumerate(items)]
    else:
        from caikit.prompts import load_prompts

        items = load_prompts(path)
        prompts, responses, ids = [i.messages for i in items], None, [i.id for i in items]
    scores = guard.score(prompts, responses, batch_size=cfg.batch_size)
    # the score as computed (not rounded): a rounded 0.99959996 would read 0.9996 >= threshold beside flagged false
    lines = [json.dumps({"id": i, "score": float(s), "flagged": bool(s >= guard.threshold)}) for i, s in zip(ids, scores)]
    text = "\n".join(lines) + ("\n" if lines else "")
    if cfg.out == "-":
        sys.stdout.write(text)
    else:
        Path(cfg.out).write_text(text, encoding="utf-8")
    flagged = sum(s >= guard.threshold for s in scores)
    print(f"caikit classify: {len(scores)} rows, {flagged} flagged at threshold {guard.threshold:.4f}", file=sys.stderr)
    return 0
