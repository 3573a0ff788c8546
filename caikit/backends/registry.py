"""The provider registry: which providers exist, what each can do, and the one way to make a backend.

A provider is one class (a `Backend` subclass in its own module) that declares its capabilities as class
attributes: default model, API-key variable, option log-probs, whether the server honours `n`, its
prompt-cache rule, its batch-API class and its prices. Everything else (the judge's method default, the
estimate, the cost gate, the request log) asks the class, never the provider's name. Adding a provider is
one backend file (+ an optional batch file) and one row in PROVIDERS.

Specs name a model anywhere a second model is needed (judge, policy, check judge):
`provider[:model][@base_url]`, e.g. `openai:gpt-4o-mini`, `local:smollm2`,
`openai:Qwen2.5-7B@http://localhost:8000/v1`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from caikit.config import option
from caikit.errors import UserError

# provider name -> "module:Class"; modules are imported when a provider is used, so a missing SDK (or
# torch) only matters to the users who pick that provider
PROVIDERS: dict[str, str] = {
    "openai": "caikit.backends.openai:OpenAIBackend",
    "anthropic": "caikit.backends.anthropic:AnthropicBackend",
    "local": "caikit.backends.local:LocalBackend",
}
DEFAULT_CONCURRENCY = 16  # requests in flight against a cloud API when --concurrency is auto
UNPROBED_SERVER_CONCURRENCY = 4  # against a server whose capacity is unknown (no probe)


def provider_class(name: str):
    """The Backend subclass of provider `name` (a UserError naming the known ones otherwise)."""
    if name not in PROVIDERS:
        raise UserError(f"unknown provider '{name}' (choose from {', '.join(PROVIDERS)})")
    module, cls = PROVIDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def parse_spec(spec: str, *, what: str = "--judge") -> tuple[str, str, str]:
    """'openai:gpt-4o-mini@http://host/v1' -> ('openai', 'gpt-4o-mini', 'http://host/v1'); model may be ''."""
    provider, _, rest = spec.partition(":")
    model, _, base_url = rest.partition("@")
    if provider not in PROVIDERS:
        raise UserError(f"{what} must be PROVIDER[:MODEL][@BASE_URL] with PROVIDER {' | '.join(PROVIDERS)}, "
                        f"got {spec!r}")
    return provider, model, base_url


def parse_concurrency(value: str, *, what: str = "--concurrency") -> int | None:
    """'auto' -> None; '8' -> 8; anything else is a UserError."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        number = int(text)
    except ValueError:
        raise UserError(f"{what} must be auto or a whole number from 1 to 4096, got {value!r}") from None
    if not 1 <= number <= 4096:
        raise UserError(f"{what} must be auto or a whole number from 1 to 4096, got {value!r}")
    return number


