"""`caikit constitution infer --pairs P --judge SPEC --out DIR [--compare C0]`: the principles that explain a
set of preferences (an inverse constitution; Findeis et al., ICLR 2025; see caikit/constitution_infer.py).

1. For each preference pair the model proposes the principle that explains the choice (stages/propose.py),
   on the shared runner in DIR/proposals (resumable; a failed or unreadable proposal is a counted failure row).
2. The candidates are clustered by TF-IDF similarity; the --max-candidates largest clusters proposed by at
   least --min-proposals pairs are tested.
3. Each tested candidate judges every pair as the judge's only principle, both orders (caikit/principle_matrix.py,
   run directory DIR): how often it takes a side, and how often its side is the preferred response.
4. The best --max-principles by net support (caikit/constitution_infer.py: SCORE) with net support > 0 make
   DIR/constitution.yaml, each with its figures as comments; DIR/report.json holds every candidate's figures
   and why each was left out. --compare C0: the judge principles of C0 are tested on the same pairs and each
   is called supported, contradicted or undecided by the data.

Exit 0 with a constitution written; 1 when no candidate explains the pairs (report.json says why) or too many
requests failed; 2 for bad input.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from caikit.commands.constitution_tools import ConstitutionJudgeOptions, failure_share
from caikit.config import option
from caikit.constitution_checks import read_preferences
from caikit.errors import UserError
from caikit.records import Record, idempotency_key
from caikit.rundir import RunDir, note

PROPOSALS = "proposals"  # DIR/proposals: the run directory of the propose stage


@dataclasses.dataclass
class InferConfig(ConstitutionJudgeOptions):
    pairs: str = option("", help="preference pairs to explain: caikit label rows, prompt/chosen/rejected rows (human "
                                 "or AI-judged), hh-rlhf transcripts (any file the row reader reads)")
    limit: int = option(24, low=0, help="use only the first N distinct pairs (0: all); each costs a proposal and "
                                        "--max-candidates x 2 judgments")
    max_principles: int = option(5, low=1, high=100, help="principles kept in the inferred constitution")
    max_candidates: int = option(4, low=1, high=200, help="candidate clusters tested as judge principles on every pair "
                                                          "(the largest first): the cost is candidates x pairs x 2")
    min_proposals: int = option(2, low=1, high=100_000, help="a candidate cluster is tested only when at least this "
                                                             "many pairs proposed it")
    similarity: float = option(0.5, above=0, high=1, help="TF-IDF cosine at or above which two candidate wordings "
                                                          "are one principle")
    propose_temperature: float = option(0.7, low=0, high=2, help="sampling temperature of the proposals")
    compare: str = option("", help="a written constitution C0: which of its judge principles the pairs support "
                                   "and which they contradict")
    name: str = option("inferred", help="the name of the inferred constitution")
    out: str = option("outputs/constitution-infer", help="output directory: constitution.yaml, report.json, the "
                                                         "judge's run files and proposals/")

    def validate(self) -> None:
        if not self.pairs:
            raise UserError("--pairs FILE is required (preference pairs: caikit label rows or any pairs file)")
        ConstitutionJudgeOptions.validate(self)


@dataclasses.dataclass
class Proposal(Record):
    """One candidate principle proposed for one preference pair."""

    pair_id: str = ""
    principle: str = ""
    raw: str = ""
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)


def propose_all(cfg: InferConfig, prefs: list) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(pair id, candidate) for every preference, through the runner in DIR/proposals; and the run's counts."""
    from caikit.backends.registry import probed_backend
    from caikit.estimate import confirm_cost, dry_ask
    from caikit.runner import Runner, open_backend, outstanding_failures, pending
    from caikit.stages import propose
    from caikit.store import latest_by_id, read_json, write_jsonl_atomic

    opts = cfg.judge_options()
    where = f"{cfg.out}/{PROPOSALS}"
    backend, probe = probed_backend(opts, cached=read_json(f"{where}/{RunDir.PROBE}") if opts.base_url else None)
    identity = {"backend": opts.backend, "model": backend.model, "template": propose.PREFIX, "seed": cfg.seed,
                "temperature": cfg.propose_temperature, "system_prompt": cfg.system_prompt}
    key_of = lambda pref: idempotency_key("proposal", pref.prompt, pref.chosen, pref.rejected, identity)  # noqa: E731
    with RunDir.open(where, "constitution-propose", identity, cfg, command="constitution infer") as run:
        if probe:
            run.write_json(RunDir.PROBE, probe)
        cached, meter = open_backend(run, backend, opts)
        runner = Runner(cached, parse_retries=cfg.parse_retries, progress=cfg.progress)
        records, failures = run.jsonl("proposals.jsonl"), run.jsonl(RunDir.FAILURE_LOG)

        async def build(pref, key: str) -> Proposal:
            text, raw = await propose.propose(runner.ask, pref, temperature=cfg.propose_temperature, seed=cfg.seed,
                                              system_prompt=cfg.system_prompt)
            return Proposal(id=key, run_id=run.run_id, pair_id=pref.id, principle=text, raw=raw)

        async def price(todo: list) -> Any:
            ask = dry_ask(cached.model, honours_n=cached.honours_n)
            for pref, _ in todo:
                await propose.propose(ask, pref, temperature=cfg.propose_temperature, seed=cfg.seed)
            return ask.finish("propose", cached.name, cached.model, len(todo), getattr(opts, "prices", ""))

        async def main() -> None:
            try:
                todo, done = pending(prefs, key_of, records)
                note("constitution infer", f"{len(prefs)} pairs, {done} proposals made, {len(todo)} to go -> {where}")
                if todo and not cached.in_process:
                    confirm_cost(await price(todo), dataclasses.replace(cfg, out=where))
                concurrency = cached.inner.batch_size if cached.in_process else cached.inner_limit()
                await runner.run(todo, build, records=records, failures=failures, stage="propose",
                                 run_id=run.run_id, concurrency=concurrency, meter=meter, desc="proposals")
            finally:
                records.close()
                failures.close()
                await cached.aclose()

        asyncio.run(main())
        stored = latest_by_id(records.iter())
        keys = [key_of(pref) for pref in prefs]
        failed = outstanding_failures(failures, stored, keys)
        write_jsonl_atomic(run.file(RunDir.FAILURES), failed)
        counts = {"pairs": len(prefs), "proposed": sum(k in stored for k in keys), "failed": len(failed),
                  "unreadable": sum(f.get("kind") == "unparseable" for f in failed), "usage": meter.summary()}
        run.write_json(RunDir.USAGE, counts["usage"])
    return [(stored[k]["pair_id"], stored[k]["principle"]) for k in keys if k in stored], counts


