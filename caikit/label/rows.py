"""Reading labels.jsonl, the append-only file `caikit label` writes (one `caikit.records.Label` row per action).

A row's `id` is a hash of (labeller, pair id), so every action of one person on one pair shares it and the
latest row per id is that person's answer. Undo appends a row with choice "undo". Readers that need a
preference drop ids whose latest choice is "undo", "skip" or (having no winner) "tie".

Merging: rows carry their labeller and pair id, so the concatenation of two people's files is a correct
labels file. `caikit label merge A.jsonl B.jsonl --out ALL.jsonl` is that concatenation, checked: it refuses
when one label id occurs in two inputs (the same person labelled the same pair in both), because which of
those rows is the latest would then depend on the order the files were given in.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from caikit.config import option
from caikit.errors import UserError
from caikit.label.sources import LabelItem
from caikit.records import PreferencePair, idempotency_key
from caikit.store import JsonlFile, write_jsonl_atomic

CHOICES = ("a", "b", "tie", "skip")  # what a person answers; "undo" withdraws the previous answer
UNDO = "undo"
PREFERENCE_CHOICES = ("a", "b", "tie")  # answers that say something about the pair (a skip does not)


def label_id(labeler: str, pair_id: str) -> str:
    return idempotency_key("label", labeler, pair_id)


def is_label_row(row: Any) -> bool:
    """Does a JSONL row look like a Label (so a reader of mixed files can route it here)?"""
    return isinstance(row, dict) and {"pair_id", "choice", "shown_left", "response_a", "response_b"} <= row.keys()


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a labels file in file order (a torn last line from a crash is dropped), checked."""
    rows = list(JsonlFile(path).iter())
    for number, row in enumerate(rows, 1):
        if not is_label_row(row) or not isinstance(row.get("id"), str) or row["choice"] not in (*CHOICES, UNDO):
            raise UserError(f"row {number} is not a label row (id, pair_id, choice a|b|tie|skip|undo, shown_left, "
                            "response_a, response_b)", path=str(path))
        if not isinstance(row.get("prompt"), list) or not row["prompt"]:
            raise UserError(f"row {number} has no prompt messages", path=str(path))
    return rows


def latest_answers(rows: Iterable[dict[str, Any]], keep: tuple[str, ...] = PREFERENCE_CHOICES) -> list[dict[str, Any]]:
    """The latest row per label id, kept when its choice is in `keep` (undone labels are never kept)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest[row["id"]] = row
    return [row for row in latest.values() if row["choice"] in keep and row["choice"] != UNDO]


def answered_items(rows: Iterable[dict[str, Any]]) -> list[LabelItem]:
    """Each pair someone answered (a, b or tie) once, with response_a / response_b as the rows have them: what
    a judge under test should score, so that its p_a lines up with `stats.judge_vs_humans(rows, p_a)`."""
    items: dict[str, LabelItem] = {}
    for row in latest_answers(rows):
        items.setdefault(row["pair_id"], LabelItem(row["pair_id"], row["prompt"], row["response_a"], row["response_b"],
                                                   row.get("ai_p_a")))
    return list(items.values())


def to_preference_pairs(rows: Iterable[dict[str, Any]]) -> list[PreferencePair]:
    """Label rows -> the human preference pairs trainers read: conversational prompt / chosen / rejected,
    p_chosen 1.0 (a person's answer is a hard label), source "human".

    One pair per person and pair whose latest answer is a or b; ties, skips and undone labels carry no
    preference and are left out. Two people on one pair give two rows: when they agree the pair counts twice,
    when they disagree the rows pull a Bradley-Terry fit in opposite directions, as their answers do."""
    pairs = []
    for row in latest_answers(rows, keep=("a", "b")):
        chosen, rejected = row["response_a"], row["response_b"]
        if row["choice"] == "b":
            chosen, rejected = rejected, chosen
        pairs.append(PreferencePair(
            id=row["id"], run_id=row.get("run_id", ""), created_at=row.get("created_at", ""),
            prompt=list(row["prompt"]),
            chosen=[{"role": "assistant", "content": chosen}], rejected=[{"role": "assistant", "content": rejected}],
            p_chosen=1.0, source="human",
            provenance={"labeler": row.get("labeler", ""), "pair_id": row["pair_id"], "from": row.get("source", "")}))
    return pairs


# --- caikit label merge ----------------------------------------------------------------------------------


@dataclasses.dataclass
class MergeLabelsConfig:
    files: list[str] = option([], help="labels files written by `caikit label` (one per person, usually)")
    out: str = option("", help="the merged labels file to write")

    def validate(self) -> None:
        if len(self.files) < 2 or not self.out:
            raise UserError("give two or more labels files and --out FILE")
        if any(Path(f).resolve() == Path(self.out).resolve() for f in self.files):
            raise UserError("--out must not be one of the inputs", path=self.out)


def merge_label_files(paths: list[str]) -> list[dict[str, Any]]:
    """The inputs' rows, concatenated; UserError when one label id occurs in two of them."""
    owner: dict[str, str] = {}
    merged: list[dict[str, Any]] = []
    for path in paths:
        rows = read_labels(path)
        for row in rows:
            first = owner.setdefault(row["id"], path)
            if first != path:
                raise UserError(f"{row.get('labeler', '')!r} labelled pair {row['pair_id']!r} here and in {first}: "
                                "which answer is the latest would depend on the order of the files "
                                "(keep one file per labeller)", path=path)
        merged.extend(rows)
    return merged


def run_merge(cfg: MergeLabelsConfig) -> int:
    rows = merge_label_files(cfg.files)
    write_jsonl_atomic(cfg.out, rows)
    people = Counter(row.get("labeler", "") for row in latest_answers(rows, keep=CHOICES))
    summary = ", ".join(f"{name or '(unnamed)'}: {n}" for name, n in sorted(people.items()))
    print(f"caikit label merge: {len(rows)} rows from {len(cfg.files)} files -> {cfg.out} "
          f"(answers per labeller: {summary or 'none'})")
    return 0

