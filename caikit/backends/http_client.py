"""`--http-client aiohttp`: the provider's JSON wire sent straight over one aiohttp session per event loop.

Why: at a few hundred requests in flight the SDKs' httpx transport spends milliseconds of CPU per request
(its connection pool scans every connection for each request; response objects are built field by field),
so one caikit process could not keep a vLLM node busy. This client does what a plain aiohttp loop does --
serialise the body, POST, parse the JSON -- and leaves everything else where it already is:
retries and Retry-After (`retry.call_with_retries`), the rate limiter (`limits.RateLimiter`), response
checks, usage and stop reasons (the provider modules), key scrubbing (`secrets.redact` on every error line).

The errors it raises carry the SDKs' names and attributes (`status_code`, `body`, `response.headers`;
`APITimeoutError`, `APIConnectionError`), so retry classification, Retry-After and the limiter's overload
signals read them exactly as they read the SDKs' own. Response bodies become attribute objects
(`Fields`), which the providers' `check_*` and `*_from_response` functions read as they read
the SDKs' models.

Timeouts count from the moment a request is on a connection: waiting for a place under the limiter or for
a pooled connection is not the server's delay. `timeout` bounds connecting and each wait for the server's
next bytes (as the SDKs' httpx timeouts do), so a server that queues a request is cut off after `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

HTTP_CLIENTS = ("aiohttp", "sdk")
DEFAULT = "aiohttp"  # measured faster (scripts/bench_scale.py) and passes the backend suites on both
_BODY = json.JSONEncoder(ensure_ascii=False)  # a request body as json.dumps(body, ensure_ascii=False) writes it


def default_http_client() -> str:
    """aiohttp where it is installed (it is a dependency of caikit), else the SDK's own transport."""
    if DEFAULT == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return "sdk"
    return DEFAULT


class APIStatusError(Exception):
    """A non-2xx answer. `body` is the parsed error JSON (or its text); `response.headers` holds Retry-After."""

    def __init__(self, status_code: int, body: Any, headers: Any):
        err = body.get("error", body) if isinstance(body, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        self.message = str(message if message is not None else (body if isinstance(body, str) else ""))[:500]
        super().__init__(f"HTTP {status_code}: {self.message}")
        self.status_code = status_code
        self.body = body
        self.response = types.SimpleNamespace(headers=headers, status_code=status_code)


class APIConnectionError(Exception):
    """The server was unreachable, closed the connection, or sent a body cut short."""


class APITimeoutError(APIConnectionError):
    """No answer within --timeout (connecting, or waiting for the server's next bytes)."""


class Fields(types.SimpleNamespace):
    """A JSON object read by attribute; a field the server left out reads as None, as on the SDKs' models."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _attrs(d: dict[str, Any]) -> Fields:
    return Fields(**d)


def split_query(base_url: str) -> tuple[str, dict[str, str]]:
    """'https://host/v1?api-version=2024-10-21' -> ('https://host/v1', {'api-version': '2024-10-21'}): the
    query is sent with every request (Azure-style endpoints need it)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(query="", fragment="")).rstrip("/"), dict(parse_qsl(parts.query))


class AiohttpClient:
    """POST JSON to `base_url` + path, parsed answer back; one pooled session per event loop."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float,
                 default_query: dict[str, str] | None = None):
        self.base_url, query = split_query(base_url)
        self.query = {**query, **(default_query or {})} or None
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        "User-Agent": "caikit", **headers}
        self.timeout = timeout
        self._session = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_here(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            # no connection cap here: the rate limiter decides how many requests are in flight
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.timeout,
                                            sock_read=self.timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers,
                                                  json_serialize=json.dumps)
            self._loop = loop
        return self._session

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """The parsed JSON answer (objects as attribute namespaces). Raises APIStatusError for a non-2xx,
        APITimeoutError / APIConnectionError for a connection that failed, json.JSONDecodeError for a body
        that is not JSON (all retryable but 4xx other than 408/409/429)."""
        import aiohttp

        session = self._session_here()
        data = _BODY.encode(body).encode("utf-8")
        try:
            async with session.post(self.base_url + path, data=data, params=self.query) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except asyncio.TimeoutError:  # aiohttp's socket timeouts are asyncio.TimeoutError subclasses
            raise APITimeoutError("request timed out") from None
        except aiohttp.ClientError as e:  # refused, reset, closed mid-answer, a body shorter than announced
            raise APIConnectionError(f"connection error: {type(e).__name__}") from None
        if not 200 <= status < 300:
            try:
                error_body: Any = json.loads(raw)
            except ValueError:
                error_body = raw.decode("utf-8", "replace")[:500]
            raise APIStatusError(status, error_body, headers)
        return json.loads(raw, object_hook=_attrs)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()
