"""A reward model's held-out figures, whichever way it was trained (fine-tuned or a probe on frozen features):
pairwise accuracy with its 95 % interval beside the length-only baseline and a verdict, kept as eval.json in
the model directory for `caikit eval` and the report."""

from __future__ import annotations

import json
from pathlib import Path

from caikit.errors import UserError

COMMAND = "train reward"
SUMMARY_FILE = "eval.json"  # held-out accuracy, its interval, the length baseline and the verdict


def reply_text(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages)


def heldout_summary(accuracy: float, eval_triples: list[dict], **extra) -> dict:
    """The figures a reward model is judged by: held-out pairwise accuracy with its 95 % Wilson interval, the
    length-only baseline ("prefer the shorter reply") on the same pairs, and a verdict in plain words."""
    from caikit.stats import pairwise_verdict, shorter_wins_accuracy, wilson_interval

    n = len(eval_triples)
    interval = wilson_interval(accuracy * n, n) if n else None
    baseline, _ = shorter_wins_accuracy([(reply_text(t["chosen"]), reply_text(t["rejected"])) for t in eval_triples])
    return {"eval_accuracy": accuracy if n else None, "eval_accuracy_low": interval[0] if interval else None,
            "eval_accuracy_high": interval[1] if interval else None, "eval_pairs": n,
            "length_baseline_accuracy": baseline if n else None, **extra,
            "verdict": pairwise_verdict(accuracy, interval, baseline)}


def summary_sentence(summary: dict) -> str:
    """The held-out figures in one line, as `caikit train reward` prints them and a report can show them."""
    if not summary.get("eval_pairs"):
        return summary["verdict"]
    return (f"held-out pairwise accuracy {summary['eval_accuracy']:.3f} (95 % interval "
            f"{summary['eval_accuracy_low']:.3f}-{summary['eval_accuracy_high']:.3f}) on {summary['eval_pairs']} "
            f"pairs; preferring the shorter reply scores {summary['length_baseline_accuracy']:.3f}: "
            f"{summary['verdict']}")


def write_summary(out_dir: str | Path, summary: dict) -> None:
    """eval.json in the model directory, and its sentence on stderr."""
    from caikit.train.loop import note

    (Path(out_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    note(COMMAND, summary_sentence(summary))


def read_summary(model_dir: str | Path) -> dict | None:
    """A reward model directory's eval.json (for `caikit eval` and the report); None when it has none."""
    path = Path(model_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"unreadable reward-model summary: {e}", path=str(path)) from None
