"""`make_backend("openai" | "anthropic" | "local", model)`: one place that wires a provider to its
rate limiter and retry policy. Provider modules are imported only when chosen, so a missing SDK
or torch only matters to the users who pick it."""

from __future__ import annotations

from pathlib import Path

from caikit.backends.base import Backend
from caikit.backends.limits import RateLimiter, RetryPolicy
from caikit.errors import UserError

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "local": "smollm2"}


def make_backend(backend: str, model: str | None = None, *, base_url: str | None = None, concurrency: int = 16,
                 rpm: float | None = None, tpm: float | None = None, timeout: float = 60.0, max_retries: int = 6,
                 batch_size: int = 16, device: str | None = None, api_key_file: str | None = None) -> Backend:
    """A ready backend. `max_retries` counts attempts in all (the first included).

    API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY, or from `api_key_file`; a missing one is
    a UserError here, before any work starts."""
    if backend not in DEFAULT_MODELS:
        raise UserError(f"unknown backend '{backend}' (choose from {', '.join(sorted(DEFAULT_MODELS))})")
    model = model or DEFAULT_MODELS[backend]
    if backend == "local":
        from caikit.backends.local import LocalBackend

        return LocalBackend(model, batch_size=batch_size, device=device)
    retry = RetryPolicy(max_attempts=max(1, max_retries))
    limiter = RateLimiter(concurrency, rpm=rpm, tpm=tpm)
    if backend == "openai":
        from caikit.backends.openai import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, timeout=timeout, retry=retry, limiter=limiter,
                             api_key_file=api_key_file)
    from caikit.backends.anthropic import AnthropicBackend

    return AnthropicBackend(model, base_url=base_url, timeout=timeout, retry=retry, limiter=limiter,
                            api_key_file=api_key_file)


def run_backend(backend: Backend, opts, out: Path, *, log_name: str = "requests.jsonl"):
    """`backend` dressed for a run directory: through the batch API when `opts.batch_api`, every
    completed request logged in `out/log_name` (a rerun re-requests nothing), tokens and cost
    metered, spending capped by `opts.max_cost`. Returns (CachingBackend, UsageMeter)."""
    from caikit.backends.cache import CachingBackend, UsageMeter
    from caikit.backends.cost import load_price_overrides
    from caikit.store import JsonlFile

    if getattr(opts, "batch_api", False):
        from caikit.backends.batch import BatchBackend

        backend = BatchBackend(backend, out / "batches.jsonl", poll_interval=opts.batch_poll_interval)
    meter = UsageMeter(backend.model, price_overrides=load_price_overrides(opts.prices) if opts.prices else None,
                       batch=bool(getattr(opts, "batch_api", False)))
    cached = CachingBackend(backend, JsonlFile(out / log_name), meter, max_cost=getattr(opts, "max_cost", 0.0) or None)
    return cached, meter
