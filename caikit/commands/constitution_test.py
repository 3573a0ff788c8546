"""`caikit constitution test C --judge SPEC --out DIR`: is each principle usable by this judge?

Every judge case of the constitution (`cases:` with better / worse) becomes a pair, and every judge principle
judges every pair, one principle per judgment, both orders (caikit/principle_matrix.py), so each principle
is measured on its own cases and all principles share one sample for redundancy and conflict
(caikit/constitution_checks.py); `--pairs P` adds labelled pairs (any file the row reader reads) to that
sample. Every critique case (`flag:`) is asked as a yes/no question -- does the response have a problem of
the kind the critique request asks about? (stages/templates/critique_flag.txt) -- by option log-probs with
--method logprob, else one answer at temperature 0; a yes is the case passed.

Writes DIR/report.json (per principle, per principle pair, per case), the judge run's files beside it
(judgments.jsonl, flag_checks.jsonl, requests.jsonl, failures.jsonl, usage.json), and prints a short table.
Exit 3 when a principle fails its cases (--allow-failing: 0), 1 when too many judgments failed, 2 for a
constitution with problems (FILE:LINE).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from caikit.backends.registry import BackendOptions, parse_spec
from caikit.config import option
from caikit.constitution_checks import (
    case_outcomes,
    case_pairs,
    flag_outcomes,
    principle_relations,
    principle_rows,
    read_preferences,
)
from caikit.errors import UserError
from caikit.gate import QualityGateFailed
from caikit.records import FlagCheck, idempotency_key
from caikit.rundir import RunDir, note
from caikit.runner import outstanding_failures, pending
from caikit.stages import rubric
from caikit.stages.judge import JudgeOptions
from caikit.store import latest_by_id, write_json_atomic, write_jsonl_atomic


@dataclasses.dataclass
class JudgeSpecOptions(JudgeOptions, BackendOptions):
    """The judge a constitution command asks: --judge SPEC, or --backend / --model / --base-url."""

    judge: str = option("", help="the judge as PROVIDER[:MODEL][@BASE_URL] (e.g. local:smollm2, openai:gpt-4o-mini, "
                                 "openai:MODEL@http://host:8000/v1); empty: --backend / --model / --base-url")
    # one principle per judgment, both orders, always (caikit/principle_matrix.py): not options here
    swap: bool = option(True, help="both orders (always)", metadata={"cli": False})
    principles: int = option(1, low=1, high=1, help="principles per judgment (always 1)", metadata={"cli": False})

    def validate(self) -> None:
        if self.judge:
            parse_spec(self.judge)
        BackendOptions.validate(self.judge_options())

    def judge_options(self):
        """These options with the backend --judge names."""
        return self.with_spec(self.judge) if self.judge else self


@dataclasses.dataclass
class TestConfig(JudgeSpecOptions):
    pairs: str = option("", help="labelled pairs added to the shared sample for redundancy and conflict (any file "
                                 "the row reader reads: prompt/chosen/rejected, hh-rlhf, caikit label rows)")
    pairs_limit: int = option(64, low=1, high=100_000,
                              help="at most this many distinct pairs of --pairs (the first ones)")
    shared_pairs: int = option(0, low=0, high=1_000_000, help="every principle judges this many pairs (a seeded "
                                                              "sample of the cases and --pairs) besides its own "
                                                              "cases; 0: every pair (the fewer, the cheaper, and the "
                                                              "weaker the redundancy and conflict tests)")
    min_accuracy: float = option(0.6, low=0, high=1, help="a principle fails when fewer than this share of its cases "
                                                          "are right (an unreadable answer counts as wrong)")
    redundant_agreement: float = option(0.9, above=0.5, high=1, help="two principles are redundant when their "
                                                                     "verdicts agree on at least this share of the "
                                                                     "pairs both decided")
    conflict_alpha: float = option(0.05, above=0, below=1, help="two principles conflict when they disagree more "
                                                                "than a coin would at this level (exact binomial "
                                                                "test, Bonferroni over principle pairs)")
    min_shared: int = option(10, low=1, high=1_000_000, help="pairs both principles must have decided before they "
                                                             "are called redundant or conflicting")
    allow_failing: bool = option(False, help="exit 0 even when a principle fails its cases (the report still says so)")
    max_failure_rate: float = option(0.5, low=0, high=1, help="exit 1 when more than this share of the judgments "
                                                              "failed (rerun to retry them)")
    out: str = option("outputs/constitution-test", help="run directory: report.json and the judge's files")


@dataclasses.dataclass(frozen=True)
class FlagItem:
    principle: Any
    index: int
    case: Any

    @property
    def id(self) -> str:
        return f"{self.principle.id} case {self.index}"


def outside_sample(pairs: list, refs: list, shared: int, seed: int):
    """--shared-pairs N: the `skip` of judge_matrix that leaves each principle its own cases and a seeded sample
    of N pairs every principle judges (None: every principle judges every pair)."""
    if not shared or shared >= len(pairs):
        return None
    import random

    sample = {p.id for p in random.Random(seed).sample(pairs, shared)}
    own = {(pair_id, ref.principle_id) for pair_id, ref in refs}
    return lambda pair, principle: pair.id not in sample and (pair.id, principle.id) not in own


def critique_cases(constitution) -> list[FlagItem]:
    return [FlagItem(p, i, c) for p in constitution.principles for i, c in enumerate(p.cases, 1)
            if c.kind == "critique"]


def flag_checker(items: list[FlagItem]):
    """The `also` hook of judge_matrix: every critique case through rubric.grade on the same run directory."""

    async def check(jr) -> list[dict[str, Any]]:
        logprobs = jr.setup.method.name == "logprob"

        def key_of(item: FlagItem) -> str:
            return idempotency_key("flag-check", jr.setup.identity_hash, item.principle.critique, item.case.prompt,
                                   item.case.flag, logprobs)

        async def build(item: FlagItem, key: str) -> FlagCheck:
            question = rubric.RubricItem(item.case.prompt, item.case.flag, item.principle.id, item.principle.critique,
                                         template="critique_flag")
            p_yes = await rubric.grade(jr.runner.ask, question, logprobs=logprobs,
                                       system_prompt=jr.setup.opts.system_prompt, seed=int(key[-8:], 16))
            return FlagCheck(id=key, run_id=jr.run.run_id, principle_id=item.principle.id, prompt=item.case.prompt,
                             response=item.case.flag, p_yes=p_yes, method="logprob" if logprobs else "parsed")

        records, failures = jr.run.jsonl(RunDir.FLAG_CHECKS), jr.run.jsonl(RunDir.FAILURE_LOG)
        try:
            todo, _ = pending(items, key_of, records)
            concurrency = jr.cached.inner.batch_size if jr.cached.in_process else jr.cached.inner_limit()
            await jr.runner.run(todo, build, records=records, failures=failures, stage="flag-check",
                                run_id=jr.run.run_id, concurrency=concurrency, meter=jr.meter, desc="critique cases")
        finally:
            records.close()
            failures.close()
        stored = latest_by_id(records.iter())
        keys = [key_of(item) for item in items]
        failed = {f["id"]: f for f in outstanding_failures(failures, stored, keys)}
        rows = []
        for item, key in zip(items, keys):
            status = "ok" if key in stored else ("unreadable" if failed.get(key, {}).get("kind") == "unparseable"
                                                 else "failed" if key in failed else "missing")
            rows.append({"principle_id": item.principle.id, "case": item.index, "line": item.case.line,
                         "status": status, "p_yes": stored[key]["p_yes"] if key in stored else None,
                         "failure": failed.get(key)})
        return rows

    return check


SHOWN = 8  # principle pairs printed per kind; report.json has them all


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.0%}"


def _cases_text(cases: dict[str, Any] | None) -> str:
    if not cases or not cases["n"]:
        return "-"
    lo, hi = cases["interval"]
    return f"{cases['rate']:.0%} of {cases['n']} [{lo:.0%}-{hi:.0%}]"


def table_text(report: dict[str, Any]) -> str:
    """The short table `caikit constitution test` prints (and `caikit constitution stats` does not)."""
    rows = report["principles"]
    width = max([len("principle")] + [len(r["id"]) for r in rows])
    lines = [f"{'principle'.ljust(width)}  {'judge cases':<22} {'critique cases':<22} consist  conf  unread  verdict"]
    for r in rows:
        consistency = (r["position_consistency"] or {}).get("rate")
        lines.append(f"{r['id'].ljust(width)}  {_cases_text(r['judge_cases']):<22} "
                     f"{_cases_text(r['critique_cases']):<22} {_pct(consistency)}  "
                     f"{'  n/a' if r['mean_confidence'] is None else format(r['mean_confidence'], '5.2f')} "
                     f"{_pct(r['unreadable_share'])}   {r['status']}")
    for kind in ("redundant", "conflicting"):
        found = sorted((x for x in report["relations"] if x[kind]), key=lambda x: x["agreement"],
                       reverse=kind == "redundant")
        for rel in found[:SHOWN]:
            lines.append(f"{kind}: {' and '.join(rel['principles'])} (agree on {rel['agreement']:.0%} of "
                         f"{rel['shared']} pairs both decided)")
        if len(found) > SHOWN:
            lines.append(f"{kind}: {len(found) - SHOWN} more pairs (report.json)")
    lines.append(report["verdict"])
    return "\n".join(lines)


def judge_name(opts) -> str:
    """PROVIDER:MODEL[@URL] of the judge, the URL without credentials (reports are shared)."""
    from caikit.secrets import public_url

    return f"{opts.backend}:{opts.model_name()}" + (f"@{public_url(opts.base_url)}" if opts.base_url else "")


def verdict_text(rows: list[dict[str, Any]], relations: list[dict[str, Any]]) -> str:
    failing = [r["id"] for r in rows if r["fails"]]
    cannot = [r["id"] for r in rows if r["cannot_apply"] and not r["fails"]]
    redundant = [rel for rel in relations if rel["redundant"]]
    conflicting = [rel for rel in relations if rel["conflicting"]]
    parts = [f"{len(failing)} of {len(rows)} principles fail their cases" + (f" ({', '.join(failing)})" if failing
                                                                               else "")]
    if cannot:
        parts.append(f"the judge cannot apply {', '.join(cannot)}")
    parts.append(f"{len(redundant)} redundant and {len(conflicting)} conflicting principle pairs")
    return "; ".join(parts) + "."


def run_test(cfg: TestConfig) -> int:
    from caikit.constitution import load_constitution
    from caikit.principle_matrix import judge_matrix

    constitution = load_constitution(cfg.constitution)
    judge_principles = constitution.judge_principles
    pairs, refs = case_pairs(constitution, cfg.seed)
    case_pair_count = len(pairs)
    flags = critique_cases(constitution)
    if not pairs and not flags:
        raise UserError("has no cases to test: give principles `cases:` (see docs/constitution.md)",
                        path=str(constitution.path))
    if cfg.pairs:
        pairs += read_preferences(cfg.pairs, cfg.pairs_limit, cfg.seed).pairs
    jcfg = cfg.judge_options()
    matrix = judge_matrix(jcfg, pairs, judge_principles, cfg.out, stage="constitution-test",
                          demos=constitution.judge_few_shot, also=flag_checker(flags) if flags else None,
                          skip=outside_sample(pairs, refs, cfg.shared_pairs, cfg.seed))
    flag_rows = matrix.also or []
    outcomes = case_outcomes(matrix, refs) + flag_outcomes(flag_rows)
    rows = principle_rows(constitution.principles, matrix, outcomes, min_accuracy=cfg.min_accuracy)
    relations = principle_relations(matrix, [p.id for p in judge_principles], redundant_at=cfg.redundant_agreement,
                                    alpha=cfg.conflict_alpha, min_shared=cfg.min_shared)
    counts = matrix.counts()
    flag_failed = [f["failure"] for f in flag_rows if f["failure"]]
    failed = counts["failed"] + counts["unreadable"] + counts["missing"] + len(flag_failed)
    total = len(matrix.cells) + len(flag_rows)
    failing = [r["id"] for r in rows if r["fails"]]
    report = {"kind": "constitution-test", "constitution": constitution.name, "constitution_hash": constitution.hash,
              "constitution_path": str(constitution.path), "judge": judge_name(jcfg),
              "method": matrix.method, "min_accuracy": cfg.min_accuracy,
              "pairs": {"cases": case_pair_count, "extra": len(pairs) - case_pair_count}, "judgments": counts,
              "critique_checks": {s: sum(f["status"] == s for f in flag_rows) for s in ("ok", "unreadable", "failed",
                                                                                        "missing")},
              "principles": rows, "relations": relations,
              "redundant": [r["principles"] for r in relations if r["redundant"]],
              "conflicting": [r["principles"] for r in relations if r["conflicting"]],
              "failing": failing, "cannot_apply": [r["id"] for r in rows if r["cannot_apply"]],
              "cases": outcomes, "failures": failed, "usage": matrix.usage,
              "status": "failed" if failing else "passed", "verdict": verdict_text(rows, relations)}
    write_json_atomic(f"{cfg.out}/{RunDir.REPORT}", report)
    if flag_failed:
        failure_file = f"{cfg.out}/{RunDir.FAILURES}"
        from caikit.store import JsonlFile

        write_jsonl_atomic(failure_file, [*JsonlFile(failure_file).iter(), *flag_failed])
    print(table_text(report))
    note("constitution test", f"{len(matrix.cells)} judgments, {len(flag_rows)} critique checks, {failed} not "
                              f"read or failed, {matrix.usage.get('total_tokens', 0):,} tokens, "
                              f"${matrix.usage.get('cost_usd', 0):.4f} -> {cfg.out}/{RunDir.REPORT}")
    if total and failed / total > cfg.max_failure_rate:
        note("constitution test", f"{failed / total:.0%} of the judgments failed, more than --max-failure-rate "
                                  f"{cfg.max_failure_rate:g}: exit 1 (rerun the same command to retry them)")
        return 1
    if failing and not cfg.allow_failing:
        raise QualityGateFailed(f"{len(failing)} principle(s) fail their cases: {', '.join(failing)} (see "
                                f"{cfg.out}/{RunDir.REPORT}; --allow-failing to exit 0)")
    return 0
