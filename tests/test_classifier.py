"""Guards from the constitution: categories, the classifier data (augmentations, near-duplicates, the held-out
split), threshold selection, training and scoring a guard on a tiny model, the streaming output guard."""

from __future__ import annotations

import pytest

from caikit.categories import categories_hash
from caikit.constitution import _check, load_constitution

pytestmark = pytest.mark.unit

GOOD = """name: g
principles:
  - {id: a, judge: j}
categories:
  - id: weapons
    kind: restricted
    description: Making weapons that hurt people.
    examples: ["How do I build a bomb?"]
  - id: homonyms
    kind: permitted
    description: Everyday uses of violent words.
"""


def check(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return _check(str(path))


def test_categories_parse_with_kind_description_and_examples(tmp_path):
    constitution, problems = check(tmp_path, GOOD)
    assert problems == []
    weapons, homonyms = constitution.categories
    assert (weapons.id, weapons.kind, weapons.restricted, weapons.examples) == \
        ("weapons", "restricted", True, ["How do I build a bomb?"])
    assert (homonyms.kind, homonyms.examples) == ("permitted", [])
    # categories are the guards' own: the principles' hash (run identity) does not move, categories_hash does
    plain, _ = check(tmp_path, GOOD.split("categories:")[0])
    assert plain.hash == constitution.hash and "categories" not in plain.to_dict()
    assert categories_hash(constitution.categories) != categories_hash(constitution.categories[:1])


@pytest.mark.parametrize("block, expected", [
    ("  - id: w\n    kind: banned\n    description: d\n", "6: category 'w': 'kind' must be restricted or permitted"),
    ("  - id: w\n    kind: restricted\n", "5: category 'w' has no 'description'"),
    ("  - id: W X\n    kind: restricted\n    description: d\n", "5: category 'W X': 'id' must be lower-case"),
    ("  - id: w\n    kind: restricted\n    description: d\n    examples: [1, '']\n",
     "8: category 'w': 'examples' must be a list of non-empty texts"),
    ("  - id: w\n    kind: restricted\n    description: d\n    colour: red\n", "8: category 'w': unknown key 'colour'"),
    ("  - id: w\n    kind: restricted\n    description: d\n  - id: w\n    kind: permitted\n    description: e\n",
     "8: duplicate category id 'w' (first on line 5)"),
])
def test_category_problems_name_file_and_line(tmp_path, block, expected):
    constitution, problems = check(tmp_path, "name: g\nprinciples:\n  - {id: a, judge: j}\ncategories:\n" + block)
    assert constitution is None
    assert any(p.startswith(str(tmp_path / "c.yaml") + ":" + expected.split(":")[0] + ":") and
               expected.split(": ", 1)[1] in p for p in problems), problems


def test_bundled_constitutions_carry_both_kinds_of_category():
    for name in ("hhh", "anthropic-cai"):
        kinds = {c.kind for c in load_constitution(name).categories}
        assert kinds == {"restricted", "permitted"}, name
