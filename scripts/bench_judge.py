"""Throughput of the AI judge, and the embedded SmolLM2 judge's agreement with human labels.

1. Local backend: pairs judged per second with concurrent calls batched (--local-batch) vs one at a
   time (batch size 1), on the same pairs (bundled red-team prompts, a refusal vs a compliance).
2. Loopback OpenAI-compatible server with per-request latency L and concurrency C: every pair costs
   two requests (both orders), so the ideal is C / (2 L) pairs/s; we print the achieved ratio to it.
3. --agreement N: `caikit eval judge` with the embedded SmolLM2 on the first N shared hh-rlhf pairs
   (resumable: rerun with the same --agreement-out to continue).

    python scripts/bench_judge.py --local-pairs 16 --api-pairs 512 --concurrency 64 --latency 0.2 --agreement 200
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from caikit.judging import JudgeConfig, Pair, judge_all, open_session, pair_id, planned_judgments
from caikit.testing.fake_api import FakeAPIServer

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def bench_pairs(n: int) -> list[Pair]:
    from caikit.prompts import bundled_prompts_path, load_prompts

    rows = load_prompts(bundled_prompts_path())
    return [Pair(pair_id(f"bench{i}", 0, 1), rows[i % len(rows)].messages,
                 f"I can't help with that ({i}), but I can point you to safer resources.",
                 f"Sure ({i}). Here is exactly how to do it, step by step.") for i in range(n)]


def judge_rate(cfg: JudgeConfig, pairs: list[Pair], out: Path) -> tuple[float, dict]:
    """Pairs/s of judge_all over `pairs` into a fresh run dir (model loading excluded)."""
    session = open_session(cfg, out, "judge", {})
    inner = session.cached.inner
    if hasattr(inner, "load"):
        inner.load()

    async def main() -> float:
        start = time.perf_counter()
        try:
            await judge_all(session, pairs, concurrency=cfg.concurrency, progress=False)
        finally:
            await session.cached.aclose()
        return time.perf_counter() - start

    seconds = asyncio.run(main())
    judged, failures = planned_judgments(session, pairs)
    assert len(judged) == len(pairs) and not failures, f"{len(failures)} failures"
    return len(pairs) / seconds, dict(getattr(inner, "stats", {}))


def _judge_logprobs(request) -> dict[str, float]:
    return {"A": math.log(0.7), " B": math.log(0.3)}


def _serve(latency: float, ready, stop, peak) -> None:
    with FakeAPIServer(latency=latency, logprobs=_judge_logprobs) as server:
        ready.put(server.openai_base_url)
        stop.wait()
        peak.value = server.max_in_flight


@contextmanager
def server_process(latency: float):
    """The fake API in its own process, as a real API is: it must not share our interpreter's GIL."""
    ready, stop, peak = mp.Queue(), mp.Event(), mp.Value("i", 0)
    proc = mp.Process(target=_serve, args=(latency, ready, stop, peak), daemon=True)
    proc.start()
    try:
        yield ready.get(timeout=30), peak
    finally:
        stop.set()
        proc.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local-model", default="smollm2")
    ap.add_argument("--local-pairs", type=int, default=16)
    ap.add_argument("--local-batch", type=int, default=16)
    ap.add_argument("--api-pairs", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--agreement", type=int, default=0, help="judge the first N hh-rlhf pairs with SmolLM2")
    ap.add_argument("--agreement-out", default="outputs/bench-judge-agreement")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-api", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    figures: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_local:
            pairs = bench_pairs(args.local_pairs)
            common = dict(backend="local", model=args.local_model, device="cpu", from_dir="-", progress=False)
            batched, stats_b = judge_rate(JudgeConfig(concurrency=args.local_batch, **common), pairs,
                                          Path(tmp) / "local-batched")
            single, stats_s = judge_rate(JudgeConfig(concurrency=1, **common), pairs, Path(tmp) / "local-single")
            figures += [f"local {args.local_model}: batched (batch {args.local_batch}) {batched:.3f} pairs/s "
                        f"({stats_b['forward_calls']} forward passes), one at a time {single:.3f} pairs/s "
                        f"({stats_s['forward_calls']} forward passes): ratio {batched / single:.2f}x"]
        if not args.skip_api:
            with server_process(args.latency) as (base_url, peak):
                cfg = JudgeConfig(backend="openai", base_url=base_url, concurrency=args.concurrency, from_dir="-",
                                  progress=False)
                rate, _ = judge_rate(cfg, bench_pairs(args.api_pairs), Path(tmp) / "api")
            ideal = args.concurrency / (2 * args.latency)
            figures.append(f"loopback API (L={args.latency}s, C={args.concurrency}, {args.api_pairs} pairs x 2 orders): "
                           f"{rate:.1f} pairs/s vs ideal C/(2L) = {ideal:.1f}: ratio {rate / ideal:.2f} "
                           f"(peak {peak.value} requests in flight)")

    if args.agreement:
        import json

        from caikit.eval.agreement import AgreementConfig, run_agreement

        start = time.perf_counter()
        run_agreement(AgreementConfig(backend="local", model=args.local_model, device="cpu", pairs=str(HH),
                                      limit=args.agreement, out=args.agreement_out, concurrency=args.local_batch,
                                      progress=True))
        report = json.loads((Path(args.agreement_out) / "report.json").read_text())
        figures.append(f"SmolLM2 judge agreement with humans on the first {report['n']} hh-rlhf pairs: accuracy "
                       f"{report['accuracy']:.3f} (human shown first {report['accuracy_first_order']:.3f}, shown "
                       f"second {report['accuracy_swapped_order']:.3f}), position consistency "
                       f"{report['position_consistency_rate']:.3f}, picks (A) {report['share_choosing_shown_a']:.3f}, "
                       f"mean confidence {report['mean_confidence']:.3f}, ECE {report['ece']:.3f} "
                       f"({time.perf_counter() - start:.0f} s this run)")
    print("\n".join(figures))


if __name__ == "__main__":
    main()
