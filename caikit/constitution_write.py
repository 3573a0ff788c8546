"""Writing constitutions that commands derive (`constitution fit`, `constitution infer`): always a file that
`caikit constitution validate` accepts, with the figures behind each principle as YAML comments above it
(comments do not change a constitution's hash, so the figures never make a judge run look like another).

Two ways in: `with_judge_weights` edits the user's own file as text (their comments, layout, few-shot
examples and test cases stay as written; only `judge_weight` lines and the figures are added), and
`dump_constitution` writes a new one from plain data. `write_valid` checks the text with the constitution
reader before it replaces anything, so no invalid file is ever left at the destination.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from caikit.errors import UserError
from caikit.store import temporary_path, write_text_atomic


AFTER_PRINCIPLES = ("few_shot", "judge_few_shot", "categories")  # top-level lists written below the principles


def comment_lines(lines: list[str], indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}# {line}".rstrip() for text in lines for line in text.splitlines()]


def number(value: float) -> str:
    return f"{value:.4g}" if value else "0"


def clean(value: Any) -> Any:
    """`value` without the None, empty-text and empty-list entries of its mappings, at any depth."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if v not in (None, "", [])}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def dump_constitution(data: dict[str, Any], *, header: list[str] = (), notes: dict[str, list[str]] | None = None
                      ) -> str:
    """YAML for `data` (the keys of a constitution file; principles as dicts, None and empty values left out),
    `header` comment lines on top and `notes[id]` comment lines above each principle."""
    notes = notes or {}
    def dump(part: Any) -> list[str]:
        part = clean(part)
        return yaml.safe_dump(part, sort_keys=False, allow_unicode=True, width=110).splitlines() if part else []

    out = comment_lines(list(header), 0)
    out += dump({k: v for k, v in data.items() if k != "principles" and k not in AFTER_PRINCIPLES})
    out.append("principles:")
    for principle in data["principles"]:
        out += comment_lines(notes.get(principle["id"], []), 2)
        out += ["  " + line for line in dump([principle])]
    out += dump({k: data[k] for k in AFTER_PRINCIPLES if k in data})
    return "\n".join(out) + "\n"


def with_judge_weights(path: str | Path, weights: dict[str, float], *, header: list[str] = (),
                       notes: dict[str, list[str]] | None = None) -> str:
    """The text of constitution `path` with `judge_weight: w` set on each principle named in `weights` (added
    after its `id` line, or replacing the value there), `notes[id]` as comments above it and `header` on top.
    A file written in flow style (`- {id: a, judge: ...}`) is written anew from its content instead."""
    notes = notes or {}
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    principles = next((v for k, v in root.value if isinstance(k, ScalarNode) and k.value == "principles"), None)
    edits: list[tuple[int, int, list[str]]] = []  # (line, lines replaced, new lines), applied bottom up
    block = isinstance(principles, SequenceNode) and not principles.flow_style and all(
        isinstance(item, MappingNode) and not item.flow_style for item in principles.value)
    if not block:
        from caikit.constitution import load_constitution

        data = load_constitution(path).to_dict()
        for principle in data["principles"]:
            if principle["id"] in weights:
                principle["judge_weight"] = round(weights[principle["id"]], 4)
        return dump_constitution(data, header=header, notes=notes)
    for item in principles.value:
        fields = {k.value: (k, v) for k, v in item.value}
        pid = fields["id"][1].value.strip()
        first_line = item.start_mark.line
        item_indent = len(lines[first_line]) - len(lines[first_line].lstrip(" "))
        comments = comment_lines(notes.get(pid, []), item_indent)
        if pid in weights:
            value = number(round(weights[pid], 4))
            if "judge_weight" in fields:
                node = fields["judge_weight"][1]
                line = lines[node.start_mark.line]
                edits.append((node.start_mark.line, 1,
                              [line[:node.start_mark.column] + value + line[node.end_mark.column:]]))
            else:
                key = fields["id"][0]
                after = fields["id"][1].end_mark.line + 1
                edits.append((after, 0, [" " * key.start_mark.column + f"judge_weight: {value}"]))
        if comments:
            edits.append((first_line, 0, comments))
    for line, replaced, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[line:line + replaced] = new
    return "\n".join(comment_lines(list(header), 0) + lines) + "\n"


def write_valid(path: str | Path, text: str) -> None:
    """Write `text` to `path` only if it is a constitution `caikit constitution validate` accepts."""
    from caikit.constitution import validate_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = temporary_path(path.with_name(path.name + ".draft.yaml"))
    try:
        draft.write_text(text, encoding="utf-8")
        problems = validate_file(draft)
        if problems:  # a defect of the writer, not of the user's input: say so plainly
            raise UserError(f"the constitution written would not be valid ({problems[0]}); nothing was written",
                            path=str(path))
    finally:
        draft.unlink(missing_ok=True)
    write_text_atomic(path, text)
