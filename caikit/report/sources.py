"""What a directory holds, read tolerantly: its layout (a `caikit run` directory or one stage's own), each
stage's status, and the figures other commands leave behind (judge gate, reward model's held-out accuracy,
per-stage failure, truncation and skip counts).

A report is read after crashes, interruptions and older versions of caikit, so every reader here returns
{} / None / an empty list for a missing, torn or malformed file instead of raising.

Layouts, in the order they are tried:
  a `caikit run` directory   state.json (`state["stages"][name] = {status, seconds, exit_code, outcome, ...}`),
                             its order is the order the stages ran; config.yaml's `stages:` adds planned ones
  one stage's directory      run.json's "stage" (generate, judge, eval-judge, eval), or, for a trainer's
                             output, a metrics.jsonl beside it
  stage directories          RUN/generate, RUN/judge, ... without state.json (a run cut short, or assembled by hand)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# Display order only (what the directory says comes first): stages found as sub-directories are listed so.
DISPLAY_ORDER = ("generate", "judge", "eval-judge", "sft", "reward", "dpo", "ppo", "online_dpo", "grpo", "kto", "eval",
                 "depth")
TRAINERS = ("sft", "reward", "dpo", "ppo", "grpo", "kto")
RECORD_STAGES = ("generate", "judge", "eval-judge", "eval", "online_dpo", "depth",
                 "constitution-test")  # stages whose run.json names them
REWARD_SUMMARY = "eval.json"  # held-out accuracy a reward trainer writes beside its model (train/reward.py)


# ---------------------------------------------------------------- tolerant readers

def read_json(path: Path) -> dict:
    """A JSON object, or {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(read_text(path) or "")
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def scan_jsonl(path: Path, keep: int) -> tuple[int, list[dict]]:
    """(number of distinct rows, the latest version of the first `keep` of them); torn lines are skipped.

    Rows with an `id` are deduplicated by it (append-only stores may supersede a row).
    """
    seen: set[str] = set()
    kept: dict[Any, dict] = {}
    count = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(row, dict):
                    continue
                key = str(row.get("id", f"#{i}"))
                if key not in seen:
                    seen.add(key)
                    count += 1
                    if len(kept) < keep:
                        kept[key] = row
                elif key in kept:
                    kept[key] = row
    except OSError:
        return 0, []
    return count, list(kept.values())


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def interval_of(value: Any) -> tuple[float, float] | None:
    """[lo, hi] as a tuple of numbers, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_num(v) for v in value):
        return float(value[0]), float(value[1])
    return None


# ---------------------------------------------------------------- layout

@dataclasses.dataclass
class Stage:
    name: str
    path: Path
    status: str  # done | incomplete | failed | running | not run | present
    failures: int = 0
    detail: str = ""  # why it is not done, in a few words
    seconds: float | None = None
    config_hash: str = ""

    @property
    def label(self) -> str:
        """done / incomplete with N failures / failed (exit 3) / not run, as a person reads it."""
        if self.status == "incomplete" and self.failures:
            return f"incomplete with {self.failures} failure{'s' if self.failures != 1 else ''}"
        return f"{self.status} ({self.detail})" if self.detail else self.status


@dataclasses.dataclass
class Layout:
    root: Path
    kind: str  # "run": a `caikit run` layout (or stage sub-directories), where an absent stage is worth saying;
    #            "stage": one stage's own directory (a plain `caikit generate` has no judge, and that is no defect)
    stages: dict[str, Stage]  # in display order
    run_config: dict  # the run file (config.yaml) of a run layout; {} for one stage's directory
    state: dict

    def dir(self, name: str) -> Path | None:
        """The directory of stage `name` when it exists on disk."""
        stage = self.stages.get(name)
        return stage.path if stage is not None and stage.path.is_dir() else None

    def rel(self, name: str, file: str) -> str:
        """How to name `file` of stage `name` on the page: generate/traces.jsonl, or traces.jsonl alone."""
        return file if self.kind == "stage" else f"{name}/{file}"


def _stage_status(name: str, path: Path) -> Stage:
    """Status of a stage from its own files (no state.json): a result file with no failures is done."""
    if not path.is_dir():
        return Stage(name, path, "not run")
    if name in TRAINERS:
        saved = (path / "config.json").is_file() or any(path.glob("*.safetensors"))
        return Stage(name, path, "done") if saved else Stage(name, path, "incomplete", detail="no saved model")
    if name == "online_dpo":  # caikit train online-dpo: its figures are the result
        rows = read_json(path / "iterations.json").get("iterations")
        return Stage(name, path, "done") if rows else Stage(name, path, "incomplete", detail="no iterations.json")
    if name == "depth":  # caikit depth: depth.json is the result
        done = (path / "depth.json").is_file()
        return Stage(name, path, "done") if done else Stage(name, path, "incomplete", detail="no depth.json")
    if name in ("eval", "eval-judge", "constitution-test"):
        report = read_json(path / "report.json")
        if not report:
            return Stage(name, path, "incomplete", detail="no report.json")
        failures = (report.get("counts") or {}).get("judge_failures", report.get("failures", 0))
    else:
        stats = read_json(path / "stats.json")
        if not stats:
            return Stage(name, path, "incomplete", detail="no stats.json: interrupted?")
        failures = stats.get("failures", 0)
    failures = int(failures) if is_num(failures) else 0
    return Stage(name, path, "incomplete" if failures else "done", failures=failures)


def _from_state(name: str, path: Path, info: dict) -> Stage:
    failures = (info.get("outcome") or {}).get("failures", 0) if isinstance(info.get("outcome"), dict) else 0
    status = str(info.get("status", "?"))
    code = info.get("exit_code")
    detail = f"exit {code}" if status == "failed" and is_num(code) else "or interrupted" if status == "running" else ""
    return Stage(name, path, status, int(failures) if is_num(failures) else 0, detail,
                 info.get("seconds") if is_num(info.get("seconds")) else None, str(info.get("config_hash", "")))


def single_stage_name(path: Path) -> str | None:
    """The stage a directory holds by itself: run.json's "stage", or a trainer's (metrics.jsonl); else None."""
    stage = read_json(path / "run.json").get("stage")
    if isinstance(stage, str) and stage in RECORD_STAGES:
        return stage
    if (path / "metrics.jsonl").is_file():
        if path.name in TRAINERS:
            return path.name
        architectures = read_json(path / "config.json").get("architectures") or []
        reward = (path / REWARD_SUMMARY).is_file() or any(str(a).endswith("ForSequenceClassification")
                                                          for a in architectures)
        return "reward" if reward else "training"
    return None


def detect_layout(root: Path) -> Layout:
    state = read_json(root / "state.json")
    states = state.get("stages") if isinstance(state.get("stages"), dict) else {}
    single = None if states else single_stage_name(root)
    if single is not None:
        return Layout(root, "stage", {single: _stage_status(single, root)}, {}, {})
    run_config = read_yaml(root / "config.yaml")
    planned = run_config.get("stages") if isinstance(run_config.get("stages"), dict) else {}
    names = [n for n in states if isinstance(n, str)]
    names += [n for n in DISPLAY_ORDER if n not in names and (n in planned or (root / n).is_dir())]
    stages = {}
    for name in names:
        info = states.get(name)
        path = root / name
        stages[name] = _from_state(name, path, info) if isinstance(info, dict) else _stage_status(name, path)
    return Layout(root, "run", stages, run_config, state)


# ---------------------------------------------------------------- figures other commands write

def judge_gate(judge_dir: Path) -> dict:
    """The judge's quality gate (gate.json, or a "gate" object inside stats.json); {} when there is none."""
    gate = read_json(judge_dir / "gate.json")
    if not gate:
        inside = read_json(judge_dir / "stats.json").get("gate")
        gate = inside if isinstance(inside, dict) else {}
    return gate


def consistency_of(stats: dict) -> float | None:
    """Position consistency from a judge's stats.json (current and older key names)."""
    for key in ("position_consistency_rate", "position_consistency"):
        if is_num(stats.get(key)):
            return float(stats[key])
    return None


def reward_heldout(model_dir: Path) -> dict:
    """A reward model's held-out pairwise accuracy: {"accuracy", "interval", "n", "baseline", "source"}, {} if none.

    Reads, first found: eval.json beside the model (eval_accuracy, eval_accuracy_low / _high, eval_pairs,
    length_baseline_accuracy, as `caikit train reward` and its --freeze-backbone probe write it), else the last
    metrics.jsonl row with an eval_accuracy (the same _low / _high / length_baseline_accuracy keys where the
    trainer logs them). Missing pieces stay None; the Wilson interval is computed when only n is known."""
    from caikit.stats import wilson_interval

    summary, source = read_json(model_dir / REWARD_SUMMARY), REWARD_SUMMARY
    if not is_num(summary.get("eval_accuracy")):
        _, rows = scan_jsonl(model_dir / "metrics.jsonl", 10**9)
        summary = next((r for r in reversed(rows) if is_num(r.get("eval_accuracy"))), {})
        source = "metrics.jsonl"
    if not summary:
        return {}
    accuracy = float(summary["eval_accuracy"])
    n = summary.get("eval_pairs") if is_num(summary.get("eval_pairs")) else None
    interval = interval_of([summary.get("eval_accuracy_low"), summary.get("eval_accuracy_high")])
    if interval is None and n:
        interval = wilson_interval(accuracy * n, int(n))
    baseline = summary.get("length_baseline_accuracy")
    return {"accuracy": accuracy, "interval": interval, "n": int(n) if n else None,
            "baseline": float(baseline) if is_num(baseline) else None, "source": source}


def stage_counts(layout: Layout) -> list[dict[str, Any]]:
    """Per stage: failures, truncated, degenerate and skipped items (None where the stage has no such thing)."""
    out = []
    gen = layout.dir("generate")
    if gen is not None:
        stats = read_json(gen / "stats.json")
        out.append({"stage": "generate", "failures": stats.get("failures"), "truncated": stats.get("truncated"),
                    "degenerate": stats.get("degenerate"), "skipped": None, "of": stats.get("prompts"),
                    "unit": "prompts"})
    judge = layout.dir("judge")
    if judge is not None:
        stats = read_json(judge / "stats.json")
        skipped = stats.get("skipped") if isinstance(stats.get("skipped"), dict) else {}
        numbers = {k: v for k, v in skipped.items() if is_num(v) and v}
        out.append({"stage": "judge", "failures": stats.get("failures"), "truncated": None, "degenerate": None,
                    "of": stats.get("pairs"), "unit": "pairs",
                    "skipped": sum(numbers.values()) if skipped else None,
                    "why": ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in numbers.items())})
    for name in ("eval", "eval-judge"):
        d = layout.dir(name)
        report = read_json(d / "report.json") if d is not None else {}
        if report:
            counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
            truncated = [counts.get(f"truncated_answers_{s}") for s in ("before", "after")]
            out.append({"stage": name, "failures": counts.get("judge_failures", report.get("failures")),
                        "truncated": sum(t for t in truncated if is_num(t)) if any(is_num(t) for t in truncated)
                        else None, "degenerate": None, "skipped": None, "unit": "pairs",
                        "of": counts.get("judged_pairs", report.get("n"))})
    return out
