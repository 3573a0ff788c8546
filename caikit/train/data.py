"""Training data: read every --data source, tokenise with the chat template, mask prompts, truncate, pad.

Rows are read by `caikit.rows`, the one reader every command shares (formats: JSONL, JSON, CSV, each also
gzipped, parquet, `datasets` directories, caikit run and export directories; layouts: hh-rlhf, TRL standard
and conversational, prompt-completion, implicit prompt, caikit records, human labels):
  SFT:         {"messages": [...]} | {"prompt", "completion"} | {"text"}
  preferences: {"prompt", "chosen", "rejected"} (+ optional "p_chosen": the judge's soft label, and
               "margin" for --use-margin) | hh-rlhf transcripts | `caikit label` rows; a prompt-less row whose
               chosen/rejected are whole conversations sharing a prefix (hh-rlhf style) is split at the last
               assistant turn. No other column is read as a label: ratings such as UltraFeedback's
               score_chosen are not probabilities.
  unpaired:    {"prompt", "completion", "label": true/false} (KTO), and preference rows or `caikit label` rows
               turned into one desirable and one undesirable example each (`unpaired_examples`).
Tokenised sequences are prompt + response + EOS with `labels_mask` 1 on the response tokens (EOS
included); caikit/train/batches.py orders them into micro-batches and right-pads them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path


from caikit.errors import UserError

Messages = list[dict[str, str]]


# ---------------------------------------------------------------------------------------------- loading

def data_sources(cfg) -> list[str]:
    """--data as a list (several sources may be given; YAML `data: x` and Python callers may pass one)."""
    given = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data or [])
    sources = [d for d in given if str(d).strip()]
    if not sources:
        raise UserError("--data is required (a caikit run or export dir, .jsonl, .json, .csv, .parquet (also .gz), "
                        "or a `datasets` dir; repeat --data to mix sources)")
    seen: dict[Path, str] = {}
    for source in sources:  # one source twice would train on every one of its rows twice
        real = Path(source).expanduser().resolve()
        if real in seen:
            raise UserError(f"given twice as --data (also as {seen[real]}): each source once", path=str(source))
        seen[real] = str(source)
    return sources


@dataclass
class DataSummary:
    """What each --data source gave, for the trainer's stderr, metrics.jsonl and data.json."""

    what: str  # "pairs" | "examples"
    sources: list[dict] = field(default_factory=list)
    conflicts: dict = field(default_factory=dict)  # pairs the sources label both ways (see resolve_conflicts)

    @property
    def total(self) -> int:
        return sum(s["used"] for s in self.sources)

    def lines(self) -> list[str]:
        lines = []
        for s in self.sources:
            extra = [f"split '{s['split']}'"] if s.get("split") else []
            extra += [f"{s['duplicates']} duplicates read once"] if s.get("duplicates") else []
            extra += [f"{n} {reason} left out" for reason, n in sorted(s.get("left_out", {}).items())]
            if s.get("judge_gate") in WEAK_GATES:
                extra.append(f"WARNING: labelled by a judge whose quality gate says '{s['judge_gate']}' (gate.json)")
            shown = s["file"] if s["file"] == s["path"] else f"{s['path']} ({s['file']})"
            lines.append(f"{s['used']} {self.what} from {shown}" + (f" [{'; '.join(extra)}]" if extra else ""))
        if len(self.sources) > 1:
            lines.append(f"{self.total} {self.what} from {len(self.sources)} sources")
        c = self.conflicts
        if c.get("pairs"):
            lines.append(f"{c['pairs']} pairs labelled both ways by the sources (--on-conflict {c['rule']}): "
                         f"{c['human_won']} settled by the human label, {c['dropped_pairs']} dropped, "
                         f"{c['kept_both_ways']} kept both ways; {c['rows_dropped']} rows left out")
        return lines

    @property
    def used(self) -> int:
        """Rows that go on to training: every source's, less those a conflict rule left out."""
        return self.total - self.conflicts.get("rows_dropped", 0)

    def to_dict(self) -> dict:
        return {"what": self.what, "total": self.used, "sources": self.sources,
                **({"conflicts": self.conflicts} if self.conflicts else {})}

    def write(self, out: str | Path) -> None:
        path = Path(out) / "data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_rows(path: str | Path, kind: str | None = None, split: str | None = None) -> list[dict]:
    """Raw rows of one source as plain dicts (kind "sft" | "preference" picks the file inside a run dir)."""
    from caikit.rows.formats import open_source

    view = {"sft": "examples", "preference": "pairs"}.get(kind or "preference", kind)
    return [row for _, row in open_source(path, view, "rows", split).rows]


def split_rows(rows: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic shuffle, then (train, eval); eval gets at least one row when the fraction is > 0."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_fraction <= 0 or len(rows) < 2 else max(1, int(round(len(rows) * eval_fraction)))
    n_eval = min(n_eval, len(rows) - 1)
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _in_memory(rows: list, source: str):
    from caikit.rows.formats import Place, Source

    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    return Source(source, source, [(Place(source, item=f"row {i}"), row) for i, row in enumerate(rows, 1)])


def sft_pairs(rows: list[dict], source: str) -> list[tuple[Messages | None, Messages]]:
    """Each SFT row -> (prompt messages or None for plain text, response messages), via caikit.rows."""
    from caikit.rows import examples_from

    return [(e.prompt, e.completion) for e in examples_from(_in_memory(rows, source)).items]


def _triple(pair) -> dict:
    return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected, "p_chosen": pair.p_chosen,
            "margin": pair.margin}


