"""The judge's quality gate: measure the judge on a sample before paying for the rest, and stop if it is noise.

Before the full run, `caikit judge` (and `caikit eval judge`) judges a seeded sample of the pairs it was
given (--calibrate N) and, with --calibration-pairs, a set of human-labelled pairs. From those it measures:

  position consistency   both orders of a pair prefer the same response (a judge that always picks the
                         first option scores 0)
  mean |p - 0.5|         how sure it is
  length bias            how often it prefers the longer response, beside the humans' rate where given
                         (judges favour length, and DPO / RL then learn verbosity)
  unparseable verdicts   the share of pairs whose verdict could not be read (a failure, never a tie)
  accuracy vs humans     with its 95 % Wilson interval and Cohen's kappa, beside the length-only baseline

Below the thresholds the command stops (exit 3) before spending the rest of the budget, with one paragraph
saying what was measured, what it means and the ways forward. The calibration judgments are kept: the full
run and any rerun reuse them, so nothing is paid twice. With --allow-weak-judge it goes on, and the verdict
travels with the data: gate.json, stats.json, each preference's provenance, the dataset card, the report.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from caikit.config import option
from caikit.errors import UserError
from caikit.records import idempotency_key
from caikit.soft_labels import mean
from caikit.stats import cohens_kappa, longer_preferred_rate, shorter_wins_accuracy, wilson_interval

BUNDLED = "bundled"  # --calibration-pairs bundled: the human-labelled hh-rlhf harmlessness pairs caikit ships


class QualityGateFailed(UserError):
    """The judge measured below the gate's thresholds: exit 3."""

    exit_code = 3


@dataclasses.dataclass
class GateOptions:
    """The judge's quality gate; shared by `caikit judge` and `caikit eval judge`."""

    calibrate: int = option(32, low=0, high=100_000, help="judge this many of the pairs first (a seeded sample) and "
                                                         "stop before the rest if the judge is noise (0: no gate)")
    calibration_pairs: str = option("", help="human-labelled pairs to measure the judge's accuracy against (any "
                                              "file caikit eval judge reads, a labels.jsonl, or `bundled`: 400 "
                                              "hh-rlhf harmlessness pairs shipped with caikit)")
    calibration_limit: int = option(64, low=1, high=100_000, help="at most this many of the human-labelled pairs")
    min_consistency: float = option(0.6, low=0, high=1, help="stop when fewer than this share of the calibration "
                                                             "pairs get the same verdict in both orders")
    max_unparseable: float = option(0.25, low=0, high=1, help="stop when more than this share of the calibration "
                                                              "pairs get no readable verdict")
    allow_weak_judge: bool = option(False, help="go on below the thresholds (the verdict travels with the data)")
    on_weak_judge: str = option("stop", help="below the thresholds: stop (exit 3); revision: with --pairs revision, "
                                             "prefer every revision over its initial answer without the judge "
                                             "(as the Hugging Face CAI recipe does), saying so in the data",
                                metadata={"choices": ["stop", "revision"]})


def calibration_sample(pairs: list, n: int, seed: int) -> list:
    """A seeded sample of `n` pairs, chosen by a hash of each pair id (the same whatever the file order)."""
    if n >= len(pairs):
        return list(pairs)
    ranked = sorted(pairs, key=lambda p: idempotency_key("calibrate", seed, p.id))
    return sorted(ranked[:n], key=lambda p: p.id)


def assess(cfg, judgments: list[dict[str, Any]], unparseable: int, human: list[dict[str, Any]] | None,
           human_pairs: int = 0) -> dict[str, Any]:
    """gate.json: the figures, the thresholds, the status and a plain verdict.

    `judgments` are the calibration sample's; `unparseable` how many of the sample got no readable verdict;
    `human` the judgments of human-labelled pairs, response_a being the human's choice."""
    both = [j for j in judgments if j.get("position_consistent") is not None]
    consistency = mean(float(j["position_consistent"]) for j in both)
    sampled = len(judgments) + unparseable
    gate: dict[str, Any] = {
        "calibrated_pairs": len(judgments), "position_checked": len(both),
        "position_consistency": consistency,
        "mean_abs_margin": mean(abs(j["p_a"] - 0.5) for j in judgments),
        "unparseable_rate": unparseable / sampled if sampled else 0.0,
        "judge_longer_rate": longer_preferred_rate([(j["response_a"], j["response_b"], j["p_a"]) for j in judgments]),
        "human": human_figures(human, human_pairs) if human is not None else None,
        "thresholds": {"min_consistency": cfg.min_consistency, "max_unparseable": cfg.max_unparseable,
                       "accuracy_interval_low_above": 0.5},
        "allow_weak_judge": bool(cfg.allow_weak_judge), "on_weak_judge": cfg.on_weak_judge,
    }
    reasons = weak_reasons(gate)
    gate["reasons"] = reasons
    if not sampled and human is None:
        gate["status"] = "skipped"
    elif not reasons:
        gate["status"] = "passed"
    elif cfg.allow_weak_judge:
        gate["status"] = "allowed-weak"
    elif cfg.on_weak_judge == "revision":
        gate["status"] = "fell-back-to-revision"
    else:
        gate["status"] = "failed"
    gate["verdict"] = verdict(gate)
    return gate


