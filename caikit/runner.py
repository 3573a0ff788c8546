"""Runs any stage over a run directory: resume keys, the request log, failure rows, progress, the cost gate.

The commands (`generate`, `judge`, `eval judge`, `eval`) are thin: they build the items and say how one
item becomes a record (a coroutine over `Runner.ask`, i.e. over the stage's plans). `Runner.run` does the
rest, the same way for every stage:

- items whose record is already in the record file are skipped (a rerun resumes);
- each item runs with its own ledger (`cache.current_item`), so every request it sends is logged with
  its id, and its record -- or its failure row -- carries exactly the usage and attempts spent on it;
- an answer the stage refuses (`Request.accept`) is resampled with another seed up to --parse-retries
  times, and is never stored as final, so the next run asks again;
- a failure of the whole run (401 / 403 / 404, a 400 no prompt gets past) stops every item at once:
  `RunStopped`, one line, exit 2; anything else that fails is a failure row the next run retries;
- progress counts requests per named phase (caikit.progress), with rate, ETA, tokens, cost and failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from caikit.backends.base import BackendError, Completion
from caikit.backends.cache import CachingBackend, ItemLedger, UsageMeter, current_item
from caikit.errors import UserError
from caikit.index import RecordIndex
from caikit.progress import Progress, count_request
from caikit.records import Failure, Record
from caikit.rundir import RunDir, note
from caikit.stages.base import ParseError, Reply, Request
from caikit.store import JsonlFile, latest_by_id

T = TypeVar("T")
RESAMPLE_SEED_STEP, SAMPLE_SEED_STEP = 7919, 104729  # seed offsets of a resample and of the i-th of n samples


class RunStopped(UserError):
    """The provider refused the run itself (wrong key, no access, unknown model, a malformed request)."""


@dataclass
class Outcome:
    """How `Runner.run` went: records now complete, failure rows written this run, items skipped as done."""

    done: int
    failed: int
    skipped: int


async def run_all(items: Iterable[T], work: Callable[[T], Awaitable[bool]], *, concurrency: int, desc: str,
                  meter: UsageMeter | None = None, progress: bool = True, total: int | None = None,
                  per_item: dict[str, int] | None = None) -> tuple[int, int]:
    """Run `work(item)` for every item, `concurrency` at a time. `work` returns True on success.
    `per_item`: the requests one item sends in each named phase, so that progress counts requests (caikit.progress).

    Returns (succeeded, failed). Exceptions other than cancellation propagate after the pool stops.
    """
    queue: asyncio.Queue = asyncio.Queue()
    count = 0
    for item in items:
        queue.put_nowait(item)
        count += 1
    bar = Progress(desc, total if total is not None else count, per_item=per_item, meter=meter, enabled=progress)
    done = {"ok": 0, "failed": 0}

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            ok = await work(item)
            done["ok" if ok else "failed"] += 1
            bar.item_done(ok)

    with bar.active():  # the workers' tasks inherit it: their requests count towards it
        workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, count)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return done["ok"], done["failed"]


def run_sync(coro: Awaitable[T]) -> T:
    """asyncio.run: Ctrl-C becomes KeyboardInterrupt after in-flight writes finished."""
    return asyncio.run(coro)


def run_then_close(work: Awaitable[T], *backends: Any) -> T:
    """Run `work` to the end, then close `backends` (flushing their request logs) even if it failed."""

    async def main() -> T:
        try:
            return await work
        finally:
            for backend in backends:
                await backend.aclose()

    with fewer_collections():
        return asyncio.run(main())


@contextlib.contextmanager
def fewer_collections(young: int = 50_000):
    """Collect the young generation every `young` net allocations instead of every 700 while a run sends:
    hundreds of requests in flight keep ~10^5 young objects alive, and at the default thresholds the collector
    re-scanned them ~1,500 times in a 30,000-request generate (3.7 s of its 28 s of CPU); at 50,000 it ran 3
    times and peak memory did not move (scripts/bench_scale.py)."""
    before = gc.get_threshold()
    gc.set_threshold(young, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def open_backend(run: RunDir, backend, opts, *, log_name: str = RunDir.REQUESTS,
                 log: JsonlFile | None = None) -> tuple[CachingBackend, UsageMeter]:
    """`backend` dressed for a run directory: through the batch API when `opts.batch_api`, every completed
    request logged in `run/log_name` (a rerun re-requests nothing final), tokens and cost metered, spending
    capped by `opts.max_cost`."""
    from caikit.backends.cost import load_price_overrides

    if getattr(opts, "batch_api", False):
        from caikit.backends.batch import BatchBackend

        backend = BatchBackend(backend, run.file(RunDir.BATCHES), poll_interval=opts.batch_poll_interval)
    prices = getattr(opts, "prices", "")
    meter = UsageMeter(backend.model, price_overrides=load_price_overrides(prices) if prices else None,
                       batch=bool(getattr(opts, "batch_api", False)))
    cached = CachingBackend(backend, log if log is not None else run.jsonl(log_name), meter,
                            max_cost=getattr(opts, "max_cost", 0.0) or None)
    return cached, meter


def first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:500]


class Runner:
    """Sends a stage's requests through a run directory's CachingBackend and turns items into records."""

    def __init__(self, backend: CachingBackend, *, parse_retries: int = 2, progress: bool = True):
        self.backend = backend
        self.parse_retries = parse_retries
        self.progress = progress

    async def ask(self, requests: list[Request]) -> list[Reply]:
        """Every request of one plan step at once (a local backend batches them); the first error is raised
        once all have settled, a run-stopping one first."""
        if len(requests) == 1:  # most steps: no task and no gather for one request (a tenth of a run's CPU)
            return [await self.ask_one(requests[0])]
        results = await asyncio.gather(*(self.ask_one(r) for r in requests), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, BackendError) and e.fatal),
                       next((e for e in errors if not isinstance(e, ParseError)), errors[0]))
        return list(results)

    async def ask_one(self, request: Request) -> Reply:
        try:
            return await self._ask_one(request)
        finally:
            count_request()

    async def _ask_one(self, request: Request) -> Reply:
        if request.kind == "logprobs":
            accept = request.accept or (lambda lp, attempt: lp)
            logprobs = await self.backend.option_logprobs(request.messages, list(request.options),
                                                          accept=_takes(accept, 0))
            return Reply([accept(logprobs, 0)], logprobs=logprobs)
        accept = request.accept or (lambda completion, attempt: completion.text)
        completions = await self._generate(request, request.n, request.seed, accept)
        values, kept = [], []
        for i, completion in enumerate(completions):
            value, completion = await self._accepted(request, accept, completion, i)
            values.append(value)
            kept.append(completion)
        return Reply(values, kept)

    async def _generate(self, request: Request, n: int, seed: int | None, accept, attempt: int = 0) -> list[Completion]:
        return await self.backend.generate(request.messages, n=n, temperature=request.temperature,
                                           max_tokens=request.max_tokens, seed=seed, accept=_takes(accept, attempt))

    async def _accepted(self, request: Request, accept, completion: Completion, index: int) -> tuple[Any, Completion]:
        """The value `accept` takes from `completion`, resampling a refused answer up to parse_retries times."""
        for attempt in range(self.parse_retries + 1):
            try:
                return accept(completion, attempt), completion
            except ParseError as e:
                if attempt == self.parse_retries:
                    suffix = f" (after {self.parse_retries} resamples)" if self.parse_retries else ""
                    raise ParseError(f"{e}{suffix}", e.raw) from None
            seed = None if request.seed is None else (
                request.seed + RESAMPLE_SEED_STEP * (attempt + 1) + (SAMPLE_SEED_STEP * (index + 1) if request.n > 1 else 0))
            (completion,) = await self._generate(request, 1, seed, accept, attempt + 1)
        raise AssertionError("unreachable")

    async def run(self, todo: list[tuple[Any, str]], build: Callable[[Any, str], Awaitable[Record]], *,
                  records: JsonlFile, failures: JsonlFile, stage: str, run_id: str, concurrency: int,
                  item_label: Callable[[Any], str] = lambda item: getattr(item, "id", ""),
                  meter: UsageMeter | None = None, desc: str | None = None,
                  per_item: dict[str, int] | None = None) -> Outcome:
        """Build a record for every (item, key) of `todo`, `concurrency` at a time: the one worker that every
        stage shares. Each record (or failure row) is appended and flushed as it completes."""
        stopped: list[BackendError] = []
        if todo and hasattr(self.backend, "prepare_to_send"):
            self.backend.prepare_to_send()

        async def work(entry) -> bool:
            item, key = entry
            ledger = ItemLedger(key)
            token = current_item.set(ledger)
            try:
                record = await build(item, key)
            except BackendError as e:
                if e.fatal:
                    stopped.append(e)
                    raise
                await self._fail(failures, key, item_label(item), stage, run_id, e, ledger)
                return False
            except ParseError as e:
                await self._fail(failures, key, item_label(item), stage, run_id, e, ledger)
                return False
            finally:
                current_item.reset(token)
            if hasattr(record, "usage"):
                record.usage = self.backend.usage_of(key).to_dict()
            await self._store(records, record.to_dict())
            return True

        try:
            ok, failed = await run_all(todo, work, concurrency=concurrency, desc=desc or stage, meter=meter,
                                       progress=self.progress, per_item=per_item)
        except BackendError as e:
            if stopped:
                raise RunStopped(f"the provider refused the run: {first_line(stopped[0])} (nothing more was sent; "
                                 "fix the key, model or options and rerun: finished work is kept)") from None
            raise e
        return Outcome(done=ok, failed=failed, skipped=0)

    async def _store(self, file: JsonlFile, row: dict[str, Any]) -> None:
        """Append a record or failure row; when the disk refuses it, stop sending and let the requests in
        flight land in the request log (never cancel what was paid for) before the error ends the run."""
        try:
            file.append(row)
        except OSError as e:
            stop = getattr(self.backend, "stop_sending", None)
            if stop is not None:
                stop(e)
                await self.backend.settle()
            raise

    async def _fail(self, failures: JsonlFile, key: str, label: str, stage: str, run_id: str, error: BaseException,
                    ledger: ItemLedger) -> None:
        message = first_line(error)
        if isinstance(error, BackendError) and ledger.attempts != error.attempts:  # earlier requests of the item too
            message += f" ({ledger.attempts} requests sent for this item in all)"
        await self._store(failures, Failure(id=key, run_id=run_id, stage=stage, prompt_id=label, error=message,
                                kind="unparseable" if isinstance(error, ParseError) else "request",
                                raw=getattr(error, "raw", None), attempts=ledger.attempts,
                                usage=self.backend.usage_of(key).to_dict()).to_dict())


def _takes(accept: Callable[[Any, int], Any], attempt: int = 0) -> Callable[[Any], bool]:
    """The request log's finality check: does the stage take this answer at the attempt it was asked for?"""
    def check(answer: Any) -> bool:
        try:
            accept(answer, attempt)
        except ParseError:
            return False
        return True

    return check


