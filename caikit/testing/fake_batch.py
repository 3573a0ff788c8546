"""The batch endpoints of the loopback fake API: OpenAI Batch (Files + Batches) and Anthropic Message Batches.

Wire formats as the providers document them, so the official SDKs parse every answer:
  OpenAI     POST /v1/files (multipart, purpose=batch), GET /v1/files/{id}, GET /v1/files/{id}/content,
             POST /v1/batches, GET /v1/batches/{id}, GET /v1/batches (list: newest first, `limit`, `after`)
  Anthropic  POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET {results_url} (JSONL)

Each batch line is answered by the server's own responder / logprobs / cache_usage / reject hooks,
so a batch and the same requests sent online get identical answers. A job stays in progress for
`latency` seconds (and while `hold()` is on), then is answered whole on the next poll. Faults:
per-line errors (`BatchFaultPlan.line_rates`, `always_fail_keys`, or the `line_fault` hook), whole
jobs that fail / expire / get cancelled (`BatchFaultPlan.jobs`), and HTTP faults on the endpoints
themselves (`endpoint_faults`, a FaultPlan: 429/500/503/truncated/disconnect/hang), and creates that
commit and then lose their answer (`drop_create_responses`: the batch exists, the client hears nothing).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from caikit.testing.wire import ERROR_TYPES, FakeRequest, FaultPlan, count_fault, draw_fault

if TYPE_CHECKING:  # types only: fake_api imports this module
    from caikit.testing.fake_api import FakeAPIServer, _Handler

LINE_FAULTS = ("500", "429", "400", "malformed", "expired")
JOB_FAULTS = ("failed", "expired", "cancelled")
OPENAI_LIMITS = (50_000, 200 * 2**20)  # requests, bytes per input file
ANTHROPIC_LIMITS = (100_000, 256 * 2**20)  # requests, bytes per create request
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class BatchFaultPlan:
    """Which batch lines and jobs fail.

    A line first consults `always_fail_keys` (True -> "500" every time), then the seeded `line_rates`;
    `max_faults_per_key` caps how often the same request fails, so a client that retries it in a
    follow-up batch gets through. The i-th batch created ends as `jobs[i]` (None: normally).
    """

    line_rates: dict[str, float] = field(default_factory=dict)  # kind -> probability per line
    seed: int = 0
    max_faults_per_key: int | None = None
    always_fail_keys: Callable[["FakeRequest"], bool] | None = None
    jobs: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = [k for k in self.line_rates if k not in LINE_FAULTS] + \
                  [k for k in self.jobs if k is not None and k not in JOB_FAULTS]
        if unknown:
            raise ValueError(f"unknown batch fault(s) {unknown}; lines: {LINE_FAULTS}, jobs: {JOB_FAULTS}")


@dataclass
class FakeBatchJob:
    """One created batch, as tests assert on it."""

    id: str
    provider: str
    custom_ids: list[str]
    created: float  # time.monotonic()
    input_bytes: int = 0
    fault: str | None = None  # the whole-job fault it was dealt
    status: str = "in_progress"  # "in_progress" | "failed" (validation) | "ended" (answered)
    polls: int = 0
    errors: list[str] = field(default_factory=list)  # validation errors (OpenAI "failed")
    line_faults: dict[str, str] = field(default_factory=dict)  # custom_id -> fault of its line
    lines: list[dict[str, Any]] = field(default_factory=list, repr=False)
    results: dict[str, Any] = field(default_factory=dict, repr=False)  # what polls report once ended


def _now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {field name: (filename or None, bytes)}."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        raise ValueError("not multipart/form-data")
    fields = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode("utf-8", "replace")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            fields[name.group(1)] = (filename.group(1) if filename else None, data.removesuffix(b"\r\n"))
    return fields


class FakeBatches:
    """Batch jobs and files of one FakeAPIServer. Thread-safe; the server calls `handle`."""

    def __init__(self, server: "FakeAPIServer", *, latency: float = 0.0, faults: BatchFaultPlan | None = None,
                 line_fault: Callable[["FakeRequest"], str | None] | None = None,
                 endpoint_faults: "FaultPlan | None" = None,
                 openai_limits: tuple[int, int] = OPENAI_LIMITS, anthropic_limits: tuple[int, int] = ANTHROPIC_LIMITS):
        self.server = server
        self.latency = latency
        self.faults = faults
        self.line_fault = line_fault
        self.endpoint_faults = endpoint_faults
        self.limits = {"openai": openai_limits, "anthropic": anthropic_limits}
        self._lock = threading.RLock()  # answering a job (under it) draws line faults (under it)
        self._files: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, FakeBatchJob] = {}
        self._held = False
        self._rng = random.Random(faults.seed if faults else 0)
        self._endpoint_rng = random.Random(endpoint_faults.seed if endpoint_faults else 0)
        self._endpoint_calls = 0
        self._faults_by_key: collections.Counter = collections.Counter()
        self._id_prefix = f"{random.getrandbits(32):08x}"  # ids unique across servers, as the providers' are
        self._drop_creates = 0
        self._drop_hang = 0.0
        self.truncate_creates = True  # False: a "truncated" endpoint fault drawn for a create answers whole

    # -- what tests use ----------------------------------------------------------------------------
    @property
    def jobs(self) -> list[FakeBatchJob]:
        """Every batch created so far, in creation order (copies)."""
        with self._lock:
            return [dataclasses.replace(j, custom_ids=list(j.custom_ids)) for j in self._jobs.values()]

    def hold(self) -> None:
        """Keep every job in progress (however long past its latency) until `release()`."""
        self._held = True

    def release(self) -> None:
        self._held = False

    def drop_create_responses(self, n: int = 1, *, hang: float = 0.0) -> None:
        """The next `n` batch creates (either provider) that succeed make their batch, then answer nothing:
        after `hang` seconds (or at server stop) the connection is dropped."""
        with self._lock:
            self._drop_creates, self._drop_hang = n, hang

    # -- routing -----------------------------------------------------------------------------------
    @staticmethod
    def routes(path: str) -> bool:
        return path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches"))

    def handle(self, h: "_Handler", provider: str, method: str, path: str, raw: bytes) -> int:
        fault = self._endpoint_fault()
        if fault in ("429", "500", "503", "disconnect") or (fault == "hang" and self._hang()):
            return self._fail_call(h, provider, fault)
        try:
            return self._route(h, provider, method, path, raw, fault)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            return self.server._send_error(h, provider, 400, f"malformed request: {type(e).__name__}: {e}")

    def _route(self, h: "_Handler", provider: str, method: str, path: str, raw: bytes, fault: str | None) -> int:
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if fault == "truncated" and not self.truncate_creates and method == "POST" and \
                parts in (["batches"], ["messages", "batches"]):
            fault = None
        if provider == "openai":
            if method == "POST" and parts == ["files"]:
                status, body = self._upload(h.headers.get("Content-Type", ""), raw)
            elif method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                return self._send_bytes(h, self._files.get(parts[1], {}).get("content"), provider, fault)
            elif method == "GET" and len(parts) == 2 and parts[0] == "files":
                status, body = (200, self._file_object(parts[1])) if parts[1] in self._files else (404, None)
            elif method == "POST" and parts == ["batches"]:
                status, body = self._create_openai(json.loads(raw or b"{}"))
                if status == 200 and self._take_drop():
                    return self._drop_after_commit(h)
            elif method == "GET" and parts == ["batches"]:
                status, body = self._list_openai(urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query))
            elif method == "GET" and len(parts) == 2 and parts[0] == "batches":
                status, body = self._retrieve(parts[1], "openai")
            else:
                status, body = 404, None
        else:
            if method == "POST" and parts == ["messages", "batches"]:
                status, body = self._create_anthropic(json.loads(raw or b"{}"), len(raw))
                if status == 200 and self._take_drop():
                    return self._drop_after_commit(h)
            elif method == "GET" and len(parts) == 4 and parts[3] == "results":
                job = self._jobs.get(parts[2])
                if job is None or job.status != "ended":
                    return self.server._send_error(h, provider, 404, "no results (yet) for this batch")
                return self._send_bytes(h, job.results["jsonl"], provider, fault)
            elif method == "GET" and len(parts) == 3:
                status, body = self._retrieve(parts[2], "anthropic")
            else:
                status, body = 404, None
        if status != 200:
            message = body if isinstance(body, str) else f"no such object or route: {method} {path}"
            return self.server._send_error(h, provider, status, message)
        data = json.dumps(body).encode()
        return self.server._send(h, 200, data[: len(data) // 2] if fault == "truncated" else data)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drop_creates <= 0:
                return False
            self._drop_creates -= 1
            return True

    def _drop_after_commit(self, h: "_Handler") -> int:
        if self._drop_hang:
            self.server._stopping.wait(self._drop_hang)
        return self.server._drop(h)

    def _endpoint_fault(self) -> str | None:
        plan = self.endpoint_faults
        if plan is None:
            return None
        with self._lock:
            i, self._endpoint_calls = self._endpoint_calls, self._endpoint_calls + 1
            if i < len(plan.script):
                return plan.script[i]
            draw, cumulative = self._endpoint_rng.random(), 0.0
            for kind, rate in sorted(plan.rates.items()):
                cumulative += rate
                if draw < cumulative:
                    return kind
        return None

    def _hang(self) -> bool:
        """Stall like a hung server; True when it then drops the connection."""
        self.server._stopping.wait(self.endpoint_faults.hang_seconds)
        return self.endpoint_faults.hang_then == "drop"

    def _fail_call(self, h: "_Handler", provider: str, fault: str) -> int:
        if fault in ("disconnect", "hang"):
            return self.server._drop(h)
        plan = self.endpoint_faults
        headers = {"Retry-After": str(plan.retry_after)} if fault == "429" and plan.retry_after is not None else {}
        return self.server._send_error(h, provider, int(fault), f"injected fault {fault}", headers)

    def _send_bytes(self, h: "_Handler", data: bytes | None, provider: str, fault: str | None) -> int:
        if data is None:
            return self.server._send_error(h, provider, 404, "no such file")
        return self.server._send(h, 200, data[: len(data) // 2] if fault == "truncated" else data,
                                 content_type="application/octet-stream")

    # -- OpenAI ------------------------------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> tuple[int, Any]:
        try:
            fields = parse_multipart(content_type, raw)
        except ValueError as e:
            return 400, str(e)
        if fields.get("purpose", (None, b""))[1] != b"batch" or "file" not in fields:
            return 400, "expected a 'file' part and purpose=batch"
        filename, content = fields["file"]
        with self._lock:
            file_id = f"file-{self._id_prefix}{len(self._files) + 1:06d}"
            self._files[file_id] = {"filename": filename or "upload.jsonl", "content": content,
                                    "created": int(time.time()), "purpose": "batch"}
        return 200, self._file_object(file_id)

    def _file_object(self, file_id: str) -> dict[str, Any]:
        f = self._files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(f["content"]), "created_at": f["created"],
                "filename": f["filename"], "purpose": f["purpose"], "status": "processed",
                "expires_at": None, "status_details": None}

    def _create_openai(self, body: dict[str, Any]) -> tuple[int, Any]:
        file = self._files.get(body.get("input_file_id", ""))
        if file is None:
            return 400, f"no file with id {body.get('input_file_id')!r}"
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return 400, "endpoint must be /v1/chat/completions and completion_window 24h"
        errors, lines = [], []
        for lineno, text in enumerate(file["content"].decode("utf-8", "replace").splitlines(), 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
                assert isinstance(line["body"], dict) and _CUSTOM_ID.match(line["custom_id"])
                lines.append(line)
            except (ValueError, KeyError, TypeError, AssertionError):
                errors.append(f"line {lineno}: not a valid batch request line")
        max_requests, max_bytes = self.limits["openai"]
        ids = [line["custom_id"] for line in lines]
        if len(set(ids)) != len(ids):
            errors.append("duplicate custom_id values in the input file")
        if len(lines) > max_requests:
            errors.append(f"{len(lines)} requests, over the limit of {max_requests} per batch")
        if len(file["content"]) > max_bytes:
            errors.append(f"input file of {len(file['content'])} bytes, over the limit of {max_bytes}")
        job = self._new_job("openai", "batch_", lines, ids, len(file["content"]))
        if errors:
            job.status, job.errors = "failed", errors
        job.results["input_file_id"] = body["input_file_id"]
        job.results["metadata"] = body.get("metadata")
        return 200, self._openai_batch(job)

    def _list_openai(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        """GET /v1/batches: the OpenAI batches, newest first, `limit` (1..100, default 20) after `after`."""
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            return 400, "limit: expected an integer"
        if not 1 <= limit <= 100:
            return 400, "limit: must be between 1 and 100"
        after = query.get("after", [None])[0]
        with self._lock:
            jobs = [j for j in reversed(self._jobs.values()) if j.provider == "openai"]
            if after is not None:
                ids = [j.id for j in jobs]
                if after not in ids:
                    return 400, f"after: no batch with id {after!r}"
                jobs = jobs[ids.index(after) + 1:]
            page = [self._openai_batch(j) for j in jobs[:limit]]
        return 200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None, "has_more": len(jobs) > limit}

    def _openai_batch(self, job: FakeBatchJob) -> dict[str, Any]:
        created = int(time.time() - (time.monotonic() - job.created))
        r = job.results
        status = {"in_progress": "in_progress", "failed": "failed"}.get(job.status) or r["status"]
        counts = r.get("counts") or {"total": len(job.custom_ids) if job.status != "failed" else 0,
                                     "completed": 0, "failed": 0}
        batch = {"id": job.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
                 "input_file_id": r.get("input_file_id", ""), "completion_window": "24h", "status": status,
                 "output_file_id": r.get("output_file_id"), "error_file_id": r.get("error_file_id"),
                 "created_at": created, "in_progress_at": created, "expires_at": created + 86400,
                 "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                 "cancelling_at": None, "cancelled_at": None, "request_counts": counts,
                 "metadata": r.get("metadata")}
        if job.status == "failed":
            batch["failed_at"] = int(time.time())
            batch["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": m, "param": None,
                                                           "line": None} for m in job.errors]}
        elif status in ("completed", "expired", "cancelled"):
            batch[{"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[status]] = \
                int(time.time())
        return batch

    def _answer_openai(self, job: FakeBatchJob) -> None:
        """Answer every line; write the output and error files (as the real service does at the end)."""
        if job.fault == "failed":
            job.status, job.errors = "failed", ["injected job failure"]
            return
        outputs, errors = [], []
        for i, line in enumerate(job.lines):
            cid = line["custom_id"]
            out = {"id": f"batch_req_{job.id}_{i}", "custom_id": cid, "response": None, "error": None}
            skipped = self._skipped(job, i)
            if skipped:
                out["error"] = {"code": f"batch_{skipped}", "message": f"this request was not run: batch {skipped}"}
                errors.append(out)
                continue
            status, body = self._answer_line("openai", line["body"], cid, job)
            if status == 0:  # the line's own injected expiry
                out["error"] = {"code": "batch_expired", "message": "this request was not run: batch expired"}
                errors.append(out)
                continue
            out["response"] = {"status_code": status, "request_id": f"req_{job.id}_{i}", "body": body}
            (outputs if status == 200 else errors).append(out)
        r = job.results
        r["status"] = {"expired": "expired", "cancelled": "cancelled"}.get(job.fault, "completed")
        r["counts"] = {"total": len(job.lines), "completed": len(outputs), "failed": len(errors)}
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{self._id_prefix}{len(self._files) + 1:06d}"
                self._files[file_id] = {"filename": f"{job.id}_{kind[:-8]}.jsonl", "created": int(time.time()),
                                        "purpose": "batch_output",
                                        "content": "".join(json.dumps(o) + "\n" for o in rows).encode()}
                r[kind] = file_id
        job.status = "ended"

    # -- Anthropic ---------------------------------------------------------------------------------
    def _create_anthropic(self, body: dict[str, Any], size: int) -> tuple[int, Any]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return 400, "requests: expected a non-empty list"
        ids = []
        for i, r in enumerate(requests):
            if not isinstance(r, dict) or not isinstance(r.get("params"), dict) or \
                    not _CUSTOM_ID.match(str(r.get("custom_id", ""))):
                return 400, f"requests.{i}: expected {{custom_id: [A-Za-z0-9_-]{{1,64}}, params: {{...}}}}"
            ids.append(r["custom_id"])
        if len(set(ids)) != len(ids):
            return 400, "requests: custom_id values must be unique within a batch"
        max_requests, max_bytes = self.limits["anthropic"]
        if len(requests) > max_requests:
            return 400, f"requests: at most {max_requests} requests per batch"
        if size > max_bytes:
            return 413, f"request of {size} bytes exceeds the batch size limit of {max_bytes}"
        lines = [{"custom_id": r["custom_id"], "body": r["params"]} for r in requests]
        return 200, self._anthropic_batch(self._new_job("anthropic", "msgbatch_", lines, ids, size))

    def _anthropic_batch(self, job: FakeBatchJob) -> dict[str, Any]:
        created = time.time() - (time.monotonic() - job.created)
        ended = job.status == "ended"
        counts = job.results.get("counts") or {"processing": len(job.custom_ids), "succeeded": 0, "errored": 0,
                                               "canceled": 0, "expired": 0}
        return {"id": job.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": _now_iso(created), "expires_at": _now_iso(created + 86400),
                "ended_at": _now_iso() if ended else None, "archived_at": None,
                "cancel_initiated_at": _now_iso() if ended and job.fault == "cancelled" else None,
                "results_url": f"{self.server.url}/v1/messages/batches/{job.id}/results" if ended else None}

    def _answer_anthropic(self, job: FakeBatchJob) -> None:
        rows, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for i, line in enumerate(job.lines):
            skipped = "failed" if job.fault == "failed" else self._skipped(job, i)
            if skipped == "failed":
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "injected job failure"}}}
            elif skipped:
                result = {"type": "canceled" if skipped == "cancelled" else "expired"}
            else:
                status, body = self._answer_line("anthropic", line["body"], line["custom_id"], job)
                if status == 0:  # the line's own injected expiry
                    result = {"type": "expired"}
                elif status == 200:
                    result = {"type": "succeeded", "message": body}
                else:
                    result = {"type": "errored", "error": {"type": "error", "error": body["error"]}}
            counts[result["type"]] += 1
            rows.append({"custom_id": line["custom_id"], "result": result})
        job.results["counts"] = counts
        job.results["jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        job.status = "ended"

    # -- shared ------------------------------------------------------------------------------------
    def _new_job(self, provider: str, prefix: str, lines: list, ids: list[str], size: int) -> FakeBatchJob:
        with self._lock:
            n = len(self._jobs)
            plan = self.faults
            fault = plan.jobs[n] if plan and n < len(plan.jobs) else None
            job = FakeBatchJob(id=f"{prefix}{self._id_prefix}{n + 1:06d}", provider=provider, custom_ids=ids,
                               created=time.monotonic(), input_bytes=size, fault=fault, lines=lines)
            self._jobs[job.id] = job
            return job

    def _retrieve(self, job_id: str, provider: str) -> tuple[int, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.provider != provider:
                return 404, f"no batch with id {job_id!r}"
            job.polls += 1
            if job.status == "in_progress" and not self._held and time.monotonic() >= job.created + self.latency:
                (self._answer_openai if provider == "openai" else self._answer_anthropic)(job)
            return 200, (self._openai_batch(job) if provider == "openai" else self._anthropic_batch(job))

    @staticmethod
    def _skipped(job: FakeBatchJob, i: int) -> str | None:
        """Whether line i never ran: every line of a cancelled job, the second half of an expired one."""
        if job.fault == "cancelled" or (job.fault == "expired" and i >= len(job.lines) // 2):
            return job.fault
        return None

    def _answer_line(self, provider: str, body: dict[str, Any], custom_id: str, job: FakeBatchJob) -> tuple[int, Any]:
        """(status, body) of one line, as the online endpoint would answer it (faults aside); status 0: the
        line expired unanswered."""
        server = self.server
        try:
            req = server._parse(provider, body)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            return 400, self._error_body(provider, 400, f"malformed request: {e}")
        rejection = server.reject(req) if server.reject else None
        if rejection:
            return rejection[0], self._error_body(provider, *rejection)
        fault = self._line_fault(req)
        if fault:
            job.line_faults[custom_id] = fault
        if fault == "malformed":
            return 200, ({"id": "chatcmpl-broken", "object": "chat.completion"} if provider == "openai"
                         else {"id": "msg_broken", "type": "message"})
        if fault in ("500", "429", "400"):
            return int(fault), self._error_body(provider, int(fault), f"injected batch line fault {fault}")
        if fault == "expired":
            return 0, None  # not run before the completion window closed
        try:
            return 200, server._openai_response(req) if provider == "openai" else server._anthropic_response(req)
        except Exception as e:  # noqa: BLE001 - a broken responder errors its line, as the online path 500s
            return 500, self._error_body(provider, 500, f"fake server error: {type(e).__name__}: {e}")

    def _line_fault(self, req: "FakeRequest") -> str | None:

        if self.line_fault is not None:
            kind = self.line_fault(req)
            if kind:
                return kind
        plan = self.faults
        if plan is None:
            return None
        with self._lock:
            if plan.always_fail_keys is not None and plan.always_fail_keys(req):
                return "500"
            kind = draw_fault(self._rng, LINE_FAULTS, plan.line_rates)
            return count_fault(kind, self._faults_by_key, req.key, plan.max_faults_per_key)

    @staticmethod
    def _error_body(provider: str, status: int, message: str) -> dict[str, Any]:

        openai_type, anthropic_type = ERROR_TYPES.get(status, ("invalid_request_error",) * 2 if status < 500
                                                       else ("server_error", "api_error"))
        if provider == "anthropic":
            return {"type": "error", "error": {"type": anthropic_type, "message": message}}
        return {"error": {"message": message, "type": openai_type, "param": None, "code": str(status)}}
