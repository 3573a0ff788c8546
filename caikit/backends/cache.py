"""Every completed request is stored once, in the run directory, before its answer is used.

`CachingBackend` wraps any backend: a request whose key (model + messages + params + seed) is already
in `requests.jsonl` is answered from there, so a rerun after a crash never pays for, nor waits on,
work that already finished, and reproduces the same answers. Usage is counted only for requests that
really went out; `usage.json` is the sum over this file, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
from typing import Any

from caikit.backends.base import Backend, Completion, Message, Usage
from caikit.records import canonical_json, idempotency_key
from caikit.store import JsonlFile


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
        from caikit.backends.cost import cost_usd

        return cost_usd(self.model, self.usage, overrides=self.price_overrides, batch=self.batch)

    def summary(self) -> dict[str, Any]:
        from caikit.backends.cost import price_for

        return {
            "model": self.model,
            **self.usage.to_dict(),
            "total_tokens": self.usage.total_tokens,
            "requests_served_from_cache": self.cached_requests,
            "cost_usd": round(self.cost_usd, 6),
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
        self.log = log
        self.meter = meter or UsageMeter(inner.model)
        self.max_cost = max_cost  # USD; enforced before each new request (see caikit.estimate)
        self._done: dict[str, dict[str, Any]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        for row in log.iter():
            self._done[row["key"]] = row
            self.meter.add(Usage.from_dict(row.get("usage")))

    def _key(self, kind: str, payload: dict[str, Any]) -> str:
        return idempotency_key(kind, self.inner.describe().get("model"), canonical_json(payload))

    async def _once(self, key: str, call):
        """Run `call` at most once per key, also across concurrent identical requests."""
        if key in self._done:
            self.meter.cached_requests += 1
            return self._done[key]
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            row = await call()
            row["key"] = key
            self.log.append(row)  # persisted before anyone uses the answer
            self._done[key] = row
            self.meter.add(Usage.from_dict(row.get("usage")))
            fut.set_result(row)
            return row
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)

    async def generate(self, messages: list[Message], *, n=1, temperature=0.7, max_tokens=256, stop=None,
                       seed=None) -> list[Completion]:
        params = {"n": n, "temperature": temperature, "max_tokens": max_tokens, "stop": stop, "seed": seed}

        async def call():
            completions = await self.inner.generate(messages, **params)
            usage = Usage()
            for c in completions:
                usage.add(c.usage)
            return {"kind": "generate", "completions": [c.to_dict() for c in completions], "usage": usage.to_dict()}

        row = await self._once(self._key("generate", {"messages": messages, **params}), call)
        return [Completion.from_dict(c) for c in row["completions"]]

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        async def call():
            lp = await self.inner.option_logprobs(messages, options)
            usage = getattr(self.inner, "last_usage", None)
            return {"kind": "logprobs", "logprobs": {k: _finite(v) for k, v in lp.items()},
                    "usage": (usage or Usage(requests=1)).to_dict()}

        row = await self._once(self._key("logprobs", {"messages": messages, "options": options}), call)
        return {k: (float("-inf") if v is None else v) for k, v in row["logprobs"].items()}

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    async def aclose(self) -> None:
        self.log.close()
        await self.inner.aclose()


def _finite(x: float) -> float | None:
    return None if x == float("-inf") else float(x)