def exit_status(command: str, *, made: int, made_what: str, failures: int, attempted: int, what: str,
                max_failure_rate: float, failures_file: str) -> int:
    """The closing verdict every stage shares: 1 when nothing usable came out, whatever --max-failure-rate
    allows (0 records is never "done"); else 1 when more than that share of the `attempted` items failed; else 0.
    The rate is failures / attempted, so it never reads above 100 %."""
    if not made:
        note(command, f"nothing usable came out (0 {made_what}"
                      + (f"; {failures} of {attempted} {what} failed, see {failures_file}" if failures else "")
                      + "): exit 1, whatever --max-failure-rate allows")
        return 1
    if not failures:
        return 0
    note(command, f"{failures} {what} failed after retries (see {failures_file}); rerun the same command to retry them")
    rate = failures / max(1, attempted, failures)
    if rate > max_failure_rate:
        note(command, f"{rate:.0%} of the {what} failed, more than --max-failure-rate {max_failure_rate:g}: exit 1")
        return 1
    return 0


def pending(items: list[Any], key_of: Callable[[Any], str], records: JsonlFile) -> tuple[list[tuple[Any, str]], int]:
    """(item, key) pairs not yet in `records`, and how many were already done: asked of the records' on-disk
    index (caught up with the file first), so a finished run of any size resumes without reading a record."""
    index = records.indexed(RecordIndex)
    seen = 0

    def keyed():  # streamed: only the missing (item, key) pairs are kept
        nonlocal seen
        for item in items:
            seen += 1
            yield item, key_of(item)

    todo = list(index.missing(keyed(), key_of=lambda pair: pair[1]))
    return todo, seen - len(todo)


def outstanding_failures(failure_log: JsonlFile, records: dict[str, Any], keys: Iterable[str] | None = None) -> list[dict]:
    """The latest failure row of each item that has no record (restricted to `keys` when given)."""
    logged = latest_by_id(failure_log.iter())
    wanted = logged.keys() if keys is None else [k for k in keys if k in logged]
    return [logged[k] for k in wanted if k not in records]
