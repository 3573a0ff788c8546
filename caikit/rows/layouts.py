"""One raw row -> the conversation, pair, example, scored response or thumb it holds, whatever its layout.

Layouts recognised (each column a string, or a list of {role, content} messages; CSV cells may hold
such lists as JSON text):
  hh-rlhf          `chosen` / `rejected` transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...", or a `prompt`
                   string in that style ("...\\n\\nAssistant:"): always read as turns
  TRL standard     `prompt` + `chosen` / `rejected` / `completion` / `response` as strings
  conversational   the same columns as messages; `messages` for a whole conversation
  implicit prompt  `chosen` / `rejected` whole conversations sharing a prefix (cut at the last user turn)
  caikit records   SFTExample (prompt, completion), PreferencePair (+ p_chosen, source), Trace (prompt)
  human labels     caikit.records.Label rows (pair_id, prompt, response_a, response_b, choice, labeler)
  thumbs           `prompt` + `completion` (or `response`) + `label` true / false
Problems raise RowError; the reader adds the file and the row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from caikit.rows.formats import loads

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
CHOICES = ("a", "b", "tie", "skip", "undo")


class RowError(Exception):
    """A problem with one row; the reader adds the file and place."""


def parse_hh_transcript(text: str) -> Messages:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{'role': 'user', ...}, {'role': 'assistant', ...}].

    Contents are stripped; a trailing empty "Assistant:" cue is kept as an empty assistant turn.
    Raises ValueError when the text has no Human turn or has text before the first turn.
    """
    parts = HH_TURN.split(text)
    messages = [{"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()}
                for i in range(1, len(parts), 2)]
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no 'Human:' turn")
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    return messages


def is_hh(text: str) -> bool:
    """Whether a string is an hh-rlhf transcript (so it is read as turns, never as one message)."""
    return text.startswith("\n\nHuman:") or (text.lstrip().startswith("Human:") and "\n\nAssistant:" in text)


def messages_id(content: Any) -> str:
    """16 hex chars of sha256 over canonical JSON: the id of a row given without one."""
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def row_id(row: Any, content: Any) -> str:
    """The row's own `id` (a human label's `pair_id`), else a hash of what it holds (stable across runs,
    files and formats)."""
    given = row.get("id") if isinstance(row, dict) else None
    if isinstance(row, dict) and "choice" in row and present(row, "pair_id"):
        given = row["pair_id"]
    return str(given) if given not in (None, "") else messages_id(content)


def present(row: dict, key: str) -> bool:
    # An empty cell (CSV, parquet nulls) counts as absent, so columns of several layouts can mix.
    return row.get(key) not in (None, "")


def _object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise RowError(f"expected an object, got {type(row).__name__}")
    return row


# --- messages ----------------------------------------------------------------------------------------


def _json_cell(value: str) -> Any:
    try:
        return loads(value)
    except ValueError:
        return None


def messages(value: Any, what: str) -> Messages:
    """Validate a list of {role, content} chat messages (extra keys are dropped)."""
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold JSON
        value = _json_cell(value)
        if value is None:
            raise RowError(f"'{what}' is not a JSON list of messages")
    if not isinstance(value, list) or not value:
        raise RowError(f"'{what}' must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RowError(f"'{what}' message {i} must be {{role: {'|'.join(ROLES)}, content: text}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _transcript(value: str, what: str) -> Messages:
    try:
        return parse_hh_transcript(value)
    except ValueError as e:
        raise RowError(f"'{what}': {e}") from None


def _turns(value: Any, what: str) -> Messages:
    """A whole conversation: an hh transcript or messages."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        if not is_hh(value) and not value.lstrip().startswith("Human:"):
            raise RowError(f"'{what}' is text without a 'prompt' column: give 'prompt', or whole "
                           "Human:/Assistant: transcripts or conversations in 'chosen' and 'rejected'")
        return _transcript(value, what)
    return messages(value, what)


def _until_last_user(turns: Messages, what: str) -> Messages:
    while turns and turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if not turns:
        raise RowError(f"'{what}' has no user turn")
    return turns


def conversation(row: Any) -> Messages:
    """The conversation to answer, ending with a user turn (generate, eval, ppo): `prompt` (a final
    assistant reply is dropped), `messages` (likewise), or the shared part of `chosen` (hh-rlhf)."""
    if isinstance(row, str):
        row = {"prompt": row}
    if not isinstance(row, dict):
        raise RowError(f"expected an object or a string, got {type(row).__name__}")
    keys = [key for key in ("prompt", "messages", "chosen") if present(row, key)]
    if not keys:
        raise RowError("empty prompt" if row.keys() & {"prompt", "messages"} else "no 'prompt' or 'messages' column")
    value = row[keys[0]]
    if keys[0] == "chosen" or (isinstance(value, str) and is_hh(value)):
        return _until_last_user(_turns(value, keys[0]), keys[0])
    if isinstance(value, str) and not value.lstrip().startswith("["):
        if not value.strip():
            raise RowError("empty prompt")
        return [{"role": "user", "content": value}]
    turns = messages(value, keys[0])
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    if not turns or turns[-1]["role"] != "user":
        raise RowError("the conversation must end with a user turn")
    return turns


def prompt_of(value: Any, what: str = "prompt") -> Messages:
    """A `prompt` column beside a reply: text (hh style: turns, the empty "Assistant:" cue dropped) or
    messages; it must end with a user turn (a reply after it would be trained on as context)."""
    if isinstance(value, str) and is_hh(value):
        turns = _transcript(value, what)
        if turns[-1] == {"role": "assistant", "content": ""}:
            turns = turns[:-1]
    elif isinstance(value, str) and not value.lstrip().startswith("["):
        if not value.strip():
            raise RowError(f"empty '{what}'")
        return [{"role": "user", "content": value}]
    else:
        turns = messages(value, what)
    if turns[-1]["role"] != "user":
        raise RowError(f"'{what}' must end with a user turn, not a{'n' if turns[-1]['role'] == 'assistant' else ''} "
                       f"{turns[-1]['role']} turn")
    return turns


def reply(value: Any, what: str, prompt: Messages, hh: bool = False) -> Messages:
    """A response column: text (one assistant message; stripped after an hh-style prompt, as transcripts
    are), or messages that are the assistant's reply (a copy of the prompt in front is removed)."""
    if isinstance(value, str):
        listed = _json_cell(value) if value.lstrip().startswith("[") else None
        if not (isinstance(listed, list) and listed and all(isinstance(m, dict) and "role" in m for m in listed)):
            return [{"role": "assistant", "content": value.strip() if hh else value}]
        value = listed
    if value is None:
        raise RowError(f"no '{what}'")
    turns = messages(value, what)
    if len(turns) > len(prompt) and turns[:len(prompt)] == prompt:
        turns = turns[len(prompt):]
    if any(m["role"] != "assistant" for m in turns):
        raise RowError(f"'{what}' must hold the assistant's reply (after the prompt), not a "
                       f"{next(m['role'] for m in turns if m['role'] != 'assistant')} turn")
    return turns


def text_of(turns: Messages) -> str:
    """A reply as one text: hh-rlhf has a few replies spanning two assistant turns; keep them whole."""
    return "\n\n".join(m["content"] for m in turns)


def split_shared_prefix(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    """Common conversation (cut back to its last user turn) and the two diverging assistant replies."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1]["role"] != "user":
        n -= 1
    tails = chosen[n:], rejected[n:]
    if n == 0 or any(not tail or any(m["role"] != "assistant" for m in tail) for tail in tails):
        raise RowError("'chosen' and 'rejected' must share the conversation up to a final user turn")
    return chosen[:n], *([{"role": "assistant", "content": text_of(tail)}] for tail in tails)


# --- numbers -----------------------------------------------------------------------------------------


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # CSV cells are text
    except (TypeError, ValueError):
        raise RowError(f"'{key}' must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise RowError(f"'{key}' must be a finite number, got {value!r}")
    return number


def _flag(row: dict, key: str) -> bool:
    value = row.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowError(f"'{key}' must be true or false, got {str(value)[:40]!r}")


# --- views -------------------------------------------------------------------------------------------


@dataclass
class PairFields:
    prompt: Messages
    chosen: Messages
    rejected: Messages
    p_chosen: float | None  # P(chosen is better) as the row states it (`p_chosen`), None for a hard label
    source: str
    margin: float = 0.0  # a `margin` column, used only by `train reward --use-margin`
    labeler: str = ""


@dataclass
class Vote:
    """A caikit.records.Label row: the latest per (pair, labeller) counts."""

    key: tuple[str, str]
    choice: str
    pair: PairFields | None  # for choices a and b


def pair_of(row: Any) -> PairFields | Vote:
    """A preference pair (or a human label) from any pair layout."""
    row = _object(row)
    if "choice" in row and ("response_a" in row or "response_b" in row):
        return _vote(row)
    if row.get("chosen") is None or row.get("rejected") is None:
        if "label" in row:
            raise RowError("a thumbs row (prompt, completion, label) is not a preference pair")
        raise RowError("expected 'chosen' and 'rejected' (and 'prompt', unless they are full transcripts)")
    p_chosen = _number(row, "p_chosen")
    if p_chosen is not None and not 0.0 <= p_chosen <= 1.0:
        raise RowError(f"'p_chosen' must be a probability from 0 to 1, got {p_chosen}")
    margin = _number(row, "margin") or 0.0
    source = str(row.get("source") or "")
    if present(row, "prompt"):
        prompt = prompt_of(row["prompt"])
        hh = isinstance(row["prompt"], str) and is_hh(row["prompt"])
        chosen, rejected = reply(row["chosen"], "chosen", prompt, hh), reply(row["rejected"], "rejected", prompt, hh)
    else:
        prompt, chosen, rejected = split_shared_prefix(_turns(row["chosen"], "chosen"),
                                                       _turns(row["rejected"], "rejected"))
    return PairFields(prompt, chosen, rejected, p_chosen, source, margin)


def _vote(row: dict) -> Vote:
    choice = str(row.get("choice") or "").strip().lower()
    if choice not in CHOICES:
        raise RowError(f"'choice' must be one of {', '.join(CHOICES)}, got {str(row.get('choice'))[:40]!r}")
    pair_id = row.get("pair_id") if present(row, "pair_id") else row.get("id")
    if pair_id in (None, ""):
        raise RowError("a label row needs a 'pair_id'")
    labeler = str(row.get("labeler") or "")
    pair = None
    if choice in ("a", "b"):
        prompt = prompt_of(row.get("prompt"))
        a, b = (reply(row.get(k), k, prompt) for k in ("response_a", "response_b"))
        chosen, rejected = (a, b) if choice == "a" else (b, a)
        pair = PairFields(prompt, chosen, rejected, 1.0, "human", labeler=labeler)
    return Vote((str(pair_id), labeler), choice, pair)


def example_of(row: Any) -> tuple[Messages | None, Messages]:
    """An SFT example: (prompt messages, or None for plain text, completion messages)."""
    row = _object(row)
    if present(row, "messages"):
        turns = messages(row["messages"], "messages")
        last = max((j for j, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            raise RowError("'messages' has no assistant turn to learn from")
        if last == 0:
            raise RowError("'messages' has no turn before the assistant's reply")
        return turns[:last], [turns[last]]
    if present(row, "prompt") or "completion" in row:
        if row.get("completion") is None:
            raise RowError("'prompt' without 'completion' (an SFT example needs both, or 'messages', or 'text')")
        prompt = prompt_of(row.get("prompt"))
        return prompt, reply(row["completion"], "completion", prompt, is_hh(str(row["prompt"])))
    if present(row, "text"):
        if not isinstance(row["text"], str):
            raise RowError("'text' must be text")
        return None, [{"role": "assistant", "content": row["text"]}]
    if "chosen" in row:
        raise RowError("a preference row (chosen/rejected) is not an SFT example: give 'messages', "
                       "'prompt' + 'completion' or 'text'")
    raise RowError("no 'messages', 'prompt' + 'completion' or 'text' column")


def scored_of(row: Any) -> tuple[Messages, Messages]:
    """A response to score: (prompt messages, response messages)."""
    row = _object(row)
    key = next((k for k in ("response", "completion") if k in row), None)
    if present(row, "prompt") and key:
        prompt = prompt_of(row["prompt"])
        return prompt, reply(row[key], key, prompt, is_hh(str(row["prompt"])))
    if present(row, "messages"):
        turns = messages(row["messages"], "messages")
        if turns[-1]["role"] != "assistant" or len(turns) < 2:
            raise RowError("'messages' must end with the assistant reply to score, after a user turn")
        return turns[:-1], turns[-1:]
    raise RowError("missing column 'response' (with 'prompt'), or 'messages' ending with an assistant reply")


def thumb_of(row: Any) -> tuple[Messages, Messages, bool]:
    """An unpaired judgement: (prompt, completion, label True = good)."""
    row = _object(row)
    key = next((k for k in ("completion", "response") if k in row), None)
    if not present(row, "prompt") or key is None or "label" not in row:
        raise RowError("a thumbs row needs 'prompt', 'completion' (or 'response') and 'label' true/false")
    prompt = prompt_of(row["prompt"])
    return prompt, reply(row[key], key, prompt, is_hh(str(row["prompt"]))), _flag(row, "label")


# Columns a tabular file (CSV, parquet, datasets) must have for each view: any one of these sets.
COLUMNS = {
    "prompts": [{"prompt"}, {"messages"}, {"chosen"}],
    "pairs": [{"chosen", "rejected"}, {"response_a", "response_b", "choice"}],
    "examples": [{"messages"}, {"prompt", "completion"}, {"text"}],
    "scored": [{"prompt", "response"}, {"prompt", "completion"}, {"messages"}],
    "thumbs": [{"prompt", "completion", "label"}, {"prompt", "response", "label"}],
    "guard": [{"prompt", "label"}, {"messages", "label"}],
}
MISSING = {
    "prompts": "no 'prompt' or 'messages' column",
    "pairs": "no 'chosen' and 'rejected' columns (nor a labels file's 'response_a', 'response_b', 'choice')",
    "examples": "no 'messages', 'prompt' + 'completion' or 'text' column",
    "scored": "no 'prompt' + 'response' (or 'completion') or 'messages' column",
    "thumbs": "no 'prompt', 'completion' (or 'response') and 'label' columns",
    "guard": "no 'prompt' (or 'messages') and 'label' columns",
}


GUARD_TRUE = ("true", "1", "harmful", "unsafe", "restricted", "flag", "flagged", "refusal", "yes")
GUARD_FALSE = ("false", "0", "benign", "safe", "permitted", "pass", "compliance", "no")


def guard_of(row: Any) -> tuple[Messages, str | None, bool, str, str]:
    """A guard's labelled row: (prompt, response or None, label True = flag, category, source id).

    `label`: true/false, 1/0, harmful/benign, unsafe/safe, restricted/permitted (refusal/compliance for a
    refusal guard). `source_id` groups rows made from one source prompt (augmentations, paraphrases) so a
    held-out split keeps them together; default: the row's own prompt."""
    row = _object(row)
    if "label" not in row:
        raise RowError("a guard row needs 'label' (true/false, harmful/benign, 1/0)")
    value = row["label"]
    text = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if text not in GUARD_TRUE + GUARD_FALSE:
        raise RowError(f"'label' must be true/false, harmful/benign or 1/0, got {str(value)[:40]!r}")
    prompt = conversation(row)
    key = next((k for k in ("response", "completion") if present(row, k)), None)
    response = text_of(reply(row[key], key, prompt)) if key else None
    category = str(row.get("category") or "")
    source_id = str(row.get("source_id") or messages_id(prompt))
    return prompt, response, text in GUARD_TRUE, category, source_id
