"""The union of one JSONL file of a merge's inputs, kept as places, not rows.

For each id the merge keeps the first input's copy (the last row of that id within the input: a superseded
record). It holds where the kept row is -- the input, the byte offset and length of its line -- and reads the
row back when the merged file is written, so a merge of a million records holds a million ids and places,
not a million records. A copy of an id found in a later input is a duplicate; with `compare`, one whose
content differs (timestamps, backend address and token counts aside) is a conflict, and both inputs are named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from caikit.store import JsonlFile

# How a record was made rather than what it says: ignored when two copies of one id are compared.
VOLATILE_FIELDS = ("created_at", "backend", "usage")


class PlacedRows(Mapping):
    """id -> row, read from its input's file when asked (iterating `values()` reads each row once)."""

    def __init__(self, files: list[JsonlFile]):
        self.files = files
        self.where: dict[str, tuple[int, int, int]] = {}  # id -> (input index, offset, length)

    def __getitem__(self, key: str) -> dict[str, Any]:
        index, offset, length = self.where[key]
        return self.files[index].read_at(offset, length)

    def __contains__(self, key: object) -> bool:
        return key in self.where

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


@dataclasses.dataclass
class MergedRows:
    """Rows of one file across the inputs: first copy of each id kept, in input order."""

    rows: PlacedRows
    origin: dict[str, Path] = dataclasses.field(default_factory=dict)
    duplicates: int = 0
    conflicts: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        for jsonl in self.rows.files:
            jsonl.close()


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in {*a, *b} if k not in VOLATILE_FIELDS and a.get(k) != b.get(k))


def union(inputs: list[tuple[Path, JsonlFile, Callable[[], Iterable[tuple[int, int, dict[str, Any]]]]]], *,
          key: str = "id", compare: bool = False) -> MergedRows:
    """The rows of one file over the inputs: (input directory, its JsonlFile, its (offset, length, row) reader,
    which checks each row) each."""
    merged = MergedRows(PlacedRows([jsonl for _, jsonl, _ in inputs]))
    where = merged.rows.where
    for index, (path, jsonl, placed) in enumerate(inputs):
        latest: dict[str, tuple[int, int]] = {}
        for offset, length, row in placed():
            latest[row[key]] = (offset, length)
        for k, (offset, length) in latest.items():
            if k not in where:
                where[k], merged.origin[k] = (index, offset, length), path
                continue
            merged.duplicates += 1
            differs = differing_fields(merged.rows[k], jsonl.read_at(offset, length)) if compare else []
            if differs:
                merged.conflicts.append({"id": k, "kept": str(merged.origin[k]), "dropped": str(path),
                                         "fields": differs})
    return merged
