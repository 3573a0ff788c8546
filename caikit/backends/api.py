"""What the HTTP API providers share: key from the environment, retry/limit policy, one SDK client per loop."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from caikit.backends.base import Backend, Usage
from caikit.backends.limits import RateLimiter, RetryPolicy, public_url
from caikit.errors import UserError


class APIBackend(Backend):
    """A provider reached through its SDK. Subclasses give `import_sdk` and `make_client`."""

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, timeout: float,
                 retry: RetryPolicy | None, limiter: RateLimiter | None):
        super().__init__(model)
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:  # fail before any work, and never echo a key
            raise UserError(f"{api_key_env} is not set (needed for --backend {self.name})")
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
