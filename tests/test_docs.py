"""The documentation says what the code does: the command reference is generated from the option definitions, the
site builds with no warning, README stays a front door, and every command and exit code is documented."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def options_doc():
    spec = importlib.util.spec_from_file_location("options_doc", REPO / "scripts" / "options_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def test_command_reference_matches_the_definitions():
    generator = options_doc()
    page = (DOCS / "reference" / "commands.md").read_text(encoding="utf-8")
    assert generator.page() == page, "docs/reference/commands.md is stale: run python scripts/options_doc.py --write"
    assert "| `--concurrency` | `auto` | auto, or a whole number 1 to 4,096 |" in page


def test_each_trainer_shows_its_own_learning_rate_default():
    """One table per command, each from that command's own dataclass: a trainer's override is what it shows."""
    page = (DOCS / "reference" / "commands.md").read_text(encoding="utf-8")
    expected = {"train sft": "2e-05", "train reward": "1e-05", "train dpo": "1e-06", "train kto": "5e-06",
                "train ppo": "5e-06", "train grpo": "5e-06", "train online-dpo": "1e-06"}
    for command, lr in expected.items():
        section = page.split(f"## caikit {command}\n", 1)[1].split("\n## ", 1)[0]
        assert f"| `--lr` | `{lr}` |" in section, command


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for step in ("caikit init", "caikit run caikit.yaml"):
        assert step in readme


def test_every_exit_code_and_command_is_documented():
    from caikit.commands import COMMANDS

    docs = (REPO / "README.md").read_text(encoding="utf-8") + site_text()
    codes = (DOCS / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |"):
        assert code in codes
    missing = [c.name for c in COMMANDS if f"## caikit {c.name}\n" not in docs]
    assert missing == []


def test_user_docs_hold_no_placeholder_figures_or_outside_paths():
    for path in [REPO / "README.md", *DOCS.rglob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for bad in ("not measured (", "no GPU while", "../shared/", "no GPU in this task"):
            assert bad not in text, f"{path.relative_to(REPO)}: {bad!r}"


def test_site_builds_with_no_warning(tmp_path):
    pytest.importorskip("mkdocs", reason="pip install -e '.[docs]' to build the site")
    pytest.importorskip("material", reason="pip install -e '.[docs]' to build the site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert not re.search(r"^(WARNING|ERROR)", done.stderr, re.M), done.stderr[-4000:]
    assert (tmp_path / "site" / "tutorial" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "commands" / "index.html").exists()


def test_readme_links_point_at_pages_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme) if "://" not in link]
    assert links and [link for link in links if not (REPO / link).exists()] == []
