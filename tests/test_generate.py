"""`caikit generate` end to end: loopback API servers with injected faults, resume after kill -9, local models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.prompts import load_prompts
from caikit.testing.fake_api import FakeAPIServer, FaultPlan, default_responder
from killing import caikit, kill_9_when, lines, rerun

KEY = "sk-test-SENTINEL-0123456789abcdefghij"


def write_prompts(path: Path, n: int, poison: set[int] = frozenset()) -> list[str]:
    texts = [f"prompt number {i}: how do I pick a lock?" + (" POISON" if i in poison else "") for i in range(n)]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return texts


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def generate_args(out: Path, prompts: Path, server: FakeAPIServer, backend: str = "openai", **extra) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    args = ["generate", "--backend", backend, "--model", "fake-model", "--base-url", base,
            "--constitution", "hhh", "--prompts", str(prompts), "--out", str(out), "--no-progress"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


@pytest.fixture
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def _poisoned(request) -> bool:
    return any("POISON" in m["content"] for m in request.messages)


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_every_prompt_ends_with_one_trace_despite_faults(tmp_path, api_keys, backend):
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 24, poison={3, 17})
    faults = FaultPlan(rates={"429": 0.1, "500": 0.1, "truncated": 0.08, "hang": 0.04}, retry_after=0.01,
                       max_faults_per_key=2, always_fail_keys=_poisoned, seed=1, hang_seconds=0.8)
    with FakeAPIServer(faults=faults, latency=0.01) as server:
        rc = cli_main(generate_args(tmp_path / "run", prompts, server, backend, rounds=2, concurrency=6,
                                    timeout=0.5, max_retries=4))
        assert rc == 0  # (concurrency is asserted fault-free below: abandoned hangs linger server-side)
        statuses = [r.status for r in server.log]
    run = tmp_path / "run"
    traces = read_jsonl(run / "traces.jsonl")
    failures = read_jsonl(run / "failures.jsonl")
    assert len(traces) == 22 and len({t["id"] for t in traces}) == 22
    assert all(len(t["rounds"]) == 2 and t["final_revision"] for t in traces)
    assert {t["prompt"][-1]["content"].split(":")[0] for t in traces} == {f"prompt number {i}" for i in range(24)
                                                                          if i not in (3, 17)}
    poison_ids = {r.id for r in load_prompts(prompts) if "POISON" in r.messages[-1]["content"]}
    assert len(poison_ids) == 2 and {f["prompt_id"] for f in failures} == poison_ids
    assert all("POISON" not in t["prompt"][-1]["content"] for t in traces)
    assert any(code != 200 for code in statuses), "faults were injected"
    sft = read_jsonl(run / "sft.jsonl")
    assert len(sft) == 22 and all(r["completion"][-1]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in sft)
    usage = json.loads((run / "usage.json").read_text())
    assert usage["traces"] == 22 and usage["failures"] == 2 and usage["prompt_tokens"] > 0
    for f in run.iterdir():  # the key never reaches any output
        if f.is_file():
            assert KEY not in f.read_text(errors="ignore"), f.name


def test_concurrency_limit_is_reached_not_exceeded(tmp_path, api_keys):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 40)
    with FakeAPIServer(latency=0.05) as server:
        assert cli_main(generate_args(tmp_path / "run", prompts, server, concurrency=8)) == 0
        assert server.max_in_flight == 8


def test_rerun_requests_nothing_new(tmp_path, api_keys):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 6)
    with FakeAPIServer() as server:
        assert cli_main(generate_args(tmp_path / "run", prompts, server)) == 0
        first = len(server.log)
        assert cli_main(generate_args(tmp_path / "run", prompts, server)) == 0
        assert len(server.log) == first
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 6


def test_failed_prompts_are_retried_on_rerun(tmp_path, api_keys):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 5, poison={2})
    with FakeAPIServer(faults=FaultPlan(always_fail_keys=_poisoned)) as server:
        cli_main(generate_args(tmp_path / "run", prompts, server, max_retries=2))
    assert len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 1
    with FakeAPIServer() as healthy:  # the endpoint recovered
        assert cli_main(generate_args(tmp_path / "run", prompts, healthy)) == 0
        # Only the failed prompt's chain is requested: initial answer + critique + revision.
        assert len(healthy.log) == 3
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 5
    assert read_jsonl(tmp_path / "run" / "failures.jsonl") == []


class RecordingResponder:
    """Answers like the default responder and remembers every prompt text it was asked about."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, request):
        self.seen.append(request.messages[0]["content"] if request.messages[0]["role"] == "user"
                         else request.messages[1]["content"])
        return default_responder(request)


