"""Throughput of `caikit generate` against a loopback OpenAI-compatible server, with and without faults,
and what a 10k-prompt run costs online vs --batch-api as `caikit estimate` computes it.

1. Fault-free: with per-request latency L and concurrency C the ideal rate is C / L requests per second;
   we print the achieved rate and its ratio to that ideal (target >= 0.85 at C=64, L=0.2 s, P=512).
2. With `--fault-rate` 0.2 of requests answered by a fault, in equal shares: 429 (Retry-After
   `--retry-after`), 500, a hang (cut off by the client's `--timeout`) and a truncated body.
   The reference: faults add retries, and every attempt, failed or not, holds one of the C places for
   L (a hang: until the client's timeout), so the ideal client keeps all C places busy with the
   attempts the faults force on it: ideal time = (attempt-seconds) / C. The ratio printed last is how
   close we come: mean attempts in flight / C, while prompts are still waiting to start (after
   that a finite run must drain). Also printed: completed requests / s over the fault-free C / L, and
   the most any client could reach on that scale (useful attempt-seconds / all attempt-seconds).
   Issue 7 target: >= 0.7.
3. The estimated cost of 10,000 prompts through `caikit generate` (default settings) on gpt-4o-mini
   and claude-haiku-4-5, online and with --batch-api.
4. The runner's own cost: the same chains (answer -> critique -> revision, built with caikit's stage prompts)
   sent by `caikit generate` in its own process and by a bare asyncio loop over the same SDK client, to one
   loopback server with the same latency and concurrency; the ratio of their wall times (bare / caikit, from
   the first request to the end; caikit's start-up -- interpreter, imports, inputs, probe -- printed apart).
   Issue 12 target: >= 0.85.

    python scripts/bench_generate.py                  # all three; last line: the ratio with faults
    python scripts/bench_generate.py --fault-rate 0   # fault-free only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer, FaultPlan, default_responder


def _serve(latency: float, fault_rate: float, retry_after: float, ready, stop, results) -> None:
    share = fault_rate / 4
    faults = FaultPlan(rates={"429": share, "500": share, "hang": share, "truncated": share}, retry_after=retry_after,
                       hang_seconds=2.0, max_faults_per_key=3, seed=0) if fault_rate else None
    last_start = [0.0]  # arrival of the latest first request of a prompt (the only 1-message requests)

    def responder(request):
        if len(request.messages) == 1:
            last_start[0] = max(last_start[0], time.monotonic())
        return default_responder(request)

    with FakeAPIServer(responder, latency=latency, faults=faults) as server:
        ready.put(server.openai_base_url)
        stop.wait()
        results.put({"peak": server.max_in_flight, "last_start": last_start[0],
                     "log": [(r.arrival, r.finish, r.status, r.fault) for r in server.log]})


@contextmanager
def server_process(latency: float, fault_rate: float = 0.0, retry_after: float = 0.05):
    """The fake API in its own process, as a real API is: it must not share our interpreter's GIL."""
    ready, stop, results = mp.Queue(), mp.Event(), mp.Queue()
    proc = mp.Process(target=_serve, args=(latency, fault_rate, retry_after, ready, stop, results), daemon=True)
    proc.start()
    info = {"url": ready.get(timeout=60)}
    try:
        yield info
    finally:
        stop.set()
        info.update(results.get(timeout=60))
        proc.join(timeout=30)


