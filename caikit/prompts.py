"""Prompt sets and human-labelled preference pairs: thin views over `caikit.rows`, the one reader of rows.

A prompt row has a `prompt` (a string, or a list of chat messages), or `messages` (a conversation;
a final assistant turn is dropped), or is an hh-rlhf row (`chosen` transcript "\\n\\nHuman: ...
\\n\\nAssistant: ..."; the prompt is the conversation before the last assistant turn). Formats, layouts,
ids, duplicates and errors (naming the file and the line, item or row) are those of `caikit.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import caikit
from caikit.rows import FORMATS, messages_id, parse_hh_transcript, read_pairs, read_prompts, text_of

__all__ = ["FORMATS", "LabelledPair", "PromptRow", "bundled_benign_prompts_path", "bundled_prompts_path",
           "load_labelled_pairs", "load_prompts", "messages_id", "parse_hh_transcript"]

Messages = list[dict[str, str]]


@dataclass(slots=True)  # no per-row __dict__: a million prompts are held while they run
class PromptRow:
    id: str  # the file's `id` column, else a hash of the messages (stable across runs and files)
    messages: Messages  # the conversation so far, ending with a user turn
    source_index: int  # 0-based row index in the file


@dataclass
class LabelledPair:
    """A human preference: `chosen` beat `rejected` as the next assistant turn after `messages`."""

    id: str
    messages: Messages  # shared prefix, ending with a user turn
    chosen: str
    rejected: str
    labeler: str = ""  # who labelled it, for rows of `caikit label` (several labellers may share a pair id)


def bundled_prompts_path() -> Path:
    """The ~50 red-team prompts shipped with caikit (first human turns from hh-rlhf harmless-base)."""
    return Path(caikit.__file__).resolve().parent / "data" / "red_team_prompts.jsonl"


def bundled_benign_prompts_path() -> Path:
    """~20 ordinary requests, for measuring over-refusal."""
    return Path(caikit.__file__).resolve().parent / "data" / "benign_prompts.jsonl"


def bundled_human_calibration_path() -> Path:
    """400 human-labelled hh-rlhf harmlessness pairs for checking an AI judge (never trained on): transcripts in
    `chosen` / `rejected`, as `caikit eval judge --pairs` and `caikit judge --calibration-pairs` read them."""
    return Path(caikit.__file__).resolve().parent / "data" / "hh_harmless_calibration.jsonl.gz"


def bundled_human_reward_pairs_path() -> Path:
    """1,400 further human-labelled hh-rlhf harmlessness pairs, disjoint from the calibration set, for training
    a reward model (`caikit train reward --data`, which holds out --eval-fraction of them)."""
    return Path(caikit.__file__).resolve().parent / "data" / "hh_harmless_reward_pairs.jsonl.gz"


def load_prompts(path: str | Path, limit: int | None = None, *, split: str | None = None) -> list[PromptRow]:
    """Prompts from a file or directory (see caikit.rows); identical duplicates are kept once, an id given
    twice with different prompts is an error; `limit` keeps the first that many prompts."""
    loaded = read_prompts(path, limit=limit, split=split)
    return [PromptRow(id=p.id, messages=p.messages, source_index=p.index) for p in loaded.items]


def load_labelled_pairs(path: str | Path, limit: int | None = None, *,
                        split: str | None = None) -> list[LabelledPair]:
    """Labelled pairs (hh-rlhf transcripts, prompt/chosen/rejected, `caikit label` rows) for judge evals."""
    loaded = read_pairs(path, limit=limit, split=split)
    return [LabelledPair(id=p.id, messages=p.prompt, chosen=text_of(p.chosen), rejected=text_of(p.rejected),
                         labeler=p.labeler) for p in loaded.items]
