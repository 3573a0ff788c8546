"""Training data: load rows, tokenise with the chat template, mask prompts, truncate, pad.

Accepted inputs: a caikit run dir (sft.jsonl / preferences.jsonl), a .jsonl(.gz) / .json / .parquet file,
or a `datasets` save_to_disk dir, in TRL layouts, standard (strings) or conversational (messages):
  SFT:         {"messages": [...]} | {"prompt", "completion"} | {"text"}
  preferences: {"prompt", "chosen", "rejected"} (+ optional "p_chosen": the judge's soft label, and
               "margin" for --use-margin); a prompt-less row whose chosen/rejected are whole conversations sharing a
               prefix (hh-rlhf style) is split at the last assistant turn.
  unpaired:    {"prompt", "completion", "label": true/false} (KTO), and preference rows or `caikit label` rows
               turned into one desirable and one undesirable example each (`unpaired_examples`).
Tokenised sequences are prompt + response + EOS with `labels_mask` 1 on the response tokens (EOS
included), and right-padded for training.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from caikit.errors import UserError

RUN_DIR_FILES = {"sft": "sft.jsonl", "preference": "preferences.jsonl"}
Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------- loading

def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"invalid JSON: {e.msg}", path=str(path), line=lineno) from None
            if not isinstance(row, dict):
                raise UserError("expected a JSON object per line", path=str(path), line=lineno)
            rows.append(row)
    return rows


def load_rows(path: str | Path, kind: str | None = None) -> list[dict]:
    """Rows of a dataset as plain dicts. kind ("sft" | "preference") picks the file inside a run dir."""
    if not str(path).strip():
        raise UserError("--data is required (a run dir, .jsonl, .parquet or datasets dir)")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError("data path does not exist", path=str(path))
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() \
                or (path / "state.json").exists():
            return _load_saved_dataset(path)
        names = [RUN_DIR_FILES[kind]] if kind else list(RUN_DIR_FILES.values())
        for name in names:
            if (path / name).exists():
                return _read_jsonl(path / name)
        raise UserError(f"no {' or '.join(names)} in this run directory", path=str(path))
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return _read_jsonl(path)
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise UserError("expected a JSON list of rows", path=str(path))
        return data
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise UserError("unknown data format (expected a run dir, .jsonl, .json, .parquet or a datasets dir)",
                    path=str(path))


def _load_saved_dataset(path: Path) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds.to_list()


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffle, then (train, eval); eval gets at least one row when the fraction is > 0."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction <= 0 or len(rows) < 2 else max(1, int(round(len(rows) * eval_fraction)))
    n_eval = min(n_eval, len(rows) - 1)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _require(rows: list[dict], columns: list[str], source: str) -> None:
    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    for i, row in enumerate(rows, start=1):
        missing = [c for c in columns if row.get(c) is None]
        if missing:
            raise UserError(f"row {i} is missing column '{missing[0]}' (has: {', '.join(sorted(row)) or 'nothing'})",
                            path=source)


# ----------------------------------------------------------------------------------- row normalisation

def _as_messages(value: Any, role: str) -> Messages:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def sft_pairs(rows: list[dict], source: str) -> list[tuple[Messages | None, Messages]]:
    """Each SFT row -> (prompt messages or None for plain text, response messages)."""
    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    keys = rows[0].keys()
    if "messages" in keys:
        _require(rows, ["messages"], source)
        out = []
        for i, row in enumerate(rows, start=1):
            msgs = _as_messages(row["messages"], "user")
            last = max((j for j, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None:
                raise UserError(f"row {i}: 'messages' has no assistant turn to learn from", path=source)
            out.append((msgs[:last], [msgs[last]]))
        return out
    if "completion" in keys or "prompt" in keys:
        _require(rows, ["prompt", "completion"], source)
        return [(_as_messages(r["prompt"], "user"), _as_messages(r["completion"], "assistant")) for r in rows]
    if "text" in keys:
        _require(rows, ["text"], source)
        return [(None, [{"role": "assistant", "content": r["text"]}]) for r in rows]
    raise UserError(f"missing column 'messages' (or 'prompt'+'completion', or 'text'); has: {', '.join(sorted(keys))}",
                    path=source)


def preference_label(row: dict) -> float | None:
    """P(chosen preferred) as the row states it (`p_chosen`: the judge's soft label), else None (a hard label).

    No other column is reinterpreted as a probability: ratings such as UltraFeedback's score_chosen are not
    probabilities, and a `margin` column means what the trainer's --use-margin says, nothing more."""
    value = row.get("p_chosen")
    return None if value is None else float(value)


def _split_implicit_prompt(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def preference_triples(rows: list[dict], source: str) -> list[dict]:
    """Each preference row -> {"prompt", "chosen", "rejected" (messages), "p_chosen" (or None), "margin"}."""
    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    has_prompt = "prompt" in rows[0]
    _require(rows, ["prompt", "chosen", "rejected"] if has_prompt else ["chosen", "rejected"], source)
    out = []
    for row in rows:
        chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
        if has_prompt:
            prompt = _as_messages(row["prompt"], "user")
        else:
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "p_chosen": preference_label(row), "margin": float(row.get("margin") or 0.0)})
    return out


