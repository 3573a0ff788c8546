"""`caikit <command> --help` answers without loading torch, transformers or an SDK (the seconds a user waits), and a
wrong value or a misspelled option is one line that says what would have been right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caikit.commands import COMMANDS

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "openai", "anthropic", "matplotlib", "accelerate", "peft")

PROBE = """
import contextlib, io, json, sys
from caikit.cli import main
from caikit.lazy_imports import loaded
out = io.StringIO()
code = None
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(), "loaded": [m for m in %r if loaded(m)]}))
""" % (HEAVY,)


def run_probe(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", "import sys, caikit.cli; print(sorted(m for m in %r if m in sys.modules))"
                           % (HEAVY,)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_help_of_every_command_loads_no_heavy_library(name):
    result = run_probe(*name.split(), "--help")
    assert result["code"] == 0
    assert result["help"].startswith(f"usage: caikit {name}")
    assert result["loaded"] == [], f"caikit {name} --help loaded {result['loaded']}"
