"""Constitutions: the principles that drive critique/revision (SL-CAI) and the AI judge (RL-CAI).

A constitution is a YAML file (see constitutions/*.yaml). Validation walks the composed YAML nodes
rather than the loaded dict so that every problem names its line: `FILE:LINE: message`. All the
problems of a file are collected before anything is raised.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import caikit
from caikit.config import option
from caikit.errors import MultiError, UserError

TOP_KEYS = ("name", "version", "description", "source", "license", "principles", "few_shot", "judge_few_shot",
            "categories")  # categories: caikit/categories.py
PRINCIPLE_KEYS = ("id", "critique", "revision", "judge", "weight", "tags", "judge_weight", "cases")
CASE_KEYS = ("prompt", "better", "worse", "flag")  # judge case: prompt/better/worse; critique case: prompt/flag
FEW_SHOT_KEYS = ("prompt", "response", "rounds")
ROUND_KEYS = ("critique_request", "critique", "revision_request", "revision")
JUDGE_FEW_SHOT_KEYS = ("prompt", "chosen", "rejected")
MESSAGE_KEYS = ("role", "content")
ROLES = ("system", "user", "assistant")
STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
INT_TAG = "tag:yaml.org,2002:int"
NUMBER_TAGS = (INT_TAG, "tag:yaml.org,2002:float")


@dataclass
class Case:
    """A test case `caikit constitution test` runs. A judge case: the principle should prefer `better` over
    `worse` as replies to `prompt`. A critique case: the principle's critique should find a problem in `flag`."""

    prompt: list[dict[str, str]]
    better: str | None = None
    worse: str | None = None
    flag: str | None = None
    line: int = field(default=0, compare=False)  # where it starts in the file (for FILE:LINE in reports)

    @property
    def kind(self) -> str:
        return "critique" if self.flag is not None else "judge"


@dataclass
class Principle:
    """One principle. `critique`+`revision` serve the SL-CAI stages, `judge` the preference stage."""

    id: str
    critique: str | None = None  # critique request, e.g. "Identify specific ways in which ..."
    revision: str | None = None  # revision request, e.g. "Please rewrite the assistant response ..."
    judge: str | None = None  # comparison instruction, e.g. "Please choose the response that ..."
    weight: float = 1.0  # relative sampling weight
    tags: list[str] = field(default_factory=list)
    # the principle's share of the judge's verdict (e.g. fitted by `caikit constitution fit`); None: `weight`.
    # The judge draws principles in proportion to it and, when every principle judges every pair, averages
    # their verdicts with it; 0 turns the principle off in the judge (its critique, if any, still runs).
    judge_weight: float | None = None
    cases: list[Case] = field(default_factory=list)  # what `caikit constitution test` runs; not in the hash

    @property
    def judge_cases(self) -> list[Case]:
        return [c for c in self.cases if c.kind == "judge"]

    @property
    def critique_cases(self) -> list[Case]:
        return [c for c in self.cases if c.kind == "critique"]

    @property
    def has_critique(self) -> bool:
        return self.critique is not None and self.revision is not None

    @property
    def has_judge(self) -> bool:
        return self.judge is not None

    @property
    def judge_share(self) -> float:
        """The weight the judge gives this principle: `judge_weight` where set, else `weight`."""
        return self.weight if self.judge_weight is None else self.judge_weight


@dataclass
class CritiqueRound:
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclass
class FewShotExample:
    """A critique/revision demonstration: conversation (ends with a user turn), response, rounds."""

    prompt: list[dict[str, str]]
    response: str
    rounds: list[CritiqueRound]


