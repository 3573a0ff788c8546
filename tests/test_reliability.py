"""Nothing lost, nothing paid twice: `caikit generate` and `caikit judge` under 20% injected faults
across 1,000 prompts, and after kill -9 at 20 seeded random points, each followed by a rerun.

A faulted run, and a run killed then resumed, must end with the same records as an undisturbed run
with the same seed (compared by id, `created_at` aside), the same token usage, no duplicate ids, and
no request answered twice by the server, except one the kill caught in flight (its answer never
reached requests.jsonl, so the rerun has to ask again: at most --concurrency of them).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.store import JsonlFile
from caikit.testing.fake_api import FakeAPIServer, FaultPlan, default_responder

KEY = "sk-test-RELIABILITY-SENTINEL-0123456789"
TIMESTAMPS = ("created_at",)
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "requests",
                "total_tokens", "cost_usd")
# 20% of requests fault, split over the kinds; a body fails at most twice, so retries get through.
# Hangs outlast --timeout (0.5 s): the client gives up and retries, the server answers a closed socket later.
FAULTS = dict(rates={"429": 0.05, "500": 0.05, "hang": 0.05, "truncated": 0.05}, retry_after=0.01,
              hang_seconds=1.0, max_faults_per_key=2)


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2 ** 32


def judge_logprobs(req) -> dict[str, float]:
    """A deterministic soft preference per judge prompt (OpenAI top_logprobs of the first token)."""
    p = 0.05 + 0.9 * _unit(req.last_user_message)
    return {"A": math.log(p), "B": math.log(1 - p)}


def responder(req) -> str:
    """Judge prompts get a parseable vote (for Anthropic, which has no log-probs); the rest the default text."""
    if "<response_a>" in req.last_user_message:
        return f"The answer is: ({'A' if _unit(req.last_user_message) < 0.6 else 'B'})"
    return default_responder(req)


@pytest.fixture(scope="module")
def server():
    with FakeAPIServer(responder, latency=0.005, logprobs=judge_logprobs) as s:
        yield s


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.env"
    path.write_text(f"OPENAI_API_KEY={KEY}\nANTHROPIC_API_KEY={KEY}\n")
    return path


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"prompt {i}: how do I get into house {i}?"}) + "\n"
                            for i in range(n)))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records(path: Path) -> dict[str, dict]:
    """id -> record without timestamps; a duplicate id fails."""
    rows = read_jsonl(path)
    ids = collections.Counter(r.get("id", r.get("key")) for r in rows)
    assert max(ids.values(), default=1) == 1, f"{path.name}: duplicate ids {[k for k, c in ids.items() if c > 1][:3]}"
    return {r.get("id", r.get("key")): {k: v for k, v in r.items() if k not in TIMESTAMPS} for r in rows}


def usage(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: data[k] for k in USAGE_FIELDS}


def assert_same_generate(run: Path, ref: Path, n: int) -> None:
    traces = records(run / "traces.jsonl")
    assert len(traces) == n and len({t["prompt_id"] for t in traces.values()}) == n, "a prompt was lost"
    assert traces == records(ref / "traces.jsonl")
    assert records(run / "sft.jsonl") == records(ref / "sft.jsonl")
    assert records(run / "requests.jsonl") == records(ref / "requests.jsonl")  # each request stored once
    assert read_jsonl(run / "failures.jsonl") == []
    assert usage(run / "usage.json") == usage(ref / "usage.json")


def assert_same_judge(run: Path, ref: Path, n: int) -> None:
    judgments = records(run / "judgments.jsonl")
    assert len(judgments) == n and judgments == records(ref / "judgments.jsonl")
    assert records(run / "preferences.jsonl") == records(ref / "preferences.jsonl")
    assert records(run / "requests.jsonl") == records(ref / "requests.jsonl")
    assert read_jsonl(run / "failures.jsonl") == []
    stats, ref_stats = (json.loads((d / "stats.json").read_text()) for d in (run, ref))
    # a float mean summed in traces.jsonl order, which is completion order: equal up to rounding
    assert stats.pop("mean_abs_margin") == pytest.approx(ref_stats.pop("mean_abs_margin"), rel=1e-12, abs=0)
    assert stats == ref_stats
    assert usage(run / "usage.json") == usage(ref / "usage.json")


def generate_args(server, backend: str, prompts: Path, out: Path, key_file: Path, **extra) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    args = ["generate", "--backend", backend, "--model", "fake-model", "--base-url", base, "--api-key-file",
            str(key_file), "--constitution", "hhh", "--prompts", str(prompts), "--out", str(out), "--few-shot", "0",
            "--seed", "11", "--no-progress"]
    return args + [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def judge_args(server, backend: str, from_dir: Path, out: Path, key_file: Path, **extra) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    args = ["judge", "--backend", backend, "--model", "fake-judge", "--base-url", base, "--api-key-file",
            str(key_file), "--constitution", "hhh", "--pairs", "revision", "--from", str(from_dir), "--out", str(out),
            "--seed", "5", "--no-progress", "--allow-weak-judge"]  # the scripted judge is at chance; the gate runs
    return args + [x for k, v in extra.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def assert_no_key_anywhere(*dirs: Path) -> None:
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                assert KEY.encode() not in f.read_bytes(), f


# -- 20% injected faults ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, n, judge_extra", [
    ("openai", 1000, {"method": "logprob"}),
    ("anthropic", 200, {"method": "vote", "votes": 3}),
])
def test_faults_change_nothing(tmp_path, server, key_file, backend, n, judge_extra):
    prompts = write_prompts(tmp_path / "prompts.jsonl", n)
    common = dict(concurrency=64, timeout=0.5, max_retries=8)
    server.latency = 0.005
    served = {}
    for name, plan in (("clean", None), ("faulty", FaultPlan(**FAULTS, seed=7))):
        gen, judged = tmp_path / f"{name}-gen", tmp_path / f"{name}-judge"
        server.wait_idle(3)
        server.reset_log()
        server.set_faults(plan)
        assert cli_main(generate_args(server, backend, prompts, gen, key_file, **common)) == 0
        server.set_faults(plan and FaultPlan(**FAULTS, seed=8))
        assert cli_main(judge_args(server, backend, gen, judged, key_file, **common, **judge_extra)) == 0
        served[name] = server.log
    server.set_faults(None)

    clean, faulty = served["clean"], served["faulty"]
    assert all(r.status == 200 and r.fault is None for r in clean)
    kinds = collections.Counter(r.fault for r in faulty if r.fault)
    assert set(kinds) == {"429", "500", "hang", "truncated"}, kinds
    assert sum(kinds.values()) >= 0.15 * len(clean), (kinds, len(clean))  # ~20% of requests faulted
    # every body the clean run sent was also answered in the faulty run
    assert {r.key for r in clean} <= {r.key for r in faulty if r.status == 200}

    assert_same_generate(tmp_path / "faulty-gen", tmp_path / "clean-gen", n)
    pairs = len(read_jsonl(tmp_path / "clean-judge" / "judgments.jsonl"))
    assert pairs > 0.9 * n  # revisions differ from initial answers: nearly every trace is a pair
    assert_same_judge(tmp_path / "faulty-judge", tmp_path / "clean-judge", pairs)
    assert_no_key_anywhere(tmp_path / "faulty-gen", tmp_path / "faulty-judge")


# -- kill -9 at seeded random points, then rerun --------------------------------------------------------

KILL_POINTS = 10  # per stage
KILL_PROMPTS = 100
KILL_CONCURRENCY = 8


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "caikit.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""})


def _finish(args: list[str]) -> None:
    proc = _popen(args)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in err, err[-2000:]


class KillBench:
    """Runs one stage's command under the loopback server: once to the end (timed), then killed and resumed."""

    def __init__(self, server: FakeAPIServer, args_for, root: Path):
        self.server, self.args_for, self.root = server, args_for, root

    def reference(self) -> tuple[Path, float, float, set[str]]:
        """(run dir, seconds from launch to the first request, seconds to exit, request keys answered)."""
        out = self.root / "reference"
        self.server.wait_idle(3)
        self.server.reset_log()
        start = time.monotonic()
        _finish(self.args_for(out))
        end = time.monotonic()
        log = self.server.log
        assert log and all(r.status == 200 for r in log)
        keys = [r.key for r in log]
        assert len(keys) == len(set(keys))
        return out, min(r.arrival for r in log) - start, end - start, set(keys)

    def kill_then_resume(self, index: int, answered: int, ref_keys: set[str]) -> dict:
        """Kill -9 once the server has answered `answered` requests of this run (a point in its progress,
        not in time, so a loaded machine moves no kill out of the run), then rerun to the end."""
        out = self.root / f"kill{index}"
        self.server.wait_idle(3)
        self.server.reset_log()
        proc = _popen(self.args_for(out))
        deadline = time.monotonic() + 120
        while (proc.poll() is None and time.monotonic() < deadline
               and sum(r.status == 200 for r in self.server.log) < answered):
            time.sleep(0.002)
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        persisted = JsonlFile(out / "requests.jsonl").read()  # what the killed run stored (a torn tail dropped)
        self.server.wait_idle(3)  # answers to the dead client's in-flight requests are logged too
        killed_log = self.server.log
        _finish(self.args_for(out))
        log = self.server.log
        killed = collections.Counter(r.key for r in killed_log if r.status == 200)
        resumed = collections.Counter(r.key for r in log[len(killed_log):] if r.status == 200)
        assert all(r.status == 200 for r in log[len(killed_log):])
        assert all(r.status in (200, 0) for r in killed_log)  # 0: the dead client's socket was gone
        assert max(killed.values(), default=1) == 1 and max(resumed.values(), default=1) == 1
        assert set(killed) | set(resumed) == ref_keys, "the resumed run did other requests than the reference"
        # The rerun asks for exactly what requests.jsonl lacked: nothing stored is requested again ...
        assert len({row["key"] for row in persisted}) == len(persisted)
        asked, missing = sum(resumed.values()), len(ref_keys) - len(persisted)
        assert asked == missing, f"kill {index} after {answered} answers: rerun sent {asked} requests, {missing} were not stored"
        # ... and what is asked twice is only what the kill caught in flight (answered, not yet stored).
        resent = {r.key for r in killed_log} & set(resumed)
        assert len(resent) <= KILL_CONCURRENCY, (index, answered, len(resent))
        assert_no_key_anywhere(out)
        return {"out": out, "alive": alive, "persisted": len(persisted), "resent": len(resent)}