def human_figures(judgments: list[dict[str, Any]], given: int) -> dict[str, Any]:
    """Accuracy of the judge against the humans (response_a = the human's choice), its interval, kappa, and the
    length-only baseline on the same pairs."""
    correct = sum(1.0 if j["p_a"] > 0.5 else 0.5 if j["p_a"] == 0.5 else 0.0 for j in judgments)
    n = len(judgments)
    interval = wilson_interval(correct, n)
    human = ["first"] * n + ["second"] * n  # each pair as if shown in both orders: labels balanced
    picks = [("first" if j["p_a"] > 0.5 else "second" if j["p_a"] < 0.5 else "tie") for j in judgments]
    judge = picks + [{"first": "second", "second": "first"}.get(p, p) for p in picks]
    baseline, _ = shorter_wins_accuracy([(j["response_a"], j["response_b"]) for j in judgments])
    chosen_longer = [len(j["response_a"]) > len(j["response_b"]) for j in judgments
                     if len(j["response_a"]) != len(j["response_b"])]
    return {"n": n, "given": given, "accuracy": correct / n if n else None,
            "interval": list(interval) if interval else None, "kappa": cohens_kappa(human, judge) if n else None,
            "human_longer_rate": mean(map(float, chosen_longer)), "length_baseline": baseline if n else None,
            "length_baseline_rule": "shorter"}  # stats.shorter_wins_accuracy: the shorter reply wins, ties half


def weak_reasons(gate: dict[str, Any]) -> list[str]:
    t, reasons = gate["thresholds"], []
    if gate["position_consistency"] is not None and gate["position_consistency"] < t["min_consistency"]:
        reasons.append("position consistency")
    if gate["unparseable_rate"] > t["max_unparseable"]:
        reasons.append("unparseable verdicts")
    human = gate["human"]
    if human and human["interval"] and human["interval"][0] <= t["accuracy_interval_low_above"]:
        reasons.append("accuracy against humans")
    return reasons


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def verdict(gate: dict[str, Any]) -> str:
    """One plain paragraph: what was measured, what it means, the ways forward."""
    t, human = gate["thresholds"], gate["human"]
    measured = (f"on {gate['calibrated_pairs']} calibration pairs the judge gave the same verdict in both orders for "
                f"{_pct(gate['position_consistency'])} of them (threshold {t['min_consistency']:.0%}), its mean "
                f"confidence |p - 0.5| was {gate['mean_abs_margin'] or 0:.2f}, it preferred the longer response in "
                f"{_pct(gate['judge_longer_rate'])} of pairs, and {_pct(gate['unparseable_rate'])} of its verdicts "
                "were unreadable")
    if human and human["n"]:
        lo, hi = human["interval"]
        measured += (f"; against {human['n']} human-labelled pairs it scored {_pct(human['accuracy'])} (95 % "
                     f"interval {lo:.1%}-{hi:.1%}, kappa {human['kappa'] if human['kappa'] is None else round(human['kappa'], 2)}"
                     f"), where preferring the shorter reply scores {_pct(human['length_baseline'])} and the humans "
                     f"chose the longer reply {_pct(human['human_longer_rate'])} of the time")
    else:
        measured += "; its accuracy against human labels was not measured (--calibration-pairs)"
    if gate["status"] in ("passed", "skipped"):
        return f"The judge passed its quality gate: {measured}."
    meaning = ("Labels from this judge are no better than chance on what was measured ("
               + ", ".join(gate["reasons"]) + "), and a model trained on them learns noise.")
    forward = ("Ways forward: a stronger judge (--model), --method cot, more principles per pair (--principles 4), "
               "or --allow-weak-judge to proceed knowingly (the verdict travels with the data).")
    if gate["status"] == "allowed-weak":
        return f"The judge failed its quality gate and the run went on because of --allow-weak-judge: {measured}. {meaning}"
    if gate["status"] == "fell-back-to-revision":
        return (f"The judge failed its quality gate: {measured}. {meaning} As --on-weak-judge revision asks, every "
                "revision is preferred over its initial answer instead, without the judge's labels.")
    return f"The judge failed its quality gate: {measured}. {meaning} {forward} Nothing more was spent: the " \
           "calibration judgments are kept, and the next run reuses them."


def human_calibration_pairs(cfg, pair_type, pair_id):
    """The human-labelled pairs of --calibration-pairs, at most --calibration-limit (a seeded sample), as judge
    pairs with the human's choice as response_a."""
    from caikit.prompts import bundled_human_calibration_path, load_labelled_pairs

    path = bundled_human_calibration_path() if cfg.calibration_pairs == BUNDLED else cfg.calibration_pairs
    rows = load_labelled_pairs(path)
    pairs = [pair_type(pair_id(r.id, 0, 1), r.messages, r.chosen, r.rejected) for r in rows]
    rng = random.Random(cfg.seed)
    if len(pairs) > cfg.calibration_limit:
        pairs = sorted(rng.sample(pairs, cfg.calibration_limit), key=lambda p: p.id)
    return pairs
