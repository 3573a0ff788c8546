"""What `caikit label` shows: pairs of responses to one conversation, and which of them a person sees.

SOURCE is one of
  a judge run directory     judgments.jsonl: response_a / response_b as judged, with the judge's p_a (an audit)
  a generate run directory  traces.jsonl: final revision (a) against the initial response (b)
  a labelled-pairs file     anything `caikit eval judge --pairs` reads (a = chosen, b = rejected; the file's own
                            label is not shown, so people label it blind and agreement with it can be measured)
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from caikit.errors import UserError
from caikit.records import Messages, canonical_json
from caikit.store import JsonlFile, latest_by_id

CONFIDENCE_STRATA = 5  # equal-width bins of the judge's confidence |p_a - 0.5| in [0, 0.5]


@dataclass(frozen=True)
class LabelItem:
    pair_id: str
    prompt: Messages  # the conversation, ending with the user turn both responses answer
    response_a: str
    response_b: str
    ai_p_a: float | None = None  # the AI judge's P(a better), from a judge run
    cut_a: bool = False  # response_a stopped at the token limit (shown as cut: a labeller judges what is there)
    cut_b: bool = False


def judge_gate_status(run_dir: Path) -> str:
    """The judge run's quality-gate status (gate.json: passed, failed, allowed-weak, ...), "" when it has none."""
    import json

    try:
        gate = json.loads((run_dir / "gate.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(gate.get("status", "")) if isinstance(gate, dict) else ""


def _cut_texts(judge_dir: Path) -> set[str]:
    """Responses of the generate run a judge run read (config.yaml's from_dir) that stopped at the token limit:
    cut initial answers and cut revisions (kept with --keep-truncated)."""
    import yaml

    cut: set[str] = set()
    try:
        config = yaml.safe_load((judge_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    traces = Path(str(config.get("from_dir") or "")) / "traces.jsonl" if isinstance(config, dict) else None
    if traces is not None and config.get("from_dir") and traces.is_file():
        for row in latest_by_id(JsonlFile(traces).iter()).values():
            stops = row.get("stop_reasons") or {}
            if stops.get("answer") == "length":
                cut.add(str(row.get("initial_response", "")))
            if row.get("truncated"):
                cut.add(str(row.get("final_revision", "")))
    return cut


def _rows(path: Path) -> list[dict]:
    rows = list(latest_by_id(JsonlFile(path).iter()).values())
    if not rows:
        raise UserError("no rows (has the run finished any work?)", path=str(path))
    return rows


def _judge_items(path: Path) -> list[LabelItem]:
    items, cut = [], _cut_texts(path.parent)
    for row in _rows(path):
        p_a = row.get("p_a")
        if not isinstance(row.get("prompt"), list) or not isinstance(p_a, (int, float)):
            raise UserError(f"row {row['id']!r} is not a judgment (prompt, response_a, response_b, p_a)",
                            path=str(path))
        a, b = str(row.get("response_a", "")), str(row.get("response_b", ""))
        items.append(LabelItem(str(row.get("pair_id") or row["id"]), row["prompt"], a, b, float(p_a),
                               cut_a=a in cut, cut_b=b in cut))
    return items


def _generate_items(path: Path) -> list[LabelItem]:
    items = []
    for row in _rows(path):
        revision, initial = row.get("final_revision"), row.get("initial_response")
        if not isinstance(row.get("prompt"), list) or not isinstance(revision, str) or not isinstance(initial, str):
            raise UserError(f"row {row['id']!r} is not a trace (prompt, initial_response, final_revision)",
                            path=str(path))
        if revision.strip() != initial.strip():  # a revision that changed nothing is no comparison
            stops = row.get("stop_reasons") or {}
            items.append(LabelItem(row["id"], row["prompt"], revision, initial, cut_a=bool(row.get("truncated")),
                                   cut_b=stops.get("answer") == "length"))
    return items


def _pairs_file_items(path: Path) -> list[LabelItem]:
    from caikit.prompts import load_labelled_pairs

    return [LabelItem(p.id, p.messages, p.chosen, p.rejected) for p in load_labelled_pairs(path)]


def load_items(source: str) -> tuple[list[LabelItem], str]:
    """Every distinct pair in SOURCE, sorted by pair id (file order varies from run to run), and its kind."""
    path = Path(source)
    if path.is_dir():
        if (path / "judgments.jsonl").exists():
            items, kind = _judge_items(path / "judgments.jsonl"), "judge run"
        elif (path / "traces.jsonl").exists():
            items, kind = _generate_items(path / "traces.jsonl"), "generate run"
        else:
            raise UserError("neither a judge run (judgments.jsonl) nor a generate run (traces.jsonl)", path=source)
    elif path.exists():
        items, kind = _pairs_file_items(path), "pairs file"
    else:
        raise UserError("no such file or directory", path=source)
    unique = {item.pair_id: item for item in items}
    if not unique:
        raise UserError("no pairs to label (every revision equals its initial response?)", path=source)
    return [unique[k] for k in sorted(unique)], kind


def confidence_stratum(p_a: float) -> int:
    """Which of CONFIDENCE_STRATA equal-width bins of |p_a - 0.5| a judgment falls in (0: a coin flip)."""
    # 1e-9: |0.7 - 0.5| is 0.19999999999999996 in floating point, and belongs in [0.2, 0.3)
    return min(int(abs(p_a - 0.5) * 2 * CONFIDENCE_STRATA + 1e-9), CONFIDENCE_STRATA - 1)


def select(items: list[LabelItem], sample: int, seed: int) -> list[LabelItem]:
    """The pairs to label, in a seeded random order (the same on every restart, so resuming works).

    With `sample` > 0, that many pairs. When every pair carries the judge's p_a, the sample is spread evenly
    over its confidence strata (round-robin, each stratum shuffled): a plain random sample from a confident
    judge would hold almost none of the near-ties where it and people part ways, and from a weak judge almost
    nothing else. The order is shuffled afterwards, so a person cannot read the judge's confidence from it."""
    rng = random.Random(seed)
    chosen = list(items)
    if 0 < sample < len(items):
        if all(item.ai_p_a is not None for item in items):
            strata: list[list[LabelItem]] = [[] for _ in range(CONFIDENCE_STRATA)]
            for item in items:
                strata[confidence_stratum(item.ai_p_a)].append(item)
            for stratum in strata:
                rng.shuffle(stratum)
            chosen = []
            while len(chosen) < sample:
                for stratum in strata:
                    if stratum and len(chosen) < sample:
                        chosen.append(stratum.pop())
        else:
            chosen = rng.sample(items, sample)
    rng.shuffle(chosen)
    return chosen


def shown_left(seed: int, labeler: str, pair_id: str) -> str:
    """"a" or "b": which response this labeller sees on the left. A hash, not a draw, so it is the same after a
    restart; it depends on the labeller, so two people see a pair in opposite orders about half the time."""
    digest = hashlib.sha256(canonical_json(["shown_left", seed, labeler, pair_id]).encode("utf-8")).digest()
    return "a" if digest[0] & 1 == 0 else "b"
