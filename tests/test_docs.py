"""The README says what the code does: its option tables are generated from the option definitions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def test_readme_option_tables_match_the_definitions():
    spec = importlib.util.spec_from_file_location("options_doc", REPO / "scripts" / "options_doc.py")
    options_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(options_doc)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert options_doc.tables() in readme, "README option tables are stale: run python scripts/options_doc.py --write"
    assert "`--concurrency` | auto | auto, or a whole number 1 to 4,096" in readme


def test_readme_documents_every_exit_code_and_command():
    from caikit.commands import COMMANDS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 130 |"):
        assert code in readme
    missing = [c.name for c in COMMANDS if f"caikit {c.name}" not in readme]
    assert missing == []