def run_infer(cfg: InferConfig) -> int:
    from caikit.constitution import Principle, load_constitution
    from caikit.constitution_infer import (
        SCORE,
        cluster,
        percent,
        select,
        sides,
        slug,
        support_of,
    )
    from caikit.constitution_write import dump_constitution, write_valid
    from caikit.principle_matrix import judge_matrix
    from caikit.stages.propose import Preference

    compare = load_constitution(cfg.compare) if cfg.compare else None
    read = read_preferences(cfg.pairs, cfg.limit, cfg.seed)
    preferred = read.preferred_a()
    kept_pairs = [i for i, side in enumerate(preferred) if side is not None]  # a tie between people explains nothing
    if not kept_pairs:
        raise UserError("no pair with a preferred response (every pair is a tie between labellers)", path=cfg.pairs)
    pairs = [read.pairs[i] for i in kept_pairs]
    chose_a = [preferred[i] for i in kept_pairs]
    prefs = [Preference(p.id, p.prompt, *((p.response_a, p.response_b) if a else (p.response_b, p.response_a)))
             for p, a in zip(pairs, chose_a)]
    candidates, proposals = propose_all(cfg, prefs)
    clusters = cluster(candidates, cfg.similarity)
    tested = [c for c in clusters if len(c.pairs) >= cfg.min_proposals][: cfg.max_candidates]
    taken: set[str] = set()
    principles = [Principle(id=slug(c.text, taken), judge=c.text) for c in tested]
    theirs = [] if compare is None else [p for p in compare.principles if p.has_judge]
    theirs_as = {p.id: Principle(id=slug("compare " + p.id, taken), judge=p.judge) for p in theirs}
    report: dict[str, Any] = {"pairs": read.source, "pairs_used": len(pairs), "judge": cfg.judge_label(),
                              "proposals": proposals, "score": SCORE,
                              "clusters": [{"text": c.text, "proposed_by": len(c.pairs),
                                            "wordings": dict(c.wordings.most_common(5))} for c in clusters[:50]],
                              "clusters_total": len(clusters)}
    run = RunDir(cfg.out)
    if not principles:
        report["verdict"] = (f"no candidate principle was proposed by at least {cfg.min_proposals} pairs "
                             f"({len(candidates)} proposals, {len(clusters)} distinct): nothing to test")
        run.write_json(RunDir.REPORT, report)
        print(format_infer({**report, "candidates": []}))
        note("constitution infer", "no constitution.yaml written: exit 1")
        return 1
    matrix = judge_matrix(cfg.judge_options(), pairs, principles + list(theirs_as.values()), cfg.out,
                          stage="constitution-infer")
    side = {p.id: sides(matrix.column(p.id), chose_a) for p in principles + list(theirs_as.values())}
    ids = [p.id for p in principles]
    kept, dropped = select(ids, side, cfg.max_principles)
    by_id = {p.id: (p, c) for p, c in zip(principles, tested)}
    rows = []
    for pid in ids:
        principle, group = by_id[pid]
        rows.append({"id": pid, "judge": principle.judge, "proposed_by": len(group.pairs),
                     "wordings": dict(group.wordings.most_common(5)), **support_of(side[pid]).to_dict(),
                     "kept": pid in kept, "left_out": dropped.get(pid)})
    rows.sort(key=lambda r: -r["score"])
    report |= {"judgments": matrix.counts(), "failure_share": round(failure_share(matrix), 4), "method": matrix.method,
               "candidates": rows, "kept": kept, "usage": matrix.usage}
    if compare is not None:
        report["compare"] = {"constitution": compare.name, "path": str(compare.path), "principles": [
            {"id": p.id, **support_of(side[theirs_as[p.id].id]).to_dict()} for p in theirs]}
    failed = failure_share(matrix)
    if kept and failed <= cfg.max_failure_rate:
        notes = {r["id"]: [f"proposed by {r['proposed_by']} of {len(pairs)} pairs; takes a side on "
                           f"{r['decisiveness']:.0%}; its side is the preferred one on {percent(r['accuracy'])} of "
                           f"those {interval_text(r['accuracy_interval'])}; net support {r['score']:+.2f}"]
                 for r in rows if r["kept"]}
        data = {"name": cfg.name, "version": 1,
                "description": f"Inferred by caikit constitution infer from {len(pairs)} preference pairs "
                               f"({cfg.pairs}), judge {cfg.judge_label()}.",
                "principles": [{"id": pid, "judge": by_id[pid][0].judge} for pid in kept]}
        header = [f"An inverse constitution: the principles that best explain {cfg.pairs} ({len(pairs)} pairs),",
                  f"tested as judge instructions with {cfg.judge_label()} ({matrix.method}, both orders).",
                  f"Score: {SCORE}.", ""]
        write_valid(run.file("constitution.yaml"), dump_constitution(data, header=header, notes=notes))
        report["verdict"] = (f"{len(kept)} principle{'s explain' if len(kept) > 1 else ' explains'} the pairs: "
                             f"{', '.join(kept)}")
    elif kept:
        report["verdict"] = f"{failed:.0%} of the judgments failed (--max-failure-rate {cfg.max_failure_rate:.0%})"
    else:
        report["verdict"] = ("no candidate explains the pairs better than it contradicts them (net support <= 0 for "
                             "all): the judge is too weak to tell, or the preferences follow no stated rule")
    report["constitution_written"] = bool(kept) and failed <= cfg.max_failure_rate
    run.write_json(RunDir.REPORT, report)
    print(format_infer(report))
    if not report["constitution_written"]:
        note("constitution infer", report["verdict"] + ": exit 1")
        return 1
    note("constitution infer", f"-> {cfg.out}/constitution.yaml, {cfg.out}/report.json")
    return 0


