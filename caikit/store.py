"""Append-only JSONL files that survive kill -9, and the run directory that holds them.

Writes are one `write()` of a whole line, flushed to the OS per record (which is what survives a
kill -9 of the process), and fsync'd to disk at most every `fsync_interval` seconds and on close (what
survives a power cut), so the event loop is not stalled by one disk sync per record. A process killed
mid-write leaves at most one torn last line: readers drop it (and `JsonlFile.repair` truncates it away) instead
of failing. Derived files (sft.jsonl, failures.jsonl, usage.json) are rewritten atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from caikit.errors import UserError

LINE = json.JSONEncoder(ensure_ascii=False)  # json.dumps(row, ensure_ascii=False) without a new encoder a row


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Writes to `path` inside: an OSError they raise names `path`. A write() on a full disk raises ENOSPC with
    no file name, so the one-line error would otherwise not say which file failed."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from None
        raise


class JsonlFile:
    """One append-only JSONL file."""

    def __init__(self, path: str | Path, *, fsync_interval: float = 1.0):
        self.path = Path(path)
        self.fsync_interval = fsync_interval
        self._lock = threading.Lock()
        self._fh = None
        self._last_sync = 0.0
        self._end = 0  # the file's size while we append to it: the next line's offset
        self._reader = None
        self.index = None  # an index.JsonlIndex told of every line appended (see indexed())

    def indexed(self, index_class) -> "JsonlFile":
        """Keep an index of this file (caikit.index), caught up now and told of every append."""
        if self.index is None:
            self.index = index_class(self)
        return self.index

    def repair(self) -> int:
        """Drop a torn (unterminated or unparseable) last line left by a crash. Returns bytes dropped."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb+") as fh:  # only the tail is read: a finished run's log may be gigabytes
            size = end = fh.seek(0, os.SEEK_END)
            if not size:
                return 0
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                end = _rfind_newline(fh, size) + 1  # 0 when the only line is torn
            else:
                last_start = _rfind_newline(fh, size - 1) + 1
                fh.seek(last_start)
                try:
                    json.loads(fh.read(size - last_start))
                except ValueError:
                    end = last_start
            if end < size:
                fh.truncate(end)
            return size - end

    def read(self) -> list[dict[str, Any]]:
        return list(self.iter())

    def iter(self) -> Iterator[dict[str, Any]]:
        """The rows, read a line at a time (a run's log may be gigabytes), of the file as it was when the
        iteration began: rows appended meanwhile are not read."""
        for _, _, row in self.iter_placed():
            yield row

    def iter_placed(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(offset, length, row) of each row, as `iter` reads them: what `read_at` reads a row back from."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            lineno = 0
            while (left := end - (offset := fh.tell())) > 0:
                raw = fh.readline(left)
                lineno += 1
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (ValueError, RecursionError):
                    if not fh.read(end - fh.tell()).strip():  # torn tail from a crash: not an error
                        return
                    raise UserError("corrupt JSON line (not the last one; the file was edited?)",
                                    path=str(self.path), line=lineno) from None
                if not isinstance(row, dict):
                    raise UserError(f"expected a JSON object per line, got {type(row).__name__} (the file was "
                                    "edited?)", path=str(self.path), line=lineno)
                yield offset, len(raw), row

    def append(self, record: dict[str, Any]) -> None:
        """Write one line, or raise OSError (a full disk) leaving the file as it was before this call."""
        self.append_line((LINE.encode(record) + "\n").encode("utf-8"), record)

    def append_line(self, line: bytes, record: dict[str, Any]) -> None:
        """Append `line` (`record` serialised, ending in a newline), then tell the index. On OSError (a full
        disk) the file is left as it was before this call: the handle is unbuffered, so a failed write leaves
        nothing pending in a buffer, and the torn tail a partial write may leave is cut off (`repair`)."""
        with self._lock, naming(self.path):
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.repair()
                self._fh = open(self.path, "ab", buffering=0)
                self._end = self._fh.seek(0, os.SEEK_END)
            offset = self._end
            try:
                view = memoryview(line)
                while view:
                    view = view[self._fh.write(view):]
            except OSError:
                self._fh.close()
                self._fh = None
                try:
                    self.repair()  # a partial line is dropped now, so a later append starts on a line of its own
                except OSError:
                    pass  # (then the next append repairs it before writing)
                raise
            self._end += len(line)
            if self.index is not None:
                self.index.appended(record, offset, len(line))
            now = time.monotonic()
            if now - self._last_sync >= self.fsync_interval:
                os.fsync(self._fh.fileno())
                self._last_sync = now

    def read_at(self, offset: int, length: int) -> dict[str, Any]:
        """The row whose line starts at byte `offset` (an index's pointer)."""
        with self._lock:
            if self._reader is None:
                self._reader = open(self.path, "rb")
            self._reader.seek(offset)
            raw = self._reader.read(length)
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise UserError(f"no JSON object at byte {offset} (the file changed under its index?)", path=str(self.path))
        return row

    def close(self) -> None:
        with self._lock, naming(self.path):
            if self._fh is not None:
                try:
                    os.fsync(self._fh.fileno())
                finally:
                    self._fh.close()
                    self._fh = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self.index is not None:
            self.index.close()
            self.index = None


def _rfind_newline(fh, before: int, block: int = 1 << 16) -> int:
    """The offset of the last b"\\n" before byte `before` of `fh`, or -1: read backwards a block at a time."""
    while before > 0:
        start = max(0, before - block)
        fh.seek(start)
        at = fh.read(before - start).rfind(b"\n")
        if at >= 0:
            return start + at
        before = start
    return -1


def temporary_path(path: Path) -> Path:
    """Where to write `path` before renaming it into place: one name per process, since two may write one file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def clear_stale_temporaries(out: Path) -> None:
    """Remove the hidden copies (`.OUT.merging-PID`, `.OUT.old-PID`) left by merges that were killed (caikit
    merge): a merge of many rows leaves a copy as large as its output. Ours, under the lock, and those of live
    processes stay."""
    for stale in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = stale.name[len(out.name) + 2:].rpartition("-")
        if kind in ("merging", "old") and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Replace `path` with `rows` in one rename: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    n = 0
    try:
        with naming(path), open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(LINE.encode(row) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:  # a full or read-only disk: the old file stays, no half-written temporary
        tmp.unlink(missing_ok=True)
        raise
    return n


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` in one rename; a failed write leaves the old file and no temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with naming(path):
            tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:  # a full or read-only disk: the old file stays, no half-written temporary
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    except (ValueError, RecursionError):  # not UTF-8, an over-long integer, nesting too deep
        raise UserError("invalid JSON (the file was edited?)", path=str(path)) from None
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", path=str(path)) from None


def latest_by_id(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Last record per id (appends may repeat an id only when a record was superseded)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.get("id") if isinstance(row, dict) else None
        if not isinstance(key, str) or not key:
            raise UserError(f"a record has no 'id' (the file was edited?): {str(row)[:60]}")
        out[key] = row
    return out
