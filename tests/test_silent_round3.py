"""Nothing silently wrong, round 3 (issue #22, items 1-4, 6-12): each test fails on the code before the fix.

Real parts only: the loopback fake API (caikit/testing/fake_api.py) with scripted answers, the real CLI entry
point, tiny models from tests/conftest.py where a trainer runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-round3-0123456789abcdefghij"


@pytest.fixture
def api_keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gen_args(out: Path, prompts: Path, server: FakeAPIServer, backend: str = "openai", *extra: str) -> list[str]:
    base = server.openai_base_url if backend == "openai" else server.anthropic_base_url
    return ["generate", "--backend", backend, "--model", "fake-model", "--base-url", base, "--constitution", "hhh",
            "--prompts", str(prompts), "--out", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------- 1. one prompt set per run directory

@pytest.mark.loopback
def test_item1_another_prompt_set_in_a_finished_run_is_refused(tmp_path, api_keys, capsys):
    first = write_prompts(tmp_path / "a.jsonl", [f"first set prompt {i}" for i in range(3)])
    second = write_prompts(tmp_path / "b.jsonl", [f"second set prompt {i}" for i in range(4)])
    run = tmp_path / "run"
    with FakeAPIServer() as server:
        assert cli_main(gen_args(run, first, server)) == 0
        before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".caikit.lock"}
        capsys.readouterr()
        sent = len(server.log)
        assert cli_main(gen_args(run, second, server)) == 2
        assert len(server.log) == sent  # nothing was asked for
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "prompt set" in err[0] and str(run) in err[0]
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".caikit.lock"}
        assert after == before  # nothing already written is lost or changed
        # the same set with a larger --limit, or the same rows copied to another file, still resumes
        copy = tmp_path / "copy.jsonl"
        copy.write_bytes(first.read_bytes())
        assert cli_main(gen_args(run, copy, server)) == 0
        assert cli_main(gen_args(run, first, server, "openai", "--limit", "2")) == 0
    assert len(read_jsonl(run / "sft.jsonl")) == 3
