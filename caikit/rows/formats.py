"""Files and directories -> raw rows, each with the place an error message can name.

Formats: JSON Lines (.jsonl, .ndjson, and .json holding one object per line, as `datasets`' to_json
writes), a JSON list (.json), CSV, each of these gzipped (.gz); parquet; a `datasets` save_to_disk
directory (a Dataset, or a DatasetDict whose split `--split` picks, "train" unless told); a caikit run
directory (the file its stage wrote for what is wanted); an export directory of `caikit export` (RUN/export
with sft/ and preferences/, or one of those, in datasets, parquet or jsonl format). Text may start with a
UTF-8 byte order mark. Rows are named by line (JSONL, CSV), item (JSON list) or row (parquet, datasets).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caikit.errors import UserError

FORMATS = ".jsonl, .json, .csv (each also .gz), .parquet, a `datasets` directory, a caikit run or export directory"
TEXT_TYPES = (".jsonl", ".ndjson", ".json", ".csv")
# What a caikit run directory holds for each view, in the order tried.
RUN_FILES = {"prompts": ("sft.jsonl", "traces.jsonl", "preferences.jsonl", "labels.jsonl"),
             "pairs": ("preferences.jsonl", "labels.jsonl"), "examples": ("sft.jsonl",),
             "scored": ("sft.jsonl",), "thumbs": ("thumbs.jsonl",), "guard": ("data.jsonl",)}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
EXPORT_DIRS = {"prompts": ("sft", "preferences"), "pairs": ("preferences",), "examples": ("sft",),
               "scored": ("sft",), "thumbs": (), "guard": ()}


@dataclass(frozen=True, slots=True)  # one per row read
class Place:
    """Where a row is: `path:line` for line-based text, `path: item N` / `path: row N` otherwise."""

    path: str
    line: int | None = None
    item: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else f"{self.path}: {self.item}" if self.item else self.path

    def error(self, message: str) -> UserError:
        if self.line:
            return UserError(message, path=self.path, line=self.line)
        return UserError(f"{self.item}: {message}" if self.item else message, path=self.path)


@dataclass
class Source:
    """One input as read: `given` is what the user typed, `file` what was read (a file inside a run or
    export directory, or the directory of a `datasets` dataset), `split` the DatasetDict split used."""

    given: str
    file: str
    rows: list[tuple[Place, Any]] | JsonLines = field(default_factory=list)  # iterate; len() after
    columns: list[str] | None = None  # tabular formats (CSV, parquet, datasets): the header
    split: str | None = None


class _JSONError(ValueError):
    """One line saying why a JSON text is unusable; `lineno` where the decoder knows it."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


