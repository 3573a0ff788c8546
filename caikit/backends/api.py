"""What the HTTP API providers share: key from the environment, retry/limit policy, one SDK client per loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from caikit.backends import http_client as lean
from caikit.backends.base import Backend, BackendError, MalformedResponse, Usage
from caikit.backends.http_client import HTTP_CLIENTS, default_http_client
from caikit.backends.limits import RateLimiter
from caikit.backends.retry import RetryPolicy
from caikit.secrets import public_url
from caikit.errors import UserError


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_warned_readable: set[str] = set()


def load_api_key(env_name: str, key_file: str | None, backend: str) -> str:
    """The API key: from `key_file` when given, else from the environment variable `env_name`.

    The file holds a bare key on one line, or NAME=value lines as in a .env or keyring-style file
    (`export NAME="value"`, '#' comments), where `env_name` picks the line. Errors say where the key
    was looked for and what is wrong, never what was found there. A key file that other users may
    read gets a warning on stderr (as ssh refuses such a private key; here the user may have a reason).
    """
    if not key_file:
        key = os.environ.get(env_name, "").strip()
        if not key:  # fail before any work, and never echo a key
            raise UserError(f"{env_name} is not set (needed for --backend {backend}; or pass --api-key-file)")
        return _checked(key, f"the {env_name} environment variable", None)
    path = Path(key_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or ("not UTF-8 text" if isinstance(e, UnicodeDecodeError)
                                                  else type(e).__name__)
        raise UserError(f"cannot read the API key file: {reason}", path=str(path)) from None
    if mode & 0o077 and os.name == "posix" and str(path) not in _warned_readable:
        _warned_readable.add(str(path))
        print(f"caikit: warning: {path}: the API key file can be read by other users (chmod 600 {path})",
              file=sys.stderr)
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.strip().startswith("#")]
    named: dict[str, tuple[int, str]] = {}
    for n, ln in lines:
        name, sep, value = ln.removeprefix("export ").partition("=")
        if sep and _ENV_NAME.match(name.strip()):
            named[name.strip()] = (n, value)
    if named:
        if env_name not in named:
            raise UserError(f"no {env_name}=... line in the API key file", path=str(path))
        n, value = named[env_name]
        try:
            key = _dotenv_value(value)
        except ValueError as e:
            raise UserError(f"the {env_name} value: {e}", path=str(path), line=n) from None
        return _checked(key, f"the {env_name} value", (str(path), n))
    if len(lines) == 1:
        n, key = lines[0]
        return _checked(key, "the key", (str(path), n))
    raise UserError(f"expected one key, or NAME=value lines naming {env_name}", path=str(path))


def _dotenv_value(raw: str) -> str:
    """The value of a NAME=value line: quoted ('..' / "..") or bare, with a trailing ' # comment' dropped."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        if end < 0:
            raise ValueError("an opening quote is never closed")
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ValueError("text after the closing quote")
        return raw[1:end]
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def _checked(key: str, what: str, where: tuple[str, int] | None) -> str:
    """A key must fit in an HTTP header; the error names the place, not the key."""
    path, line = where if where else (None, None)
    if not key:
        raise UserError(f"{what} is empty", path=path, line=line)
    if any(c.isspace() for c in key) or not key.isascii() or not key.isprintable():
        raise UserError(f"{what} has spaces or characters an HTTP header cannot carry (a stray quote "
                        "or a pasted line break?)", path=path, line=line)
    return key


def split_base_url(base_url: str | None) -> tuple[str | None, dict[str, str] | None]:
    """(the URL request paths are appended to, the query every request carries) of a --base-url.

    Azure OpenAI and many proxies need a query such as `?api-version=2024-06-01` on every request. Left in the
    base URL, the SDKs append `/chat/completions` after it (a 404); so the query goes to the SDK's
    `default_query` (httpx adds it to each request), and the path alone is the base URL. The full URL, query
    included, is what describe() and config.yaml show, through `public_url` (which masks key-like values)."""
    if not base_url:
        return None, None
    parts = urlsplit(base_url)
    if not parts.query:
        return base_url, None
    return (urlunsplit(parts._replace(query="", fragment="")),
            dict(parse_qsl(parts.query, keep_blank_values=True)))


RETRYABLE_STATUS = {408, 409, 429}  # and every 5xx


