"""Prompt sets and human-labelled preference pairs, read from JSONL, JSON, CSV, parquet or .jsonl.gz.

A prompt row has a `prompt` (a string, or a list of chat messages), or `messages` (a conversation;
a final assistant turn is dropped), or is an hh-rlhf row (`chosen` transcript "\\n\\nHuman: ...
\\n\\nAssistant: ..."; the prompt is the conversation before the last assistant turn). Problems name
the file and the line (JSONL, CSV), item (JSON) or row (parquet) so they can be fixed.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import caikit
from caikit.errors import UserError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
FORMATS = ".jsonl, .json, .csv, .parquet or .jsonl.gz"


@dataclass
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


def messages_id(content: Any) -> str:
    """16 hex chars of sha256 over canonical JSON: the id of a prompt (or pair) given without one."""
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --- reading rows ------------------------------------------------------------------------------------


class _RowError(Exception):
    """A problem with one row; the reader adds the file and place."""


def _place_error(path: str, place: int | str, message: str) -> UserError:
    # JSONL/CSV rows are named by line number; JSON items and parquet rows by "item N" / "row N".
    if isinstance(place, int):
        return UserError(message, path=path, line=place)
    return UserError(f"{place}: {message}", path=path)


def _read_rows(path: str | Path) -> Iterator[tuple[int | str, Any]]:
    """Yield (place, row) for each row of a prompt file; raises UserError for unreadable files."""
    label, path = str(path), Path(path)
    if not path.is_file():
        raise UserError("no such file" if not path.exists() else "not a file", path=label)
    name = path.name.lower()
    gz = name.endswith(".gz")
    suffix = Path(name[:-3] if gz else name).suffix
    if suffix not in (".jsonl", ".json", ".csv", ".parquet") or (gz and suffix == ".parquet"):
        raise UserError(f"unsupported file type '{path.name}' (use {FORMATS})", path=label)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot read parquet: {reason}", path=label) from None
        yield from ((f"row {i}", row) for i, row in enumerate(rows, 1))
        return
    try:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read gzip: {e}", path=label) from None
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", path=label) from None
    if not text.strip():
        raise UserError("empty file: no prompts", path=label)
    if suffix == ".jsonl":
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
            if line.strip():
                try:
                    yield number, _loads(line)
                except ValueError as e:
                    raise UserError(f"invalid JSON: {e}", path=label, line=number) from None
    elif suffix == ".json":
        try:
            data = _loads(text)
        except ValueError as e:
            raise UserError(f"invalid JSON: {e}", path=label, line=getattr(e, "lineno", None)) from None
        if not isinstance(data, list):
            raise UserError(f"expected a JSON list of objects or strings, got {type(data).__name__}", path=label)
        yield from ((f"item {i}", row) for i, row in enumerate(data, 1))
    else:
        # The file is in memory already: let a cell be as long as the file (csv's default cap is 128 KiB).
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            columns = reader.fieldnames or []
            if not {"prompt", "messages", "chosen"} & set(columns):
                raise UserError("no 'prompt' or 'messages' column", path=label)
            for row in reader:
                yield reader.line_num, row
        except csv.Error as e:
            raise UserError(f"invalid CSV: {e}", path=label, line=reader.line_num or 1) from None


class _JSONError(ValueError):
    """One line saying why a JSON text is unusable; `lineno` where the decoder knows it."""

    def __init__(self, message: str, lineno: int | None = None):
        super().__init__(message)
        self.lineno = lineno


def _loads(text: str) -> Any:
    """json.loads whose every failure is a _JSONError: syntax, integers longer than Python converts
    (ValueError, not JSONDecodeError), nesting deeper than the decoder's stack (RecursionError), and
    lone UTF-16 surrogates ("\\ud800"), which decode but can never be written back as UTF-8."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _JSONError(e.msg, e.lineno) from None
    except RecursionError:
        raise _JSONError("nested too deeply") from None
    except ValueError as e:
        raise _JSONError(str(e).split(":")[0]) from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _JSONError("a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff escape)") from None
    except (ValueError, RecursionError):  # nesting the encoder cannot walk back
        raise _JSONError("nested too deeply") from None
    return value


