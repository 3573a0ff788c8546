"""The figures of `caikit train online-dpo` (caikit/commands/online_dpo.py): one row per policy π_0 .. π_N in
OUT/iterations.json, each from that policy's own answers in iter-i/samples -- every answer it gave, read from
the sampler's request log, so the empty, repeated and cut ones that the judge never sees count too (leaving
out the cut ones would hide exactly the answers that grew too long):

  win_rate_vs_initial  mean judge P(π_i's answer better than π_0's) over pairs (answer k of π_i against answer k
                       of π_0 to the same prompt, the same sampling seed), both orders averaged; 0.5 for π_0 by
                       definition, and for two identical answers (not asked); its 95 % bootstrap interval over
                       pairs. The judgments live in OUT/winrate, one judge run directory with its own request log,
                       so a rerun asks nothing twice
  kl_from_initial      Monte-Carlo KL(π_i || π_0) = E_{y ~ π_i}[log π_i(y|x) − log π_0(y|x)] per answer (and per
                       token) over π_i's answers (caikit.eval.compare.kl_estimate); exact in expectation at
                       sampling temperature 1, a log-ratio of the model's own answers otherwise
  mean_length_words    mean whitespace words per answer (and mean_length_chars); length_growth = this / π_0's;
                       truncated_share: answers cut at --response-length; empty_share: answers with no text
  distinct_1/2         unique word n-grams / all n-grams over the answers (Li et al. 2016)
  judge, dpo_pairs     for i >= 1, the judge that labelled the pairs π_i was trained on (pairs, preferences, ties,
                       position consistency, its gate's status) and how many pairs DPO trained on

A length_growth above --max-length-growth is warned about on stderr and in OUT/warnings.jsonl ("length_growth"):
a judge that favours longer answers teaches verbosity, and the loop amplifies it iteration after iteration.
"""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path
from typing import Any, Callable

from caikit.diversity import diversity_metrics
from caikit.judge_run import judge_pairs, open_judge, planned
from caikit.rundir import RunDir
from caikit.soft_labels import mean
from caikit.stages.judge import Pair, pair_id
from caikit.stats import bootstrap_interval
from caikit.store import JsonlFile, latest_by_id, read_json, write_json_atomic, write_jsonl_atomic

ITERATIONS, WARNINGS, WINRATE = "iterations.json", "warnings.jsonl", "winrate"


def answers(samples_dir: Path) -> dict[str, dict[str, Any]]:
    """{prompt id: {"prompt", "texts", "ended"}}: every answer the policy gave in a sample run directory, read from
    its request log, so the answers samples.jsonl leaves out (empty, cut at the token limit, repeated) count too:
    leaving out the cut ones would hide exactly the answers that grew too long."""
    records = latest_by_id(JsonlFile(samples_dir / RunDir.SAMPLES).iter())
    final = {row["item"]: row for row in JsonlFile(samples_dir / RunDir.POLICY_REQUESTS).iter()
             if row.get("item") and row.get("final", True)}
    out = {}
    for key, record in records.items():
        completions = (final.get(key) or {}).get("completions") or []
        out[record["prompt_id"]] = {"prompt": record["prompt"],
                                    "texts": [(c.get("text") or "").strip() for c in completions],
                                    "ended": [c.get("finish_reason") != "length" for c in completions]}
    return out


