"""`caikit run`: the whole loop on a tiny model with a loopback judge; stage skipping by config hash."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import yaml

from caikit.cli import main as cli_main
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-SENTINEL-run-0123456789abcdef"


def content_judge(request):
    """Prefers one response by content (not position), so both orders agree and pairs are not ties."""
    text = request.messages[-1]["content"]
    a = re.search(r"\(A\) <response_a>\n(.*?)\n</response_a>", text, re.S).group(1)
    b = re.search(r"\(B\) <response_b>\n(.*?)\n</response_b>", text, re.S).group(1)
    a_better = hashlib.sha256(a.encode()).hexdigest() < hashlib.sha256(b.encode()).hexdigest()
    return {"A": -0.2, "B": -2.0} if a_better else {"A": -2.0, "B": -0.2}


@pytest.fixture
def judge_server(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeAPIServer(logprobs=content_judge) as server:
        yield server


def write_run_config(path, tiny_model_dir, server, *, dpo_beta=0.1):
    run = {
        "name": "tiny",
        "out": str(path.parent / "run"),
        "constitution": "hhh",
        "policy": tiny_model_dir,
        "seed": 0,
        "stages": {
            # a random tiny model talks until --max-tokens: its revisions are all cut, kept here on purpose
            "generate": {"backend": "local", "model": tiny_model_dir, "limit": 4, "max_tokens": 8, "few_shot": 0,
                         "keep_truncated": True, "keep_degenerate": True, "progress": False},
            "judge": {"backend": "openai", "model": "fake-judge", "base_url": server.openai_base_url,
                      "keep_truncated": True, "keep_degenerate": True, "progress": False},
            "sft": {"max_steps": 2, "batch_size": 2, "max_length": 128, "eval_fraction": 0.0},
            "dpo": {"max_steps": 2, "batch_size": 2, "max_length": 128, "beta": dpo_beta, "eval_fraction": 0.0},
            "eval": {"judge": f"openai:fake-judge@{server.openai_base_url}", "limit": 2, "max_tokens": 8,
                     "progress": False},
        },
    }
    path.write_text(yaml.safe_dump(run))
    return path


def stage_lines(err: str) -> dict[str, str]:
    out = {}
    for line in err.splitlines():
        if line.startswith("caikit run: ") and ":" in line[len("caikit run: "):]:
            name, _, what = line[len("caikit run: "):].partition(":")
            out[name.strip()] = what.strip()
        elif line.startswith("caikit run: ") and "->" in line:
            out[line[len("caikit run: "):].split(" ->")[0]] = "ran"
    return out


def test_whole_loop_then_resume_then_partial_rerun(tmp_path, tiny_model_dir, judge_server, capsys):
    config = write_run_config(tmp_path / "run.yaml", tiny_model_dir, judge_server)
    assert cli_main(["run", str(config)]) == 0
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    assert {k: v["status"] for k, v in state["stages"].items()} == {s: "done" for s in
                                                                     ("generate", "judge", "sft", "dpo", "eval")}
    assert (run / "generate" / "sft.jsonl").exists() and (run / "judge" / "preferences.jsonl").exists()
    assert (run / "dpo" / "model.safetensors").exists() or any((run / "dpo").glob("*.safetensors"))
    report = (run / "report.html").read_text()
    assert "tiny" in report and KEY not in report
    capsys.readouterr()

    assert cli_main(["run", str(config)]) == 0  # nothing changed: every stage skipped
    lines = stage_lines(capsys.readouterr().err)
    assert all(lines.get(s) == "up to date, skipped" for s in ("generate", "judge", "sft", "dpo", "eval")), lines

    write_run_config(config, tiny_model_dir, judge_server, dpo_beta=0.5)  # change one stage
    assert cli_main(["run", str(config)]) == 0
    lines = stage_lines(capsys.readouterr().err)
    assert [s for s in ("generate", "judge", "sft") if lines.get(s) == "up to date, skipped"] == \
        ["generate", "judge", "sft"]
    assert lines.get("dpo") == "ran" and lines.get("eval") == "ran", lines


def test_bad_run_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  generat: {}\n")
    assert cli_main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "generat" in err and len(err.strip().splitlines()) == 1


def test_typo_in_a_stage_fails_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "out": str(tmp_path / "run"),
                                   "stages": {"generate": {"limit": 2}, "dpo": {"betta": 0.1}}}))
    assert cli_main(["run", str(bad)]) == 2
    assert "betta" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
