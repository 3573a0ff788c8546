"""kill -9 in the middle of a caikit command, for the tests that then rerun it and check that nothing was lost and
nothing was paid for twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def caikit(*args: str) -> list[str]:
    """A caikit command line run in a process of its own (so that it can be killed)."""
    return [sys.executable, "-m", "caikit.cli", *args]


def lines(path: Path) -> int:
    """Newline-ended rows in `path` so far (0 before it exists)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_9_when(cmd: list[str], ready: Callable[[], bool], *, env: dict[str, str] | None = None,
                timeout: float = 60.0) -> None:
    """Start `cmd`, wait until `ready()` holds, then kill -9 it and wait for it to end. Fails when the command
    ended first (it was never killed mid-run) or `ready()` never held."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, f"not ready to be killed after {timeout:.0f} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def rerun(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 180.0) -> str:
    """Run `cmd` to the end; it must exit 0. Returns its stderr."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stderr
