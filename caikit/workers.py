"""`--workers N`: one stage over N worker processes that share one run directory (generate, judge, eval judge, eval).

One process cannot send more than about a core's worth of requests; a vLLM node takes more. The command's
own process keeps the run directory's lock and is the only writer of its files; it splits the prompts still
to do among N spawned workers (every N-th one each) and gives each worker 1/N of the requests in flight.
A worker runs the stage as one process would (the same Runner, CachingBackend, retries and limiter), but
its file writes -- request-log rows, records, failure rows -- travel over a socket to the lock holder, which
appends them to the JSONL files and their indexes in the order they were sent. A worker reads finished
answers (replayed on a rerun) from the files and the index directly (SQLite readers never wait for the
writer).

Why nothing is lost or paid twice: a record is sent after the request rows it was built from, on the same
ordered stream, so the files never hold a record whose requests are missing; a row still in a socket (or in
the worker's buffer of the current event-loop turn) when a process dies is a request the rerun sends again, as
a request in flight at a kill -9 of one process is.
The lock holder recomputes each record's usage from the request index it keeps, so a record's usage is
exactly its rows', as in one process. A worker that dies leaves its unfinished prompts for the next run;
the others finish theirs, the derived files are written, and the command exits 1 (rerun to finish). A worker
that hits a run-stopping error (a refused key) says so; the lock holder stops the others and the command exits 2.

A command hands `run_over_workers` its items still to do and a `StageJob`: what each worker needs to run the
stage (its backend options, the record files, and `build(ask, item, key)`, a module-level function or a
partial of one, so that it travels to a spawned process). Everything computed over the whole run -- pending
items, the cost estimate, a judge's quality gate, statistics, cards -- stays in the lock holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

from caikit.errors import UserError
from caikit.store import LINE, JsonlFile

STREAM_LIMIT = 1 << 28  # the longest message (one record) a worker may send


@dataclass
class WorkerTotals:
    done: int = 0
    failed: int = 0
    died: list[str] = dataclasses.field(default_factory=list)  # one line per worker that ended without saying so
    stopped: str | None = None  # a run-stopping error a worker hit (the first)


class RemoteJsonl(JsonlFile):
    """A worker's view of one of the run's JSONL files: reads are local, appends go to the lock holder."""

    def __init__(self, path, kind: str, channel: "Channel"):
        super().__init__(path)
        self.kind, self.channel = kind, channel

    def append(self, record: dict[str, Any]) -> None:
        self.channel.send(self.kind, record)

    def indexed(self, index_class):
        if self.index is None:
            self.index = index_class(self, writer=False)  # the lock holder keeps it caught up
        return self.index


class Channel:
    """A worker's side of its socket: messages `kind<TAB>JSON<NEWLINE>`, in the order sent. A row's JSON is the
    very line the lock holder appends to its file, so the lock holder parses it (for the index) but does not
    encode it again. The messages of one turn of the event loop leave together in one sendall at the end of
    the turn (a sendall a row cost a worker more CPU than anything but JSON); outside an event loop, at once."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(True)
        self.sock = sock
        self._pending: list[bytes] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def send(self, kind: str, body: dict[str, Any]) -> None:
        self._pending.append(f"{kind}\t{LINE.encode(body)}\n".encode("utf-8"))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_on = None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self.sock.sendall(data)


def split_in_flight(total: int, workers: int) -> int:
    """Each worker's share of the requests in flight."""
    return max(1, math.ceil(total / workers))


