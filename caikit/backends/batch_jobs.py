"""What the batch path keeps about jobs and rows: the provider-neutral result types, request ids, and
`batches.jsonl` (JobLog), the run directory's record of every submission, so a rerun can poll, adopt
or resubmit without paying twice. The flow that uses them is in batch.py."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caikit.backends.base import BackendError, Completion, Usage
from caikit.records import canonical_json, now_iso
from caikit.store import JsonlFile


@dataclass
class RowResult:
    """What a batch said about one request: the provider's parsed response, or why there is none."""

    response: Any = None  # ChatCompletion (OpenAI) / Message (Anthropic) when the request succeeded
    error: str = ""
    retryable: bool = True  # False: the provider rejected the request itself (4xx); a retry would fail alike


@dataclass
class JobState:
    """One poll of a batch job."""

    job_id: str
    done: bool  # results can be downloaded (ended, completed, failed, expired or cancelled)
    status: str  # the provider's word for it
    counts: dict[str, int] = field(default_factory=dict)
    raw: Any = None  # the provider's batch object


class IncompleteResults(ValueError):
    """A download held fewer result lines than the job reports: fetched again (retryable)."""


class OutcomeUnknown(BackendError):
    """A create may or may not have made a batch, and it cannot be told which: never re-sent blindly.
    Its rows fail retryably; a rerun looks the submission up again (OpenAI) before creating anything."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


def check_readable(completions: list[Completion], usage: Usage) -> None:
    """Raise ValueError unless an answer reads as the online path would use it (texts, counts)."""
    if not all(isinstance(c.text, str) and isinstance(c.finish_reason, (str, type(None))) for c in completions):
        raise ValueError("a completion's text is not a string")
    if not all(isinstance(v, int) and v >= 0 for v in usage.to_dict().values()):
        raise ValueError("usage counts are not whole numbers")


def custom_id(kind: str, model: str, body: dict[str, Any]) -> str:
    """Stable id of one request (<= 64 chars of [A-Za-z0-9_-], as both providers require)."""
    digest = hashlib.sha256(canonical_json([kind, model, body]).encode("utf-8")).hexdigest()
    return f"ck-{kind}-{digest[:48]}"


class JobLog:
    """batches.jsonl: the jobs submitted (job id, provider, custom ids) and what each returned.

    `usable[custom_id]` is the latest stored job that may still answer that request: submitted, and
    not collected as failed for it. `pending[nonce]` is a "submitting" intent with neither a "submitted"
    nor an "abandoned" line: its batch may exist on the provider without us knowing its id."""

    def __init__(self, path: Path, provider: str):
        self.file = JsonlFile(path)
        self.provider = provider
        self.usable: dict[str, str] = {}
        self.custom_ids: dict[str, list[str]] = {}  # job id -> its requests
        self.pending: dict[str, dict[str, Any]] = {}  # nonce -> its intent row
        for row in self.file.iter():
            self._apply(row)

    def _apply(self, row: dict[str, Any]) -> None:
        if row.get("provider") != self.provider:
            return
        nonce = row.get("nonce")
        if isinstance(nonce, str):
            if row.get("event") == "submitting":
                self.pending[nonce] = row
            elif row.get("event") in ("submitted", "abandoned"):
                self.pending.pop(nonce, None)
        job_id = row.get("job_id")
        if not isinstance(job_id, str):
            return
        if row.get("event") == "submitted":
            ids = row.get("custom_ids") if isinstance(row.get("custom_ids"), list) else []
            ids = [c for c in ids if isinstance(c, str)]
            self.custom_ids[job_id] = ids
            self.usable.update(dict.fromkeys(ids, job_id))
        elif row.get("event") == "collected":
            failed = self.custom_ids.get(job_id, []) if row.get("status") == "unavailable" \
                else row.get("failed_custom_ids")
            for cid in failed if isinstance(failed, list) else []:
                if self.usable.get(cid) == job_id:
                    del self.usable[cid]

    def submitting(self, nonce: str, ids: list[str]) -> None:
        """The intent, flushed before anything is uploaded: a rerun finds (or gives up) this submission."""
        row = {"event": "submitting", "nonce": nonce, "provider": self.provider, "requests": len(ids),
               "started_at": now_iso(), "started_unix": round(time.time(), 3), "custom_ids": ids}
        self.file.append(row)
        self._apply(row)

    def abandoned(self, nonce: str, reason: str) -> None:
        row = {"event": "abandoned", "nonce": nonce, "provider": self.provider, "reason": reason,
               "abandoned_at": now_iso()}
        self.file.append(row)
        self._apply(row)

    def submitted(self, job_id: str, ids: list[str], **info: Any) -> None:
        row = {"event": "submitted", "job_id": job_id, "provider": self.provider, "requests": len(ids),
               "submitted_at": now_iso(), **info, "custom_ids": ids}
        self.file.append(row)  # flushed: a kill -9 from here on polls this job again instead of paying twice
        self._apply(row)

    def collected(self, job_id: str, status: str, counts: dict[str, int], failed: list[str]) -> None:
        row = {"event": "collected", "job_id": job_id, "provider": self.provider, "status": status,
               "counts": counts, "collected_at": now_iso(), "failed_custom_ids": failed}
        self.file.append(row)
        self._apply(row)
