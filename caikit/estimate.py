"""What a run will cost before it starts: the same plans the runner sends, priced instead of sent.

`DryAsk` is an `ask` (see stages/base.py) that sends nothing: it counts each request's tokens and answers
with a stand-in of the expected length (`Request.expected_tokens`, else --expected-fill x --max-tokens) that
the stage accepts, so a chain (answer -> critique -> revision) goes on exactly as the real run would, with
the same principles, orders, votes and follow-up requests. Nothing here knows what a stage asks: a stage
priced here is its plan (STYLE.md #12).

Requests: a server that ignores `n` (Anthropic always; llama.cpp and Ollama, as `caikit probe` finds) is
asked n times. Tokens: 4 characters a token plus 8 characters a message, as `limits.estimate_tokens`, or
tiktoken when it is installed and its encoding is at hand. Costs come four ways: online, --batch-api (half
price), and each with prompt caching, where every request after the first that shares a constant prefix
(system prompt, few-shot demonstrations: the messages up to a cache mark) reads it from the provider's
cache, if that prefix reaches the provider's minimum. That is a best case: a cache entry lives 5 minutes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caikit.backends.base import CACHE_PREFIX_END, Completion, Usage
from caikit.backends.cost import cost_usd, format_usd, load_price_overrides, price_for
from caikit.backends.limits import token_counter
from caikit.errors import UserError
from caikit.records import canonical_json
from caikit.stages.base import Reply, Request

DEFAULT_FILL = 0.6  # share of --max-tokens a free-text answer is expected to use


@dataclass
class Estimate:
    """Expected requests, tokens and USD of one stage's run (or of its policy sampling: `policy`)."""

    stage: str
    backend: str
    model: str
    items: int  # prompts (generate) or pairs (judge)
    requests: int
    prompt_tokens: int
    cacheable_prompt_tokens: int  # of prompt_tokens: in shared prefixes long enough to be cached
    completion_tokens: int  # expected
    max_completion_tokens: int  # if every answer ran to --max-tokens
    cost_usd: float  # online
    cost_usd_cached: float  # online, with prompt caching
    batch_cost_usd: float
    batch_cost_usd_cached: float
    worst_case_usd: float  # online, every answer at --max-tokens, no cache
    price_known: bool
    token_counter: str
    honours_n: bool = True
    policy: Estimate | None = None  # judge --pairs samples: the policy's sampling, sent online
    sampled: int = 0  # items priced when fewer than `items` (SAMPLE_ABOVE): the totals are scaled from them

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        money = "price unknown" if not self.price_known else (
            f"{format_usd(self.cost_usd)} online, {format_usd(self.batch_cost_usd)} with --batch-api"
            + (f", {format_usd(self.cost_usd_cached)} online with prompt caching" if self.cacheable_prompt_tokens
               else ""))
        return (f"{self.requests:,} requests, {self.prompt_tokens:,} prompt tokens ({self.cacheable_prompt_tokens:,} "
                f"cacheable), {self.completion_tokens:,} completion tokens expected (max "
                f"{self.max_completion_tokens:,}): {money}"
                + (f" (scaled from {self.sampled:,} of the {self.items:,} items)" if self.sampled else ""))