@dataclass
class JudgeExample:
    """A judge demonstration: the better (`chosen`) and worse (`rejected`) reply to `prompt`."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    version: int | str = 1
    description: str = ""
    source: str | None = None
    license: str | None = None
    few_shot: list[FewShotExample] = field(default_factory=list)
    judge_few_shot: list[JudgeExample] = field(default_factory=list)
    path: Path | None = None
    categories: list = field(default_factory=list)  # caikit.categories.Category: what guards learn to flag

    @property
    def critique_principles(self) -> list[Principle]:
        return [p for p in self.principles if p.has_critique]

    @property
    def judge_principles(self) -> list[Principle]:
        """The principles the judge applies (a judge instruction, and a judge share above 0)."""
        return [p for p in self.principles if p.has_judge and p.judge_share > 0]

    def get(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise UserError(f"constitution '{self.name}' has no principle '{principle_id}'")

    def sample(self, rng: random.Random, kind: Literal["critique", "judge"] = "critique", k: int = 1,
               distinct: bool = True) -> list[Principle]:
        """Draw `k` principles of `kind` with probability proportional to `weight`.

        The CAI paper draws a principle at random for each critique/revision step (Bai et al. 2022,
        Sec. 3.1). distinct=True draws without replacement (each draw re-normalises the weights of
        what is left), so a multi-round trace or a multi-principle judge prompt never repeats one.
        """
        if kind not in ("critique", "judge"):
            raise ValueError(f"kind must be 'critique' or 'judge', got {kind!r}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        pool = self.critique_principles if kind == "critique" else self.judge_principles
        if not pool and k:
            raise UserError(f"constitution '{self.name}' has no {kind} principles")
        share = (lambda p: p.weight) if kind == "critique" else (lambda p: p.judge_share)
        if not distinct:
            return rng.choices(pool, weights=[share(p) for p in pool], k=k)
        if k > len(pool):
            raise UserError(f"constitution '{self.name}' has {len(pool)} {kind} principles; "
                            f"cannot draw {k} distinct ones")
        return weighted_sample(rng, pool, k, share)

    def to_dict(self) -> dict[str, Any]:
        """The content of the file (no path, no line numbers), with defaults filled in (an unset judge_weight left
        out, so the hash of a constitution without one is what it always was)."""
        data = asdict(self)
        data.pop("path")
        if not data["categories"]:  # a constitution without guards reads as before
            data.pop("categories")
        for principle in data["principles"]:
            if principle["judge_weight"] is None:
                del principle["judge_weight"]
            for case in principle["cases"]:
                case.pop("line")
        return data

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON content: comments and YAML layout do not change it, and neither do the
        test cases (they change no judgment or trace, so editing them keeps every run directory's identity) or
        the guards' categories (those have their own categories_hash)."""
        data = {k: v for k, v in self.to_dict().items() if k != "categories"}
        for principle in data["principles"]:
            principle.pop("cases")
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- locating files --------------------------------------------------------------------------------


def weighted_sample(rng: random.Random, pool: list[Principle], k: int, share=lambda p: p.weight) -> list[Principle]:
    """`k` distinct principles of `pool`, each draw proportional to `share(p)` (default `weight`) among those
    left."""
    remaining, drawn = list(pool), []
    for _ in range(min(k, len(pool))):
        index = rng.choices(range(len(remaining)), weights=[share(p) for p in remaining])[0]
        drawn.append(remaining.pop(index))
    return drawn


def bundled_dirs() -> list[Path]:
    """Repo-level `constitutions/` (editable installs), then `caikit/constitutions` (wheels)."""
    package = Path(caikit.__file__).resolve().parent
    return [d for d in (package.parent / "constitutions", package / "constitutions") if d.is_dir()]


def bundled_constitutions() -> dict[str, Path]:
    """Bundled constitution names (file stems) -> paths; the first directory wins."""
    found: dict[str, Path] = {}
    for directory in bundled_dirs():
        for path in sorted(directory.glob("*.y*ml")):
            found.setdefault(path.stem, path)
    return found


def resolve_constitution_path(path_or_name: str | Path) -> Path | None:
    """An existing path as given, else a bundled name like `hhh`; None when neither exists."""
    path = Path(path_or_name)
    if path.exists():
        return path
    if len(path.parts) == 1 and path.suffix not in (".yaml", ".yml"):
        return bundled_constitutions().get(str(path_or_name))
    return None


def load_constitution(path_or_name: str | Path) -> Constitution:
    """Load and validate a constitution file or bundled name; raises MultiError listing every problem."""
    if resolve_constitution_path(path_or_name) is None:
        names = ", ".join(bundled_constitutions()) or "none"
        raise UserError(f"no such constitution file or bundled name (bundled: {names})", path=str(path_or_name))
    constitution, problems = _check(path_or_name)
    if problems or constitution is None:
        raise MultiError(problems)
    return constitution


