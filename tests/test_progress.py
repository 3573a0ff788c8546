"""Progress counts what progresses: requests per named phase, ETA from the request rate, plain lines outside a
terminal, nothing for an empty phase, and no third-party bars."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys

import pytest

import caikit.progress as progress_mod
from caikit.progress import Progress, count_request, phase
from caikit.runner import run_all

pytestmark = pytest.mark.unit


def test_batch_wise_phases_move_the_count_before_any_item_finishes():
    """A local backend answers every prompt before any critique: the item count stays 0, the request count moves."""
    out = io.StringIO()
    bar = Progress("generate", 4, per_item={"answer": 1, "critique": 1, "revise": 1}, stream=out, interval=0)
    with bar.active():
        with phase("answer"):
            for _ in range(4):
                count_request()
    lines = out.getvalue().splitlines()
    assert bar.items_done == 0 and bar.progressed() == 4
    assert lines[3].startswith("generate: 4/12 requests (answer 4/4, critique 0/4, revise 0/4), ")
    assert "ETA " in lines[2] and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_an_empty_phase_draws_nothing():
    out = io.StringIO()
    with Progress("judge", 0, stream=out, interval=0).active():
        pass
    assert out.getvalue() == ""


def test_run_all_prints_one_plain_line_per_interval_outside_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress_mod, "PLAIN_INTERVAL", 0.0)

    async def work(item):
        with phase("answer"):
            count_request()
        with phase("revise"):
            count_request()
        return item != 2

    ok, failed = asyncio.run(run_all(range(3), work, concurrency=1, desc="generate",
                                     per_item={"answer": 1, "revise": 1}))
    err = capsys.readouterr().err
    assert (ok, failed) == (2, 1)
    assert err.splitlines()[-1].startswith("generate: 6/6 requests (answer 3/3, revise 3/3)")
    assert err.splitlines()[-1].endswith("failed 1") and "\r" not in err


def test_third_party_progress_bars_are_off_under_the_cli():
    code = ("import os, caikit.cli as c\n"
            "try:\n    c.main(['init', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ['HF_HUB_DISABLE_PROGRESS_BARS'], os.environ['HF_DATASETS_DISABLE_PROGRESS_BARS'])")
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.splitlines()[-1] == "1 1"


def test_a_trainer_outside_a_terminal_writes_plain_lines(capsys):
    from caikit.progress import PlainBar, step_bar

    out = io.StringIO()
    bar = PlainBar(4, initial=1, desc="dpo", stream=out, interval=0)
    bar.set_postfix(loss="0.69")
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("dpo: 2/4 steps, ") and "ETA " in lines[0] and lines[0].endswith(", loss 0.69")
    assert lines[-1].startswith("dpo: 2/4 steps, ") and "\r" not in out.getvalue()
    assert isinstance(step_bar(3, desc="sft"), PlainBar)  # pytest's stderr is not a terminal
