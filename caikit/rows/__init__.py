"""One reader of rows for every command: files and directories in any supported format and layout ->
typed views (prompts, preference pairs, SFT examples, scored responses, thumbs).

`formats` turns a path into raw rows with their places; `layouts` turns one raw row into a view item. This
module holds the rules every command shares: ids (the row's `id`, else a hash of its content), duplicates
(the same id with different content is an input error naming both places; identical duplicates are read
once and counted on stderr), human labels (the latest row per pair and labeller wins; ties, skips and
undone labels are left out and counted), and limits (the whole input is checked, then the first N kept).
It sits at the bottom of the layers: it imports only errors and the standard library (datasets and
pyarrow lazily), so trainers, evals and the data-generation commands can all read through it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from caikit.rows.formats import FORMATS, Place, Source, open_source
from caikit.rows.layouts import (COLUMNS, MISSING, Messages, PairFields, RowError, Vote, conversation, example_of,
                                 is_hh, messages_id, pair_of, parse_hh_transcript, prompt_of, reply, row_id,
                                 scored_of, text_of, thumb_of)
from caikit.errors import UserError

__all__ = ["FORMATS", "Loaded", "Pair", "Place", "Prompt", "Example", "Scored", "Thumb", "as_prompt", "as_reply",
           "is_hh", "messages_id", "parse_hh_transcript", "read_examples", "read_pairs", "read_prompts",
           "read_scored", "read_thumbs", "text_of", "pairs_from", "examples_from"]


@dataclass(slots=True)
class Prompt:
    id: str
    messages: Messages  # the conversation so far, ending with a user turn
    index: int = field(default=0, compare=False)  # 0-based row index in the file
    place: Place | None = field(default=None, compare=False)


@dataclass
class Pair(PairFields):
    """A preference: `chosen` beat `rejected` as the assistant's reply to `prompt`."""

    id: str = ""
    place: Place | None = field(default=None, compare=False)


@dataclass
class Example:
    id: str
    prompt: Messages | None  # None: plain text, learned whole
    completion: Messages
    place: Place | None = field(default=None, compare=False)


@dataclass
class Thumb:
    id: str
    prompt: Messages
    completion: Messages
    label: bool
    place: Place | None = field(default=None, compare=False)


@dataclass
class Scored:
    prompt: Messages
    response: Messages
    place: Place | None = field(default=None, compare=False)


@dataclass
class Loaded:
    """What one input gave: the items, and the counts a command reports."""

    items: list
    given: str  # the path as typed
    file: str  # what was read: a file inside a run or export directory, or the dataset directory
    split: str | None = None  # the DatasetDict split read
    rows: int = 0  # rows in the input
    duplicates: int = 0  # identical duplicates read once
    left_out: dict[str, int] = field(default_factory=dict)  # human labels not used, by reason

    def summary(self) -> dict[str, Any]:
        out = {"path": self.given, "file": self.file, "rows": self.rows, "used": len(self.items)}
        if self.split:
            out["split"] = self.split
        if self.duplicates:
            out["duplicates"] = self.duplicates
        if self.left_out:
            out["left_out"] = dict(self.left_out)
        return out


def as_prompt(value: Any) -> Messages:
    """A prompt given as text or messages (hh style: turns), e.g. `caikit score --prompt`."""
    try:
        return prompt_of(value)
    except RowError as e:
        raise UserError(str(e)) from None


def as_reply(value: Any, prompt: Messages, hh: bool = False) -> Messages:
    """A response given as text or the assistant's messages (`hh`: after an hh-style prompt, stripped)."""
    try:
        return reply(value, "response", prompt, hh)
    except RowError as e:
        raise UserError(str(e)) from None


# --- the shared rules --------------------------------------------------------------------------------


def _check_columns(source: Source, view: str) -> None:
    if source.columns is not None and not any(need <= set(source.columns) for need in COLUMNS[view]):
        raise UserError(MISSING[view], path=source.file)


def _parsed(source: Source, parse: Callable[[Any, Place, int], Any]) -> Iterable[Any]:
    for index, (place, row) in enumerate(source.rows):
        try:
            yield parse(row, place, index)
        except RowError as e:
            raise place.error(str(e)) from None


def _unique(items: Iterable[Any], file: str, noun: str) -> tuple[list, int]:
    """Items with distinct ids; an id seen before with other content is an error naming both places."""
    kept, first, duplicates = [], {}, 0
    for item in items:
        before = first.get(item.id)
        if before is None:
            first[item.id] = item
            kept.append(item)
        elif before == item:
            duplicates += 1
        else:
            raise item.place.error(f"id {item.id!r} is also at {before.place} with different content "
                                   "(ids must be unique)")
    if duplicates:
        print(f"{file}: {duplicates} duplicate {noun} (same id and content) read once", file=sys.stderr, flush=True)
    return kept, duplicates


def _finish(loaded: Loaded, limit: int | None, noun: str) -> Loaded:
    if limit is not None:
        loaded.items = loaded.items[:max(limit, 0)]
    if not loaded.items and limit != 0:
        raise UserError(f"no {noun} in {'file' if loaded.file == loaded.given else 'it'}", path=loaded.file)
    return loaded


def _source(path, view: str, noun: str, split: str | None) -> Source:
    source = open_source(path, view, noun, split)
    _check_columns(source, view)
    return source


