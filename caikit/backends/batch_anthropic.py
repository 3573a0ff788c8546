"""Anthropic Message Batches: `messages.batches.create(requests=[{custom_id, params}])`, poll until
`processing_status == "ended"`, then stream `results()` (JSONL) and read each result by custom_id.

`params` are the online path's `messages.create` arguments (`AnthropicBackend.request_params`), with
`extra_body` (where temperature travels) merged in, since a batch request is the bare body. The API
has no `n`: n samples are n requests, told apart by their custom_id.

Paying twice: a Message Batch carries no metadata, so a batch whose create answer was lost cannot be
found again without guessing. A create answered with an HTTP error (429, 5xx: not created) is retried;
one whose outcome is unknown (timeout, dropped connection, an unreadable 2xx body) is not re-sent: its
rows fail retryably (`OutcomeUnknown`) saying the batch may exist. The window left is a kill -9 during
the create round-trip: the rerun warns and submits those requests again (see batch.py).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from caikit.backends.anthropic import AnthropicBackend, check_message, completion_from_message
from caikit.backends.base import Completion, LogprobsUnsupported, Message, Usage
from caikit.backends.batch_jobs import IncompleteResults, JobState, OutcomeUnknown, RowResult, check_readable
from caikit.backends.retry import describe_api_error
from caikit.secrets import one_line

NOT_RETRYABLE = {"invalid_request_error", "authentication_error", "permission_error", "not_found_error"}


class AnthropicBatches:
    """The batch half of an AnthropicBackend: its key, base URL, timeout and client."""

    MAX_REQUESTS = 100_000  # per batch (Anthropic limit)
    MAX_BYTES = 256 * 1024 * 1024  # per create request
    envelope_bytes = len('{"requests":[]}')
    CAN_FIND = False  # batches carry no metadata: a lost create cannot be looked up

    def __init__(self, inner: AnthropicBackend, call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]):
        self.inner = inner
        self.call = call  # runs one API call with the backend's retry policy

    # -- request bodies and answers (the online path's) --------------------------------------------
    def generate_bodies(self, messages: list[Message], *, n: int, temperature: float, max_tokens: int,
                        stop: list[str] | None, seed: int | None) -> list[dict[str, Any]]:
        """`seed` is ignored, as online: the API has none."""
        params = self.inner.request_params(messages, temperature=temperature, max_tokens=max_tokens, stop=stop)
        body = {k: v for k, v in params.items() if k != "extra_body"} | params.get("extra_body", {})
        return [body] * n

    def logprobs_body(self, messages: list[Message]) -> dict[str, Any]:
        raise LogprobsUnsupported("the Anthropic API returns no log-probabilities: use sampled or parsed votes")

    def completions_of(self, message) -> list[Completion]:
        return [completion_from_message(message)]

    def usage_of(self, message) -> Usage:
        return self.inner.usage_of(message)

    def logprobs_of(self, message, options: list[str]) -> dict[str, float]:
        raise LogprobsUnsupported()

    # -- the batch API -----------------------------------------------------------------------------
    def line_size(self, custom_id: str, body: dict[str, Any]) -> int:
        """Bytes of one request in the create body, as the SDK serialises it (compact, UTF-8), plus a comma."""
        text = json.dumps({"custom_id": custom_id, "params": body}, ensure_ascii=False, separators=(",", ":"))
        return len(text.encode()) + 1

    async def submit(self, items: list[tuple[str, dict[str, Any]]], *, nonce: str = "", since: float = 0.0) -> str:
        """Create one batch of the requests; returns its id. `nonce` is recorded by the caller only: the
        API has nowhere to put it. A create retried is one the server answered with an error."""
        client = self.inner.sdk_client()
        requests = [{"custom_id": cid, "params": body} for cid, body in items]
        sdk = self.inner._sdk

        async def create():
            try:
                return await client.messages.batches.create(requests=requests)
            except Exception as e:
                if not isinstance(e, sdk.APIStatusError) and self.inner.is_retryable(e):
                    raise OutcomeUnknown(f"a batch create got no clear answer ({describe_api_error(e)}): the "
                                         f"batch may exist and is not sent again; check the Anthropic console "
                                         f"before rerunning") from None
                raise

        batch = await self.call(create)
        return batch.id

    async def poll(self, job_id: str) -> JobState:
        client = self.inner.sdk_client()
        batch = await self.call(lambda: client.messages.batches.retrieve(job_id))
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
        return JobState(job_id, batch.processing_status == "ended", batch.processing_status, counts, batch)

    async def results(self, state: JobState) -> dict[str, RowResult]:
        return await self.call(lambda: self._download(state))

    async def _download(self, state: JobState) -> dict[str, RowResult]:
        # a cut-off line raises JSONDecodeError mid-stream: the whole download is retried by self.call
        decoder = await self.inner.sdk_client().messages.batches.results(state.job_id)
        out = {}
        try:
            async for item in decoder:
                if isinstance(getattr(item, "custom_id", None), str):
                    out[item.custom_id] = self.row_result(getattr(item, "result", None))
        finally:
            await decoder.close()
        expected = sum(v for k, v in state.counts.items() if k != "processing")
        if len(out) < expected:
            raise IncompleteResults(f"batch {state.job_id}: {len(out)} results for {expected} requests")
        return out

    def row_result(self, result) -> RowResult:
        kind = getattr(result, "type", None)
        if kind == "succeeded":
            message = getattr(result, "message", None)
            try:  # read as the online path reads it; a body it cannot read is malformed (retried)
                if getattr(message, "usage", None) is None:
                    raise ValueError("no usage")
                check_message(message)  # the online path's checks (MalformedResponse is a ValueError)
                check_readable(self.completions_of(message), self.usage_of(message))
            except (TypeError, ValueError, AttributeError) as e:
                return RowResult(error=f"malformed message ({one_line(e, 80)})")
            return RowResult(response=message)
        if kind == "errored":
            err = getattr(getattr(result, "error", None), "error", None)
            err_type = getattr(err, "type", None) or "api_error"
            return RowResult(error=f"{err_type}: {one_line(getattr(err, 'message', '') or '')}",
                             retryable=err_type not in NOT_RETRYABLE)
        return RowResult(error=f"the request was {kind or 'lost'} before it ran")  # expired / canceled
