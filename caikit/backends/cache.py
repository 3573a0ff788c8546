"""Every completed request is stored once, in the run directory, before its answer is used.

`CachingBackend` wraps any backend: a request whose key (model + messages + params + seed) is already
in `requests.jsonl` as a *final* answer is answered from there, so a rerun after a crash never pays for,
nor waits on, work that already finished, and reproduces the same answers. Only a usable answer is final:
the caller passes `accept` (the stage's own check), and a row none of whose answers it takes (empty, null,
unparseable, cut short where that matters) is logged with `"final": false` -- it was paid for, so it
counts in usage.json, but the next run asks again instead of replaying a failure forever.

Each row is tagged with the item it was made for (the record or failure row the runner is building, see
`current_item`), so every record carries the usage of exactly the requests made for it, and the rows of a
run directory add up to usage.json. Usage is counted only for requests that really went out; `usage.json`
is the sum over this file, so nothing is counted twice.

A log write that fails (a full disk) stops the run before it pays for more: no request starts after it, the
requests in flight are awaited (never cancelled: their answers were paid for), and every answer that came
back is kept in memory and written as soon as the disk takes it -- at the next write, or at `aclose` -- so
a rerun asks again only for what never came back. The run ends with RequestLogFailed (one line, exit 2).

With `max_cost`, the log is also the budget: what it holds was spent (by this run directory, over
all reruns), and a new request starts only if its worst case, added to that and to the worst cases
of the requests in flight, stays within `max_cost`. The first one that would not stops the run with
BudgetExceeded once the requests in flight have landed in the log, so nothing paid for is lost.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any, Callable

from caikit.backends.base import Backend, BackendError, Completion, Message, Usage
from caikit.backends.limits import estimate_tokens
from caikit.errors import UserError
from caikit.index import RequestIndex
from caikit.records import canonical_json, idempotency_key
from caikit.store import JsonlFile


@dataclass
class ItemLedger:
    """What the work on one item (a prompt, a pair) has sent in this run: the runner sets one per item."""

    item_id: str
    attempts: int = 0  # HTTP requests sent for it, retries included (replayed answers are not sent)


current_item: contextvars.ContextVar[ItemLedger | None] = contextvars.ContextVar("caikit_item", default=None)


class BudgetExceeded(UserError):
    """The next request could take spending past --max-cost: the run stops (rerun with more to go on)."""


class RequestLogFailed(UserError):
    """A write to the run directory failed (a full disk): no request was sent after it."""


class UsageMeter:
    """Running token and cost totals for the progress bar and usage.json."""

    def __init__(self, model: str, *, price_overrides: dict | None = None, batch: bool = False):
        self.model = model
        self.price_overrides = price_overrides
        self.batch = batch
        self.usage = Usage()
        self.cached_requests = 0

    def add(self, usage: Usage) -> None:
        self.usage.add(usage)

    @property
    def cost_usd(self) -> float:
        return self.cost_of(self.usage)

    def cost_of(self, usage: Usage) -> float:
        from caikit.backends.cost import cost_usd

        return cost_usd(self.model, usage, overrides=self.price_overrides, batch=self.batch)

    def worst_case_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        from caikit.backends.cost import worst_case_usd

        return worst_case_usd(self.model, prompt_tokens, completion_tokens, overrides=self.price_overrides,
                              batch=self.batch)

    def summary(self) -> dict[str, Any]:
        from caikit.backends.cost import price_for

        uncached = Usage(prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens)
        return {
            "model": self.model,
            **self.usage.to_dict(),  # cached_tokens: prompt-cache reads, cache_write_tokens: writes
            "total_tokens": self.usage.total_tokens,
            "requests_served_from_cache": self.cached_requests,
            "cost_usd": round(self.cost_usd, 6),
            "prompt_cache_saved_usd": round(self.cost_of(uncached) - self.cost_usd, 6),  # < 0: writes not yet read
            "batch_api": self.batch,
            "price_known": price_for(self.model, overrides=self.price_overrides).known,
        }


class CachingBackend(Backend):
    """Answer repeated requests from the run's request log; record new ones as they complete."""

    def __init__(self, inner: Backend, log: JsonlFile, meter: UsageMeter | None = None, *,
                 max_cost: float | None = None):
        super().__init__(inner.model)
        self.inner = inner
        self.name = inner.name
        self.supports_logprobs = inner.supports_logprobs
        self.honours_n = inner.honours_n
        self.in_process = inner.in_process
        self.log = log
        self.meter = meter or UsageMeter(inner.model)
        self.max_cost = max_cost  # USD for the whole run directory; None: no limit
        self._inflight: dict[str, asyncio.Future] = {}
        self._reserved: dict[str, float] = {}  # worst-case USD of each request in flight
        self._reserved_total = 0.0  # their sum, kept as they come and go (batch mode has every request in flight)
        self._over_budget: float | None = None  # once set (the worst case that did not fit), no new request starts
        self._unlogged: list[dict[str, Any]] = []  # answers received that the log has not taken yet (full disk)
        self._write_error: OSError | None = None  # the first failed write: no request starts after it
        # Where each final answer is and what each item used live in the log's on-disk index (caikit.index),
        # not in memory: a million-prompt log costs a few bytes of RAM, and a rerun reads no row it does not replay
        self.index = log.indexed(RequestIndex)
        self._model_name = inner.describe().get("model")  # in every request's key; asked once, not per request
        self.meter.add(Usage.from_dict(self.index.usage()))

    def usage_of(self, item_id: str) -> Usage:
        """Everything the request log holds for `item_id`: its share of usage.json."""
        return Usage.from_dict(self.index.usage(item_id))

    def _key(self, kind: str, payload: dict[str, Any]) -> str:
        return idempotency_key(kind, self._model_name, canonical_json(payload))

    async def _once(self, key: str, call, worst_case: tuple[int, int] = (0, 0)):
        """Run `call` at most once per key with a final answer, also across concurrent identical requests.

        `worst_case` = (prompt tokens, completion tokens) the request may bill, for --max-cost."""
        where = self.index.final(key)
        if where is not None:
            self.meter.cached_requests += 1
            return self.log.read_at(*where)
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        if self._write_error is not None:
            raise await self._stopped()
        if self.max_cost is not None:
            await self._reserve(key, self.meter.worst_case_usd(*worst_case))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        ledger = current_item.get()
        try:
            try:
                row = await call()
            except BackendError as e:
                if ledger is not None:
                    ledger.attempts += e.attempts
                raise
            row["key"] = key
            if ledger is not None:
                row["item"] = ledger.item_id
                ledger.attempts += Usage.from_dict(row.get("usage")).requests or 1
            if not self._write(row):  # persisted before anyone uses the answer; else kept to be written later
                self._inflight.pop(key, None)
                raise await self._stopped()
            fut.set_result(row)
            return row
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
            self._reserved_total -= self._reserved.pop(key, 0.0)

    def _write(self, row: dict[str, Any] | None = None) -> bool:
        """Append `row` after any answers still waiting for the disk, oldest first. False when the disk refused:
        what is not written stays in memory, and from now on no request starts."""
        if row is not None:
            self._unlogged.append(row)
        while self._unlogged:
            try:
                self.log.append(self._unlogged[0])
            except OSError as e:
                self._write_error = self._write_error or e
                return False
            self.meter.add(Usage.from_dict(self._unlogged.pop(0).get("usage")))  # (the log's index took the row)
        return True

    def stop_sending(self, error: OSError) -> None:
        """Another file of the run could not be written (a record on a full disk): no request starts after it."""
        self._write_error = self._write_error or error

    async def settle(self) -> None:
        """Wait for every request in flight to land (in the log, or in memory when the disk refuses it)."""
        while self._inflight:
            await asyncio.gather(*[asyncio.shield(f) for f in list(self._inflight.values())], return_exceptions=True)

    async def _stopped(self) -> RequestLogFailed:
        """The error that stops the run after a failed write, once the requests in flight have landed."""
        await self.settle()
        self._write()
        e = self._write_error
        where = e.filename or self.log.path
        kept = (f"; {len(self._unlogged)} answers received are kept in memory until the disk takes them"
                if self._unlogged else "; every answer received is in the request log")
        return RequestLogFailed(f"cannot write {where}: {e.strerror or e}: no request was sent after it{kept} "
                                "(free space and rerun: nothing logged is asked again)")

    async def _reserve(self, key: str, worst_usd: float) -> None:
        """Hold `worst_usd` of the budget for this request, or stop the run: BudgetExceeded is raised
        after every request in flight has finished and been logged (a rerun finds them there), and says
        what the run directory has spent by then -- the same figure usage.json will hold."""
        spent = self.meter.cost_usd
        if self._over_budget is None and spent + self._reserved_total + worst_usd <= self.max_cost:
            self._reserved[key] = worst_usd
            self._reserved_total += worst_usd
            return
        if self._over_budget is None:
            self._over_budget = worst_usd  # the request that did not fit: no new request starts from now on
        while self._inflight:
            await asyncio.gather(*[asyncio.shield(f) for f in list(self._inflight.values())], return_exceptions=True)
        from caikit.backends.cost import format_usd

        raise BudgetExceeded(f"--max-cost {format_usd(self.max_cost)} reached: this run directory has spent "
                             f"{format_usd(self.meter.cost_usd)} (usage.json) and the next request could cost up to "
                             f"{format_usd(self._over_budget)}; finished work is kept: rerun with a higher "
                             "--max-cost to go on")

    async def generate(self, messages: list[Message], *, n=1, temperature=0.7, max_tokens=256, stop=None,
                       seed=None, accept: Callable[[Completion], bool] | None = None) -> list[Completion]:
        """The backend's answers, from the log when a final row is there. `accept(completion)` says whether an
        answer is usable: a row with no usable answer is logged but not final (see the module docstring)."""
        params = {"n": n, "temperature": temperature, "max_tokens": max_tokens, "stop": stop, "seed": seed}

        async def call():
            completions = await self.inner.generate(messages, **params)
            usage = Usage()
            for c in completions:
                usage.add(c.usage)
            final = accept is None or any(accept(c) for c in completions)
            return {"kind": "generate", "completions": [c.to_dict() for c in completions], "usage": usage.to_dict(),
                    **({} if final else {"final": False})}

        prompt_copies = 1 if self.inner.honours_n else n  # n samples sent as n requests repeat the prompt
        worst_case = (estimate_tokens(messages) * prompt_copies, max_tokens * n)
        row = await self._once(self._key("generate", {"messages": messages, **params}), call, worst_case)
        return [Completion.from_dict(c) for c in row["completions"]]

    async def option_logprobs(self, messages: list[Message], options: list[str],
                              accept: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
        async def call():
            lp = await self.inner.option_logprobs(messages, options)
            usage = getattr(self.inner, "last_usage", None)
            final = accept is None or accept(lp)
            return {"kind": "logprobs", "logprobs": {k: _finite(v) for k, v in lp.items()},
                    "usage": (usage or Usage(requests=1)).to_dict(), **({} if final else {"final": False})}

        row = await self._once(self._key("logprobs", {"messages": messages, "options": options}), call,
                               (estimate_tokens(messages), 1))
        return {k: (float("-inf") if v is None else v) for k, v in row["logprobs"].items()}

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def prepare_to_send(self) -> None:
        self.inner.prepare_to_send()

    def inner_limit(self) -> int:
        """How many requests the provider takes at once: its limiter's ceiling (the local model: its batch)."""
        backend = getattr(self.inner, "inner", self.inner)  # through a BatchBackend
        limiter = getattr(backend, "limiter", None)
        return limiter.concurrency if limiter is not None else getattr(backend, "batch_size", 16)

    async def aclose(self) -> None:
        try:
            if not self._write() and self._unlogged:  # a last try: the disk may have room again
                import sys

                print(f"caikit: {len(self._unlogged)} answers received could not be written to {self.log.path} "
                      f"({self._write_error.strerror or self._write_error}): a rerun asks for them again",
                      file=sys.stderr, flush=True)
            try:
                self.log.close()
            except OSError:
                pass  # the last fsync of a full disk: what was written is in the OS already
        finally:
            await self.inner.aclose()


def _finite(x: float) -> float | None:
    return None if x == float("-inf") else float(x)