# --- views -------------------------------------------------------------------------------------------


def read_prompts(path, *, limit: int | None = None, split: str | None = None) -> Loaded:
    """Conversations to answer (generate, ppo, eval), each ending with a user turn."""
    source = _source(path, "prompts", "prompts", split)

    def parse(row, place, index):
        turns = conversation(row)
        return Prompt(row_id(row, turns), turns, index, place)

    items, duplicates = _unique(_parsed(source, parse), source.file, "prompts")
    loaded = Loaded(items, source.given, source.file, source.split, len(source.rows), duplicates)
    return _finish(loaded, limit, "prompts")


def pairs_from(source: Source) -> Loaded:
    """Preference pairs of a source's rows: every pair layout, and human labels (latest row per pair and
    labeller wins; a and b become pairs with p_chosen 1.0, tie / skip / undo are left out and counted)."""
    slots: list[Pair | tuple[str, str]] = []  # in input order; a label's slot holds its key
    latest: dict[tuple[str, str], tuple[Vote, Place]] = {}
    votes = 0
    for place, row in source.rows:
        try:
            found = pair_of(row)
        except RowError as e:
            raise place.error(str(e)) from None
        if isinstance(found, Vote):
            votes += 1
            if found.key not in latest:
                slots.append(found.key)
            latest[found.key] = (found, place)
        else:
            content = [found.prompt, text_of(found.chosen), text_of(found.rejected)]
            slots.append(Pair(**vars(found), id=row_id(row, content), place=place))
    kept, duplicates = _unique([s for s in slots if isinstance(s, Pair)], source.file, "pairs")
    keep = {id(p) for p in kept}
    items, left_out = [], {}
    for slot in slots:
        if isinstance(slot, Pair):
            if id(slot) in keep:
                items.append(slot)
            continue
        vote, place = latest[slot]
        if vote.pair is None:
            left_out[vote.choice] = left_out.get(vote.choice, 0) + 1
        else:
            items.append(Pair(**vars(vote.pair), id=slot[0], place=place))
    if latest:
        replaced = f" ({votes - len(latest)} replaced by a later label of the same pair)" if votes > len(latest) else ""
        shown = ", ".join(f"{n} {reason}" for reason, n in sorted(left_out.items())) or "none"
        print(f"{source.file}: {len(latest) - sum(left_out.values())} human labels used; left out: {shown}{replaced}",
              file=sys.stderr, flush=True)
    return Loaded(items, source.given, source.file, source.split, len(source.rows), duplicates, left_out)


def read_pairs(path, *, limit: int | None = None, split: str | None = None) -> Loaded:
    """Preference pairs (train reward / dpo, eval judge, label): every pair layout and human labels."""
    return _finish(pairs_from(_source(path, "pairs", "preference pairs", split)), limit, "preference pairs")


def examples_from(source: Source) -> Loaded:
    def parse(row, place, index):
        prompt, completion = example_of(row)
        return Example(row_id(row, [prompt, completion]), prompt, completion, place)

    items, duplicates = _unique(_parsed(source, parse), source.file, "SFT examples")
    return Loaded(items, source.given, source.file, source.split, len(source.rows), duplicates)


def read_examples(path, *, split: str | None = None) -> Loaded:
    """SFT examples (train sft): messages, prompt + completion, or plain text."""
    return _finish(examples_from(_source(path, "examples", "SFT examples", split)), None, "SFT examples")


def read_scored(path, *, split: str | None = None) -> Loaded:
    """Responses to score (caikit score), in input order: no row is merged with another."""
    source = _source(path, "scored", "rows to score", split)
    items = list(_parsed(source, lambda row, place, index: Scored(*scored_of(row), place)))
    return _finish(Loaded(items, source.given, source.file, source.split, len(source.rows)), None, "rows to score")


def read_thumbs(path, *, split: str | None = None) -> Loaded:
    """Unpaired good / bad judgements of single responses (prompt, completion, label)."""
    source = _source(path, "thumbs", "thumbs rows", split)

    def parse(row, place, index):
        prompt, completion, label = thumb_of(row)
        return Thumb(row_id(row, [prompt, completion, label]), prompt, completion, label, place)

    items, duplicates = _unique(_parsed(source, parse), source.file, "thumbs rows")
    return _finish(Loaded(items, source.given, source.file, source.split, len(source.rows), duplicates), None,
                   "thumbs rows")


@dataclass
class GuardRow:
    id: str
    prompt: Messages
    response: str | None  # None: an input guard's row (the request alone)
    label: bool  # True: the guard should flag it
    category: str = ""
    source_id: str = ""  # rows made from one source prompt share it (held-out splits keep them together)
    place: Place | None = field(default=None, compare=False)


def read_guard_rows(path, *, split: str | None = None) -> Loaded:
    """Labelled rows for guards (caikit classifier train / eval, classify): prompt, optional response, label."""
    from caikit.rows.layouts import guard_of

    source = _source(path, "guard", "guard rows", split)

    def parse(row, place, index):
        prompt, response, label, category, source_id = guard_of(row)
        return GuardRow(row_id(row, [prompt, response, label]), prompt, response, label, category, source_id, place)

    items, duplicates = _unique(_parsed(source, parse), source.file, "guard rows")
    return _finish(Loaded(items, source.given, source.file, source.split, len(source.rows), duplicates), None,
                   "guard rows")