@dataclass
class DryAsk:
    """An `ask` that prices requests instead of sending them (see the module docstring)."""

    counter: Any
    fill: float = DEFAULT_FILL
    honours_n: bool = True
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: float = 0.0
    max_completion_tokens: int = 0
    prefix_uses: dict[str, list[int]] = field(default_factory=dict)  # prefix hash -> [uses, tokens]

    async def __call__(self, requests: list[Request]) -> list[Reply]:
        return [self.price(r) for r in requests]

    def price(self, request: Request) -> Reply:
        copies = 1 if (request.kind == "logprobs" or self.honours_n) else request.n
        prompt = self.counter.tokens(self.counter.units(request.messages))
        self.requests += copies
        self.prompt_tokens += copies * prompt
        prefix = _constant_prefix(request.messages)
        if prefix:
            label = hashlib.sha256(canonical_json(prefix).encode("utf-8")).hexdigest()
            self.prefix_uses.setdefault(label, [0, self.counter.tokens(self.counter.units(prefix))])[0] += copies
        if request.kind == "logprobs":
            self.completion_tokens += 1
            self.max_completion_tokens += 1
            logprobs = {option: math.log(0.5) for option in request.options}
            value = request.accept(logprobs, 0) if request.accept else logprobs
            return Reply([value], logprobs=logprobs)
        expected = request.expected_tokens if request.expected_tokens is not None else round(
            self.fill * request.max_tokens)
        self.completion_tokens += request.n * expected
        self.max_completion_tokens += request.n * request.max_tokens
        marker = request.placeholder
        filler = self.counter.placeholder(max(0, expected - self.counter.tokens(self.counter.text_units(marker))))
        text = f"{filler} {marker}".strip() if marker else (filler or "x")
        completions = [Completion(text, "stop") for _ in range(request.n)]
        values = [request.accept(c, 0) if request.accept else c.text for c in completions]
        return Reply(values, completions)

    def scale(self, factor: float) -> None:
        """Totals of `factor` times the items priced so far (a sample of them: `sample_of`)."""
        self.requests = round(self.requests * factor)
        self.prompt_tokens = round(self.prompt_tokens * factor)
        self.completion_tokens *= factor
        self.max_completion_tokens = round(self.max_completion_tokens * factor)
        for counts in self.prefix_uses.values():
            counts[0] = round(counts[0] * factor)

    def finish(self, stage: str, backend: str, model: str, items: int, prices: str = "") -> Estimate:
        from caikit.backends.cost import cached_prefix_tokens

        reads = writes = 0.0
        for uses, tokens in self.prefix_uses.values():
            cached = cached_prefix_tokens(backend, model, int(tokens))
            if cached and uses > 0:  # the first use writes the cache, the others read it
                writes += cached * min(1, uses)
                reads += cached * max(0, uses - 1)
        prompt, completion = self.prompt_tokens, round(self.completion_tokens)
        plain = Usage(prompt_tokens=prompt, completion_tokens=completion)
        # OpenAI bills a cache write as plain input; Anthropic counts it apart (1.25x): the price table says
        write_price_differs = price_for(model, backend=backend).cache_write != price_for(model, backend=backend).input
        cached = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=round(reads),
                       cache_write_tokens=round(writes) if write_price_differs else 0)
        overrides = load_price_overrides(prices) if prices else None

        def usd(usage: Usage, batch: bool = False) -> float:
            return round(cost_usd(model, usage, overrides=overrides, batch=batch, backend=backend), 6)

        worst = Usage(prompt_tokens=prompt, completion_tokens=self.max_completion_tokens)
        return Estimate(stage=stage, backend=backend, model=model, items=items, requests=self.requests,
                        prompt_tokens=prompt, cacheable_prompt_tokens=round(reads + writes),
                        completion_tokens=completion, max_completion_tokens=self.max_completion_tokens,
                        cost_usd=usd(plain), cost_usd_cached=usd(cached), batch_cost_usd=usd(plain, True),
                        batch_cost_usd_cached=usd(cached, True), worst_case_usd=usd(worst),
                        price_known=price_for(model, overrides=overrides, backend=backend).known,
                        token_counter=self.counter.name, honours_n=self.honours_n)


