"""Every pair judged under every principle, one principle per judgment, both orders: the principle matrix.

`caikit constitution test` (and `fit`, `infer`, `diff`) need what `caikit judge` averages away: each
principle's own verdict on each pair. This module runs the judge stage (stages/judge.py, its methods and
its plans) once per (pair, principle) cell through the shared runner (runner.py) in one run directory, so a
rerun after kill -9 resumes, the request log means nothing is paid twice, the estimate prices the cells
still to judge, and failures are counted like any judge run's.

The call (kept stable; other commands build on it):

    from caikit.principle_matrix import judge_matrix
    matrix = judge_matrix(cfg, pairs, principles, out, stage="constitution-test", demos=(), also=None, skip=None)

    cfg         a config that is both JudgeOptions and BackendOptions (backend/model/base_url already set,
                e.g. `cfg.with_spec(cfg.judge)`); `principles` and `swap` are ignored (1 principle per
                judgment, both orders always); `progress`, `max_cost`, `yes` are honoured
    pairs       list[stages.judge.Pair]: id, prompt (chat messages ending with a user turn), response_a,
                response_b; ids unique
    principles  list[constitution.Principle] with a `judge` instruction; ids unique
    out         the run directory (created; judgments.jsonl, requests.jsonl, failures.jsonl, usage.json,
                run.json live there; a caller may add its own report.json beside them)
    stage       the RunDir stage name (a directory holds one stage: another stage there is refused)
    demos       judge demonstrations (constitution.JudgeExample) prepended per cfg.few_shot (0: none)
    also        optional `async (jr: judge_run.JudgeRun) -> Any`, awaited after the cells with the same run
                directory, runner and backend (a local model is loaded once); its result is `matrix.also`
    skip        optional `(pair, principle) -> bool`: cells not to judge; they are absent from `matrix.cells`
                (`matrix.get` gives None, `matrix.column` leaves them out). None: the full matrix

    -> Matrix: matrix.cell(pair_id, principle_id) -> Cell(p_a_first, p_a_swapped, p_a, status), where
       p_* = P(response_a is better) in that order / averaged, and status is "ok" (both orders read),
       "unreadable" (the judge's answer could not be read after --parse-retries resamples), "failed" (the
       request failed) or "missing" (not judged: an interrupted run). matrix.usage is usage.json.

A cell's identity is the judge settings, the pair's text and the principle's *instruction* (not its id nor
the constitution it sits in): the same instruction over the same pair is judged once, whichever
constitution, principle id or command asks, as long as they share `out`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

from caikit.errors import UserError
from caikit.estimate import confirm_cost, dry_ask
from caikit.judge_run import open_judge
from caikit.records import idempotency_key
from caikit.rundir import RunDir, note
from caikit.runner import outstanding_failures, pending
from caikit.soft_labels import position_consistent
from caikit.stages.judge import JudgeSetup, Pair, judge_pair
from caikit.store import latest_by_id, write_jsonl_atomic

STATUSES = ("ok", "unreadable", "failed", "missing")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One principle's verdict on one pair: P(response_a better) per order and averaged (None unless ok)."""

    pair_id: str
    principle_id: str
    status: str  # one of STATUSES
    p_a_first: float | None = None
    p_a_swapped: float | None = None
    p_a: float | None = None

    @property
    def readable(self) -> bool:
        return self.status == "ok"

    @property
    def consistent(self) -> bool | None:
        """Both orders prefer the same response (None unless read)."""
        return position_consistent(self.p_a_first, self.p_a_swapped) if self.readable else None

    @property
    def confidence(self) -> float | None:
        """|p_a - 0.5| * 2: 0 for a coin, 1 for a certain verdict."""
        return None if self.p_a is None else abs(self.p_a - 0.5) * 2


@dataclasses.dataclass
class Matrix:
    pairs: list[Pair]
    principle_ids: list[str]
    cells: dict[tuple[str, str], Cell]
    method: str
    usage: dict[str, Any]
    also: Any = None  # what the `also` hook returned

    def cell(self, pair_id: str, principle_id: str) -> Cell:
        return self.cells[(pair_id, principle_id)]

    def get(self, pair_id: str, principle_id: str) -> Cell | None:
        """The cell, or None where `skip` left it out."""
        return self.cells.get((pair_id, principle_id))

    def column(self, principle_id: str) -> list[Cell]:
        """One principle's cells, in the order of `pairs` (cells left out by `skip` are not there)."""
        return [self.cells[(p.id, principle_id)] for p in self.pairs if (p.id, principle_id) in self.cells]

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.cells.values()) for s in STATUSES}


@dataclasses.dataclass(frozen=True)
class _Item:
    pair: Pair
    principle: Any
    setup: JudgeSetup

    @property
    def id(self) -> str:  # the failure row's label
        return f"{self.pair.id} @ {self.principle.id}"

    def key(self) -> str:
        return self.setup.key(self.pair)


@dataclasses.dataclass
class _Principles:
    """What open_judge reads of a constitution. Name and hash are constant on purpose: the run directory's
    identity is the judge's settings, not the constitution, so an edited or another constitution reuses the
    cells it shares with the last one."""

    judge_principles: list
    judge_few_shot: list
    name: str = "principle-matrix"
    hash: str = ""