class Figures:
    """The rows of iterations.json, computed once each (a rerun keeps the rows it finds) and written as they come."""

    def __init__(self, cfg, out: Path, make_judge: Callable[[Path], Any], tracker=None):
        """`make_judge(where)`: the judge's config (a JudgeConfig) for a judge run directory `where`; `tracker`
        (caikit.trackers, --report-to) gets each new row, its step the iteration."""
        self.cfg, self.out, self.make_judge, self.tracker = cfg, out, make_judge, tracker
        kept = read_json(out / ITERATIONS, {}) or {}
        self.rows: dict[int, dict[str, Any]] = {r["iteration"]: r for r in kept.get("iterations", [])
                                                if isinstance(r, dict) and r.get("iteration", 10**9) <= cfg.iterations}

    def row(self, i: int, policy: str, samples_dir: Path, judge_dir: Path | None = None) -> None:
        if i in self.rows:
            return
        mine = answers(samples_dir)
        texts = [t for pid in sorted(mine) for t in mine[pid]["texts"]]
        row: dict[str, Any] = {"iteration": i, "policy": policy, "prompts": len(mine), "answers": len(texts),
                               "truncated_share": mean(float(not e) for pid in mine for e in mine[pid]["ended"]),
                               "empty_share": mean(float(not t) for t in texts)}
        if i == 0:
            row |= {"win_rate_vs_initial": 0.5, "win_rate_interval": None, "win_rate_pairs": 0,
                    "kl_from_initial": 0.0, "kl_per_token": 0.0}
        else:
            initial = answers(self.out / "iter-0" / "samples")
            row |= self.win_rate(i, mine, initial) | self.kl(policy, mine)
        diversity = diversity_metrics(texts)
        row |= {"mean_length_words": diversity["mean_length"],
                "mean_length_chars": mean(len(t) for t in texts) or 0.0,
                "distinct_1": diversity["distinct_1"], "distinct_2": diversity["distinct_2"]}
        base = self.rows.get(0, row)["mean_length_words"]
        row["length_growth"] = row["mean_length_words"] / base if base else None
        if judge_dir is not None:
            stats = read_json(judge_dir / RunDir.STATS, {}) or {}
            row["judge"] = {k: stats.get(k) for k in ("pairs", "judged", "preferences", "ties", "failures",
                                                      "position_consistency_rate", "longer_preferred_rate")}
            row["judge"]["gate"] = (stats.get("gate") or {}).get("status", "not run")
            row["dpo_pairs"] = sum(1 for _ in JsonlFile(judge_dir.parent / "pairs.jsonl").iter())
        self.rows[i] = row
        if self.tracker is not None:
            self.tracker.log({**row, "step": i})
        if row["length_growth"] is not None and row["length_growth"] > self.cfg.max_length_growth:
            print(f"caikit train online-dpo: warning: {warning_text(row, self.cfg.max_length_growth)}",
                  file=sys.stderr, flush=True)
        self.write()

    def win_rate(self, i: int, mine: dict[str, dict], initial: dict[str, dict]) -> dict[str, Any]:
        """Answer k of π_i against answer k of π_0 to the same prompt, judged in both orders in OUT/winrate."""
        both = [(pid, k, a, b) for pid in sorted(set(mine) & set(initial))
                for k, (a, b) in enumerate(zip(mine[pid]["texts"], initial[pid]["texts"]))]
        pairs = [Pair(pair_id(f"iter-{i}/{pid}/{k}", 0, 1), mine[pid]["prompt"], a, b) for pid, k, a, b in both
                 if a != b]
        same = len(both) - len(pairs)
        where = self.out / WINRATE
        jr = open_judge(self.make_judge(where), str(where), "judge", {"pairs": "winrate"})

        async def main() -> None:
            try:
                await judge_pairs(jr, pairs, concurrency=jr.cached.inner_limit(), what=f"win-rate pairs of iter-{i}")
            finally:
                await jr.cached.aclose()

        try:
            asyncio.run(main())
            judged, failed = planned(jr, pairs)
        finally:
            jr.close()
        p = [j["p_a"] for j in judged] + [0.5] * same  # an answer equal to π_0's ties with it, unasked
        interval = bootstrap_interval(p, seed=self.cfg.seed)
        return {"win_rate_vs_initial": mean(p), "win_rate_interval": list(interval) if interval else None,
                "win_rate_pairs": len(p), "win_rate_failures": len(failed)}

    def kl(self, policy: str, mine: dict[str, dict]) -> dict[str, Any]:
        """KL(π_i || π_0) on π_i's own answers."""
        from caikit.eval.compare import kl_estimate

        examples = [(mine[pid]["prompt"], text, ended) for pid in sorted(mine)
                    for text, ended in zip(mine[pid]["texts"], mine[pid]["ended"])]
        if not examples:
            return {"kl_from_initial": None, "kl_per_token": None}
        device = self.cfg.device or ("cuda" if _cuda() else "cpu")
        batch = self.cfg.sample_batch_size or 16
        kl = kl_estimate(types.SimpleNamespace(trained=policy, before=self.cfg.policy, batch_size=batch), examples,
                         device)
        return {"kl_from_initial": kl["per_response"], "kl_per_token": kl["per_token"]}

    def write(self) -> None:
        rows = [self.rows[i] for i in sorted(self.rows)]
        write_json_atomic(self.out / ITERATIONS, {"iterations": rows})
        limit = self.cfg.max_length_growth
        write_jsonl_atomic(self.out / WARNINGS, [
            {"iteration": r["iteration"], "step": r["iteration"], "kind": "length_growth",
             "message": warning_text(r, limit), "value": r["length_growth"]}
            for r in rows if r.get("length_growth") is not None and r["length_growth"] > limit])

    def close(self) -> None:
        self.write()
        if self.tracker is not None:
            self.tracker.close()


def warning_text(row: dict[str, Any], limit: float) -> str:
    return (f"iteration {row['iteration']}: answers average {row['mean_length_words']:.1f} words, "
            f"{row['length_growth']:.2f}x the initial policy's (limit {limit:g}x): the judge may be rewarding "
            "length rather than the principles (look at iter-*/judge/stats.json longer_preferred_rate)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