def interval_text(interval: list[float] | None) -> str:
    return f"[{interval[0]:.0%}, {interval[1]:.0%}]" if interval else ""


def format_infer(report: dict[str, Any]) -> str:
    from caikit.constitution_infer import percent

    got = report["proposals"]
    lines = [f"proposals: {got['proposed']} of {got['pairs']} pairs gave a readable principle ({got['unreadable']} "
             f"unreadable, {got['failed'] - got['unreadable']} failed requests); {report['clusters_total']} distinct "
             f"after clustering, {len(report['candidates'])} tested"]
    if report["candidates"]:
        lines.append(f"{'candidate':<28} {'proposed':>8} {'decides':>8} {'agrees':>7} {'score':>6}  kept")
    for r in report["candidates"]:
        lines.append(f"{r['id'][:28]:<28} {r['proposed_by']:>8} {percent(r['decisiveness']):>8} "
                     f"{percent(r['accuracy']):>7} {r['score']:>+6.2f}  {'yes' if r['kept'] else 'no'}")
    for r in (report.get("compare") or {}).get("principles", []):
        lines.append(f"compare {r['id']}: {r['verdict']} (decides {percent(r['decisiveness'])}, agrees "
                     f"{percent(r['accuracy'])} {interval_text(r['accuracy_interval'])})")
    lines.append(report["verdict"])
    return "\n".join(lines)
