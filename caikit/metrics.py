"""Per-step training metrics as JSON lines: `{"step": int, "time": unix seconds, <name>: number, ...}`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers; NaN/inf -> None (JSON has no NaN)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Appends one JSON object per `log` call to `out_dir/metrics.jsonl`, flushed at once.

    resume=False starts a fresh file; resume=True keeps rows up to the resumed step (later rows, from a
    run that went past its last checkpoint, are dropped on the first `log`). writes=False (every process of
    a multi-process run but the main one) touches no file: `log` only returns the row.
    """

    def __init__(self, out_dir: str | Path, resume: bool = False, writes: bool = True, tracker=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tracker = tracker if writes else None  # caikit.trackers: each row also goes there (--report-to)
        self._resume, self._writes = resume, writes
        self._file = None
        self.first_row: dict[str, Any] = {}  # facts about the run (e.g. what data it read) for the next row only
        if writes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if writes and not resume:
            self.path.write_text("", encoding="utf-8")

    def _open(self, first_step: int):
        if self._resume and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) < first_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, **metrics: Any) -> dict:
        row = {"step": int(step), "time": round(time.time(), 3), **{k: _plain(v) for k, v in metrics.items()},
               **self.first_row}
        self.first_row = {}
        if not self._writes:
            return row
        from caikit.store import naming

        with naming(self.path):  # a full disk: the one-line error names metrics.jsonl
            if self._file is None:
                self._open(step)
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self.tracker is not None:
            self.tracker.log(row)
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a metrics.jsonl (skipping a torn last line)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