def run_generate(url: str, n_prompts: int, args, timeout: float) -> tuple[int, float, int]:
    """(exit code, seconds, traces) of one `caikit generate` against `url`."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"bench prompt {i}"}) + "\n" for i in range(n_prompts)))
        start = time.perf_counter()
        rc = cli_main(["generate", "--backend", "openai", "--model", "bench", "--base-url", url,
                       "--constitution", "hhh", "--prompts", str(prompts), "--out", str(Path(tmp) / "run"),
                       "--rounds", str(args.rounds), "--concurrency", str(args.concurrency), "--few-shot", "0",
                       "--timeout", str(timeout), "--max-retries", "8", "--no-progress"])
        elapsed = time.perf_counter() - start
        traces = sum(1 for _ in open(Path(tmp) / "run" / "traces.jsonl"))
    return rc, elapsed, traces


def fault_free(args) -> None:
    with server_process(args.latency) as server:
        rc, elapsed, traces = run_generate(server["url"], args.prompts, args, max(1.0, 5 * args.latency))
    log = server["log"]
    serving = max(f for _, f, _, _ in log) - min(a for a, _, _, _ in log)  # first request in to last answer out
    useful = args.prompts * (1 + 2 * args.rounds)
    ideal = args.concurrency / args.latency
    print(f"fault-free: exit={rc} traces={traces}/{args.prompts} requests={useful} elapsed={elapsed:.2f}s "
          f"peak_in_flight={server['peak']}")
    print(f"  steady state (first request to last answer, {serving:.2f}s): {useful / serving:.1f} req/s, "
          f"ratio {useful / serving / ideal:.3f}")
    print(f"  whole command (start-up included): {useful / elapsed:.1f} req/s of C/L = {ideal:.1f}, "
          f"ratio {useful / elapsed / ideal:.3f}")


def with_faults(args) -> float:
    timeout = args.timeout
    with server_process(args.latency, args.fault_rate, args.retry_after) as server:
        rc, elapsed, traces = run_generate(server["url"], args.fault_prompts, args, timeout)
    # the client holds a place for an attempt until its answer, or until its timeout for a hang
    attempts = [(a, min(f if f is not None else a + timeout, a + timeout), status, fault)
                for a, f, status, fault in server["log"]]
    first, last = min(a for a, *_ in attempts), max(f for _, f, *_ in attempts)
    queue_empty = server["last_start"]  # the last prompt's first answer: no prompt left to start, the run drains

    def busy(lo: float, hi: float) -> float:
        return sum(max(0.0, min(f, hi) - max(a, lo)) for a, f, _, _ in attempts)

    useful = args.fault_prompts * (1 + 2 * args.rounds)
    kinds = {k: sum(1 for *_, fault in attempts if fault == k) for k in ("429", "500", "hang", "truncated")}
    held = busy(first, last)
    c, ideal = args.concurrency, args.concurrency / args.latency
    steady = busy(first, queue_empty) / (c * (queue_empty - first))
    print(f"{args.fault_rate:.0%} faults: exit={rc} traces={traces}/{args.fault_prompts} useful requests={useful} "
          f"attempts={len(attempts)} ({', '.join(f'{k}: {v}' for k, v in kinds.items())}) elapsed={elapsed:.2f}s "
          f"--timeout {timeout}s, Retry-After {args.retry_after}s")
    print(f"  ideal time (attempt-seconds / C) {held / c:.2f}s; served in {last - first:.2f}s "
          f"(the last prompt started within the first {queue_empty - first:.2f}s)")
    print(f"  places in use, whole run: {held / (c * (last - first)):.3f} of C; "
          f"while prompts were queued: {steady:.3f}")
    print(f"  completed requests / s over fault-free C/L: {useful / (last - first) / ideal:.3f} "
          f"(a perfect client: {useful * args.latency / held:.3f})")
    return steady


async def bare_chains(url: str, prompts: list[str], concurrency: int) -> tuple[float, float]:
    """(first request sent, last answer in): the chains through a bare asyncio loop over the SDK client."""
    import asyncio

    import openai

    from caikit.constitution import load_constitution
    from caikit.stages import critique, revise

    principle = load_constitution("hhh").critique_principles[0]
    client = openai.AsyncOpenAI(base_url=url, api_key=os.environ["OPENAI_API_KEY"], max_retries=0, timeout=60)
    slots = asyncio.Semaphore(concurrency)
    first = [float("inf")]

    async def ask(messages):
        async with slots:
            first[0] = min(first[0], time.monotonic())
            response = await client.chat.completions.create(model="bench", messages=messages, max_tokens=256,
                                                            temperature=0.7)
        return response.choices[0].message.content

    async def chain(text: str) -> None:
        prompt = [{"role": "user", "content": text}]
        answer = await ask(prompt)
        critique_messages = critique.build_prompt(prompt, answer, principle.critique)
        note = await ask(critique_messages)
        await ask(revise.build_prompt(critique_messages, note, principle.revision))

    await asyncio.gather(*(chain(t) for t in prompts))
    await client.close()
    return first[0], time.monotonic()


def runner_overhead(args) -> float:
    """Wall time of the same chains through `caikit generate` (its own process) and through a bare loop."""
    import asyncio
    import subprocess
    import sys

    n, c = args.overhead_prompts, args.concurrency
    texts = [f"bench prompt {i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
        with server_process(args.latency) as server:
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "caikit.cli", "generate", "--backend", "openai", "--model", "bench",
                            "--base-url", server["url"], "--constitution", "hhh", "--prompts", str(prompts),
                            "--out", str(Path(tmp) / "run"), "--concurrency", str(c), "--few-shot", "0",
                            "--no-progress"], check=True, capture_output=True)
            ended = time.monotonic()
        first_arrival = min(a for a, _, _, _ in server["log"])
        with server_process(args.latency) as server:
            bare_first, bare_end = asyncio.run(bare_chains(server["url"], texts, c))
    startup, caikit_work, bare_work = first_arrival - started, ended - first_arrival, bare_end - bare_first
    print(f"runner overhead: {n} prompts x 3 requests, C={c}, L={args.latency}s")
    print(f"  caikit generate: start-up {startup:.2f}s (interpreter, imports, inputs, probe), then {caikit_work:.2f}s "
          f"from its first request to its exit (derived files included)")
    print(f"  bare asyncio loop over the same SDK client: {bare_work:.2f}s from its first request to its last answer")
    ratio = bare_work / caikit_work
    print(f"  ratio bare / caikit: {ratio:.3f} (start-up excluded; with it: {bare_work / (ended - started):.3f})")
    return ratio


def batch_vs_online(n: int = 10_000) -> None:
    """`caikit estimate generate` on n prompts (the bundled red-team sample, repeated)."""
    bundled = Path(__file__).resolve().parents[1] / "caikit" / "data" / "red_team_prompts.jsonl"
    rows = [json.loads(line) for line in bundled.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": rows[i % len(rows)]["prompt"]}) + "\n"
                                   for i in range(n)))
        print(f"cost of {n:,} prompts through caikit generate (caikit estimate: anthropic-cai, 1 round, "
              f"max-tokens 256, answers expected at 60% of it):")
        for few_shot in ("1", "-1"):
            for backend, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")):
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    cli_main(["estimate", "generate", "--backend", backend, "--model", model, "--prompts",
                              str(prompts), "--few-shot", few_shot, "--json"])
                e = json.loads(out.getvalue())
                cached = (f"; with prompt caching ${e['cost_usd_cached']:.2f} / ${e['batch_cost_usd_cached']:.2f}"
                          if e["cacheable_prompt_tokens"] else "; shared prefix under the model's cache minimum")
                print(f"  {model}, few-shot {'all' if few_shot == '-1' else few_shot}: {e['requests']:,} requests, "
                      f"{e['prompt_tokens']:,} prompt + {e['completion_tokens']:,} completion tokens: "
                      f"online ${e['cost_usd']:.2f}, --batch-api ${e['batch_cost_usd']:.2f}{cached}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512, help="P: prompts of the fault-free run")
    ap.add_argument("--fault-prompts", type=int, default=1000, help="prompts of the run with faults")
    ap.add_argument("--rounds", type=int, default=1, help="R: critique/revision rounds (1 + 2R requests per prompt)")
    ap.add_argument("--concurrency", type=int, default=64, help="C: requests in flight")
    ap.add_argument("--latency", type=float, default=0.2, help="L: server latency per request, seconds")
    ap.add_argument("--fault-rate", type=float, default=0.2, help="share of requests answered with a fault (0: skip)")
    ap.add_argument("--timeout", type=float, default=0.5, help="client --timeout of the run with faults (cuts hangs)")
    ap.add_argument("--retry-after", type=float, default=0.05, help="Retry-After of an injected 429, seconds")
    ap.add_argument("--overhead-prompts", type=int, default=256, help="prompts of the runner-overhead comparison")
    ap.add_argument("--only-overhead", action="store_true", help="run only the runner-overhead comparison")
    args = ap.parse_args()

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    if args.only_overhead:
        print(f"ratio {runner_overhead(args):.3f}")
        return
    runner_overhead(args)
    fault_free(args)
    if not args.fault_rate:
        return
    ratio = with_faults(args)
    batch_vs_online()
    print(f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