def _constant_prefix(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages up to the last cache mark (or the leading system prompt): what a provider may cache."""
    marks = [i for i, m in enumerate(messages) if m.get(CACHE_PREFIX_END)]
    if marks:
        return messages[: marks[-1] + 1]
    return messages[:1] if messages and messages[0].get("role") == "system" else []


SAMPLE_ABOVE, SAMPLE_SIZE = 2_000, 1_000


def sample_of(items: list) -> list:
    """What to price: every item up to SAMPLE_ABOVE, else SAMPLE_SIZE spread evenly over them (pricing a
    million prompts' chains one by one would take minutes before the first request)."""
    if len(items) <= SAMPLE_ABOVE:
        return items
    return [items[i * len(items) // SAMPLE_SIZE] for i in range(SAMPLE_SIZE)]


def dry_ask(model: str, *, fill: float = DEFAULT_FILL, honours_n: bool = True, tokenizer: str = "auto") -> DryAsk:
    return DryAsk(token_counter(model, tokenizer), fill=fill, honours_n=honours_n)


def _spent(out: str) -> float:
    """What the run directory has spent already (usage.json), which --max-cost counts too."""
    try:
        return float(json.loads((Path(out) / "usage.json").read_text(encoding="utf-8")).get("cost_usd") or 0)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def confirm_cost(estimate: Estimate | None, cfg) -> None:
    """Show the estimate on stderr; above --max-cost ask on a terminal, else stop unless --yes.

    Going on means spending up to --max-cost: the CachingBackend stops the run there."""
    if estimate is None or estimate.requests == 0 or price_for(estimate.model, backend=estimate.backend).local:
        return
    spent = _spent(cfg.out)
    print(f"caikit estimate: {estimate.summary()}" + (f"; {format_usd(spent)} spent already" if spent else ""),
          file=sys.stderr)
    max_cost = getattr(cfg, "max_cost", 0.0) or 0.0
    if not max_cost:
        return
    if not estimate.price_known:
        raise UserError(f"--max-cost needs the price of '{estimate.model}': pass --prices FILE")
    expected = estimate.batch_cost_usd if getattr(cfg, "batch_api", False) else estimate.cost_usd
    if spent + expected <= max_cost:
        return
    over = (f"the estimated cost {format_usd(expected)}" + (f" (+ {format_usd(spent)} spent)" if spent else "")
            + f" exceeds --max-cost {format_usd(max_cost)}")
    if getattr(cfg, "yes", False):
        print(f"caikit estimate: {over}; --yes: going on until --max-cost is spent", file=sys.stderr)
        return
    if sys.stdin is not None and sys.stdin.isatty():
        print(f"caikit estimate: {over}. Continue, stopping at --max-cost? [y/N] ", end="", file=sys.stderr,
              flush=True)
        if sys.stdin.readline().strip().lower() in ("y", "yes"):
            return
        raise UserError(f"{over}: stopped before any request")
    raise UserError(f"{over}: raise --max-cost, or pass --yes to go on until it is spent")


def format_estimate(e: Estimate) -> str:
    def money(online: float, cached: float) -> str:
        if not e.price_known:
            return "unknown (pass --prices FILE)"
        caching = f"   with prompt caching {format_usd(cached)}" if e.cacheable_prompt_tokens else ""
        return format_usd(online) + caching

    what = "prompts" if e.stage == "generate" else "pairs"
    lines = [f"caikit estimate {e.stage}: {e.items:,} {what}, {e.backend} {e.model} (tokens: {e.token_counter})",
             f"  requests            {e.requests:,}" + ("" if e.honours_n else "   (the server ignores n: one "
                                                                               "request per sample)"),
             f"  prompt tokens       {e.prompt_tokens:,}   cacheable {e.cacheable_prompt_tokens:,}",
             f"  completion tokens   {e.completion_tokens:,} expected   {e.max_completion_tokens:,} max",
             f"  cost online         {money(e.cost_usd, e.cost_usd_cached)}",
             f"  cost --batch-api    {money(e.batch_cost_usd, e.batch_cost_usd_cached)}",
             "  worst case online   " + (f"{format_usd(e.worst_case_usd)} (every answer at --max-tokens, no cache)"
                                         if e.price_known else "unknown"),
             f"  price known         {'yes' if e.price_known else 'no'}"]
    if e.policy is not None:
        p = e.policy
        lines.append(f"  policy samples      {p.requests:,} requests to {p.backend} {p.model}, "
                     f"{p.prompt_tokens:,} prompt + {p.completion_tokens:,} completion tokens: "
                     + (f"{format_usd(p.cost_usd)} online" if p.price_known else "price unknown"))
    return "\n".join(lines)