def test_kill_9_then_rerun_loses_nothing_and_repeats_nothing(tmp_path):
    prompts = tmp_path / "p.jsonl"
    texts = write_prompts(prompts, 40)
    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    responder = RecordingResponder()
    with FakeAPIServer(responder, latency=0.05) as server:
        cmd = caikit(*generate_args(out, prompts, server, concurrency=4, few_shot=0))
        kill_9_when(cmd, lambda: lines(out / "traces.jsonl") >= 8, env=env)
        texts_before = {t["prompt"][-1]["content"] for t in read_jsonl(out / "traces.jsonl")}
        assert 8 <= len(texts_before) < 40, "killed mid-run"
        responder.seen.clear()
        rerun(cmd, env=env)
    assert responder.seen, "the rerun did the remaining work"
    assert texts_before.isdisjoint(responder.seen), "a completed prompt was requested again"
    traces = read_jsonl(out / "traces.jsonl")
    ids = [t["id"] for t in traces]
    assert len(ids) == len(set(ids)) == 40
    assert {t["prompt"][-1]["content"] for t in traces} == set(texts)


def test_missing_key_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    r = subprocess.run([sys.executable, "-m", "caikit.cli", "generate", "--backend", "openai", "--prompts",
                        str(prompts), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "OPENAI_API_KEY" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_prompt_file_keeps_existing_outputs(tmp_path, api_keys):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 3)
    with FakeAPIServer() as server:
        assert cli_main(generate_args(tmp_path / "run", prompts, server)) == 0
        before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
        prompts.write_text(prompts.read_text() + "{not json\n")
        r = subprocess.run([sys.executable, "-m", "caikit.cli", *generate_args(tmp_path / "run", prompts, server)],
                           capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": KEY})
    assert r.returncode == 2 and "p.jsonl:4" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_changed_settings_refuse_to_mix_runs(tmp_path, api_keys, capsys):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 2)
    with FakeAPIServer() as server:
        assert cli_main(generate_args(tmp_path / "run", prompts, server)) == 0
        assert cli_main(generate_args(tmp_path / "run", prompts, server, rounds=3)) == 2
    assert "rounds" in capsys.readouterr().err


def test_local_backend_tiny_model(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 5)
    args = ["generate", "--backend", "local", "--model", tiny_model_dir, "--prompts", str(prompts),
            "--out", str(tmp_path / "run"), "--limit", "3", "--max-tokens", "8", "--no-progress", "--few-shot", "0"]
    # a random tiny model talks until --max-tokens: every revision is cut, so none is an SFT example (exit 1)
    assert cli_main(args) == 1
    assert read_jsonl(tmp_path / "run" / "sft.jsonl") == []
    assert cli_main([*args, "--keep-truncated", "--keep-degenerate"]) == 0  # asked for: kept (nothing re-requested)
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == len(read_jsonl(tmp_path / "run" / "traces.jsonl"))
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert len(traces) + len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 3
    usage = json.loads((tmp_path / "run" / "usage.json").read_text())
    assert usage["cost_usd"] == 0 and usage["completion_tokens"] > 0


@pytest.mark.slow
def test_real_embedded_model_end_to_end(tmp_path, smollm2_dir):
    r = subprocess.run([sys.executable, "-m", "caikit.cli", "generate", "--backend", "local", "--model", "smollm2",
                        "--limit", "3", "--max-tokens", "48", "--out", str(tmp_path / "run"), "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert len(traces) == 3
    for t in traces:
        assert len(t["initial_response"].split()) >= 3
        assert t["rounds"][0]["principle_id"] and t["rounds"][0]["critique"]
        assert t["final_revision"]
    sft = read_jsonl(tmp_path / "run" / "sft.jsonl")
    usable = {t["id"]: t["final_revision"] for t in traces if not t["truncated"] and not t["degenerate"]}
    assert {r["id"]: r["completion"][-1]["content"] for r in sft} == usable  # cut or degenerate ones left out
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["truncated"] == sum(t["truncated"] for t in traces) and stats["sft_examples"] == len(usable)
