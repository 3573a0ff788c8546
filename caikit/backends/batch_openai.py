"""OpenAI Batch API: upload a JSONL file (purpose "batch"), create a batch on /v1/chat/completions,
poll it, download its output and error files, and read each line back by custom_id.

A line's body is exactly what the online path posts (`OpenAIBackend.request_params` /
`option_logprobs_params`), and its answer is parsed by the same functions, so both give the same records.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from caikit.backends.base import Completion, Message, Usage
from caikit.backends.batch import IncompleteResults, JobState, RowResult, check_readable
from caikit.backends.limits import one_line
from caikit.backends.openai import (RETRYABLE_STATUS, OpenAIBackend, check_response, completions_from_response,
                                    logprobs_from_response)

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


class OpenAIBatches:
    """The batch half of an OpenAIBackend: its key, base URL, timeout and client."""

    MAX_REQUESTS = 50_000  # per batch (OpenAI limit)
    MAX_BYTES = 200 * 1024 * 1024  # per input file
    envelope_bytes = 0  # the file is nothing but its lines

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

    async def submit(self, items: list[tuple[str, dict[str, Any]]]) -> str:
        """Upload the requests as one JSONL file and start a batch on it; returns the batch id."""
        data = b"".join(self.line(cid, body) for cid, body in items)
        client = self.inner._client()
        file = await self.call(lambda: client.files.create(file=("caikit-batch.jsonl", data, "application/jsonl"),
                                                           purpose="batch"))
        batch = await self.call(lambda: client.batches.create(input_file_id=file.id, endpoint=ENDPOINT,
                                                              completion_window="24h",
                                                              metadata={"created_by": "caikit"}))
        return batch.id

    async def poll(self, job_id: str) -> JobState:
        client = self.inner._client()
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
        client = self.inner._client()
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