def validate_file(path: str | Path) -> list[str]:
    """Every problem of one file as `FILE:LINE: message` lines; [] when it is valid."""
    return _check(path)[1]


def _check(path_or_name: str | Path) -> tuple[Constitution | None, list[str]]:
    resolved = resolve_constitution_path(path_or_name)
    if resolved is None:
        return None, [f"{path_or_name}: no such file"]
    return _parse_file(resolved, str(path_or_name) if Path(path_or_name).exists() else str(resolved))


# --- validation --------------------------------------------------------------------------------------


def _number(node: Node) -> int | float | None:
    """The int or float a scalar node holds; None for any other node, and for text under an explicit
    `!!int` / `!!float` tag that is no number (the constructor would raise). Other tags, `!!python/...`
    included, are never constructed."""
    if not isinstance(node, ScalarNode) or node.tag not in NUMBER_TAGS:
        return None
    try:
        return SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError):
        return None


def _one_line(text: str, limit: int = 80) -> str:
    """`text` for a one-line message: control characters escaped, cut at `limit`."""
    text = text if text.isprintable() else json.dumps(text, ensure_ascii=False)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(node: Node) -> str:
    if isinstance(node, (MappingNode, SequenceNode)):
        return "a mapping" if isinstance(node, MappingNode) else "a list"
    if node.tag in (NULL_TAG, STR_TAG):
        return {NULL_TAG: "nothing", STR_TAG: "text"}[node.tag]
    value = _one_line(" ".join(str(node.value).split()), 40)  # however the scalar was written
    return value if node.tag in NUMBER_TAGS else f"{node.tag.replace('tag:yaml.org,2002:', '!!')} {value}".strip()