def spawn(target, args_of, n: int):
    """Start `n` processes running target(*args_of(i), sock) (spawned: a fresh interpreter, no inherited
    threads or event loop); returns [(process, the lock holder's end of its socket)]."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    started = []
    for i in range(n):
        ours, theirs = socket.socketpair()
        proc = ctx.Process(target=target, args=(*args_of(i), theirs), daemon=True, name=f"caikit-worker-{i + 1}")
        proc.start()
        theirs.close()
        started.append((proc, ours))
    return started


async def collect(started, files: dict[str, JsonlFile], requests: JsonlFile, *, meter=None, bar=None) -> WorkerTotals:
    """The lock holder's side: append every worker's rows to `files` (by kind: "request", "record",
    "failure") until every worker has said it is done or has died."""
    from caikit.backends.base import Usage
    from caikit.index import RequestIndex

    request_index = requests.indexed(RequestIndex)
    totals = WorkerTotals()

    async def messages(reader: asyncio.StreamReader):
        """(kind, the row's JSON line, the row) as they come, many per read (a readline per row cost the lock
        holder a loop turn a row); a tail without its newline at the end is a message cut off by a dying
        worker: not a row."""
        pending = b""
        while chunk := await reader.read(1 << 20):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                kind, _, body = line.partition(b"\t")
                yield kind.decode(), body, json.loads(body)

    async def one(i: int, proc, sock: socket.socket) -> None:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
        finished = False
        try:
            async for kind, line, row in messages(reader):
                if kind == "request":
                    requests.append_line(line + b"\n", row)
                    if meter is not None:
                        meter.add(Usage.from_dict(row.get("usage")))
                elif kind in ("record", "failure"):
                    if "usage" in row:  # its request rows came first on this stream: the index has them all
                        row["usage"] = Usage.from_dict(request_index.usage(row["id"])).to_dict()
                        files[kind].append(row)
                    else:
                        files[kind].append_line(line + b"\n", row)
                    setattr(totals, "done" if kind == "record" else "failed",
                            getattr(totals, "done" if kind == "record" else "failed") + 1)
                    if bar is not None:
                        bar.update(1)
                elif kind == "stopped":
                    totals.stopped = totals.stopped or row["error"]
                    for other, _ in started:  # the others would only meet the same refusal: stop them now
                        if other is not proc and other.is_alive():
                            other.terminate()
                elif kind == "finished":
                    finished = True
        finally:
            writer.close()
        if not finished:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 30)
            totals.died.append(f"worker {i + 1} ended without finishing (exit {proc.exitcode})")

    await asyncio.gather(*(one(i, proc, sock) for i, (proc, sock) in enumerate(started)))
    for proc, _ in started:
        proc.join(timeout=30)
    return totals


def stop_all(started) -> None:
    for proc, sock in started:
        if proc.is_alive():
            proc.terminate()
        sock.close()
    for proc, _ in started:
        proc.join(timeout=10)


def report_died(totals: WorkerTotals, command: str) -> None:
    for line in totals.died:
        print(f"caikit {command}: {line}: its unfinished prompts are left for the next run (rerun the same "
              "command)", file=sys.stderr, flush=True)


def worker_error(channel: Channel, error: BaseException) -> None:
    """Tell the lock holder the run was stopped (a refused key, --max-cost): it stops the other workers."""
    channel.send("stopped", {"error": str(error).splitlines()[0] if str(error) else type(error).__name__})


def check_workers(workers: int, cfg) -> None:
    """--workers N needs an online API backend: the local model and the batch API batch by themselves."""
    if workers <= 1:
        return
    if cfg.provider().in_process:
        raise UserError("--workers runs API requests in several processes; a local model batches in one "
                        "(use --batch-size)")
    if cfg.batch_api:
        raise UserError("--workers and --batch-api: a batch job needs no client processes; drop --workers")
    if cfg.max_cost:
        raise UserError("--workers with --max-cost: the budget is kept by one process; drop one of them")


@dataclass
class StageJob:
    """What one worker needs to run its share of a stage (pickled into each spawned process)."""

    opts: Any  # the BackendOptions its backend is made from; run_over_workers sets its share of --concurrency
    probe: dict[str, Any] | None  # the lock holder's probe of a self-hosted server (None: not probed)
    run_path: str
    run_id: str
    stage: str  # what its failure rows say
    records: str  # the record file and the failure log it appends to (through the lock holder)
    failures: str
    build: Callable  # build(ask, item, key) -> record
    parse_retries: int = 2
    item_label: Callable[[Any], str] | None = None  # a failure row's prompt_id (default: item.id)
    concurrency: int = 1  # items in flight: set by run_over_workers
    requests_log: str = "requests.jsonl"  # the run directory's request log the backend replays and appends to


def split_todo(todo: list[tuple[Any, str]], n: int) -> list[list[tuple[Any, str]]]:
    """Up to n shares of `todo`, every n-th distinct key each: items of one key (the same prompt twice) go to
    one worker, whose request log asks once, as one process does."""
    slot: dict[str, int] = {}
    shares: list[list[tuple[Any, str]]] = [[] for _ in range(n)]
    for item, key in todo:
        shares[slot.setdefault(key, len(slot) % n)].append((item, key))
    return [share for share in shares if share]


async def run_over_workers(command: str, job: StageJob, todo: list[tuple[Any, str]], workers: int, in_flight: int,
                           *, records: JsonlFile, failures: JsonlFile, requests: JsonlFile, meter=None,
                           progress: bool = True, prefetch: int = 1) -> WorkerTotals:
    """`todo` over `workers` processes running `job`, `in_flight` requests in flight among them (`prefetch`
    items per request); this process appends what they send to `records`, `failures` and `requests`.
    A run-stopping error of a worker raises RunStopped; a worker that died is reported (totals.died)."""
    from tqdm import tqdm

    from caikit.index import RequestIndex
    from caikit.rundir import note
    from caikit.runner import RunStopped

    shares = split_todo(todo, workers)
    share = split_in_flight(in_flight, len(shares))
    job = dataclasses.replace(job, opts=dataclasses.replace(job.opts, concurrency=str(share)),
                              concurrency=share * prefetch)
    note(command, f"{len(shares)} worker processes, {share} requests in flight each")
    requests.indexed(RequestIndex).commit()  # every answer logged so far is there for the workers to replay
    started = spawn(stage_worker, lambda i: (job, shares[i]), len(shares))
    bar = tqdm(total=len(todo), desc=command, unit="it", dynamic_ncols=True, disable=not progress, file=sys.stderr,
               smoothing=0.1)
    try:
        totals = await collect(started, {"record": records, "failure": failures}, requests, meter=meter, bar=bar)
    finally:
        stop_all(started)
        bar.close()
    if totals.stopped:
        said = totals.stopped
        raise RunStopped(said if said.startswith("the provider refused the run") else
                         f"the provider refused the run: {said} (finished work is kept)")
    report_died(totals, command)
    return totals


def stage_worker(job: StageJob, todo: list[tuple[Any, str]], sock: socket.socket) -> None:
    """One worker process: `todo` through the stage as one process runs it, its rows sent to the lock holder."""
    from caikit.backends.registry import make_backend
    from caikit.rundir import RunDir
    from caikit.runner import Runner, open_backend, run_then_close

    channel = Channel(sock)
    try:
        backend = make_backend(job.opts, probe=job.probe)
        if job.probe:
            backend.adopt_probe(job.probe, job.opts.requests_in_flight(job.probe))
        run = RunDir(job.run_path)
        cached, meter = open_backend(run, backend, job.opts,
                                     log=RemoteJsonl(run.file(job.requests_log), "request", channel))
        runner = Runner(cached, parse_retries=job.parse_retries, progress=False)
        label = {"item_label": job.item_label} if job.item_label is not None else {}
        run_then_close(runner.run(todo, lambda item, key: job.build(runner.ask, item, key),
                                  records=RemoteJsonl(job.records, "record", channel),
                                  failures=RemoteJsonl(job.failures, "failure", channel), stage=job.stage,
                                  run_id=job.run_id, concurrency=job.concurrency, meter=meter, **label), cached)
    except UserError as e:  # a refused key, an unknown model: the lock holder stops everyone
        worker_error(channel, e)
    except BaseException:
        with contextlib.suppress(OSError):  # (the lock holder may be gone)
            channel.flush()  # the rows of the turn the worker failed in are answers paid for: keep them
        raise
    channel.send("finished", {})
    sock.close()
