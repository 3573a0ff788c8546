"""Run one coroutine per item with bounded concurrency and a live progress bar.

The bar shows done/total, rate, ETA, tokens and cost so far. Items finish in any order; each worker
persists its own result before the next item starts, so stopping at any point loses nothing done.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from tqdm import tqdm

from caikit.backends.cache import UsageMeter

T = TypeVar("T")


def _postfix(meter: UsageMeter | None, failures: int) -> dict[str, Any]:
    if meter is None:
        return {"failed": failures}
    u = meter.usage
    return {"tok": f"{u.total_tokens:,}", "cost": f"${meter.cost_usd:.4f}", "failed": failures}


async def run_all(items: Iterable[T], work: Callable[[T], Awaitable[bool]], *, concurrency: int, desc: str,
                  meter: UsageMeter | None = None, progress: bool = True, total: int | None = None) -> tuple[int, int]:
    """Run `work(item)` for every item, `concurrency` at a time. `work` returns True on success.

    Returns (succeeded, failed). Exceptions other than cancellation propagate after the pool stops.
    """
    queue: asyncio.Queue = asyncio.Queue()
    count = 0
    for item in items:
        queue.put_nowait(item)
        count += 1
    bar = tqdm(total=total if total is not None else count, desc=desc, unit="it", dynamic_ncols=True,
               disable=not progress, file=sys.stderr, smoothing=0.1)
    done = {"ok": 0, "failed": 0}

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            ok = await work(item)
            done["ok" if ok else "failed"] += 1
            bar.update(1)
            bar.set_postfix(_postfix(meter, done["failed"]), refresh=False)

    workers = [asyncio.create_task(worker()) for _ in range(max(1, min(concurrency, count)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        bar.close()
    return done["ok"], done["failed"]


def run_sync(coro: Awaitable[T]) -> T:
    """asyncio.run that turns Ctrl-C into KeyboardInterrupt after in-flight writes finished."""
    return asyncio.run(coro)


def run_then_close(work: Awaitable[T], *backends: Any) -> T:
    """Run `work` to the end, then close `backends` (flushing their request logs) even if it failed."""

    async def main() -> T:
        try:
            return await work
        finally:
            for backend in backends:
                await backend.aclose()

    return asyncio.run(main())
