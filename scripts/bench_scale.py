"""Generation at scale: how many requests/s one `caikit generate` sends, what it costs in client CPU and memory,
and how fast a finished run resumes -- beside a plain aiohttp loop sending the same requests.

The server is a lean aiohttp OpenAI-compatible endpoint in its own process that answers every chat completion
after a fixed latency (the threaded fake in caikit/testing/fake_api.py serves a few hundred requests/s at most,
which would measure the server, not the client). Each prompt is one SL-CAI chain: answer -> critique -> revision
(3 requests, caikit's own stage prompts in both clients).

For each prompt count P (default 4,000 and 40,000):
  plain      a bare asyncio loop over one aiohttp session, C chains' requests in flight
  caikit     `caikit generate --concurrency C` (one process; --http-client as given)
  workers    the same with --workers W (when W > 1)
  resume     `caikit generate` again on the finished run directory (nothing to do)
  indexed    the same without the finished run's `.finished.json`: what a resume after a kill or a changed
             input costs (every prompt parsed, keyed and looked up in the index)
and prints requests/s, client CPU per request (user + system, start-up included), peak RSS, and from two prompt
counts the RSS per prompt beyond the fixed base.

    python scripts/bench_scale.py                           # 4,000 and 40,000 prompts, C=256
    python scripts/bench_scale.py --prompts 100000 --skip-plain   # one large run: peak memory and resume
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- the servers -----------------------------------------------------------------------------------------
def _answer(body: dict, count: int) -> dict:
    last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    choices = [{"index": i, "message": {"role": "assistant", "content": f"Answer {count} {i} to: {last[:40]}"},
                "finish_reason": "stop"} for i in range(int(body.get("n") or 1))]
    if body.get("logprobs"):
        for c in choices:
            c["logprobs"] = {"content": [{"token": "A", "logprob": -0.1,
                                          "top_logprobs": [{"token": "A", "logprob": -0.1},
                                                           {"token": "B", "logprob": -2.3}]}]}
    return {"id": f"c{count}", "object": "chat.completion", "model": body["model"], "choices": choices,
            "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}}


def _serve_lean(latency: float, ready) -> None:
    """HTTP/1.1 keep-alive on a bare asyncio protocol: about a tenth of aiohttp.web's CPU per request, so that
    on a 2-core machine the clients, not the server, take the cores."""
    import socket

    count = [0]
    loop = asyncio.new_event_loop()

    class Http(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].decode("latin-1").lower()
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip() == "content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
                path = head.split(" ", 2)[1]
                close = "connection: close" in head
                if path.endswith("/chat/completions"):
                    count[0] += 1
                    answer = _answer(json.loads(body), count[0])
                    loop.call_later(latency, self.send, 200, answer, close)
                elif path.endswith("/models"):
                    self.send(200, {"data": [{"id": "bench"}]}, close)
                else:
                    self.send(404, {"error": {"message": "not found"}}, close)

        def send(self, status: int, payload: dict, close: bool) -> None:
            if self.transport.is_closing():
                return
            data = json.dumps(payload).encode()
            self.transport.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                                 f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode() + data)
            if close:
                self.transport.close()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = loop.run_until_complete(loop.create_server(Http, sock=sock, backlog=4096))
    ready.put(f"http://127.0.0.1:{sock.getsockname()[1]}/v1")
    loop.run_until_complete(server.serve_forever())


def _serve_aiohttp(latency: float, ready) -> None:
    from aiohttp import web

    count = [0]

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        count[0] += 1
        await asyncio.sleep(latency)
        return web.json_response(_answer(body, count[0]))

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bench"}]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        ready.put(f"http://127.0.0.1:{port}/v1")
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def server_process(latency: float, kind: str = "lean"):
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of ours in the server's GIL
    ready = ctx.Queue()
    proc = ctx.Process(target=_serve_lean if kind == "lean" else _serve_aiohttp, args=(latency, ready), daemon=True)
    proc.start()
    try:
        yield ready.get(timeout=60)
    finally:
        proc.kill()
        proc.join()


# -- the plain loop -----------------------------------------------------------------------------------------
async def plain_chains(url: str, texts: list[str], concurrency: int) -> int:
    """The chains through one aiohttp session, `concurrency` requests in flight; returns requests sent."""
    import aiohttp

    from caikit.constitution import load_constitution
    from caikit.stages import critique, revise

    principle = load_constitution("hhh").critique_principles[0]
    slots = asyncio.Semaphore(concurrency)
    sent = [0]
    headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        async def ask(messages) -> str:
            async with slots:
                async with session.post(url + "/chat/completions", json={
                        "model": "bench", "messages": messages, "n": 1, "max_tokens": 256, "temperature": 0.7,
                        "seed": 0}) as response:
                    body = await response.json()
            sent[0] += 1
            return body["choices"][0]["message"]["content"]

        async def chain(text: str) -> None:
            prompt = [{"role": "user", "content": text}]
            answer = await ask(prompt)
            critique_messages = critique.build_prompt(prompt, answer, principle.critique)
            note = await ask(critique_messages)
            await ask(revise.build_prompt(critique_messages, note, principle.revision))

        queue = iter(texts)

        async def worker() -> None:  # 2C chains at once, as caikit's --prefetch 2: C requests stay busy
            for text in queue:
                await chain(text)

        await asyncio.gather(*(worker() for _ in range(2 * concurrency)))
    return sent[0]


def plain(url: str, n: int, concurrency: int) -> dict:
    texts = [f"bench prompt {i}" for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = asyncio.run(plain_chains(url, texts, concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"requests": sent, "seconds": wall, "rps": sent / wall, "cpu_ms": 1000 * cpu / sent}


# -- caikit ---------------------------------------------------------------------------------------------------
def caikit_generate(url: str, prompts: Path, out: Path, concurrency: int, *, workers: int = 1,
                    http_client: str = "") -> dict:
    """One `caikit generate` subprocess: wall seconds, CPU seconds (its children included) and peak RSS."""
    cmd = [sys.executable, "-m", "caikit.cli", "generate", "--backend", "openai", "--model", "bench",
           "--base-url", url, "--constitution", "hhh", "--prompts", str(prompts), "--out", str(out),
           "--concurrency", str(concurrency), "--few-shot", "0", "--no-progress", "--seed", "0"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if http_client:
        cmd += ["--http-client", http_client]
    return measured(cmd)


def measured(cmd: list[str]) -> dict:
    """Run a caikit command line: wall seconds, CPU seconds (its children included) and peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[2:4])} exited {proc.returncode}:\n{stderr[-3000:]}")
    return {"seconds": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def row(label: str, n: int, r: dict, requests: int, base: float | None = None) -> str:
    rps = requests / r["seconds"]
    cpu_ms = r["cpu_ms"] if "cpu_ms" in r else 1000 * r["cpu"] / requests
    rss = f"{r['rss_mb']:8.0f} MB" if "rss_mb" in r else "       -   "
    ratio = f"  {rps / base:5.2f}x plain" if base else ""
    return f"  {label:<22} {n:>8,} {requests:>9,} {r['seconds']:8.1f} s {rps:9.0f} {cpu_ms:9.2f} ms {rss}{ratio}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, nargs="+", default=[4000, 40000], help="prompt counts, one run each")
    ap.add_argument("--concurrency", type=int, default=256, help="C: requests in flight")
    ap.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    ap.add_argument("--workers", type=int, default=2, help="also run caikit with --workers W (1: skip)")
    ap.add_argument("--http-client", default="", help="caikit's --http-client (default: caikit's default)")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain aiohttp loop")
    ap.add_argument("--server", choices=["lean", "aiohttp"], default="lean",
                    help="the loopback server: a bare asyncio protocol (lean, ~0.05 ms CPU a request) or aiohttp.web")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    from caikit.commands.generate import FINISHED

    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"server latency {args.latency}s, concurrency {args.concurrency}, 3 requests per prompt")
    print(f"  {'client':<22} {'prompts':>8} {'requests':>9} {'wall':>10} {'req/s':>9} {'CPU/req':>12} {'peak RSS':>11}")
    peaks: dict[int, float] = {}
    with server_process(args.latency, args.server) as url, tempfile.TemporaryDirectory() as tmp:
        for n in args.prompts:
            requests = 3 * n
            prompts = Path(tmp) / f"prompts-{n}.jsonl"
            prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"bench prompt {i}"}) + "\n"
                                       for i in range(n)))
            base = None
            if not args.skip_plain:
                p = plain(url, n, args.concurrency)
                base = p["rps"]
                print(row("plain aiohttp loop", n, p, p["requests"]), flush=True)
            one = caikit_generate(url, prompts, Path(tmp) / f"run-{n}", args.concurrency,
                                  http_client=args.http_client)
            peaks[n] = one["rss_mb"]
            print(row("caikit, 1 process", n, one, requests, base), flush=True)
            if args.workers > 1:
                w = caikit_generate(url, prompts, Path(tmp) / f"run-{n}-w", args.concurrency, workers=args.workers,
                                    http_client=args.http_client)
                print(row(f"caikit, --workers {args.workers}", n, w, requests, base)
                      + f"  {one['seconds'] / w['seconds']:.2f}x 1 process", flush=True)
            again = caikit_generate(url, prompts, Path(tmp) / f"run-{n}", args.concurrency,
                                    http_client=args.http_client)
            print(f"  resume of the finished run: {again['seconds']:.2f} s wall, {again['cpu']:.2f} s CPU "
                  f"({again['seconds'] / n * 1e5:.2f} s wall per 100,000 prompts, start-up included), "
                  f"peak RSS {again['rss_mb']:.0f} MB", flush=True)
            (Path(tmp) / f"run-{n}" / FINISHED).unlink()  # as after a kill, or with an input changed
            indexed = caikit_generate(url, prompts, Path(tmp) / f"run-{n}", args.concurrency,
                                      http_client=args.http_client)
            print(f"  indexed resume (every prompt parsed, keyed and looked up): {indexed['seconds']:.2f} s wall, "
                  f"{indexed['cpu']:.2f} s CPU, peak RSS {indexed['rss_mb']:.0f} MB", flush=True)
    if len(peaks) >= 2:
        (n0, m0), (n1, m1) = sorted(peaks.items())[0], sorted(peaks.items())[-1]
        per = (m1 - m0) * 1024 * 1024 / (n1 - n0)
        print(f"peak RSS per prompt beyond the base ({n0:,} -> {n1:,} prompts): {per:,.0f} bytes")
    else:
        (n, m), = peaks.items()
        print(f"peak RSS {m:.0f} MB at {n:,} prompts")


if __name__ == "__main__":
    main()