@dataclasses.dataclass
class BackendOptions:
    """Which model answers, and how hard we may push it. Shared by generate, judge and eval judge."""

    backend: str = option("local", help="model provider: " + " | ".join(PROVIDERS),
                          metadata={"choices": list(PROVIDERS)})
    model: str = option("", help="model name (default per provider: gpt-4o-mini, claude-haiku-4-5, smollm2)")
    base_url: str = option("", help="API base URL for OpenAI-compatible servers (vLLM, llama.cpp, Ollama) or an "
                                    "Anthropic proxy")
    concurrency: str = option("auto", help="requests in flight to an API (auto: 16 for a cloud API; for any other "
                                           "--base-url what `caikit probe` finds the server serves at once); a whole "
                                           "number 1-4096 sets it",
                          metadata={"valid": "auto, or a whole number 1 to 4,096"})
    batch_size: int = option(0, low=0, high=4096, help="local backend: sequences per generate batch (0: 16 on CPU, "
                                                       "64 on a GPU)")
    engine: str = option("auto", help="local backend: what generates: padded = transformers generate over length "
                                      "buckets (static KV cache + compiled decoding on CUDA) | continuous = "
                                      "transformers' continuous batching, finished rows refilled | vllm = vLLM in "
                                      "this process (pip install 'caikit[vllm]') | auto = padded",
                         metadata={"choices": ["auto", "padded", "continuous", "vllm"]})
    vllm_memory: float = option(0.8, above=0, below=1, help="local backend, --engine vllm: share of the GPU's memory "
                                                            "vLLM may take for its weights and KV cache")
    rpm: float = option(0.0, low=0, help="client-side requests-per-minute limit (0: none)")
    tpm: float = option(0.0, low=0, help="client-side tokens-per-minute limit, estimated then corrected by usage "
                                         "(0: none)")
    timeout: float = option(60.0, above=0, high=86400, help="seconds before a request is abandoned and retried; "
                                                            "a timeout counts as overload and slows the client down")
    max_retries: int = option(6, low=1, high=100, help="attempts per request (429/5xx/timeouts/malformed bodies) "
                                                       "before a failure row")
    device: str = option("", help="local backend device: cpu | cuda | cuda:1 (default: cuda if available)")
    prices: str = option("", help="YAML/JSON price table overriding built-in USD per 1M tokens "
                                  "{model: {input, output}}")
    api_key_file: str = option("", help="file holding the API key (a bare key, or NAME=value lines as in .env); "
                                        "default: the provider's environment variable (OPENAI_API_KEY, "
                                        "ANTHROPIC_API_KEY)")
    batch_api: bool = option(False, help="send requests through the provider's batch API (OpenAI Batch, Anthropic "
                                         "Message Batches): half price, results within 24 h; one batch per round")
    batch_poll_interval: float = option(30.0, above=0, high=86400,
                                        help="seconds between polls of a running batch job (--batch-api)")
    max_cost: float = option(0.0, low=0, help="USD this run may spend (0: no limit): above the estimate it asks "
                                              "first, and it stops before a request that could exceed it; it counts "
                                              "all the run directory has spent (usage.json): rerun with a higher "
                                              "--max-cost to go on")
    yes: bool = option(False, help="don't ask for confirmation when the estimated cost exceeds --max-cost")
    http_client: str = option("aiohttp", help="how API requests travel: aiohttp = the JSON wire over one aiohttp "
                                              "session (fast at hundreds of requests in flight) | sdk = the "
                                              "provider's SDK transport (httpx); recorded in run.json",
                              metadata={"choices": ["aiohttp", "sdk"]})

    def validate(self) -> None:
        parse_concurrency(self.concurrency)
        if self.engine != "auto" and self.backend != "local":
            raise UserError(f"--engine {self.engine} chooses how the local backend generates; --backend "
                            f"{self.backend} generates on its server")
        if self.engine == "vllm":
            from caikit.generation import require_vllm

            require_vllm()
        if self.batch_api and not provider_class(self.backend).batch_class:
            raise UserError(f"--batch-api needs a provider with a batch API; {self.backend} has none "
                            "(a local model batches by itself)")

    def provider(self):
        return provider_class(self.backend)

    def model_name(self) -> str:
        return self.model or self.provider().default_model

    def requests_in_flight(self, probe: dict[str, Any] | None = None) -> int:
        """--concurrency as a number: as given, else 16 for a cloud API, else the server's slots from `probe`."""
        given = parse_concurrency(self.concurrency)
        if given is not None:
            return given
        cls = self.provider()
        if cls.is_cloud(self.base_url):
            return DEFAULT_CONCURRENCY
        slots = (probe or {}).get("slots")
        return max(1, int(slots)) if isinstance(slots, int) and slots > 0 else UNPROBED_SERVER_CONCURRENCY

    def with_spec(self, spec: str, *, what: str = "--judge") -> "BackendOptions":
        """These options for the model a spec names (`openai:gpt-4o-mini@URL`): same limits, own provider."""
        provider, model, base_url = parse_spec(spec, what=what)
        return dataclasses.replace(self, backend=provider, model=model, base_url=base_url, batch_api=False)


def make_backend(opts: BackendOptions, *, probe: dict[str, Any] | None = None):
    """A ready backend for `opts`: its rate limiter, retry policy, key (a missing key is a UserError here,
    before any work) and batch size. `probe` (see caikit.backends.probe) sizes --concurrency auto."""
    cls = opts.provider()
    return cls.from_options(opts, in_flight=opts.requests_in_flight(probe))


def needs_probe(opts: BackendOptions) -> bool:
    """Is this a self-hosted OpenAI-compatible server, whose capabilities a run asks rather than assumes?"""
    cls = opts.provider()
    return cls.openai_compatible and bool(opts.base_url) and not cls.is_cloud(opts.base_url)


def probed_backend(opts: BackendOptions, cached: dict[str, Any] | None = None):
    """(backend, probe): the backend, and for a self-hosted server what `caikit probe` finds there -- `cached`
    when it is a probe of the same server and model (a run directory's probe.json), else asked now."""
    from caikit.backends.probe import probe_server
    from caikit.secrets import public_url

    backend = make_backend(opts)
    if not needs_probe(opts):
        return backend, None
    probe = cached if (isinstance(cached, dict) and cached.get("base_url") == public_url(opts.base_url)
                       and cached.get("model") == backend.model) else None
    if probe is None:
        try:
            probe = probe_server(opts.base_url, backend.model, backend.api_key_for_probe(), timeout=opts.timeout,
                                 ramp=parse_concurrency(opts.concurrency) is None)
        except UserError as e:  # the run goes on with what the provider class assumes, and says so
            import sys

            print(f"caikit: warning: {e}; going on with {opts.requests_in_flight()} requests in flight and the "
                  "provider's usual capabilities (run `caikit probe` to see why)", file=sys.stderr)
            return backend, None
    backend.adopt_probe(probe, opts.requests_in_flight(probe))
    return backend, probe