class _Reader:
    """Builds constitution values from YAML nodes, recording one `FILE:LINE: message` per problem."""

    STR_TAG = STR_TAG  # lent to caikit.categories with the two helpers below
    kind_of = staticmethod(lambda node: _kind(node))
    one_line = staticmethod(lambda text, limit=80: _one_line(text, limit))

    def __init__(self, label: str):
        self.label = label
        self.problems: list[tuple[int, str]] = []

    def problem(self, node: Node | int, message: str) -> None:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        self.problems.append((line, f"{self.label}:{line}: {message}"))

    def mapping(self, node: Node, known: tuple[str, ...], where: str,
                required: tuple[str, ...] = ()) -> dict[str, Node] | None:
        """Keys -> value nodes; reports non-mappings, unknown, duplicate and missing keys."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{where} must be a mapping, got {_kind(node)}")
            return None
        fields: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key in fields:
                self.problem(key_node, f"{where}: duplicate key '{_one_line(str(key))}'")
            elif key not in known:
                name = _one_line(key) if key else ("" if key == "" else _kind(key_node))
                self.problem(key_node, f"{where}: unknown key '{name}' (known: {', '.join(known)})")
            else:
                fields[key] = value_node
        for key in required:
            if key not in fields:
                self.problem(node, f"{where} has no '{key}'")
        return fields

    def text(self, node: Node, where: str, key: str) -> str | None:
        """A non-empty string, stripped (so block-scalar chomping does not change the content)."""
        if isinstance(node, ScalarNode) and node.tag in (NULL_TAG, STR_TAG) and not node.value.strip():
            self.problem(node, f"{where}: '{key}' is empty")
        elif not isinstance(node, ScalarNode) or node.tag != STR_TAG:
            self.problem(node, f"{where}: '{key}' must be text, got {_kind(node)}")
        else:
            return node.value.strip()
        return None

    def texts(self, fields: dict[str, Node], keys: tuple[str, ...], where: str) -> dict[str, str] | None:
        """The texts under `keys` present in `fields`; None if any of them (or any key) is missing."""
        values = {key: self.text(fields[key], where, key) for key in keys if key in fields}
        return values if len(values) == len(keys) and None not in values.values() else None

    def messages(self, node: Node, where: str) -> list[dict[str, str]] | None:
        """A prompt: a string (one user turn) or a list of {role, content} ending with a user turn."""
        if isinstance(node, ScalarNode):
            content = self.text(node, where, "prompt")
            return None if content is None else [{"role": "user", "content": content}]
        if not isinstance(node, SequenceNode) or not node.value:
            self.problem(node, f"{where}: 'prompt' must be text or a non-empty list of messages")
            return None
        messages = []
        for i, item in enumerate(node.value, 1):
            fields = self.mapping(item, MESSAGE_KEYS, f"{where}: message {i}", required=MESSAGE_KEYS)
            message = self.texts(fields, MESSAGE_KEYS, f"{where}: message {i}") if fields is not None else None
            if message is None:
                return None
            if message["role"] not in ROLES:
                self.problem(item, f"{where}: message {i}: role must be one of {', '.join(ROLES)}")
                return None
            messages.append(message)
        if messages[-1]["role"] != "user":
            self.problem(node.value[-1], f"{where}: 'prompt' must end with a user message")
            return None
        return messages

    def text_list(self, node, message: str) -> list[str] | None:
        """A YAML list of non-empty texts, stripped; None, with `message` as the problem, for anything else."""
        if not isinstance(node, SequenceNode) or any(
                not isinstance(t, ScalarNode) or t.tag != STR_TAG or not t.value.strip() for t in node.value):
            self.problem(node, message)
            return None
        return [t.value.strip() for t in node.value]

    def principle(self, node: Node, position: int, seen: dict[str, int]) -> Principle | None:
        # Name the principle by its id in every message when it has a usable one.
        pairs = node.value if isinstance(node, MappingNode) else []  # a scalar's value is its text
        id_node = next((v for k, v in pairs if isinstance(k, ScalarNode) and k.value == "id"), None)
        has_id = isinstance(id_node, ScalarNode) and id_node.tag == STR_TAG and bool(id_node.value.strip())
        where = f"principle '{_one_line(id_node.value.strip())}'" if has_id else f"principle #{position}"
        fields = self.mapping(node, PRINCIPLE_KEYS, where, required=("id",))
        if fields is None or "id" not in fields:
            return None
        ok = has_id
        if not has_id:
            self.problem(id_node, f"{where}: 'id' must be non-empty text, got {_kind(id_node)}"
                         + (" (quote it)" if id_node.tag != NULL_TAG and isinstance(id_node, ScalarNode) else ""))
        elif id_node.value.strip() in seen:
            self.problem(id_node, f"duplicate principle id '{_one_line(id_node.value.strip())}' "
                                  f"(first on line {seen[id_node.value.strip()]})")
            ok = False
        else:
            seen[id_node.value.strip()] = id_node.start_mark.line + 1
        present = [key for key in ("critique", "revision", "judge") if key in fields]
        texts = self.texts(fields, tuple(present), where)
        ok = ok and texts is not None
        missing = None
        if ("critique" in fields) != ("revision" in fields):
            missing = f"has no '{'revision' if 'critique' in fields else 'critique'}'"
        elif not present:
            missing = "needs 'critique' and 'revision', or 'judge', or all three"
        if missing:
            self.problem(node, f"{where} {missing}")
            ok = False
        weight, weight_node = 1.0, fields.get("weight")
        if weight_node is not None:
            value = _number(weight_node)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                self.problem(weight_node, f"{where}: 'weight' must be a positive number, got {_kind(weight_node)}")
                ok = False
            else:
                weight = float(value)
        judge_weight, judge_weight_node = None, fields.get("judge_weight")
        if judge_weight_node is not None:
            value = _number(judge_weight_node)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                self.problem(judge_weight_node, f"{where}: 'judge_weight' must be a number >= 0, got "
                                                f"{_kind(judge_weight_node)}")
                ok = False
            elif "judge" not in fields:
                self.problem(judge_weight_node, f"{where}: 'judge_weight' is for principles with a 'judge' instruction")
                ok = False
            else:
                judge_weight = float(value)
        tags, tags_node = [], fields.get("tags")
        if tags_node is not None:
            tags = self.text_list(tags_node, f"{where}: 'tags' must be a list of names, e.g. [harmless]")
            ok = ok and tags is not None
            tags = tags or []
        cases = self.cases(fields["cases"], where, present) if "cases" in fields else []
        if not ok or cases is None:
            return None
        return Principle(id=id_node.value.strip(), weight=weight, tags=tags, judge_weight=judge_weight, cases=cases, **texts)

    def cases(self, node: Node, where: str, present: list[str]) -> list[Case] | None:
        """A principle's test cases: each a judge case (prompt, better, worse) for a principle with 'judge', or
        a critique case (prompt, flag) for one with 'critique'."""
        if not isinstance(node, SequenceNode) or not node.value:
            self.problem(node, f"{where}: 'cases' must be a non-empty list of {{prompt, better, worse}} or "
                               "{prompt, flag}")
            return None
        cases: list[Case] | None = []
        for i, item in enumerate(node.value, 1):
            at = f"{where}: case {i}"
            fields = self.mapping(item, CASE_KEYS, at, required=("prompt",))
            if fields is None or "prompt" not in fields:
                cases = None
                continue
            judge_keys = [k for k in ("better", "worse") if k in fields]
            if "flag" in fields and judge_keys:
                self.problem(item, f"{at}: give 'better' and 'worse' (a judge case) or 'flag' (a critique case), "
                                   "not both")
                cases = None
                continue
            if "flag" not in fields and len(judge_keys) < 2:
                other = "worse" if judge_keys == ["better"] else "better"
                missing = "'better' and 'worse'" if not judge_keys else f"'{other}'"
                self.problem(item, f"{at} has no {missing} (or 'flag' for a critique case)")
                cases = None
                continue
            kind = "critique" if "flag" in fields else "judge"
            if kind not in present:
                self.problem(item, f"{at} is a {kind} case, but the principle has no '{kind}'")
                cases = None
                continue
            prompt = self.messages(fields["prompt"], at)
            answers = self.texts(fields, ("flag",) if kind == "critique" else ("better", "worse"), at)
            if prompt is None or answers is None:
                cases = None
                continue
            if kind == "judge" and answers["better"] == answers["worse"]:
                self.problem(fields["worse"], f"{at}: 'better' and 'worse' are the same text")
                cases = None
                continue
            if cases is not None:
                cases.append(Case(prompt=prompt, line=item.start_mark.line + 1, **answers))
        return cases

    def few_shot(self, node: Node, position: int) -> FewShotExample | None:
        where = f"few_shot #{position}"
        fields = self.mapping(node, FEW_SHOT_KEYS, where, required=FEW_SHOT_KEYS)
        if fields is None or len(fields) < len(FEW_SHOT_KEYS):
            return None
        prompt = self.messages(fields["prompt"], where)
        response = self.text(fields["response"], where, "response")
        rounds_node = fields["rounds"]
        if not isinstance(rounds_node, SequenceNode) or not rounds_node.value:
            self.problem(rounds_node, f"{where}: 'rounds' must be a non-empty list of {{{', '.join(ROUND_KEYS)}}}")
            return None
        rounds = []
        for i, item in enumerate(rounds_node.value, 1):
            round_fields = self.mapping(item, ROUND_KEYS, f"{where} round {i}", required=ROUND_KEYS)
            rounds.append(None if round_fields is None else self.texts(round_fields, ROUND_KEYS, f"{where} round {i}"))
        if prompt is None or response is None or None in rounds:
            return None
        return FewShotExample(prompt=prompt, response=response, rounds=[CritiqueRound(**r) for r in rounds])

    def judge_example(self, node: Node, position: int) -> JudgeExample | None:
        where = f"judge_few_shot #{position}"
        fields = self.mapping(node, JUDGE_FEW_SHOT_KEYS, where, required=JUDGE_FEW_SHOT_KEYS)
        if fields is None or len(fields) < len(JUDGE_FEW_SHOT_KEYS):
            return None
        prompt = self.messages(fields["prompt"], where)
        answers = self.texts(fields, ("chosen", "rejected"), where)
        return None if prompt is None or answers is None else JudgeExample(prompt=prompt, **answers)

    def items(self, fields: dict[str, Node], key: str, build) -> list:
        """Build each item of an optional top-level list; missing -> []."""
        node = fields.get(key)
        if node is None:
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, f"'{key}' must be a list, got {_kind(node)}")
            return []
        return [build(item, i) for i, item in enumerate(node.value, 1)]

    def constitution(self, root: Node | None) -> Constitution | None:
        if root is None:
            self.problem(1, "empty file: expected a mapping with 'name' and 'principles'")
            return None
        fields = self.mapping(root, TOP_KEYS, "top level")
        if fields is None:
            return None
        for key in ("name", "principles"):
            if key not in fields:
                self.problem(root, f"missing '{key}'")
        meta = {key: self.text(fields[key], "top level", key)
                for key in ("name", "description", "source", "license") if key in fields}
        version: int | str = 1
        if "version" in fields:
            node = fields["version"]
            value = node.value if isinstance(node, ScalarNode) and node.tag == STR_TAG else _number(node)
            if value is None or isinstance(value, float):
                self.problem(node, f"'version' must be a number or text, got {_kind(node)}")
            else:
                version = value
        principles = []
        node = fields.get("principles")
        if isinstance(node, (SequenceNode, ScalarNode)) and not node.value:
            self.problem(node, "'principles' is empty: a constitution needs at least one principle")
        elif node is not None:
            seen: dict[str, int] = {}
            principles = self.items(fields, "principles", lambda item, i: self.principle(item, i, seen))
        judged = [p for p in principles if p is not None and p.has_judge]
        if judged and not any(p.judge_share > 0 for p in judged):
            self.problem(node, "every judge principle has judge_weight 0: the judge would have nothing to apply")
        few_shot = self.items(fields, "few_shot", self.few_shot)
        judge_few_shot = self.items(fields, "judge_few_shot", self.judge_example)
        from caikit.categories import read_categories

        categories = read_categories(self, fields)
        if self.problems:
            return None
        return Constitution(name=meta["name"], principles=principles, version=version,
                            description=meta.get("description") or "", source=meta.get("source"),
                            license=meta.get("license"), few_shot=few_shot, judge_few_shot=judge_few_shot,
                            categories=categories)

    def sorted_problems(self) -> list[str]:
        return [message for _, message in sorted(self.problems, key=lambda p: p[0])]


def _parse_file(path: Path, label: str) -> tuple[Constitution | None, list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        return None, [f"{label}: is a directory, not a constitution file"]
    except UnicodeDecodeError:
        return None, [f"{label}: not UTF-8 text"]
    except OSError as e:
        return None, [f"{label}: cannot read: {e.strerror}"]
    reader = _Reader(label)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML's composer recurses per nesting level (~500 deep is enough)
        reader.problem(1, "invalid YAML: nested too deeply")
        return None, reader.sorted_problems()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        reader.problem(mark.line + 1 if mark else 1, f"invalid YAML: {problem}")
        return None, reader.sorted_problems()
    constitution = reader.constitution(root)
    if constitution is not None:
        constitution.path = path
    return constitution, reader.sorted_problems()


# --- `caikit constitution validate` ------------------------------------------------------------------


@dataclass
class ValidateConfig:
    # Positional FILES on the command line, so no `--files` flag as well.
    files: list[str] = option([], help="constitution YAML files (or bundled names such as hhh) to check",
                              metadata={"cli": False})


def validate_command(cfg: ValidateConfig) -> int:
    """Print `ok: FILE (...)` per valid file; raise MultiError with every problem of the others."""
    if not cfg.files:
        raise UserError("no files given: caikit constitution validate FILE [FILE ...]")
    problems: list[str] = []
    for file in cfg.files:
        constitution, found = _check(file)
        if found or constitution is None:
            problems += found
            continue
        print(f"ok: {file} ({len(constitution.principles)} principles: "
              f"{len(constitution.critique_principles)} critique/revision, "
              f"{len(constitution.judge_principles)} judge"
              + (f"; {len(constitution.categories)} categories" if constitution.categories else "") + ")")
    if problems:
        raise MultiError(problems)
    return 0
