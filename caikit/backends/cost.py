"""What a run costs: USD per 1M tokens for current OpenAI and Anthropic models.

Usage convention (see `Usage`): `prompt_tokens` counts every prompt token, cached ones included;
`cached_tokens` of them were cache reads and `cache_write_tokens` were cache writes. OpenAI bills
cache writes at the plain input price; Anthropic charges 1.25x input for a 5-minute cache write.
Dated snapshots ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022") match by prefix; local models
cost nothing; anything else costs 0 with `known=False`, so the UI can say "unknown price".
Prices change: check the providers' pricing pages and pass `--prices FILE` to override.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from caikit.backends.base import Usage
from caikit.errors import UserError


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float  # cache read
    cache_write: float
    known: bool = True  # False: not in the table, counted as free
    local: bool = False


FREE = Price(0.0, 0.0, 0.0, 0.0, known=True, local=True)
UNKNOWN = Price(0.0, 0.0, 0.0, 0.0, known=False)
PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
BATCH_DISCOUNT = 0.5  # OpenAI Batch API and Anthropic Message Batches: half price

_PROVIDER_PREFIXES = ("openai/", "anthropic/")
_MINOR_VERSION = re.compile(r"-\d{1,2}(?=$|[-@:])")


def _is_local(model: str) -> bool:
    """The embedded model, a filesystem path, or a Hugging Face id ("org/name")."""
    return model == "smollm2" or model.startswith(("/", ".", "~")) or "/" in model


def provider_in_process(backend: str) -> bool:
    from caikit.backends.registry import provider_class

    return provider_class(backend).in_process


def builtin_prices() -> dict[str, Price]:
    """Every provider's price rows (each provider class declares its own `prices`)."""
    from caikit.backends.registry import PROVIDERS, provider_class

    table: dict[str, Price] = {}
    for name in PROVIDERS:
        table.update(provider_class(name).prices)
    return table


def lookup_model(model: str, table: dict) -> str | None:
    """Longest table key equal to `model` or a prefix of it ending at a '-', '@' or ':' boundary, where
    the rest is not a minor version: "gpt-4o" prices "gpt-4o-2024-08-06" and "claude-opus-4" prices
    "claude-opus-4-20250514", but neither "gpt-5.1" nor "claude-opus-4-6" is taken for its elder."""
    best = None
    for key in table:
        rest = model[len(key):]
        if model == key or (model.startswith(key) and rest[0] in "-@:" and not _MINOR_VERSION.match(rest)):
            if best is None or len(key) > len(best):
                best = key
    return best


def price_for(model: str, *, overrides: dict | None = None, backend: str | None = None) -> Price:
    """The price of `model`: overrides first, then the built-in table; local models are free."""
    name = model.strip()
    for prefix in _PROVIDER_PREFIXES:
        name = name.removeprefix(prefix)
    if overrides:
        key = lookup_model(name, overrides) or lookup_model(model, overrides)
        if key is not None:
            entry = overrides[key]
            prices = builtin_prices()
            base_key = lookup_model(name, prices)
            base = prices[base_key] if base_key else None
            inp = float(entry["input"])
            return Price(inp, float(entry["output"]),
                         float(entry.get("cached_input", base.cached_input if base else inp)),
                         float(entry.get("cache_write", base.cache_write if base else inp)))
    if (backend and provider_in_process(backend)) or _is_local(name):
        return FREE
    if backend:
        from caikit.backends.registry import provider_class

        prices = provider_class(backend).prices
    else:
        prices = builtin_prices()
    key = lookup_model(name, prices)
    return prices[key] if key else UNKNOWN


def cost_usd(model: str, usage: Usage, *, overrides: dict | None = None, batch: bool = False,
             backend: str | None = None) -> float:
    """USD for `usage` on `model` (0.0 for local and unknown models; check `price_for(model).known`)."""
    p = price_for(model, overrides=overrides, backend=backend)
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    uncached = max(0, usage.prompt_tokens - cached - written)
    usd = (uncached * p.input + cached * p.cached_input + written * p.cache_write
           + usage.completion_tokens * p.output) / 1_000_000
    return usd * BATCH_DISCOUNT if batch else usd


def cached_prefix_tokens(backend: str, model: str, prefix_tokens: int) -> int:
    """How many tokens of a shared `prefix_tokens`-long prefix the provider serves from its cache."""
    from caikit.backends.registry import provider_class

    return provider_class(backend).cached_prefix_tokens(model, prefix_tokens)


def worst_case_usd(model: str, prompt_tokens: int, completion_tokens: int, *, overrides: dict | None = None,
                   batch: bool = False) -> float:
    """The most a request may cost: every prompt token at the dearer of the input and cache-write
    prices, every allowed completion token at the output price (what --max-cost reserves)."""
    p = price_for(model, overrides=overrides)
    usd = (prompt_tokens * max(p.input, p.cache_write) + completion_tokens * p.output) / 1_000_000
    return usd * BATCH_DISCOUNT if batch else usd


def format_usd(usd: float) -> str:
    """$12.35, $0.0123, $0.000042: enough digits to tell a test run's cost from zero."""
    return f"${usd:,.2f}" if usd >= 10 else (f"${usd:.4f}" if usd >= 0.01 or usd == 0 else f"${usd:.6f}")


def load_price_overrides(path: str | Path) -> dict[str, dict[str, float]]:
    """Read {model: {input, output[, cached_input, cache_write]}} (USD per 1M tokens) from YAML or JSON."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"cannot read price table: {e.strerror}", path=str(path)) from None
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    else:
        from caikit.config import load_yaml

        data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError("expected a mapping of model: {input: USD, output: USD}", path=str(path))
    table: dict[str, dict[str, float]] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict):
            raise UserError(f"model '{model}': expected {{input: USD, output: USD}} per 1M tokens", path=str(path))
        unknown = sorted(set(entry) - set(PRICE_FIELDS))
        if unknown:
            raise UserError(f"model '{model}': unknown field(s) {', '.join(unknown)} "
                            f"(known: {', '.join(PRICE_FIELDS)})", path=str(path))
        missing = [f for f in ("input", "output") if f not in entry]
        if missing:
            raise UserError(f"model '{model}': missing {' and '.join(missing)} (USD per 1M tokens)", path=str(path))
        row = {}
        for f, value in entry.items():
            # NaN and infinity too: a price of .nan makes every total "$nan" and usage.json invalid JSON
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"model '{model}': {f} must be a finite number >= 0 (USD per 1M tokens), got "
                                f"{value!r}", path=str(path))
            row[f] = float(value)
        table[str(model)] = row
    return table