def _check(pairs: list[Pair], principles: list) -> None:
    for what, ids in (("pair", [p.id for p in pairs]), ("principle", [p.id for p in principles])):
        seen = set()
        for i in ids:
            if i in seen:
                raise UserError(f"principle matrix: duplicate {what} id '{i}'")
            seen.add(i)
    missing = [p.id for p in principles if not p.judge]
    if missing:
        raise UserError(f"principle matrix: principles without a 'judge' instruction: {', '.join(missing)}")


def cell_setups(base: JudgeSetup, principles: list, demos: list) -> dict[str, JudgeSetup]:
    """One JudgeSetup per principle: a pool of that principle alone, identified by its instruction."""
    setups = {}
    for p in principles:
        identity = idempotency_key("matrix-cell", base.identity_hash, p.judge, [dataclasses.asdict(d) for d in demos])
        setups[p.id] = dataclasses.replace(base, principles=[p], identity_hash=identity)
    return setups


def judge_matrix(cfg, pairs: list[Pair], principles: list, out: str | Path, *, stage: str = "principle-matrix",
                 demos: list | tuple = (), also: Callable[[Any], Awaitable[Any]] | None = None,
                 skip: Callable[[Pair, Any], bool] | None = None) -> Matrix:
    """Judge every (pair, principle) cell not judged yet in `out`, both orders; see the module docstring."""
    _check(pairs, principles)
    cfg = dataclasses.replace(cfg, principles=1, swap=True)
    demos = list(demos) if cfg.few_shot < 0 else list(demos)[: cfg.few_shot]
    jr = open_judge(cfg, str(out), stage, {"kind": "principle-matrix"},
                    constitution=_Principles(list(principles), demos))
    setups = cell_setups(jr.setup, principles, [] if jr.setup.method.cot else demos)
    items = [_Item(pair, p, setups[p.id]) for pair in pairs for p in principles if skip is None or not skip(pair, p)]
    extra: list[Any] = [None]
    try:
        asyncio.run(_run(jr, cfg, items, str(out), also, extra))
    finally:
        try:
            matrix = _collect(jr, pairs, principles, items)
        finally:
            jr.close()
    matrix.also = extra[0]
    return matrix


async def _run(jr, cfg, items: list[_Item], out: str, also, extra: list[Any]) -> None:
    judgments, failures = jr.run.jsonl(RunDir.JUDGMENTS), jr.run.jsonl(RunDir.FAILURE_LOG)
    try:
        todo, done = pending(items, _Item.key, judgments)
        note(jr.stage, f"{len(items)} judgments (pairs x principles), {done} already made, {len(todo)} to go "
                       f"({jr.setup.method.name}, both orders) -> {out}")
        if not jr.cached.in_process and todo:
            estimate = await asyncio.to_thread(price_cells, [item for item, _ in todo], jr.cached.model,
                                               jr.cached.name, honours_n=jr.cached.honours_n,
                                               prices=getattr(cfg, "prices", ""))
            confirm_cost(estimate, SimpleNamespace(out=out, max_cost=getattr(cfg, "max_cost", 0.0),
                                                   batch_api=getattr(cfg, "batch_api", False),
                                                   yes=getattr(cfg, "yes", False)))
        concurrency = jr.cached.inner.batch_size if jr.cached.in_process else jr.cached.inner_limit()
        if getattr(cfg, "batch_api", False):
            concurrency = max(1, len(todo))
        await jr.runner.run(todo, lambda item, key: judge_pair(jr.runner.ask, item.setup, item.pair, key,
                                                               jr.run.run_id),
                            records=judgments, failures=failures, stage="judge", run_id=jr.run.run_id,
                            concurrency=concurrency, meter=jr.meter, desc=jr.stage)
        if also is not None:
            extra[0] = await also(jr)
    finally:
        judgments.close()
        failures.close()
        await jr.cached.aclose()


def price_cells(items: list[_Item], model: str, backend: str, *, honours_n: bool = True, prices: str = ""):
    """The estimate of judging `items`: the judge stage's own plans against a DryAsk."""
    ask = dry_ask(model, honours_n=honours_n)

    async def all_cells() -> None:
        for item in items:
            await judge_pair(ask, item.setup, item.pair, item.key(), "estimate")

    asyncio.run(all_cells())
    return ask.finish("judge", backend, model, len(items), prices)


def _collect(jr, pairs: list[Pair], principles: list, items: list[_Item]) -> Matrix:
    """The matrix from the run directory's logs; failures.jsonl and usage.json rewritten to match."""
    stored = latest_by_id(jr.run.jsonl(RunDir.JUDGMENTS).iter())
    keys = [item.key() for item in items]
    failed = {f["id"]: f for f in outstanding_failures(jr.run.jsonl(RunDir.FAILURE_LOG), stored, keys)}
    cells: dict[tuple[str, str], Cell] = {}
    for item, key in zip(items, keys):
        where = (item.pair.id, item.principle.id)
        if key in stored:
            j = stored[key]
            cells[where] = Cell(*where, "ok", j.get("p_a_first"), j.get("p_a_swapped"), j.get("p_a"))
        elif key in failed:
            cells[where] = Cell(*where, "unreadable" if failed[key].get("kind") == "unparseable" else "failed")
        else:
            cells[where] = Cell(*where, "missing")
    write_jsonl_atomic(jr.run.file(RunDir.FAILURES), failed.values())
    usage = {**jr.meter.summary(), "judgments": len(items), "judged": sum(c.readable for c in cells.values())}
    jr.run.write_json(RunDir.USAGE, usage)
    return Matrix(list(pairs), [p.id for p in principles], cells, jr.setup.method.name, usage)
