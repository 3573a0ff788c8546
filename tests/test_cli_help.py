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
    code = "import sys, caikit.cli; print(sorted(m for m in %r if m in sys.modules))" % (HEAVY,)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_help_of_every_command_loads_no_heavy_library(name):
    result = run_probe(*name.split(), "--help")
    assert result["code"] == 0
    assert result["help"].startswith(f"usage: caikit {name}")
    assert result["loaded"] == [], f"caikit {name} --help loaded {result['loaded']}"


@pytest.mark.parametrize("argv, line", [
    (["train", "dpo", "--out", "x", "--loss", "sigmod"],
     "caikit train dpo: error: --loss must be one of sigmoid, cdpo, ipo, orpo, simpo, got 'sigmod' "
     "(did you mean 'sigmoid'?)"),
    (["generate", "--concurency", "8"],
     "caikit generate: error: unknown option --concurency (did you mean --concurrency?)"),
    (["train", "sft", "--out", "x", "--batch-size", "2.5"],
     "caikit train sft: error: --batch-size must be a whole number 1 to 65,536, got '2.5'"),
    (["train", "dpo", "--out", "x", "--lr", "abc"],
     "caikit train dpo: error: --lr must be a number > 0 and <= 1, got 'abc'"),
    (["train", "dpo", "--out", "x", "--lr"], "caikit train dpo: error: --lr needs a value"),
    (["generate", "--limit", "-1"], "caikit generate: error: --limit must be >= 0, got -1"),
])
def test_a_wrong_value_is_one_line_saying_what_is_right(argv, line, capsys):
    from caikit.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert captured.out == ""


def test_a_misspelled_config_key_gets_a_suggestion(tmp_path, capsys):
    from caikit.cli import main

    config = tmp_path / "gen.yaml"
    config.write_text("max_token: 64\n")
    assert main(["generate", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "unknown option 'max_token' (did you mean 'max_tokens'?)" in line and str(config) in line


def test_a_misspelled_stage_of_a_run_file_gets_a_suggestion(tmp_path, capsys):
    from caikit.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("name: x\nstages:\n  genrate: {limit: 2}\n")
    assert main(["run", str(config)]) == 2
    assert "unknown stage(s) genrate (did you mean 'generate'?)" in capsys.readouterr().err


def test_an_unknown_model_stops_at_once_when_the_hub_is_off(monkeypatch):
    from huggingface_hub import constants

    from caikit.errors import UserError
    from caikit.models import resolve_model_path

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"):
        resolve_model_path("someorg/not-a-model-xyz")


def test_an_unknown_model_stops_at_once_when_the_hub_cannot_be_reached(monkeypatch):
    import socket

    from huggingface_hub import constants

    from caikit.errors import UserError
    from caikit.models import resolve_model_path

    with socket.socket() as closed:  # a loopback port nothing listens on: the connect is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=r"the Hub \(127.0.0.1\) cannot be reached"):
        resolve_model_path("someorg/not-a-model-xyz")
    with pytest.raises(UserError, match="not a Hugging Face id"):
        resolve_model_path("not a model name")
