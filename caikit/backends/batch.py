"""`--batch-api`: requests go through the provider's batch API (OpenAI Batch, Anthropic Message Batches), at half price.

`BatchBackend` wraps an OpenAI or Anthropic backend and sits inside CachingBackend (which persists
every answer to requests.jsonl). A request's journey:

  generate() / option_logprobs()  -> a row: custom_id = hash(kind, model, body), and a future to await
  -> waits until no request has arrived for `quiet_window` seconds (every worker of the stage is then
     blocked on us), so a stage's rounds come out as one batch each: answers, critiques, revisions...
  -> split by the provider's request-count and size limits into jobs; each job id is appended to
     batches.jsonl (flushed) before it is polled
  -> its watcher polls the job, downloads the results and resolves the rows; a row that failed inside
     the batch goes into the next batch, up to `inner.retry.max_attempts` attempts, then raises BackendError.

On a rerun, a request whose custom_id is in a stored job that did not fail for it is answered by polling
that job again: nothing is submitted (or paid for) twice after a crash mid-poll.

Paying twice for one submission (a create that reached the provider but whose answer was lost, or a
kill -9 between the provider's answer and the "submitted" line) is guarded against as follows:
  - every submission gets a nonce, and a "submitting" intent line (nonce, custom ids, time) is appended to
    batches.jsonl (flushed) before anything is uploaded;
  - OpenAI: the batch is created with metadata {"created_by": "caikit", "caikit_submission": nonce}.
    Before a create is retried, and on a rerun for an intent that never got its "submitted" line, the
    nonce is looked up in the recent batches (`batches.list`, newest first, back to the intent's time
    minus LOOKUP_MARGIN, at most LOOKUP_PAGES pages): a batch found is adopted (recorded as submitted,
    then polled), and only when none is found is one created (again). When the lookup itself fails, the
    outcome is unknown: the rows fail retryably (`OutcomeUnknown`), the intent stays pending, and the
    rerun looks it up again before creating anything;
  - Anthropic Message Batches carry no metadata, so a batch cannot be found by nonce: a create answered
    with an HTTP error (429/5xx: not created) is retried, but one whose outcome is unknown (timeout,
    dropped connection, an unreadable 2xx) is not re-sent: its rows fail retryably with a message saying
    the batch may exist (check the console before rerunning). A rerun that meets an intent without its
    "submitted" line (kill -9 during the create round-trip: the remaining window) warns on stderr, records
    it as "abandoned" and submits its requests again.
The request bodies are the online path's (`request_params`, `option_logprobs_params`), and so are the
parsers, so a batch run and an online run of the same command give the same records.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from caikit.backends.base import Backend, BackendError, Completion, Message, Usage, fill_to_n
from caikit.backends.batch_jobs import IncompleteResults, JobLog, OutcomeUnknown, RowResult, custom_id
from caikit.backends.retry import call_with_retries, describe_api_error, retry_after_of_error
from caikit.secrets import one_line, redact

QUIET_WINDOW = 0.2  # seconds without a new request before the pending ones are submitted
MAX_GATHER = 30.0  # ...unless requests keep trickling in: then submit what waited this long anyway


@dataclass
class _Row:
    """A request waiting for its answer."""

    custom_id: str
    body: dict[str, Any]
    future: asyncio.Future
    attempts: int = 0  # batches that returned no usable answer for it


def make_provider(inner: Backend, call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]):
    """The batch API of `inner`'s provider, as its class declares it (`batch_class`; see batch_openai.py /
    batch_anthropic.py for the interface)."""
    if not inner.batch_class:
        raise ValueError(f"the {inner.name} backend has no batch API")
    module, cls = inner.batch_class.split(":")
    return getattr(importlib.import_module(module), cls)(inner, call)


class BatchBackend(Backend):
    """Every request of a stage goes out in provider batch jobs; answers come back as from the online backend."""

    def __init__(self, inner: Backend, jobs_path: str | Path, *, poll_interval: float,
                 quiet_window: float = QUIET_WINDOW, max_requests: int | None = None, max_bytes: int | None = None):
        super().__init__(inner.model)
        self.inner = inner
        self.name = inner.name
        self.honours_n = inner.honours_n
        self.batch_class = inner.batch_class
        self.supports_logprobs = inner.supports_logprobs
        self.provider = make_provider(inner, self._call)
        self.poll_interval = poll_interval
        self.quiet_window = quiet_window
        self.max_requests = max_requests or self.provider.MAX_REQUESTS
        self.max_bytes = max_bytes or self.provider.MAX_BYTES
        self.max_attempts = max(1, inner.retry.max_attempts)
        self.jobs = JobLog(Path(jobs_path), inner.name)
        self.last_usage: Usage | None = None  # of the latest option_logprobs call (read by CachingBackend)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[str, _Row] = {}  # custom_id -> waiting row (identical requests share it)
        self._unsent: dict[str, _Row] = {}  # rows for the next batch
        self._last_arrival = self._first_arrival = 0.0
        self._collector: asyncio.Task | None = None
        self._job_rows: dict[str, dict[str, _Row]] = {}  # job id -> rows waiting on it
        self._watchers: dict[str, asyncio.Task] = {}
        self._collected: dict[str, dict[str, RowResult]] = {}  # answers of finished jobs nobody claimed yet

    # -- the Backend contract ----------------------------------------------------------------------
    async def generate(self, messages: list[Message], *, n: int = 1, temperature: float = 0.7,
                       max_tokens: int = 256, stop: list[str] | None = None,
                       seed: int | None = None) -> list[Completion]:
        if n < 1:
            raise ValueError("n must be >= 1")
        bodies = self.provider.generate_bodies(messages, n=n, temperature=temperature, max_tokens=max_tokens,
                                               stop=stop, seed=seed)
        responses = await asyncio.gather(*[self._request(f"g{i}", body) for i, body in enumerate(bodies)])
        usage, completions = Usage(), []
        for response in responses:
            usage.add(self.provider.usage_of(response))
            completions.extend(self.provider.completions_of(response))
        return await fill_to_n(self, messages, completions, usage, n=n, temperature=temperature,
                               max_tokens=max_tokens, stop=stop, seed=seed)  # as online, for servers ignoring n

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        if not self.supports_logprobs:
            return await self.inner.option_logprobs(messages, options)  # raises LogprobsUnsupported
        response = await self._request("lp", self.provider.logprobs_body(messages))
        self.last_usage = self.provider.usage_of(response)
        try:
            return self.provider.logprobs_of(response, options)
        except (TypeError, ValueError, AttributeError) as e:  # LogprobsUnsupported is none of these
            raise BackendError(f"malformed logprobs in the batch result ({type(e).__name__})") from None

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "batch_api": True}

    async def aclose(self) -> None:
        tasks = [t for t in [self._collector, *self._watchers.values()] if t is not None]
        for task in tasks:  # jobs still running stay in batches.jsonl: a rerun polls them
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.jobs.file.close()
        await self.inner.aclose()

    # -- rows --------------------------------------------------------------------------------------
    async def _request(self, kind: str, body: dict[str, Any]) -> Any:
        """The provider's parsed response to `body`, once a batch has answered it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # futures and tasks belong to one event loop
            self._loop = loop
            self._reset()
        cid = custom_id(kind, self.model, body)
        row = self._rows.get(cid)
        if row is None:
            row = self._rows[cid] = _Row(cid, body, loop.create_future())
            self._enqueue(row)
        return await asyncio.shield(row.future)

    def _enqueue(self, row: _Row) -> None:
        """To the stored job that can answer it, else into the next batch."""
        job_id = self.jobs.usable.get(row.custom_id)
        if job_id is not None:
            if job_id not in self._collected:
                self._job_rows.setdefault(job_id, {})[row.custom_id] = row
                if job_id not in self._watchers:  # a job of an earlier run: poll it, submit nothing
                    self._watchers[job_id] = asyncio.ensure_future(self._watch(job_id, fresh=False))
                return
            answer = self._collected[job_id].pop(row.custom_id, None)
            if answer is not None:
                self._settle(row, answer)
                return
        now = asyncio.get_running_loop().time()
        if not self._unsent:
            self._first_arrival = now
        self._unsent[row.custom_id] = row
        self._last_arrival = now
        if self._collector is None:
            self._collector = asyncio.ensure_future(self._collect())

    def _settle(self, row: _Row, result: RowResult) -> None:
        if row.future.done():  # pragma: no cover - a row waits in one place only
            return
        if result.response is not None:
            self._rows.pop(row.custom_id, None)
            row.future.set_result(result.response)
            return
        row.attempts += 1
        if not result.retryable or row.attempts >= self.max_attempts:
            self._fail(row, f"batch request failed after {row.attempts} attempt(s): {result.error}",
                       retryable=result.retryable)
        else:
            self._enqueue(row)  # into a follow-up batch

    def _fail(self, row: _Row, message: str, *, retryable: bool = True) -> None:
        self._rows.pop(row.custom_id, None)
        if not row.future.done():
            secrets = (getattr(self.inner, "_api_key", ""),)
            row.future.set_exception(BackendError(redact(one_line(message, 500), secrets), retryable=retryable))
            row.future.exception()  # retrieved: every waiter re-raises it itself

    # -- submitting --------------------------------------------------------------------------------
    async def _collect(self) -> None:
        """Submit the waiting rows once no request has arrived for `quiet_window` seconds (or a full batch
        is waiting, or the first has waited MAX_GATHER seconds)."""
        loop = asyncio.get_running_loop()
        try:
            while self._unsent:
                wait = min(self._last_arrival + self.quiet_window, self._first_arrival + MAX_GATHER) - loop.time()
                if wait > 0 and len(self._unsent) < self.max_requests:
                    await asyncio.sleep(min(wait, self.quiet_window))
                    continue
                rows, self._unsent = list(self._unsent.values()), {}
                for chunk in self._chunks(rows):
                    await self._submit(chunk)
        finally:
            self._collector = None

    def _chunks(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Consecutive runs of rows within the provider's request-count and size limits."""
        chunk: list[_Row] = []
        size = self.provider.envelope_bytes
        for row in rows:
            n = self.provider.line_size(row.custom_id, row.body)
            if self.provider.envelope_bytes + n > self.max_bytes:
                self._fail(row, f"the request ({n:,} bytes) is larger than one batch may be "
                                f"({self.max_bytes:,} bytes)", retryable=False)
                continue
            if chunk and (len(chunk) >= self.max_requests or size + n > self.max_bytes):
                yield chunk
                chunk, size = [], self.provider.envelope_bytes
            chunk.append(row)
            size += n
        if chunk:
            yield chunk

    async def _submit(self, chunk: list[_Row]) -> None:
        chunk = await self._resolve_pending(chunk)
        if not chunk:
            return
        ids = [row.custom_id for row in chunk]
        nonce = uuid.uuid4().hex
        try:
            self.jobs.submitting(nonce, ids)  # flushed before the upload: a rerun can find this submission
            job_id = await self.provider.submit([(row.custom_id, row.body) for row in chunk], nonce=nonce,
                                                since=time.time())
            self.jobs.submitted(job_id, ids, nonce=nonce)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every waiting row gets one clean line, never a hang
            retryable = getattr(e, "retryable", True)
            reason = str(e) if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
            for row in chunk:
                self._fail(row, f"batch submission failed: {reason}", retryable=retryable)
            return  # the intent stays pending: a rerun looks it up before submitting these rows again
        print(f"caikit batch: submitted {self.name} batch {job_id} ({len(ids)} requests)", file=sys.stderr)
        self._job_rows.setdefault(job_id, {}).update({row.custom_id: row for row in chunk})
        self._watchers[job_id] = asyncio.ensure_future(self._watch(job_id, fresh=True))

    async def _resolve_pending(self, chunk: list[_Row]) -> list[_Row]:
        """Before rows go out: each pending intent (a submission whose outcome was never recorded) that
        holds some of them is looked up; a batch found is adopted and polled for them. Returns the rest."""
        for nonce, intent in list(self.jobs.pending.items()):
            intent_ids = [c for c in intent.get("custom_ids") or [] if isinstance(c, str)]
            wanted = set(intent_ids)
            mine = {row.custom_id: row for row in chunk if row.custom_id in wanted}
            if not mine or nonce not in self.jobs.pending:
                continue
            if not getattr(self.provider, "CAN_FIND", False):
                print(f"caikit batch: an earlier {self.name} submission ({len(intent_ids)} requests, "
                      f"{intent.get('started_at', '?')}) never recorded its batch id, and {self.name} batches "
                      f"cannot be looked up: submitting again (check the console for a duplicate)", file=sys.stderr)
                self.jobs.abandoned(nonce, "cannot be looked up")
                continue
            since = intent.get("started_unix")
            try:
                job_id = await self.provider.find(nonce, since=since if isinstance(since, (int, float)) else 0.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                reason = str(e) if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
                for row in mine.values():
                    self._fail(row, f"could not look up an earlier submission of this request ({reason}); "
                                    f"rerun to look again")
                chunk = [row for row in chunk if row.custom_id not in mine]
                continue
            if job_id is None:
                self.jobs.abandoned(nonce, "not found on the provider")
                continue
            self.jobs.submitted(job_id, intent_ids, nonce=nonce, adopted=True)
            print(f"caikit batch: adopted {self.name} batch {job_id} of an interrupted submission "
                  f"({len(intent_ids)} requests)", file=sys.stderr)
            self._job_rows.setdefault(job_id, {}).update(mine)
            if job_id not in self._watchers:
                self._watchers[job_id] = asyncio.ensure_future(self._watch(job_id, fresh=False))
            chunk = [row for row in chunk if row.custom_id not in mine]
        return chunk

    # -- collecting --------------------------------------------------------------------------------
    async def _watch(self, job_id: str, *, fresh: bool) -> None:
        """Poll one job to its end, download its results, and settle the rows waiting on it."""
        try:
            if fresh:
                await asyncio.sleep(self.poll_interval)
            while True:
                state = await self.provider.poll(job_id)
                if state.done:
                    break
                await asyncio.sleep(self.poll_interval)
            results = await self.provider.results(state)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self._watchers.pop(job_id, None)
            rows = self._job_rows.pop(job_id, {})
            reason = str(e) if isinstance(e, BackendError) else f"{type(e).__name__}: {e}"
            if isinstance(e, BackendError) and not e.retryable:  # e.g. 404: the job is gone; submit anew
                self.jobs.collected(job_id, "unavailable", {}, self.jobs.custom_ids.get(job_id, []))
                for row in rows.values():
                    self._settle(row, RowResult(error=f"batch {job_id} is unavailable: {reason}"))
            else:  # still running for all we know: a rerun polls it again
                for row in rows.values():
                    self._fail(row, f"could not collect batch {job_id} ({reason}); rerun to resume it")
            return
        ok = {cid: r for cid, r in results.items() if r.response is not None}
        failed = [cid for cid in self.jobs.custom_ids.get(job_id, []) if cid not in ok]
        self.jobs.collected(job_id, state.status, state.counts, failed)
        print(f"caikit batch: {self.name} batch {job_id} {state.status}: {len(ok)} succeeded, {len(failed)} failed",
              file=sys.stderr)
        self._watchers.pop(job_id, None)
        rows = self._job_rows.pop(job_id, {})
        self._collected[job_id] = ok
        for cid, row in rows.items():
            self._settle(row, ok.pop(cid, None) or results.get(cid)
                         or RowResult(error=f"batch {job_id} ({state.status}) returned no result for it"))

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """One batch API call (upload, create, poll, download), retried like an online request.
        An OutcomeUnknown raised by `fn` is never retried, and comes out as itself."""
        inner = self.inner
        unknown: list[OutcomeUnknown] = []

        async def attempt() -> Any:
            try:
                return await fn()
            except OutcomeUnknown as e:
                unknown.append(e)
                raise

        def is_retryable(e: BaseException) -> bool:
            return not isinstance(e, OutcomeUnknown) and (isinstance(e, IncompleteResults) or inner.is_retryable(e))

        try:
            return await call_with_retries(
                attempt, inner.retry, is_retryable=is_retryable, retry_after_of=retry_after_of_error,
                describe=describe_api_error, secrets=(getattr(inner, "_api_key", ""),))
        except BackendError:
            if unknown:
                secrets = (getattr(inner, "_api_key", ""),)
                raise OutcomeUnknown(redact(one_line(str(unknown[-1]), 500), secrets)) from None
            raise
