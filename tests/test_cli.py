"""The command line: help, config files with flag overrides, one-line errors, init."""

from __future__ import annotations

import subprocess
import sys

import pytest

from caikit.cli import COMMANDS, main as cli_main
from caikit.config import resolve
from caikit.commands.generate import GenerateConfig


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "caikit.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_command(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("generate", "judge", "train sft", "train dpo", "train ppo", "eval judge", "report", "demo", "run"):
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_command_help_documents_each_flag():
    r = run_cli("generate", "--help")
    assert r.returncode == 0
    for flag in ("--constitution", "--prompts", "--out", "--backend", "--model", "--base-url", "--rounds",
                 "--concurrency", "--limit", "--seed", "--rpm", "--tpm"):
        assert flag in r.stdout


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_command_has_working_help(command):
    assert run_cli(*command.split(), "--help").returncode == 0


def test_yaml_config_then_flags_win(tmp_path):
    cfg_file = tmp_path / "gen.yaml"
    cfg_file.write_text("rounds: 3\nconcurrency: 4\nmodel: from-file\n")
    import argparse

    cfg = resolve(GenerateConfig, argparse.Namespace(concurrency=9), config_file=str(cfg_file))
    assert (cfg.rounds, cfg.requests_in_flight(), cfg.model) == (3, 9, "from-file")


def test_unknown_key_in_config_file_is_one_line_error(tmp_path):
    cfg_file = tmp_path / "gen.yaml"
    cfg_file.write_text("roundz: 3\n")
    r = run_cli("generate", "--config", str(cfg_file))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "gen.yaml" in r.stderr and "roundz" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_yaml_names_file_and_line(tmp_path):
    cfg_file = tmp_path / "gen.yaml"
    cfg_file.write_text("rounds: 1\nmodel: [unclosed\n")
    r = run_cli("generate", "--config", str(cfg_file))
    assert r.returncode == 2 and "gen.yaml:" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flag,value", [("--rounds", "0"), ("--concurrency", "0")])
def test_invalid_values_rejected(flag, value):
    r = run_cli("generate", flag, value)
    assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path):
    r = run_cli("init", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"constitution.yaml", "prompts.jsonl", "caikit.yaml"}
    assert run_cli("constitution", "validate", str(tmp_path / "constitution.yaml")).returncode == 0
    from caikit.constitution import load_constitution

    starter = load_constitution(tmp_path / "constitution.yaml")  # every principle comes with cases to test it by
    assert all(p.judge_cases and p.critique_cases for p in starter.principles)
    assert "caikit constitution test" in r.stderr
    again = run_cli("init", "--out", str(tmp_path))
    assert again.returncode == 2 and "--force" in again.stderr
    assert run_cli("init", "--out", str(tmp_path), "--force").returncode == 0
