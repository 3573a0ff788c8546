"""What the HTTP API providers share: key from the environment, retry/limit policy, one SDK client per loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from caikit.backends.base import Backend, Usage
from caikit.backends.limits import RateLimiter, RetryPolicy, public_url
from caikit.errors import UserError


def load_api_key(env_name: str, key_file: str | None, backend: str) -> str:
    """The API key: from `key_file` when given (a bare key, or NAME=value lines as in a .env or
    keyring-style file, where `env_name` picks the line), else from the environment variable.
    Errors say where the key was looked for, never what was found there."""
    if not key_file:
        key = os.environ.get(env_name, "").strip()
        if not key:  # fail before any work, and never echo a key
            raise UserError(f"{env_name} is not set (needed for --backend {backend}; or pass --api-key-file)")
        return key
    path = Path(key_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the API key file: {getattr(e, 'strerror', None) or type(e).__name__}",
                        path=str(path)) from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    named = {}
    for ln in lines:
        name, sep, value = ln.removeprefix("export ").partition("=")
        if sep and name.strip().replace("_", "").isalnum():
            named[name.strip()] = value.strip().strip("'\"")
    if named:
        key = named.get(env_name, "")
        if not key:
            raise UserError(f"no {env_name}=... line in the API key file", path=str(path))
    elif len(lines) == 1:
        key = lines[0]
    else:
        raise UserError(f"expected one key, or NAME=value lines naming {env_name}", path=str(path))
    if not key or any(c.isspace() for c in key):
        raise UserError(f"the {env_name} value in the API key file is empty or has spaces in it", path=str(path))
    return key


class APIBackend(Backend):
    """A provider reached through its SDK. Subclasses give `import_sdk` and `make_client`."""

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout: float,
                 retry: RetryPolicy | None, limiter: RateLimiter | None, api_key_file: str | None = None):
        super().__init__(model)
        api_key = load_api_key(api_key_env, api_key_file, self.name)
        self._sdk = self.import_sdk()
        self._api_key = api_key
        self.base_url = base_url or None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(16)
        self.last_usage: Usage | None = None  # of the latest option_logprobs call (read by CachingBackend)
        self.total_usage = Usage()  # every request this backend sent
        self._client_obj = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def import_sdk() -> Any:
        raise NotImplementedError

    def make_client(self) -> Any:
        raise NotImplementedError

    def _client(self):
        # The SDK's connection pool belongs to one event loop; a later asyncio.run() gets a new client.
        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._client_loop is not loop:
            self._client_obj = self.make_client()
            self._client_loop = loop
        return self._client_obj

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": public_url(self.base_url)}

    async def aclose(self) -> None:
        client, self._client_obj = self._client_obj, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()
