"""A run directory: every file name caikit writes, the one identity check, config.yaml and run.json written
once, and the lock that keeps a second process out.

    with RunDir.open(cfg.out, "generate", identity, cfg, command="generate") as run:
        traces = run.jsonl(run.TRACES)
        ...

`open` refuses a path that is a file, takes an advisory `fcntl` lock on `.caikit.lock` inside the directory
(the kernel releases it when the process dies, kill -9 included, so a stale lock never blocks a rerun; a
second process is refused at once, naming the holder's PID), refuses records of another stage or of other
settings (`run.json` holds the stage and the identity: the settings that make its records), and writes the
scrubbed `config.yaml` and `run.json`. The run id is a hash of the identity, so shards and reruns agree on it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

from caikit.config import save_config
from caikit.errors import UserError
from caikit.records import canonical_json, idempotency_key
from caikit.store import JsonlFile, read_json, write_json_atomic

LOCK_NAME = ".caikit.lock"


class DirLock:
    """An advisory exclusive lock on `path` (a file), held until `release` or the process ends."""

    def __init__(self, path: Path, command: str, *, remove: bool = False,
                 why: str = "a second process would send every request again", names: Path | None = None):
        self.path = path
        self.remove = remove  # delete the lock file on release, so a finished run leaves none behind
        self._fd: int | None = None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"in use by {holder}; wait for it to finish or stop it ({why})",
                                path=str(names or path.parent)) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} (caikit {command}, since {time.strftime('%H:%M:%S')})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if self.remove:  # still ours: a second process opening it now fails its non-blocking flock
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def lock_directory(path: str | Path, command: str, *, beside: bool = False) -> DirLock:
    """Lock an output directory for `command` (creating it). `beside`: lock `.NAME.lock` next to it instead,
    for outputs that are replaced by a rename (merge)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("exists and is not a directory: choose another --out", path=str(path))
    if beside:
        path.parent.mkdir(parents=True, exist_ok=True)
        return DirLock(path.parent / f".{path.name}.lock", command, remove=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the directory: {e.strerror}", path=str(path)) from None
    return DirLock(path / LOCK_NAME, command, remove=True)


class RunDir:
    """One stage's output directory. File names live here and nowhere else."""

    CONFIG = "config.yaml"
    RUN = "run.json"
    USAGE = "usage.json"
    STATS = "stats.json"
    REQUESTS = "requests.jsonl"
    POLICY_REQUESTS = "policy_requests.jsonl"
    BATCHES = "batches.jsonl"
    FAILURE_LOG = "failures.log.jsonl"
    FAILURES = "failures.jsonl"
    TRACES = "traces.jsonl"
    SFT = "sft.jsonl"
    JUDGMENTS = "judgments.jsonl"
    PREFERENCES = "preferences.jsonl"
    CALIBRATION = "calibration"  # sub-directory: the gate's human-labelled pairs, judged
    GATE = "gate.json"
    PROBE = "probe.json"
    MERGE = "merge.json"
    REPORT = "report.json"
    FLAG_CHECKS = "flag_checks.jsonl"  # constitution test: critique cases, asked as yes/no questions
    PRINCIPLE_STATS = "principle_stats.json"
    ANSWERS = "answers.jsonl"
    SAMPLES = "samples.jsonl"
    STATE = "state.json"
    EXPORT = "export"

    def __init__(self, path: str | Path, *, stage: str = "", identity: dict[str, Any] | None = None,
                 lock: DirLock | None = None):
        self.path = Path(path)
        self.stage = stage
        self.identity = identity or {}
        self._lock = lock

    @classmethod
    def open(cls, path: str | Path, stage: str, identity: dict[str, Any], cfg: Any, *, shard: str = "",
             command: str | None = None) -> "RunDir":
        """Lock, check and set up `path` for `stage` with `identity`; see the module docstring."""
        path = Path(path)
        check_identity(path, stage, identity)  # first with nothing written: a refused run leaves no trace
        lock = lock_directory(path, command or stage)
        try:
            check_identity(path, stage, identity)  # again under the lock: another run may have just started
            run = cls(path, stage=stage, identity=identity, lock=lock)
            save_config(cfg, run.file(cls.CONFIG))
            from caikit import __version__

            write_json_atomic(run.file(cls.RUN), {"stage": stage, "identity": identity, "shard": shard,
                                                  "caikit_version": __version__, **transport_of(cfg)})
        except BaseException:
            lock.release()
            raise
        return run

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def run_id(self) -> str:
        return run_id_of(self.identity)

    def file(self, name: str) -> Path:
        return self.path / name

    def jsonl(self, name: str) -> JsonlFile:
        return JsonlFile(self.path / name)

    def read_json(self, name: str, default: Any = None) -> Any:
        return read_json(self.path / name, default)

    def write_json(self, name: str, obj: Any) -> None:
        write_json_atomic(self.path / name, obj)

    def sub(self, name: str) -> "RunDir":
        """A directory inside this one (e.g. the gate's calibration judgments), under the same lock."""
        return RunDir(self.path / name, stage=self.stage, identity=self.identity)


def transport_of(cfg: Any) -> dict[str, Any]:
    """How an API backend's requests travel (--http-client), for run.json; nothing for an in-process model."""
    provider = getattr(cfg, "provider", None)
    if not getattr(cfg, "http_client", "") or provider is None or provider().in_process:
        return {}
    return {"http_client": cfg.http_client}


def run_id_of(identity: dict[str, Any]) -> str:
    """The run id: 12 hex characters of the identity's hash (the same for every shard and rerun)."""
    return idempotency_key("run", canonical_json(identity))[-12:]


def check_identity(path: str | Path, stage: str, identity: dict[str, Any]) -> None:
    """Refuse to mix records of another stage, or of other settings, in one run directory.

    Keys not in `identity` (such as --limit) may change between runs."""
    old = read_json(Path(path) / RunDir.RUN) or {}
    if not isinstance(old, dict):
        raise UserError("run.json is not a JSON object (the file was edited?)", path=str(path))
    if old.get("stage") not in (None, stage):
        raise UserError(f"holds a '{old['stage']}' run; use a new --out directory", path=str(path))
    previous = old.get("identity") or {}
    changed = [k for k in identity if k in previous and previous[k] != identity[k]]
    if changed:
        raise UserError(f"holds a run with other settings ({', '.join(changed)} changed); "
                        "use a new --out directory", path=str(path))


def check_members(path: str | Path, allowed: set[str], files: tuple[str, ...], field: str, *, what: str,
                  locked: bool = True) -> None:
    """Refuse a run directory whose records (`files`, by `field`) name items outside `allowed`: the items a
    run is over belong to it as much as its settings do (a generate run's prompt set: another prompt file
    would mix two sets in one directory).

    A file's prompt ids are read from its on-disk index (caikit.index keeps each record's `prompt_id`), so a
    finished run of any size is checked without reading a record. Before the run's lock is held
    (`locked=False`: the early check, before a server is probed) an index is only read, never written, and a
    file without one yet is read row by row."""
    from caikit.index import RecordIndex, index_path

    foreign: set[str] = set()
    for name in files:
        log = JsonlFile(Path(path) / name)
        if not log.path.exists():
            continue
        if field != "prompt_id" or (not locked and not index_path(log.path).exists()):
            foreign |= {str(row.get(field)) for row in log.iter() if row.get(field) not in allowed}
            continue
        index = RecordIndex(log, writer=locked)
        try:
            foreign |= {str(label) for label in index.labels() if label not in allowed}
        finally:
            index.close()
    if foreign:
        raise UserError(f"holds records of {len(foreign)} {what} (another prompt set); use a new --out directory",
                        path=str(path))


def note(command: str, message: str) -> None:
    """One line for the person at the terminal (stderr: stdout stays for results)."""
    print(f"caikit {command}: {message}", file=sys.stderr, flush=True)