LABEL_DROPPED = ("tie", "skip", "undo")  # `caikit label` choices that say nothing about either response


def unpaired_examples(rows: list[dict], source: str) -> tuple[list[dict], dict[str, int]]:
    """Rows -> [{"prompt", "completion" (messages), "label": True for desirable}] and counts of what was dropped.

    Three layouts, told apart row by row:
      {"prompt", "completion", "label": bool}          TRL's unpaired layout (strings or messages)
      {"prompt"?, "chosen", "rejected"}                a pair: chosen desirable, rejected undesirable
      {"prompt", "response_a", "response_b", "choice"} a `caikit label` row (records.Label): the latest row per
                                                       id wins; a / b make that response desirable and the other
                                                       undesirable; tie, skip and undo are dropped and counted
    """
    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    out: list[dict] = []
    labels: dict[str, tuple[int, dict]] = {}  # id -> (row number, latest row)
    counts = {"tie": 0, "skip": 0, "undo": 0, "superseded": 0}
    for i, row in enumerate(rows, start=1):
        if "choice" in row and "response_a" in row:
            key = str(row.get("id") or row.get("pair_id") or f"row {i}")
            counts["superseded"] += key in labels
            labels[key] = (i, row)
        elif "completion" in row and "label" in row:
            _require([row], ["prompt", "completion"], f"{source} (row {i})")
            if row["label"] not in (True, False):  # 1 and 0 too
                raise UserError(f"row {i}: 'label' must be true or false, got {row['label']!r}", path=source)
            out.append({"prompt": _as_messages(row["prompt"], "user"),
                        "completion": _as_messages(row["completion"], "assistant"), "label": bool(row["label"])})
        elif "chosen" in row and "rejected" in row:
            (pair,) = preference_triples([row], f"{source} (row {i})")
            out += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                    {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
        else:
            raise UserError(f"row {i} is neither unpaired (prompt, completion, label), a pair (prompt, chosen, "
                            f"rejected) nor a label row (response_a, response_b, choice); has: "
                            f"{', '.join(sorted(row)) or 'nothing'}", path=source)
    for i, row in labels.values():
        choice = row["choice"]
        if choice in LABEL_DROPPED:
            counts[choice] += 1
            continue
        if choice not in ("a", "b"):
            raise UserError(f"row {i}: 'choice' must be a, b, tie, skip or undo, got {choice!r}", path=source)
        good, bad = ("response_a", "response_b") if choice == "a" else ("response_b", "response_a")
        prompt = _as_messages(row["prompt"], "user")
        out += [{"prompt": prompt, "completion": _as_messages(row[good], "assistant"), "label": True},
                {"prompt": prompt, "completion": _as_messages(row[bad], "assistant"), "label": False}]
    return out, counts


# ------------------------------------------------------------------------------------------ tokenising

def _plain_prompt(messages: Messages) -> str:
    return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: "


def encode_prompt_response(tokenizer, prompt: Messages | None, response: Messages) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids); the chat template where the tokenizer has one; response ends with EOS."""
    eos = tokenizer.eos_token
    if prompt is None:  # plain language modelling text
        text = "".join(m["content"] for m in response)
        return [], tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    if getattr(tokenizer, "chat_template", None):
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
        if full_text.startswith(prompt_text):
            response_text = full_text[len(prompt_text):]
            if eos and eos in response_text:  # end exactly at EOS: drop the template's trailing newline
                response_text = response_text[:response_text.rindex(eos)]
        else:  # a template that rewrites earlier turns: fall back to the raw reply
            response_text = "".join(m["content"] for m in response)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(_plain_prompt(prompt), add_special_tokens=True)["input_ids"]
        response_text = "".join(m["content"] for m in response)
    return prompt_ids, tokenizer(response_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@dataclass
class TruncationCount:
    """How many sequences were cut to fit --max-length (reported once, after tokenising)."""

    truncated: int = 0
    dropped: int = 0
    total: int = 0

    def __add__(self, other: "TruncationCount") -> "TruncationCount":
        return TruncationCount(self.truncated + other.truncated, self.dropped + other.dropped, self.total + other.total)

    def message(self, max_length: int) -> str | None:
        if not self.truncated and not self.dropped:
            return None
        parts = [f"{self.truncated} of {self.total} sequences longer than --max-length {max_length} truncated"]
        if self.dropped:
            parts.append(f"{self.dropped} dropped (no response tokens left)")
        return "; ".join(parts)


def fit(prompt_ids: list[int], response_ids: list[int], max_length: int, max_prompt_length: int,
        count: TruncationCount) -> tuple[list[int], list[int]] | None:
    """Fit prompt + response into max_length; None (dropped) if no response token would be left.

    The prompt keeps its last tokens, at most max_prompt_length and never so many that the response gets
    less than half the budget; the response keeps its first tokens.
    """
    count.total += 1
    if len(prompt_ids) + len(response_ids) <= max_length:
        return prompt_ids, response_ids
    count.truncated += 1
    prompt_budget = min(max_prompt_length, max(max_length - len(response_ids), max_length // 2))
    if len(prompt_ids) > prompt_budget:
        prompt_ids = prompt_ids[-prompt_budget:] if prompt_budget > 0 else []
    response_ids = response_ids[:max(max_length - len(prompt_ids), 0)]
    if not response_ids:
        count.dropped += 1
        return None
    return prompt_ids, response_ids


def tokenize_sft(tokenizer, pairs, max_length: int, max_prompt_length: int) -> tuple[list[dict], TruncationCount]:
    """-> [{"input_ids": [...], "labels_mask": [...]}], with labels_mask 1 on response tokens."""
    count, examples = TruncationCount(), []
    for prompt, response in pairs:
        kept = fit(*encode_prompt_response(tokenizer, prompt, response), max_length, max_prompt_length, count)
        if kept:
            p, r = kept
            examples.append({"input_ids": p + r, "labels_mask": [0] * len(p) + [1] * len(r)})
    return examples, count


def tokenize_preferences(tokenizer, triples: list[dict], max_length: int,
                         max_prompt_length: int) -> tuple[list[dict], TruncationCount]:
    """-> [{"chosen_input_ids", "chosen_labels_mask", "rejected_…", "p_chosen", "margin", "index"}]."""
    count, examples = TruncationCount(), []
    for t in triples:
        sides = {}
        for side in ("chosen", "rejected"):
            kept = fit(*encode_prompt_response(tokenizer, t["prompt"], t[side]), max_length, max_prompt_length, count)
            if kept is None:
                break
            p, r = kept
            sides[f"{side}_input_ids"] = p + r
            sides[f"{side}_labels_mask"] = [0] * len(p) + [1] * len(r)
        if len(sides) == 4:
            examples.append({**sides, "p_chosen": t["p_chosen"], "margin": t["margin"], "index": len(examples)})
    return examples, count


def tokenize_unpaired(tokenizer, items: list[dict], max_length: int,
                      max_prompt_length: int) -> tuple[list[dict], TruncationCount]:
    """-> [{"input_ids", "labels_mask", "kl_input_ids", "kl_labels_mask", "label", "index"}].

    kl_*: the prompt of this example followed by the completion of the next one (a fixed mismatched pair,
    for KTO's KL reference point); its truncation is not counted, the example's own is.
    """
    count, examples = TruncationCount(), []
    for i, item in enumerate(items):
        partner = items[(i + 1) % len(items)]
        kept = fit(*encode_prompt_response(tokenizer, item["prompt"], item["completion"]), max_length,
                   max_prompt_length, count)
        mismatched = fit(*encode_prompt_response(tokenizer, item["prompt"], partner["completion"]),
                         max_length, max_prompt_length, TruncationCount())
        if kept is None or mismatched is None:
            continue
        (p, r), (kp, kr) = kept, mismatched
        examples.append({"input_ids": p + r, "labels_mask": [0] * len(p) + [1] * len(r), "kl_input_ids": kp + kr,
                         "kl_labels_mask": [0] * len(kp) + [1] * len(kr), "label": item["label"],
                         "index": len(examples)})
    return examples, count


# ------------------------------------------------------------------------------------------ collating

def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    T = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (T - len(s)) for s in seqs], dtype=torch.long)


def _collate_sequences(examples: list[dict], prefix: str, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) <prefix>input_ids, <prefix>attention_mask, <prefix>labels_mask."""
    ids = [e[f"{prefix}input_ids"] for e in examples]
    return {f"{prefix}input_ids": _pad(ids, pad_token_id),
            f"{prefix}attention_mask": _pad([[1] * len(s) for s in ids], 0),
            f"{prefix}labels_mask": _pad([e[f"{prefix}labels_mask"] for e in examples], 0)}


def collate_sft(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids, attention_mask, labels_mask."""
    return _collate_sequences(examples, "", pad_token_id)


def collate_unpaired(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (B, T) input_ids / attention_mask / labels_mask and kl_ ones, label (B,) bool, index (B,)."""
    return {**_collate_sequences(examples, "", pad_token_id), **_collate_sequences(examples, "kl_", pad_token_id),
            "label": torch.tensor([e["label"] for e in examples], dtype=torch.bool),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long)}


def collate_preferences(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded chosen_/rejected_ (B, T) tensors, plus p_chosen (NaN: no label), margin (B,) and index (B,)."""
    batch = {**_collate_sequences(examples, "chosen_", pad_token_id),
             **_collate_sequences(examples, "rejected_", pad_token_id)}
    # NaN marks pairs without a judge label; trainers substitute their default
    batch["p_chosen"] = torch.tensor([math.nan if e["p_chosen"] is None else e["p_chosen"] for e in examples],
                                     dtype=torch.float32)
    batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
    return batch


def batches(examples: list[dict], batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[dict]]:
    """The micro-batches of one epoch, in a seeded order (so a resumed run can skip exactly what it did)."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    return [[examples[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