def preference_triples(rows: list[dict], source: str) -> list[dict]:
    """Each preference row -> {"prompt", "chosen", "rejected" (messages), "p_chosen" (or None), "margin"}."""
    from caikit.rows import pairs_from

    return [_triple(p) for p in pairs_from(_in_memory(rows, source)).items]


def training_data(cfg, what: str) -> tuple[list, DataSummary]:
    """Every --data source read through caikit.rows: SFT (prompt, completion) tuples (what="examples") or
    preference triples (what="pairs"), and the per-source counts."""
    from caikit.rows import read_examples, read_pairs

    items, summary, pairs = [], DataSummary(what), []
    for index, path in enumerate(data_sources(cfg)):
        if what == "pairs":
            loaded = read_pairs(path, split=getattr(cfg, "split", None) or None)
            pairs += [(index, p) for p in loaded.items]
        else:
            loaded = read_examples(path, split=getattr(cfg, "split", None) or None)
            items += [(e.prompt, e.completion) for e in loaded.items]
        summary.sources.append({**loaded.summary(), **judge_gate_of(path)})
    if what == "pairs":
        from caikit.train.conflicts import resolve_conflicts

        kept, summary.conflicts = resolve_conflicts(pairs, getattr(cfg, "on_conflict", "human") or "human")
        items = [_triple(p) for p in kept]
    return items, summary


WEAK_GATES = ("failed", "allowed-weak", "fell-back-to-revision")


def judge_gate_of(path: str) -> dict:
    """{"judge_gate": status} for a judge run directory with a quality-gate verdict: the trainer carries it into
    its data.json and metrics, so labels from a weak judge stay marked as such wherever they are used."""
    gate = Path(path) / "gate.json"
    if not gate.is_file():
        return {}
    try:
        return {"judge_gate": json.loads(gate.read_text(encoding="utf-8")).get("status", "unknown")}
    except (OSError, ValueError, AttributeError):
        return {"judge_gate": "unreadable"}


LABEL_DROPPED = ("tie", "skip", "undo")  # `caikit label` choices that say nothing about either response


def unpaired_examples(rows: list[dict], source: str) -> tuple[list[dict], dict[str, int]]:
    """Rows -> [{"prompt", "completion" (messages), "label": True for desirable}] and counts of what was dropped.

    Three layouts, told apart row by row, each read by caikit.rows' own layout functions:
      {"prompt", "completion", "label": bool}          TRL's unpaired layout (strings or messages)
      {"prompt"?, "chosen", "rejected"}                a pair: chosen desirable, rejected undesirable
      {"prompt", "response_a", "response_b", "choice"} a `caikit label` row (records.Label): the latest row per
                                                       id wins; a / b make that response desirable and the other
                                                       undesirable; tie, skip and undo are dropped and counted
    """
    from caikit.rows.layouts import RowError, prompt_of, thumb_of

    if not rows:
        raise UserError("dataset is empty (no rows)", path=source)
    out: list[dict] = []
    labels: dict[str, tuple[int, dict]] = {}  # id -> (row number, latest row)
    counts = {"tie": 0, "skip": 0, "undo": 0, "superseded": 0}

    def said(text) -> Messages:
        return text if isinstance(text, list) else [{"role": "assistant", "content": str(text)}]

    for i, row in enumerate(rows, start=1):
        try:
            if "choice" in row and "response_a" in row:
                key = str(row.get("id") or row.get("pair_id") or f"row {i}")
                counts["superseded"] += key in labels
                labels[key] = (i, row)
            elif "label" in row and ("completion" in row or "response" in row or "prompt" not in row):
                if not isinstance(row.get("label"), bool) and row.get("label") not in (0, 1):
                    raise RowError(f"'label' must be true or false, got {row.get('label')!r}")
                if "prompt" not in row:
                    raise RowError("missing column 'prompt'")
                prompt, completion, label = thumb_of({**row, "label": bool(row["label"])})
                out.append({"prompt": prompt, "completion": completion, "label": label})
            elif "chosen" in row and "rejected" in row:
                (pair,) = preference_triples([row], f"{source} (row {i})")
                out += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                        {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
            else:
                raise RowError("is neither unpaired (prompt, completion, label), a pair (prompt, chosen, rejected) "
                               f"nor a label row (response_a, response_b, choice); has: {', '.join(sorted(row))}")
        except RowError as e:
            sep = "" if str(e).startswith("is ") else ":"
            raise UserError(f"row {i}{sep} {e}", path=source) from None
    for i, row in labels.values():
        choice = row["choice"]
        if choice in LABEL_DROPPED:
            counts[choice] += 1
            continue
        if choice not in ("a", "b"):
            raise UserError(f"row {i}: 'choice' must be a, b, tie, skip or undo, got {choice!r}", path=source)
        good, bad = ("response_a", "response_b") if choice == "a" else ("response_b", "response_a")
        try:
            prompt = prompt_of(row["prompt"])
        except RowError as e:
            raise UserError(f"row {i}: {e}", path=source) from None
        out += [{"prompt": prompt, "completion": said(row[good]), "label": True},
                {"prompt": prompt, "completion": said(row[bad]), "label": False}]
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