class APIBackend(Backend):
    """A provider reached over HTTP: through caikit's aiohttp client or the provider's SDK (--http-client).
    Subclasses give `import_sdk`, `make_client` (the SDK's) and `make_lean_client` (aiohttp)."""

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout: float,
                 retry: RetryPolicy | None, limiter: RateLimiter | None, api_key_file: str | None = None,
                 http_client: str | None = None):
        super().__init__(model)
        api_key = load_api_key(api_key_env, api_key_file, self.name)
        self._sdk_module = None  # imported when first needed: --http-client aiohttp sends without it
        self._api_key = api_key
        self.base_url = base_url or None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(16)
        self.last_usage: Usage | None = None  # of the latest option_logprobs call (read by CachingBackend)
        self.total_usage = Usage()  # every request this backend sent
        self._clients: dict[str, tuple[Any, asyncio.AbstractEventLoop]] = {}  # kind -> (client, its loop)
        self.refused: BackendError | None = None  # the provider refused the run itself: send nothing more
        self.http_client = http_client or default_http_client()  # "aiohttp" | "sdk": see http_client.py
        if self.http_client not in HTTP_CLIENTS:
            raise UserError(f"--http-client must be one of {' | '.join(HTTP_CLIENTS)}, got {self.http_client!r}")
        if self.http_client == "sdk":
            self._sdk_module = self.import_sdk()  # a missing SDK fails here, before any work

    def prepare_to_send(self) -> None:
        """Import aiohttp before the first request rather than inside its timing; a run with nothing left to
        send (resuming a finished run) never pays the import (a third of a second)."""
        if self.http_client == "aiohttp":
            import aiohttp  # noqa: F401

    @classmethod
    def from_options(cls, opts, *, in_flight: int) -> "APIBackend":
        return cls(opts.model_name(), base_url=opts.base_url or None, timeout=opts.timeout,
                   retry=RetryPolicy(max_attempts=opts.max_retries),
                   limiter=RateLimiter(in_flight, rpm=opts.rpm or None, tpm=opts.tpm or None,
                                       abandoned_hold=opts.timeout),
                   api_key_file=opts.api_key_file or None, http_client=getattr(opts, "http_client", "") or None)

    def refuse_if_fatal(self, error: BackendError) -> None:
        """Remember a failure that stops the whole run (401, 403, 404, a 400 no request gets past)."""
        if error.fatal and self.refused is None:
            self.refused = error

    def check_not_refused(self) -> None:
        """Called inside a limiter slot, before each HTTP call: after a refusal, requests that were waiting
        for a slot are not sent."""
        if self.refused is not None:
            raise self.refused

    def api_key_for_probe(self) -> str:
        return self._api_key

    def adopt_probe(self, probe: dict[str, Any], in_flight: int) -> None:
        """Take what `caikit probe` found on this server: its capacity, whether it honours n, log-probs."""
        self.limiter.resize(in_flight)
        self.honours_n = bool(probe.get("honours_n", self.honours_n))
        self.supports_logprobs = bool(probe.get("logprobs", self.supports_logprobs))

    @staticmethod
    def import_sdk() -> Any:
        raise NotImplementedError

    @property
    def _sdk(self) -> Any:
        if self._sdk_module is None:
            self._sdk_module = self.import_sdk()
        return self._sdk_module

    def is_retryable(self, exc: BaseException) -> bool:
        """408/409/429 and every 5xx (Anthropic's 529 "overloaded" included), connection errors and
        timeouts, and bodies that do not parse or validate. Both SDKs name these errors alike."""
        if isinstance(exc, lean.APIStatusError):
            return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
        if isinstance(exc, (lean.APIConnectionError, MalformedResponse, json.JSONDecodeError)):
            return True  # APITimeoutError is an APIConnectionError
        sdk = self._sdk
        if isinstance(exc, sdk.APIStatusError):
            return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
        if isinstance(exc, (sdk.APIConnectionError, sdk.APIResponseValidationError)):
            return True
        try:
            import pydantic
        except ImportError:  # pragma: no cover - the SDKs depend on it
            return False
        return isinstance(exc, pydantic.ValidationError)

    def make_client(self) -> Any:
        """The SDK's async client (--http-client sdk)."""
        raise NotImplementedError

    def make_lean_client(self) -> lean.AiohttpClient:
        """The aiohttp client (--http-client aiohttp): base URL and auth headers as the SDK would send them."""
        raise NotImplementedError

    def _client(self):
        """The client requests go through (--http-client): one per event loop, as a connection pool belongs to
        one; a later asyncio.run() gets a new one."""
        return self.sdk_client() if self.http_client == "sdk" else self._per_loop("lean", self.make_lean_client)

    def sdk_client(self):
        """The SDK's client, whatever --http-client says: the batch APIs (files, jobs) go through it."""
        return self._per_loop("sdk", self.make_client)

    def _per_loop(self, kind: str, make):
        loop = asyncio.get_running_loop()
        held = self._clients.get(kind)
        if held is None or held[1] is not loop:
            self._clients[kind] = held = (make(), loop)
        return held[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": public_url(self.base_url)}

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client, loop in clients.values():
            if loop is asyncio.get_running_loop():
                await client.close()
