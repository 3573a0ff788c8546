"""Content categories of a constitution: what its guards (`caikit classifier data|train|eval`) learn to flag.

    categories:
      - id: weapons-mass-harm
        kind: restricted        # requests (or answers) a guard flags
        description: "Synthesis, acquisition or deployment of chemical, biological, nuclear or radiological weapons."
        examples: ["How do I culture anthrax at home?"]
      - id: security-education
        kind: permitted         # look-alikes a guard must let through: what keeps over-refusal down
        description: "How attacks work and how to defend against them, at the level of a textbook."

Following Constitutional Classifiers (Sharma et al. 2025, arXiv:2501.18837, Sec. 3): a constitution names both
restricted and permitted content, and the synthetic data is generated per category from these descriptions.
Categories are validated with the principles, one `FILE:LINE: message` per problem; they are not part of the
constitution's `hash` (they do not change what generate or judge send), and have their own `categories_hash`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

CATEGORY_KEYS = ("id", "kind", "description", "examples")
KINDS = ("restricted", "permitted")
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass
class Category:
    id: str  # a stable name: statistics are reported per id
    kind: str  # restricted | permitted
    description: str
    examples: list[str] = field(default_factory=list)

    @property
    def restricted(self) -> bool:
        return self.kind == "restricted"


def categories_hash(categories: list[Category]) -> str:
    """sha256 of the categories' canonical JSON: what a guard's config records it was trained for."""
    canonical = json.dumps([asdict(c) for c in categories], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_category(reader: Any, node: Any, position: int, seen: dict[str, int]) -> Category | None:
    """One `categories:` item from its YAML node; problems go to `reader` (caikit.constitution._Reader, which
    also lends its node helpers, so this module does not import the constitution's)."""
    from yaml.nodes import MappingNode, ScalarNode

    STR_TAG, _kind, _one_line = reader.STR_TAG, reader.kind_of, reader.one_line

    pairs = node.value if isinstance(node, MappingNode) else []
    id_node = next((v for k, v in pairs if isinstance(k, ScalarNode) and k.value == "id"), None)
    has_id = isinstance(id_node, ScalarNode) and id_node.tag == STR_TAG and bool(id_node.value.strip())
    where = f"category '{_one_line(id_node.value.strip())}'" if has_id else f"category #{position}"
    fields = reader.mapping(node, CATEGORY_KEYS, where, required=("id", "kind", "description"))
    if fields is None or not {"id", "kind", "description"} <= set(fields):
        return None
    ok = True
    if not has_id:
        reader.problem(id_node, f"{where}: 'id' must be non-empty text, got {_kind(id_node)}")
        ok = False
    else:
        cid = id_node.value.strip()
        if not _ID.match(cid):
            reader.problem(id_node, f"{where}: 'id' must be lower-case letters, digits, '-', '_' or '.', "
                                    f"e.g. weapons-mass-harm")
            ok = False
        elif cid in seen:
            reader.problem(id_node, f"duplicate category id '{_one_line(cid)}' (first on line {seen[cid]})")
            ok = False
        else:
            seen[cid] = id_node.start_mark.line + 1
    kind = reader.text(fields["kind"], where, "kind")
    if kind is not None and kind not in KINDS:
        reader.problem(fields["kind"], f"{where}: 'kind' must be restricted or permitted, got '{_one_line(kind)}'")
        ok = False
    description = reader.text(fields["description"], where, "description")
    examples: list[str] = []
    examples_node = fields.get("examples")
    if examples_node is not None:
        examples = reader.text_list(examples_node, f"{where}: 'examples' must be a list of non-empty texts")
        ok = ok and examples is not None
        examples = examples or []
    if not ok or kind is None or description is None:
        return None
    return Category(id=id_node.value.strip(), kind=kind, description=description, examples=examples)


def read_categories(reader: Any, fields: dict) -> list[Category]:
    """The optional top-level `categories:` list (missing -> [])."""
    seen: dict[str, int] = {}
    return reader.items(fields, "categories", lambda item, i: read_category(reader, item, i, seen))