def _messages(value: Any, what: str) -> Messages:
    """Validate a list of {role, content} chat messages (extra keys are dropped)."""
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV cells hold JSON
        try:
            value = _loads(value)
        except ValueError:
            raise _RowError(f"'{what}' is not a JSON list of messages") from None
    if not isinstance(value, list) or not value:
        raise _RowError(f"'{what}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _RowError(f"'{what}' message {i} must be {{role: {'|'.join(ROLES)}, content: text}}")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _transcript(value: Any, what: str) -> Messages:
    if not isinstance(value, str):
        raise _RowError(f"'{what}' must be a Human:/Assistant: transcript")
    try:
        return parse_hh_transcript(value)
    except ValueError as e:
        raise _RowError(f"'{what}': {e}") from None


def _until_last_user(messages: Messages, what: str) -> Messages:
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise _RowError(f"'{what}' has no user turn")
    return messages


def _prompt_messages(row: Any) -> Messages:
    """The conversation to answer, ending with a user turn."""
    if isinstance(row, str):
        row = {"prompt": row}
    if not isinstance(row, dict):
        raise _RowError(f"expected an object or a string, got {type(row).__name__}")
    # An empty cell (CSV, parquet nulls) counts as absent, so `prompt` and `messages` columns can mix.
    present = [key for key in ("prompt", "messages", "chosen") if row.get(key) not in (None, "")]
    if not present:
        raise _RowError("empty prompt" if row.keys() & {"prompt", "messages"} else "no 'prompt' or 'messages' column")
    if present[0] == "prompt":
        prompt = row["prompt"]
        if isinstance(prompt, str):
            if prompt.startswith("\n\nHuman:"):
                return _until_last_user(_transcript(prompt, "prompt"), "prompt")
            if not prompt.strip():
                raise _RowError("empty prompt")
            return [{"role": "user", "content": prompt}]
        messages = _messages(prompt, "prompt")
    elif present[0] == "messages":
        messages = _messages(row["messages"], "messages")
    else:  # hh-rlhf
        return _until_last_user(_transcript(row["chosen"], "chosen"), "chosen")
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise _RowError("the conversation must end with a user turn")
    return messages


def _row_id(row: Any, fallback: Any) -> str:
    given = row.get("id") if isinstance(row, dict) else None
    return str(given) if given not in (None, "") else messages_id(fallback)


def load_prompts(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Prompts from a file; duplicates (same id) are kept once; `limit` stops after that many prompts."""
    prompts: list[PromptRow] = []
    seen: set[str] = set()
    for index, (place, row) in enumerate(_read_rows(path)):
        if limit is not None and len(prompts) >= limit:
            break
        try:
            messages = _prompt_messages(row)
        except _RowError as e:
            raise _place_error(str(path), place, str(e)) from None
        row_id = _row_id(row, messages)
        if row_id not in seen:
            seen.add(row_id)
            prompts.append(PromptRow(id=row_id, messages=messages, source_index=index))
    if not prompts and limit != 0:
        raise UserError("no prompts in file", path=str(path))
    return prompts


# --- labelled pairs ----------------------------------------------------------------------------------


def _response(value: Any, what: str) -> str:
    """A response given as text, or as TRL conversational messages ending with the assistant turn."""
    if isinstance(value, str):
        return value
    messages = _messages(value, what)
    if messages[-1]["role"] != "assistant":
        raise _RowError(f"'{what}' must end with an assistant message")
    return messages[-1]["content"]


def _split_shared_prefix(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Common conversation (cut back to its last user turn) and the two diverging assistant replies."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1]["role"] != "user":
        n -= 1
    tails = chosen[n:], rejected[n:]
    if n == 0 or any(not tail or any(m["role"] != "assistant" for m in tail) for tail in tails):
        raise _RowError("'chosen' and 'rejected' must share the conversation up to a final user turn")
    # hh-rlhf has a few rows whose reply spans two assistant turns; keep the whole reply.
    return chosen[:n], *("\n\n".join(m["content"] for m in tail) for tail in tails)


def _pair(row: Any) -> tuple[Messages, str, str]:
    if not isinstance(row, dict) or row.get("chosen") is None or row.get("rejected") is None:
        raise _RowError("expected 'chosen' and 'rejected' (and 'prompt', unless they are full transcripts)")
    if row.get("prompt") is not None:
        messages = _prompt_messages({"prompt": row["prompt"]})
        return messages, _response(row["chosen"], "chosen"), _response(row["rejected"], "rejected")
    if isinstance(row["chosen"], str):  # hh-rlhf transcripts
        return _split_shared_prefix(_transcript(row["chosen"], "chosen"), _transcript(row["rejected"], "rejected"))
    # TRL conversational with implicit prompt: whole conversations
    return _split_shared_prefix(_messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected"))


def load_labelled_pairs(path: str | Path, limit: int | None = None) -> list[LabelledPair]:
    """Human-labelled pairs (hh-rlhf transcripts, or prompt/chosen/rejected) for judge-agreement evals."""
    pairs: list[LabelledPair] = []
    seen: set[str] = set()
    for place, row in _read_rows(path):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            messages, chosen, rejected = _pair(row)
        except _RowError as e:
            raise _place_error(str(path), place, str(e)) from None
        pair_id = _row_id(row, [messages, chosen, rejected])
        if pair_id not in seen:
            seen.add(pair_id)
            pairs.append(LabelledPair(id=pair_id, messages=messages, chosen=chosen, rejected=rejected))
    if not pairs and limit != 0:
        raise UserError("no labelled pairs in file", path=str(path))
    return pairs
