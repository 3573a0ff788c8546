"""OpenAI Batch API: upload a JSONL file (purpose "batch"), create a batch on /v1/chat/completions,
poll it, download its output and error files, and read each line back by custom_id.

A line's body is exactly what the online path posts (`OpenAIBackend.request_params` /
`option_logprobs_params`), and its answer is parsed by the same functions, so both give the same records.

Creating is idempotent: each batch carries metadata {"created_by": "caikit", "caikit_submission": nonce},
and before a create is retried (its predecessor may have been created with the answer lost) the nonce is
looked up with `batches.list` (`find`); a batch found is used instead of creating another. A lookup that
fails leaves the outcome unknown (`OutcomeUnknown`): nothing is re-sent. See batch.py.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from caikit.backends.api import RETRYABLE_STATUS
from caikit.backends.base import BackendError, Completion, Message, Usage
from caikit.backends.batch_jobs import IncompleteResults, JobState, OutcomeUnknown, RowResult, check_readable
from caikit.secrets import one_line
from caikit.backends.openai import (OpenAIBackend, check_response, completions_from_response,
                                    logprobs_from_response)

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
LOOKUP_PAGE = 100  # batches per list page (the API's maximum)
LOOKUP_PAGES = 20  # pages looked through at most for one nonce
LOOKUP_MARGIN = 900.0  # seconds before the submission that a batch of it may still claim (clock skew)


class OpenAIBatches:
    """The batch half of an OpenAIBackend: its key, base URL, timeout and client."""

    MAX_REQUESTS = 50_000  # per batch (OpenAI limit)
    MAX_BYTES = 200 * 1024 * 1024  # per input file
    envelope_bytes = 0  # the file is nothing but its lines
    CAN_FIND = True  # a submission can be looked up by its nonce (metadata)

    def __init__(self, inner: OpenAIBackend, call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]):
        self.inner = inner
        self.call = call  # runs one API call with the backend's retry policy

    # -- request bodies and answers (the online path's) --------------------------------------------
    def generate_bodies(self, messages: list[Message], *, n: int, temperature: float, max_tokens: int,
                        stop: list[str] | None, seed: int | None) -> list[dict[str, Any]]:
        return [self.inner.request_params(messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                          stop=stop, seed=seed)]

    def logprobs_body(self, messages: list[Message]) -> dict[str, Any]:
        return self.inner.option_logprobs_params(messages)

    def completions_of(self, response) -> list[Completion]:
        return completions_from_response(response)

    def usage_of(self, response) -> Usage:
        return self.inner.usage_of(response)

    def logprobs_of(self, response, options: list[str]) -> dict[str, float]:
        return logprobs_from_response(response, options, self.inner.model)

    # -- the batch API -----------------------------------------------------------------------------
    @staticmethod
    def line(custom_id: str, body: dict[str, Any]) -> bytes:
        line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def line_size(self, custom_id: str, body: dict[str, Any]) -> int:
        return len(self.line(custom_id, body))

    async def submit(self, items: list[tuple[str, dict[str, Any]]], *, nonce: str, since: float) -> str:
        """Upload the requests as one JSONL file and start a batch on it tagged with `nonce`; returns the
        batch id. A create is retried only after a lookup of the nonce found no batch (see `find`)."""
        data = b"".join(self.line(cid, body) for cid, body in items)
        client = self.inner.sdk_client()
        file = await self.call(lambda: client.files.create(file=("caikit-batch.jsonl", data, "application/jsonl"),
                                                           purpose="batch"))
        sent = False

        async def look_up(error: str) -> str | None:
            try:
                return await self.find(nonce, since=since)
            except BackendError as e:
                raise OutcomeUnknown(f"a batch create got no clear answer ({error}) and looking it up failed "
                                     f"({e}): the batch may exist; rerun to look it up again") from None

        async def create() -> str:
            nonlocal sent
            if sent:  # the previous create failed: it may still have made the batch
                found = await look_up("retrying")
                if found is not None:
                    return found
            sent = True
            batch = await client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h",
                                                metadata={"created_by": "caikit", "caikit_submission": nonce})
            return batch.id

        try:
            return await self.call(create)
        except OutcomeUnknown:
            raise
        except BackendError as e:
            if not (sent and e.retryable):  # a 4xx answer: nothing was created
                raise
            found = await look_up(str(e))  # the last create's outcome is unknown too
            if found is not None:
                return found
            raise

    async def find(self, nonce: str, *, since: float) -> str | None:
        """The id of the batch created with metadata caikit_submission == nonce, or None: looks through
        the recent batches (newest first) back to `since` - LOOKUP_MARGIN, LOOKUP_PAGES pages at most.
        Each page is retried; a page that cannot be had raises BackendError."""
        client = self.inner.sdk_client()
        after: str | None = None
        oldest = since - LOOKUP_MARGIN
        for _ in range(LOOKUP_PAGES):
            kwargs = {"limit": LOOKUP_PAGE, **({"after": after} if after else {})}
            page = await self.call(lambda: self._list_page(client, kwargs))
            for batch in page.data:
                metadata = batch.metadata if isinstance(batch.metadata, dict) else {}
                if metadata.get("caikit_submission") == nonce:
                    return batch.id
            if not page.data or page.has_more is False or (page.data[-1].created_at or 0) < oldest:
                return None
            after = page.data[-1].id
        return None

    @staticmethod
    async def _list_page(client, kwargs: dict[str, Any]):
        return await client.batches.list(**kwargs)

    async def poll(self, job_id: str) -> JobState:
        client = self.inner.sdk_client()
        batch = await self.call(lambda: client.batches.retrieve(job_id))
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
        return JobState(job_id, batch.status in TERMINAL, batch.status, counts, batch)

    async def results(self, state: JobState) -> dict[str, RowResult]:
        """custom_id -> result, from the output file (answers) and the error file (failed requests).
        A failed or cancelled batch may have neither: its requests get no result and are retried."""
        batch = state.raw
        lines = await self.call(lambda: self._download(batch))
        return {line["custom_id"]: self.row_result(line) for line in lines
                if isinstance(line, dict) and isinstance(line.get("custom_id"), str)}

    async def _download(self, batch) -> list[dict[str, Any]]:
        client = self.inner.sdk_client()
        lines: list[dict[str, Any]] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await client.files.content(file_id)
                # a cut-off download raises JSONDecodeError here: retried (is_retryable) by self.call
                lines += [json.loads(raw) for raw in content.text.splitlines() if raw.strip()]
        total = (batch.request_counts.total if batch.request_counts is not None else 0) or 0
        if batch.status == "completed" and len(lines) < total:
            raise IncompleteResults(f"batch {batch.id}: {len(lines)} result lines for {total} requests")
        return lines

    def row_result(self, line: dict[str, Any]) -> RowResult:
        """One output/error line: the parsed ChatCompletion, or the error that took its place."""
        error = line.get("error")
        if error:
            error = error if isinstance(error, dict) else {"message": str(error)}
            return RowResult(error=f"{error.get('code') or 'error'}: {one_line(error.get('message') or '')}")
        response = line.get("response") if isinstance(line.get("response"), dict) else {}
        status, body = response.get("status_code"), response.get("body")
        if status != 200:
            err = body.get("error") if isinstance(body, dict) else None
            err = err if isinstance(err, dict) else {}
            retryable = not isinstance(status, int) or status in RETRYABLE_STATUS or status >= 500
            return RowResult(error=f"HTTP {status} {err.get('type') or 'error'}: {one_line(err.get('message') or '')}",
                             retryable=retryable)
        try:  # leniently, as the SDK parses online answers, then read as the online path reads them
            parsed = self.inner._sdk.types.chat.ChatCompletion.construct(**body)
            check_response(parsed, logprobs=True)  # the online path's checks (MalformedResponse is a ValueError)
            check_readable(self.completions_of(parsed), self.usage_of(parsed))
        except (TypeError, ValueError, AttributeError) as e:
            return RowResult(error=f"malformed response body ({one_line(e, 80)})")
        return RowResult(response=parsed)