def kill_points(rng: random.Random, total: int) -> list[int]:
    """One seeded random point in each of KILL_POINTS equal slices of the run's `total` requests,
    as a count of answered requests (0: before any answer)."""
    width = total / KILL_POINTS
    return [int((i + rng.random()) * width) for i in range(KILL_POINTS)]


def _check_spread(results: list[dict], total: int) -> None:
    assert sum(r["alive"] for r in results) >= KILL_POINTS - 3, "most kills must hit a running process"
    midway = [r for r in results if 0 < r["persisted"] < total]
    assert len(midway) >= KILL_POINTS // 2, [r["persisted"] for r in results]


@pytest.fixture(scope="module")
def kill_generate(server, key_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill-generate")
    prompts = write_prompts(root / "prompts.jsonl", KILL_PROMPTS)
    server.latency = 0.03
    bench = KillBench(server, lambda out: generate_args(server, "openai", prompts, out, key_file,
                                                        concurrency=KILL_CONCURRENCY), root)
    try:
        yield bench, *bench.reference()
    finally:
        server.latency = 0.005


def test_kill_9_during_generate_then_rerun(kill_generate):
    bench, ref, first_request, end, ref_keys = kill_generate
    bench.server.latency = 0.03
    results = []
    for i, answered in enumerate(kill_points(random.Random(1234), len(ref_keys))):
        result = bench.kill_then_resume(i, answered, ref_keys)
        assert_same_generate(result["out"], ref, KILL_PROMPTS)
        results.append(result)
    _check_spread(results, len(ref_keys))


def test_kill_9_during_judge_then_rerun(kill_generate, server, key_file, tmp_path):
    _, gen, *_ = kill_generate
    server.latency = 0.03
    bench = KillBench(server, lambda out: judge_args(server, "openai", gen, out, key_file, method="logprob",
                                                     principles=2, concurrency=KILL_CONCURRENCY), tmp_path)
    ref, first_request, end, ref_keys = bench.reference()
    pairs = len(read_jsonl(ref / "judgments.jsonl"))
    assert pairs > 0.9 * KILL_PROMPTS
    results = []
    for i, answered in enumerate(kill_points(random.Random(4321), len(ref_keys))):
        result = bench.kill_then_resume(i, answered, ref_keys)
        assert_same_judge(result["out"], ref, pairs)
        results.append(result)
    _check_spread(results, len(ref_keys))