def loads(text: str) -> Any:
    """json.loads whose every failure is a _JSONError: syntax, integers longer than Python converts
    (ValueError, not JSONDecodeError), nesting deeper than the decoder's stack (RecursionError), and
    lone UTF-16 surrogates ("\\ud800"), which decode but can never be written back as UTF-8."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _JSONError(e.msg, e.lineno) from None
    except RecursionError:
        raise _JSONError("nested too deeply") from None
    except ValueError as e:
        raise _JSONError(str(e).split(":")[0]) from None
    if "\\u" not in text or not _SURROGATE_ESCAPE.search(text):
        return value  # (a lone surrogate can only come from an escape: the text itself was decoded as UTF-8)
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _JSONError("a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)") from None
    except (ValueError, RecursionError):  # nesting the encoder cannot walk back
        raise _JSONError("nested too deeply") from None
    return value


def open_source(path: str | Path, view: str, noun: str, split: str | None = None) -> Source:
    """Every row of `path` (a file or a directory) for a view ("prompts", "pairs", "examples", "scored",
    "thumbs": it picks the file inside a run or export directory). `noun` names the rows in the
    empty-file error ("no prompts"). Raises UserError naming the path for anything unreadable."""
    given = str(path)
    target = Path(given).expanduser()
    if not given.strip():
        raise UserError(f"no input given (a file or directory: {FORMATS})")
    if not target.exists():
        raise UserError("no such file", path=given)
    source = _directory(given, target, view, noun, split) if target.is_dir() else _file(given, target, noun)
    source.given = given
    return source


def _directory(given: str, target: Path, view: str, noun: str, split: str | None) -> Source:
    if (target / "dataset_dict.json").exists() or (target / "state.json").exists():
        return _saved_dataset(given, target, split)
    for name in RUN_FILES[view]:  # a caikit run directory
        if (target / name).is_file():
            return _file(str(Path(given) / name), target / name, noun)
    wanted = split or "train"
    data_files = sorted(p for p in target.iterdir() if p.is_file() and _data_file(p.name))
    for candidate in data_files:  # an export directory in parquet or jsonl format: one file per split
        if _stem(candidate.name) == wanted:
            return _file(str(Path(given) / candidate.name), candidate, noun)
    for name in EXPORT_DIRS[view]:  # an export root: RUN/export/{sft,preferences}
        if (target / name).is_dir():
            return _directory(str(Path(given) / name), target / name, view, noun, split)
    holds = f"; it holds {', '.join(p.name for p in data_files)}" if data_files else ""
    raise UserError(f"no {' or '.join(RUN_FILES[view])} (caikit run directory), no `datasets` dataset and no "
                    f"{wanted}.jsonl / {wanted}.parquet (export directory, --split {wanted}) here{holds}", path=given)


def _data_file(name: str) -> bool:
    name = name.lower()
    return name.endswith(".parquet") or any(name.endswith(t) or name.endswith(t + ".gz") for t in TEXT_TYPES)


def _stem(name: str) -> str:
    name = name[:-3] if name.lower().endswith(".gz") else name
    return name.rsplit(".", 1)[0]


def _saved_dataset(given: str, target: Path, split: str | None) -> Source:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(target))
    except Exception as e:  # datasets raises many types for a damaged directory
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read `datasets` directory: {reason}", path=given) from None
    used = None
    if isinstance(data, DatasetDict):
        used = split or "train"
        if used not in data:
            raise UserError(f"no split '{used}' in this DatasetDict (splits: {', '.join(data)}); choose one with "
                            "--split", path=given)
        splits = ", ".join(data)
        data = data[used]
        print(f"{given}: reading split '{used}' ({len(data)} rows; splits here: {splits})", file=sys.stderr, flush=True)
    elif split and split != "train":
        raise UserError(f"a single dataset without splits: --split {split} does not apply", path=given)
    assert isinstance(data, Dataset)
    rows = [(Place(given, item=f"row {i}"), row) for i, row in enumerate(data.to_list(), 1)]
    return Source(given, given, rows, list(data.column_names), used)


def _file(label: str, path: Path, noun: str) -> Source:
    if not path.is_file():
        raise UserError("not a file", path=label)
    name = path.name.lower()
    gz = name.endswith(".gz")
    suffix = Path(name[:-3] if gz else name).suffix
    if suffix == ".parquet" and not gz:
        return _parquet(label, path)
    if suffix not in TEXT_TYPES:
        raise UserError(f"unsupported file type '{path.name}' (use {FORMATS})", path=label)
    if suffix in (".jsonl", ".ndjson"):
        lines = JsonLines(label, path, gz)
        if lines.blank():
            raise UserError(f"empty file: no {noun}", path=label)
        return Source(label, label, lines)
    try:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        text = raw.decode("utf-8-sig")  # a byte order mark is not data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"cannot read {'gzip' if gz else 'file'}: {e}", path=label) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", path=label) from None
    if not text.strip():
        raise UserError(f"empty file: no {noun}", path=label)
    if suffix == ".csv":
        return _csv(label, text)
    if suffix == ".json" and text.lstrip().startswith("["):
        return Source(label, label, _json_list(label, text))
    if suffix == ".json":
        try:  # one object (pretty-printed or not) is a one-row file; two or more are JSON Lines
            data = loads(text)
        except _JSONError:
            data = None
        else:
            if not isinstance(data, dict):
                raise UserError(f"expected a JSON list or JSON Lines of objects, got {type(data).__name__}",
                                path=label)
            return Source(label, label, [(Place(label, line=1), data)])
    return Source(label, label, list(_json_lines(label, enumerate(text.split("\n"), 1))))  # not splitlines: U+2028


class JsonLines:
    """The rows of a JSON Lines file (gzipped or not), parsed as the file is read: a million prompts are never in
    memory as text and as rows at once. Iterable more than once (each pass reads the file); len() counts rows."""

    def __init__(self, label: str, path: Path, gz: bool):
        self.label, self.path, self.gz = label, path, gz
        self._count: int | None = None

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            with (gzip.open(self.path, "rb") if self.gz else open(self.path, "rb")) as fh:
                for number, raw in enumerate(fh, 1):  # split at b"\n" only: JSON may hold U+2028
                    try:
                        yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM is not data
                    except UnicodeDecodeError:
                        raise UserError("not UTF-8 text", path=self.label, line=number) from None
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"cannot read {'gzip' if self.gz else 'file'}: {e}", path=self.label) from None

    def blank(self) -> bool:
        return not any(line.strip() for _, line in self._lines())

    def __iter__(self) -> Iterator[tuple[Place, Any]]:
        count = 0
        for count, placed in enumerate(_json_lines(self.label, self._lines()), 1):
            yield placed
        self._count = count

    def __len__(self) -> int:
        if self._count is None:
            for _ in self:
                pass
        return self._count or 0


def _json_lines(label: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[Place, Any]]:
    """The rows of numbered JSON Lines; blank lines are skipped, an invalid one is an error naming its line."""
    for number, line in lines:
        if line.strip():
            try:
                yield Place(label, line=number), loads(line)
            except _JSONError as e:
                raise UserError(f"invalid JSON: {e}", path=label, line=number) from None


def _json_list(label: str, text: str) -> list[tuple[Place, Any]]:
    try:
        data = loads(text)
    except _JSONError as e:
        raise UserError(f"invalid JSON: {e}", path=label, line=e.lineno) from None
    if not isinstance(data, list):
        raise UserError(f"expected a JSON list of objects or strings, got {type(data).__name__}", path=label)
    return [(Place(label, item=f"item {i}"), row) for i, row in enumerate(data, 1)]


def _csv(label: str, text: str) -> Source:
    # The file is in memory already: let a cell be as long as the file (csv's default cap is 128 KiB).
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        columns = list(reader.fieldnames or [])
        for row in reader:
            rows.append((Place(label, line=reader.line_num), row))
    except csv.Error as e:
        raise UserError(f"invalid CSV: {e}", path=label, line=reader.line_num or 1) from None
    return Source(label, label, rows, columns)


def _parquet(label: str, path: Path) -> Source:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read parquet: {reason}", path=label) from None
    rows = [(Place(label, item=f"row {i}"), row) for i, row in enumerate(table.to_pylist(), 1)]
    return Source(label, label, rows, list(table.column_names))
