"""The tutorial runs: every shell block of docs/tutorial.md, in order, in one shell, as a user would type them.

The one server address and the one model the tutorial names are swapped for a loopback OpenAI-compatible server
(scripted: a judge that prefers one answer by its content, so both orders agree) and a tiny random model with the
real SmolLM2 tokenizer; each swap must find its text, so the tutorial cannot drift away from what is run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from caikit.testing.fake_api import FakeAPIServer

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "tutorial.md"
SERVER = "http://127.0.0.1:8080/v1"


def shell_blocks(markdown: str) -> list[str]:
    """The ```bash blocks of a page, in order (```console and ```yaml blocks are shown, not run)."""
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.M | re.S)


def test_the_tutorial_has_its_steps():
    blocks = shell_blocks(TUTORIAL.read_text(encoding="utf-8"))
    text = "\n".join(blocks)
    for step in ("caikit init", "caikit constitution validate", "caikit probe", "caikit run caikit.yaml",
                 "caikit report", "caikit export"):
        assert step in text, step
    assert "../shared" not in TUTORIAL.read_text(encoding="utf-8")


def test_every_shell_block_of_the_tutorial_runs(tmp_path, tiny_model_dir, monkeypatch):
    from test_run import content_judge

    markdown = TUTORIAL.read_text(encoding="utf-8")
    with FakeAPIServer(logprobs=content_judge) as server:
        swaps = {SERVER: server.openai_base_url, "policy: smollm2": f"policy: {tiny_model_dir}"}
        script = "\n".join(shell_blocks(markdown))
        for old, new in swaps.items():
            assert old in script, f"the tutorial no longer says {old!r}: update tests/test_tutorial.py"
            script = script.replace(old, new)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "caikit"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m caikit.cli "$@"\n')
        shim.chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
               "OPENAI_API_KEY": ""}
        work = tmp_path / "work"
        work.mkdir()
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + "\n" + done.stderr[-6000:]
    run = work / "my-project" / "outputs" / "support-desk"
    state = json.loads((run / "state.json").read_text())
    assert {k: v["status"] for k, v in state["stages"].items()} == {
        s: "done" for s in ("generate", "judge", "sft", "dpo", "eval")}
    assert (run / "report.html").stat().st_size > 0
    assert (run / "judge" / "export" / "preferences" / "train.jsonl").exists()
    # the constitution the tutorial wrote is the one the run used
    assert "honest-limits" in (run / "generate" / "traces.jsonl").read_text() or \
        "private-data" in (run / "generate" / "traces.jsonl").read_text()
