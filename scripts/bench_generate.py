"""Throughput of `caikit generate` against a loopback OpenAI-compatible server with fixed latency.

With per-request latency L and concurrency C the ideal rate is C / L requests per second; we print the
achieved rate and its ratio to that ideal (target >= 0.85 at C=64, L=0.2 s, P=512).
`--fault-rate` injects 429/500/hang/truncated faults in equal shares (issue 7 target >= 0.7 at 20%).

    python scripts/bench_generate.py --prompts 512 --rounds 1 --concurrency 64 --latency 0.2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer, FaultPlan


def _serve(latency: float, fault_rate: float, ready, stop, peak, window) -> None:
    share = fault_rate / 4
    faults = FaultPlan(rates={"429": share, "500": share, "hang": share, "truncated": share}, retry_after=0.05,
                       hang_seconds=2.0, max_faults_per_key=3, seed=0) if fault_rate else None
    with FakeAPIServer(latency=latency, faults=faults) as server:
        ready.put(server.openai_base_url)
        stop.wait()
        peak.value = server.max_in_flight
        log = server.log
        if log:
            window[0] = min(r.arrival for r in log)
            window[1] = max(r.finish for r in log)


@contextmanager
def server_process(latency: float, fault_rate: float):
    """The fake API in its own process, as a real API is: it must not share our interpreter's GIL."""
    ready, stop, peak, window = mp.Queue(), mp.Event(), mp.Value("i", 0), mp.Array("d", 2)
    proc = mp.Process(target=_serve, args=(latency, fault_rate, ready, stop, peak, window), daemon=True)
    proc.start()
    info = {"url": ready.get(timeout=60)}
    try:
        yield info
    finally:
        stop.set()
        proc.join(timeout=30)
        info["peak"] = peak.value
        info["serving_seconds"] = window[1] - window[0]  # first request in to last answer out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512, help="P: number of prompts")
    ap.add_argument("--rounds", type=int, default=1, help="R: critique/revision rounds (1 + 2R requests per prompt)")
    ap.add_argument("--concurrency", type=int, default=64, help="C: requests in flight")
    ap.add_argument("--latency", type=float, default=0.2, help="L: server latency per request, seconds")
    ap.add_argument("--fault-rate", type=float, default=0.0, help="share of requests answered with a fault")
    args = ap.parse_args()

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"bench prompt {i}"}) + "\n" for i in range(args.prompts)))
        with server_process(args.latency, args.fault_rate) as server:
            start = time.perf_counter()
            rc = cli_main(["generate", "--backend", "openai", "--model", "bench", "--base-url", server["url"],
                           "--constitution", "hhh", "--prompts", str(prompts), "--out", str(Path(tmp) / "run"),
                           "--rounds", str(args.rounds), "--concurrency", str(args.concurrency), "--few-shot", "0",
                           "--timeout", str(max(1.0, 5 * args.latency)), "--max-retries", "8", "--no-progress"])
            elapsed = time.perf_counter() - start
        peak, serving = server["peak"], server["serving_seconds"]
        traces = sum(1 for _ in open(Path(tmp) / "run" / "traces.jsonl"))
    useful = args.prompts * (1 + 2 * args.rounds)  # successful requests a fault-free run needs
    achieved = useful / elapsed
    ideal = args.concurrency / args.latency
    print(f"exit={rc} traces={traces}/{args.prompts} requests={useful} elapsed={elapsed:.2f}s peak_in_flight={peak}")
    print(f"steady state (first request to last answer, {serving:.2f}s): {useful / serving:.1f} req/s, "
          f"ratio {useful / serving / ideal:.3f}")
    print(f"achieved over the whole command (start-up included) {achieved:.1f} req/s, ideal C/L = {ideal:.1f} req/s")
    print(f"ratio {achieved / ideal:.3f}")


if __name__ == "__main__":
    main()
