"""An SQLite index beside each append-only JSONL file of a run directory, so that memory stays bounded.

A run of a million prompts cannot hold its records to learn which ids are done, nor its request log to
answer a rerun from it. The index keeps, per row, only what lookups need -- id, byte offset and length in
the JSONL, a few small columns -- in `.NAME.index` (SQLite, WAL) beside `NAME.jsonl`; the record itself is
read back from its offset when it is needed.

The JSONL stays the source of truth. Rows are indexed right after their line is written (under the file's
lock, in file order), and committed at most once a second together with `indexed_bytes`, the end of the last
indexed line. Opening the index by the writer catches up: a kill -9 between a write and its commit leaves the
index behind the file, and the lines past `indexed_bytes` are indexed again; an index ahead of the file (a
power cut lost the file's tail), of another file (another inode: replaced or copied), or unreadable is
rebuilt from the JSONL. So the index can always be deleted; the next run rebuilds it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from caikit.errors import UserError

COMMIT_INTERVAL = 1.0  # seconds between commits: a crash loses at most this much indexing, never data
_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)"


def index_path(jsonl_path: Path) -> Path:
    return jsonl_path.with_name(f".{jsonl_path.name}.index")


class JsonlIndex:
    """The index of one JSONL file. Subclasses give the tables (`SCHEMA`) and how a row is indexed (`add`)."""

    SCHEMA = ""
    TABLES: tuple[str, ...] = ()

    def __init__(self, jsonl, *, writer: bool = True):
        self.jsonl = jsonl  # a store.JsonlFile
        self.path = index_path(jsonl.path)
        self.writer = writer
        self._lock = threading.RLock()
        self._in_txn = False
        self._last_commit = time.monotonic()
        self._end = 0  # end of the last indexed line
        self.db = self._connect()
        if writer:
            self.catch_up()

    # -- connection and catching up ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (0, 1):
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")  # readers (worker processes) never wait for the writer
                db.execute("PRAGMA synchronous=NORMAL")
                if self.writer:  # a reader (a worker process) never writes: the lock holder made the tables
                    db.executescript(_META + ";" + self.SCHEMA)
                db.execute("SELECT count(*) FROM meta").fetchone()
                return db
            except sqlite3.DatabaseError:
                if attempt or not self.writer:
                    raise UserError("the index is unreadable: delete it and rerun (it is rebuilt from the JSONL)",
                                    path=str(self.path)) from None
                for suffix in ("", "-wal", "-shm"):  # a corrupt index: the JSONL has everything, start again
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def _meta(self, name: str) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def catch_up(self) -> int:
        """Index the JSONL's lines past the last committed one (all of them when the index does not belong to
        this file as it is now). Returns how many lines were indexed."""
        with self._lock:
            self.jsonl.repair()
            try:
                st = os.stat(self.jsonl.path)
                size, inode = st.st_size, st.st_ino
            except FileNotFoundError:
                size, inode = 0, 0
            indexed = self._meta("indexed_bytes") or 0
            if self._meta("inode") != inode or indexed > size or not self._ends_a_line(indexed):
                self._reset(inode)
                indexed = 0
            self._end = indexed
            count = 0
            if size > indexed:
                self._begin()
                for row, offset, length in self._lines_from(indexed):
                    self.add(row, offset, length)
                    self._end = offset + length
                    count += 1
                self.commit()
            return count

    def _ends_a_line(self, offset: int) -> bool:
        if offset == 0:
            return True
        with open(self.jsonl.path, "rb") as fh:
            fh.seek(offset - 1)
            return fh.read(1) == b"\n"

    def _reset(self, inode: int) -> None:
        self.db.execute("BEGIN")
        for table in self.TABLES:
            self.db.execute(f"DELETE FROM {table}")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('indexed_bytes', 0)")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('inode', ?)", (inode,))
        self.db.execute("COMMIT")

    def _lines_from(self, start: int) -> Iterator[tuple[dict[str, Any], int, int]]:
        with open(self.jsonl.path, "rb") as fh:
            fh.seek(start)
            offset = start
            for raw in fh:
                if not raw.endswith(b"\n"):
                    return  # (repair() removed a torn tail; one appearing now is a writer's, not ours)
                if raw.strip():
                    try:
                        row = json.loads(raw)
                    except (ValueError, RecursionError):
                        raise UserError(f"corrupt JSON line at byte {offset} (the file was edited?)",
                                        path=str(self.jsonl.path)) from None
                    if not isinstance(row, dict):
                        raise UserError(f"expected a JSON object per line at byte {offset} (the file was edited?)",
                                        path=str(self.jsonl.path))
                    yield row, offset, len(raw)
                offset += len(raw)

    # -- writing ------------------------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_txn:
            self.db.execute("BEGIN")
            self._in_txn = True

    def appended(self, row: dict[str, Any], offset: int, length: int) -> None:
        """Called by JsonlFile.append, under its lock, right after the line was written."""
        with self._lock:
            if offset != self._end:  # someone else wrote to the file: index what is there, in order
                self.catch_up()
                return
            self._begin()
            self.add(row, offset, length)
            self._end = offset + length
            if time.monotonic() - self._last_commit >= COMMIT_INTERVAL:
                self.commit()

    def commit(self) -> None:
        with self._lock:
            if not self._in_txn:
                self._begin()
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('indexed_bytes', ?)", (self._end,))
            if self._end:  # the file exists now (an index made before its first line knew no inode)
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('inode', ?)", (os.stat(self.jsonl.path).st_ino,))
            self.db.execute("COMMIT")
            self._in_txn = False
            self._last_commit = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self.db is None:
                return
            if self.writer:
                self.commit()
            self.db.close()
            self.db = None

    def add(self, row: dict[str, Any], offset: int, length: int) -> None:
        raise NotImplementedError


class RecordIndex(JsonlIndex):
    """Records (traces, judgments) and failure rows: the latest row of each id, its prompt, its flags."""

    SCHEMA = """CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, offset INTEGER, length INTEGER,
                                                 label TEXT, truncated INTEGER, degenerate TEXT)"""
    TABLES = ("rows",)

    def add(self, row: dict[str, Any], offset: int, length: int) -> None:
        key = row.get("id")
        if not isinstance(key, str) or not key:
            raise UserError(f"a record has no 'id' (the file was edited?): {str(row)[:60]}", path=str(self.jsonl.path))
        degenerate = row.get("degenerate")
        self.db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?)",
                        (key, offset, length, row.get("prompt_id"), int(bool(row.get("truncated"))),
                         degenerate if isinstance(degenerate, str) and degenerate else None))

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM rows").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM rows WHERE id = ?", (key,)).fetchone() is not None

    def missing(self, items: Iterable[Any], key_of=lambda key: key, chunk: int = 500) -> Iterator[Any]:
        """Those of `items` (keys, or anything `key_of` gives the key of) with no row, in their order: asked in
        chunks, one query per 500, so no more than a chunk is held however many items stream through."""
        batch: list[Any] = []
        for item in items:
            batch.append(item)
            if len(batch) >= chunk:
                yield from self._missing(batch, key_of)
                batch = []
        yield from self._missing(batch, key_of)

    def _missing(self, batch: list[Any], key_of) -> list[Any]:
        if not batch:
            return []
        keys = [key_of(item) for item in batch]
        marks = ",".join("?" * len(keys))
        found = {k for (k,) in self.db.execute(f"SELECT id FROM rows WHERE id IN ({marks})", keys)}
        return [item for item, key in zip(batch, keys) if key not in found]

    def finalized(self) -> str | None:
        """What the derived files were last built from (see sft_data.finalize_generate), if recorded."""
        row = self.db.execute("SELECT value FROM meta WHERE name = 'finalized'").fetchone()
        return row[0] if row else None

    def set_finalized(self, signature: str) -> None:
        with self._lock:
            self._begin()
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('finalized', ?)", (signature,))
            self.commit()

    def labels(self) -> list[str | None]:
        """Every distinct prompt id of the latest rows."""
        return [label for (label,) in self.db.execute("SELECT DISTINCT label FROM rows")]

    def entries(self) -> Iterator[tuple[str, int, int, str | None]]:
        """(id, offset, length, label) of every latest row, in file order."""
        yield from self.db.execute("SELECT id, offset, length, label FROM rows ORDER BY offset")

    def counts(self) -> dict[str, Any]:
        """Rows, truncated rows, and degenerate rows by reason."""
        total, truncated = self.db.execute("SELECT count(*), coalesce(sum(truncated), 0) FROM rows").fetchone()
        by_reason = dict(self.db.execute("SELECT degenerate, count(*) FROM rows WHERE degenerate IS NOT NULL "
                                         "GROUP BY degenerate"))
        return {"rows": total, "truncated": truncated, "degenerate_by_reason": dict(sorted(by_reason.items()))}


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "requests")


class RequestIndex(JsonlIndex):
    """The request log: where each key's final answer is, and the usage of the rows made for each item."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, offset INTEGER, length INTEGER);"
              "CREATE TABLE IF NOT EXISTS usage (item TEXT PRIMARY KEY, "
              + ", ".join(f"{f} INTEGER" for f in USAGE_FIELDS) + ")")
    TABLES = ("done", "usage")
    _ADD_USAGE = ("INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(item) DO UPDATE SET "
                  + ", ".join(f"{f} = {f} + excluded.{f}" for f in USAGE_FIELDS))

    def add(self, row: dict[str, Any], offset: int, length: int) -> None:
        usage = row.get("usage") if isinstance(row.get("usage"), dict) else {}
        self.db.execute(self._ADD_USAGE, (row.get("item") or "", *(_count(usage.get(f)) for f in USAGE_FIELDS)))
        if row.get("final", True) and isinstance(row.get("key"), str):
            self.db.execute("INSERT OR IGNORE INTO done VALUES (?, ?, ?)", (row["key"], offset, length))

    def final(self, key: str) -> tuple[int, int] | None:
        """(offset, length) of the key's final answer, if the log holds one."""
        with self._lock:
            return self.db.execute("SELECT offset, length FROM done WHERE key = ?", (key,)).fetchone()

    def usage(self, item: str | None = None) -> dict[str, int]:
        """Summed usage of the rows made for `item` (None: every row)."""
        cols = ", ".join(f"coalesce(sum({f}), 0)" for f in USAGE_FIELDS)
        with self._lock:
            if item is None:
                values = self.db.execute(f"SELECT {cols} FROM usage").fetchone()
            else:
                values = self.db.execute(f"SELECT {cols} FROM usage WHERE item = ?", (item,)).fetchone()
        return dict(zip(USAGE_FIELDS, values))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
