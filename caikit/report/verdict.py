"""The verdict a run ends with: can its labels, its yardstick and its before/after differences be trusted?

  Judge         calibration from the judge's quality gate (judge/gate.json: position consistency, accuracy
                against human labels with its interval, length bias); without a gate, stats.json's position
                consistency, and accuracy against humans "not measured". An eval-judge directory's agreement
                report counts as a calibration against humans.
  Reward model  the independent yardstick's held-out accuracy and interval beside the length-only baseline
                (sources.reward_heldout: reward/eval.json or reward/metrics.jsonl, else eval/report.json).
  Effects       each row of eval/report.json with a role (win-rates, refusal rates, mean reward): beyond its
                noise or not, read by its role (caikit/eval/noise.py computes the intervals): the aim within
                noise or worse, or a guard (helpfulness, over-refusal) worse beyond noise, is `bad`.
  Monitors      mode collapse and reward hacking between the before/after answers (eval/report.json).
  Counts        failures, truncated, degenerate and skipped items per stage (caikit/report/health.py).

A chance-level judge (accuracy interval including 0.5, consistency under the threshold, a failed or
--allow-weak-judge gate), a reward model at chance or no better than "prefer the shorter reply", and an
aimed-for effect inside its noise are `bad`: red on the page, "[!!]" in text. `verdict_lines(run_dir)` is the text that
`caikit run` / `caikit demo` print at the end; `verdict_html(layout)` is the box report.html opens with.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from caikit.report.depth import depth_finding
from caikit.report.finding import Finding
from caikit.report.health import COUNTS, counts_finding, counts_grid, monitors_finding
from caikit.report.sources import (
    Layout,
    consistency_of,
    detect_layout,
    interval_of,
    is_num,
    judge_gate,
    read_json,
    read_yaml,
    reward_heldout,
    scan_jsonl,
    stage_counts,
)
from caikit.stats import MIN_PAIRS

DEFAULT_MIN_CONSISTENCY = 0.6  # `caikit judge --min-consistency` default, used when gate.json names none
FEW_PAIRS = 10  # below this many pairs an interval is called rough, and a good result only amber


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _span(interval: tuple[float, float]) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}"


# ---------------------------------------------------------------- judge

def _judge_facts(layout: Layout) -> dict[str, Any] | None:
    """What is known about the judge's quality, from whichever directory holds it."""
    judge_dir = layout.dir("judge")
    if judge_dir is not None:
        gate, stats = judge_gate(judge_dir), read_json(judge_dir / "stats.json")
        thresholds = gate.get("thresholds") if isinstance(gate.get("thresholds"), dict) else {}
        threshold = next((thresholds[k] for k in ("min_consistency", "consistency") if is_num(thresholds.get(k))),
                         DEFAULT_MIN_CONSISTENCY)
        return {"gated": bool(gate), "status": gate.get("status"),
                "consistency": gate.get("position_consistency") if "position_consistency" in gate
                else consistency_of(stats),
                "pairs": gate.get("calibrated_pairs") if gate else stats.get("position_checked"),
                "threshold": threshold, "human": gate.get("human") if isinstance(gate.get("human"), dict) else None,
                "longer": gate.get("judge_longer_rate", stats.get("longer_preferred_rate")),
                "unparseable": gate.get("unparseable_rate"),
                "allow_weak": bool(gate.get("allow_weak_judge") or stats.get("allow_weak_judge")),
                "paragraph": gate.get("verdict") if isinstance(gate.get("verdict"), str) else ""}
    agreement_dir = layout.dir("eval-judge")
    report = read_json(agreement_dir / "report.json") if agreement_dir is not None else {}
    if report:
        return {"gated": False, "status": None, "consistency": report.get("position_consistency_rate"),
                "pairs": report.get("n"), "threshold": DEFAULT_MIN_CONSISTENCY, "longer": None, "unparseable": None,
                "human": {"n": report.get("n"), "accuracy": report.get("accuracy"),
                          "interval": report.get("accuracy_interval"), "kappa": report.get("kappa")},
                "allow_weak": False, "paragraph": ""}
    return None


def judge_finding(layout: Layout) -> Finding | None:
    facts = _judge_facts(layout)
    if facts is None:
        return Finding("Judge", "none", "No judge stage here: the quality of the preference labels was not "
                                        "measured.") if layout.kind == "run" else None
    human = facts["human"] or {}
    consistency, threshold, pairs = facts["consistency"], facts["threshold"], facts["pairs"]
    accuracy, interval = human.get("accuracy"), interval_of(human.get("interval"))
    baseline = human.get("length_baseline")
    chance, weak = [], []
    if interval is not None and interval[0] <= 0.5:
        chance.append("its agreement with human labels could be a coin flip (the 95 % interval "
                      + ("includes 0.5)" if interval[1] >= 0.5 else "lies below 0.5)"))
    if is_num(consistency) and consistency < threshold:
        chance.append(f"it keeps its verdict when the two answers swap places in only {_pct(consistency)} of "
                      f"pairs (the gate asks for {_pct(threshold)})")
    if is_num(accuracy) and is_num(baseline) and accuracy <= baseline:
        weak.append(f"its accuracy against human labels ({accuracy:.3f}) is no better than preferring the shorter "
                    f"reply ({baseline:.3f})")

    measured = [f"position consistency {consistency:.2f} (threshold {threshold:.2f})"
                + (f" on {pairs} pairs" if is_num(pairs) else "") if is_num(consistency)
                else "position consistency not measured"]
    if is_num(accuracy):
        extra = [f"{human['n']} pairs"] if is_num(human.get("n")) else []
        extra += [f"kappa {human['kappa']:.2f}"] if is_num(human.get("kappa")) else []
        measured.append(f"accuracy against human labels {accuracy:.3f}"
                        + (f" (95 % interval {_span(interval)}{', ' if extra else ''}{', '.join(extra)})"
                           if interval else f" ({', '.join(extra)})" if extra else "")
                        + (f", where preferring the shorter reply scores {baseline:.3f}" if is_num(baseline) else ""))
    else:
        measured.append("accuracy against human labels: not measured")
    if is_num(facts["longer"]):
        people = human.get("human_longer_rate")
        measured.append(f"it prefers the longer answer in {_pct(facts['longer'])} of pairs"
                        + (f" (the human labels: {_pct(people)})" if is_num(people) else ""))
    if is_num(facts["unparseable"]) and facts["unparseable"] > 0:
        measured.append(f"{_pct(facts['unparseable'])} of its verdicts could not be parsed")

    status = facts["status"]
    if chance:
        level, badge = "bad", "CHANCE LEVEL"
        head = "The judge's labels are no better than chance: " + ", and ".join(chance)
    elif weak:
        level, badge, head = "bad", "WEAK", "The judge's labels are weak: " + " and ".join(weak)
    elif status in ("failed", "allowed-weak") or facts["allow_weak"]:
        level, badge, head = "bad", "GATE NOT PASSED", "The judge did not pass its quality gate"
    elif is_num(accuracy) and interval is not None:
        level, badge, head = "good", "CALIBRATED", "The judge agrees with human labels better than chance"
    elif status == "skipped" or not facts["gated"]:
        level, badge = "warn", "NOT CHECKED"
        head = ("The judge was not calibrated (--calibrate 0)" if status == "skipped"
                else "The judge ran without a quality gate") + ", so its accuracy against humans is unknown"
    else:
        level, badge, head = "warn", "NOT CHECKED", "The judge passed its gate, but not against human labels"
    after = {"failed": " Its quality gate stopped the run.",
             "allowed-weak": " The run went on past the gate with --allow-weak-judge."}.get(status, "")
    if not after and facts["allow_weak"]:
        after = " The run went on with --allow-weak-judge."
    return Finding("Judge", level, f"{head}.", badge, f"Measured: {'; '.join(measured)}.{after}", facts["paragraph"])


# ---------------------------------------------------------------- reward model

def describe_heldout(figures: dict[str, Any]) -> str:
    """A reward model's held-out figures (sources.reward_heldout) in a few plain words."""
    if not is_num(figures.get("accuracy")):
        return "no held-out accuracy recorded"
    interval, n, baseline = interval_of(figures.get("interval")), figures.get("n"), figures.get("baseline")
    text = f"held-out pairwise accuracy {figures['accuracy']:.3f}"
    text += f" (95 % interval {_span(interval)}" + (f", {n} pairs)" if n else ")") if interval else \
        " (number of held-out pairs not recorded, so no interval)"
    return text + (f"; preferring the shorter reply scores {baseline:.3f} on the same pairs" if is_num(baseline)
                   else "; the length-only baseline was not recorded")


def _learned_from_judge(layout: Layout, reward_dir: Path) -> bool:
    """Was the reward model trained on this run's AI judge labels (so not independent of the judge)?"""
    data = read_yaml(reward_dir / "config.yaml").get("data")
    judge_dir = layout.dir("judge")
    if not isinstance(data, str) or not data or judge_dir is None:
        return False
    path = Path(data)
    return path.resolve() == judge_dir.resolve() or path.parts[-2:] == (layout.root.name, "judge")


def reward_finding(layout: Layout) -> Finding | None:
    """The yardstick `caikit eval` scored with (its report.json's reward_model), else the run's reward stage."""
    eval_dir = layout.dir("eval")
    stored = read_json(eval_dir / "report.json").get("reward_model") if eval_dir is not None else None
    stored = stored if isinstance(stored, dict) else None
    model_dir = layout.dir("reward")
    if stored is not None:  # its path as eval was given it; from another working directory only the copy is left
        path = Path(str(stored.get("path") or ""))
        model_dir = path if stored.get("path") and path.is_dir() else None
    figures = (reward_heldout(model_dir) if model_dir is not None else {}) or (stored or {})
    if model_dir is None and stored is None:
        if layout.kind == "run" or eval_dir is not None:
            return Finding("Reward model", "none", "No independent reward model: the before/after verdict rests "
                                                   "on the judge alone.")
        return None
    described = describe_heldout(figures)
    accuracy, baseline = figures.get("accuracy"), figures.get("baseline")
    interval = interval_of(figures.get("interval"))
    if not is_num(accuracy):
        finding = Finding("Reward model", "warn", "The reward model recorded no held-out accuracy (no eval.json, no "
                                                  "eval_accuracy in its metrics.jsonl), so its scores are unchecked.",
                          "NOT CHECKED")
    elif interval is None:
        finding = Finding("Reward model", "warn", "The reward model's accuracy has no interval.", "NO INTERVAL",
                          f"{described[0].upper()}{described[1:]}.")
    elif interval[0] <= 0.5:
        finding = Finding("Reward model", "bad", "The reward model is no better than chance on pairs it did not "
                                                 "train on.", "CHANCE LEVEL", f"{described[0].upper()}{described[1:]}.")
    elif is_num(baseline) and accuracy <= baseline:
        finding = Finding("Reward model", "bad", "The reward model is weak: it does no better than preferring the "
                                                 "shorter reply.", "WEAK", f"{described[0].upper()}{described[1:]}.")
    else:
        finding = Finding("Reward model", "good", "The reward model beats chance"
                          + (" and the length-only baseline" if is_num(baseline) else "")
                          + " on pairs it did not train on.", "INDEPENDENT CHECK",
                          f"{described[0].upper()}{described[1:]}.")
    if model_dir is not None and _learned_from_judge(layout, model_dir):
        finding.facts += " It learned from this run's AI judge labels, so it is not independent of the judge."
        finding.level = "warn" if finding.level == "good" else finding.level
        finding.badge = finding.badge if finding.level == "bad" else "NOT INDEPENDENT"
    return finding


# ---------------------------------------------------------------- before / after

# (role, beyond noise, direction) -> level, badge, sentence opening; direction: better | worse | None (no side)
EFFECT_WORDS = {
    ("aim", False): ("bad", "WITHIN NOISE", "The change in {q} is within noise"),
    ("aim", True, "better"): ("good", "BEYOND NOISE", "{Q} improved beyond noise"),
    ("aim", True, "worse"): ("bad", "WORSE", "{Q} got worse beyond noise"),
    ("guard", False): ("good", "NO CHANGE", "No measurable change in {q}"),
    ("guard", True, "better"): ("good", "BETTER", "{Q} improved beyond noise"),
    ("guard", True, "worse"): ("bad", "WORSE", "{Q} got worse beyond noise"),
    ("watch", False): ("none", "NO CHANGE", "No measurable change in {q}"),
}


def _effect(row: dict[str, Any], judge_spec: str) -> Finding | None:
    """One row of the before/after table with a role, in plain words; its role (eval/noise.py) sets the colour."""
    metric, before, after, beyond, n = str(row.get("metric", "?")), row.get("before"), row.get("after"), \
        row.get("beyond_noise"), row.get("n")
    role = row.get("role") if row.get("role") in ("aim", "guard", "watch") else "watch"
    if before is None and after is None:
        return None  # a row with nothing in it (no --reward-model): the reward line speaks for it
    win_rate = "interval" in row  # one number, P(after better); the others are paired changes
    if win_rate:
        quantity, _, kind = metric.partition(" win-rate")
        interval, null, change = interval_of(row.get("interval")), 0.5, (after - 0.5 if is_num(after) else None)
    else:
        quantity, kind = f"the {metric}", ""
        interval, null = interval_of(row.get("interval_change")), 0.0
        change = after - before if is_num(after) and is_num(before) else None
    topic = metric[:1].upper() + metric[1:] if not win_rate else quantity[:1].upper() + quantity[1:]
    if is_num(n) and 0 < n < MIN_PAIRS:  # whatever the row says (an older eval judged 8 pairs "beyond noise")
        return Finding(topic, "warn", f"Too few pairs to tell whether {quantity} changed.", "TOO FEW PAIRS",
                       f"{n} pair{'s' if n != 1 else ''}: at least {MIN_PAIRS} are needed before an interval says "
                       "whether a change is beyond noise.")
    if beyond is None or interval is None or change is None:
        return Finding(topic, "warn", f"The change in {quantity} was not measured.", "NOT MEASURED",
                       f"{row.get('verdict', '')}.")
    if win_rate:
        by = f" from the judge {judge_spec}" if judge_spec else ""
        figures = (f"Mean P(trained model's answer better){by} = {after:.3f}, 95 % interval {_span(interval)} "
                   f"over {n} {kind.strip(' ()')} pairs")
    else:
        figures = (f"{before:.3f} before, {after:.3f} after: change {change:+.3f}, 95 % interval "
                   f"{interval[0]:+.3f} to {interval[1]:+.3f} over {n} paired prompts")
    higher = {"higher": True, "lower": False}.get(row.get("better"))
    direction = None if higher is None or change == 0 else "better" if (change > 0) == higher else "worse"
    level, badge, opening = EFFECT_WORDS.get((role, True, direction) if beyond else (role, False),
                                             ("none", "CHANGED", "{Q} changed beyond noise"))
    ends = f"which {'excludes' if beyond else 'includes'} {null:g}."
    return Finding(topic, level, opening.format(q=quantity, Q=quantity[:1].upper() + quantity[1:]) + ":", badge,
                   f"{figures}, {ends}")


def _same_judge(layout: Layout, eval_judge: dict[str, Any]) -> bool | None:
    """Did the judge stage's judge also score the before/after pairs? None when it cannot be told."""
    judge_dir = layout.dir("judge")
    _, first = scan_jsonl(judge_dir / "preferences.jsonl", 1) if judge_dir is not None else (0, [])
    provenance = first[0].get("provenance") if first and isinstance(first[0].get("provenance"), dict) else {}
    labels = provenance.get("judge") if isinstance(provenance.get("judge"), dict) else {}
    if not labels.get("model") or not eval_judge.get("model"):
        return None
    return (labels.get("backend"), labels.get("model")) == (eval_judge.get("backend"), eval_judge.get("model"))


def effect_findings(layout: Layout, judge: Finding | None = None) -> list[Finding]:
    eval_dir = layout.dir("eval")
    if eval_dir is None:
        return [Finding("Before / after", "none", "No before/after evaluation: the trained model was not compared "
                                                  "with the starting one.")] if layout.kind == "run" else []
    report = read_json(eval_dir / "report.json")
    rows = [r for r in report.get("table") or [] if isinstance(r, dict)]
    if not rows:
        return [Finding("Before / after", "warn", f"No {layout.rel('eval', 'report.json')}: the before/after "
                                                  "evaluation did not finish.", "NOT MEASURED")]
    if not any("beyond_noise" in r for r in rows):
        return [Finding("Before / after", "warn", "The before/after table has no intervals (it was written by an "
                                                  "older caikit eval): rerun `caikit eval` to see whether its "
                                                  "differences exceed their noise.", "NO INTERVALS")]
    eval_judge = report.get("judge") if isinstance(report.get("judge"), dict) else {}
    # provider:model from the backend's own description (the spec as typed may carry a URL with a key in it)
    spec = ":".join(str(eval_judge[k]) for k in ("backend", "model") if eval_judge.get(k))
    doubt = _same_judge(layout, eval_judge) if judge is not None and judge.level == "bad" else False
    found = []
    for row in rows:
        finding = _effect(row, spec) if row.get("role") else None
        if finding is None:
            continue
        if "interval" in row and doubt is not False:  # a win-rate scored by the judge found wanting above
            finding.facts += (" The judge that scored it is the one found wanting above, so this says little."
                              if doubt else " If that is the judge found wanting above, this says little.")
            finding.level = "warn" if finding.level == "good" else finding.level
        found.append(finding)
    return found


# ---------------------------------------------------------------- counts

# ---------------------------------------------------------------- the verdict

WEAK_GATES = {"failed": "failed its quality gate", "allowed-weak": "failed its quality gate and was let through "
              "with --allow-weak-judge", "fell-back-to-revision": "failed its quality gate (the run fell back to "
              "revision-over-initial labels)"}


def training_data_finding(layout: Layout) -> Finding | None:
    """A trainer's data.json: sources labelled by a judge whose quality gate said it is weak (train/data.py
    records each judge run's gate status there)."""
    weak, total = [], 0
    for stage in layout.stages.values():
        data = read_json(stage.path / "data.json") if stage.path.is_dir() else {}
        sources = data.get("sources") if isinstance(data.get("sources"), list) else []
        total += sum(s["used"] for s in sources if isinstance(s, dict) and is_num(s.get("used")))
        weak += [(stage.name, s) for s in sources if isinstance(s, dict) and s.get("judge_gate") in WEAK_GATES]
    if not weak:
        return None
    used = sum(s["used"] for _, s in weak if is_num(s.get("used")))
    facts = "; ".join(f"{s.get('used', '?')} from {s.get('path', '?')}: the judge {WEAK_GATES[s['judge_gate']]} "
                      f"(gate.json status '{s['judge_gate']}')" for _, s in weak)
    return Finding("Training data", "bad", f"{used} of the {total} training examples were labelled by a judge that "
                   "failed its quality gate: what the model learnt from them is the weak judge's preference.",
                   "WEAK JUDGE'S LABELS", facts + ".")


def findings(layout: Layout) -> list[Finding]:
    judge = judge_finding(layout)
    found = [judge, reward_finding(layout), training_data_finding(layout), *effect_findings(layout, judge),
             monitors_finding(layout), depth_finding(layout),
             counts_finding(layout)]
    return [f for f in found if f is not None]


def verdict_lines(run_dir: str | Path) -> list[str]:
    """The verdict box as text, one line per finding, for the end of `caikit run` / `caikit demo`:
    "[!!] Judge: The judge's labels are no better than chance: ...", [??] not measured or a caveat,
    [ok] checked and fine, [--] nothing to check. Reads the directory only; never raises on missing files."""
    run_dir = Path(run_dir)
    return [f.line() for f in findings(detect_layout(run_dir))] if run_dir.is_dir() else []


def _summary(found: list[Finding]) -> tuple[str, str]:
    bad = [f.topic for f in found if f.level == "bad"]
    unsure = [f.topic for f in found if f.level == "warn"]
    if bad:
        return "bad", (f"Do not trust this run's conclusions yet: {len(bad)} problem{'s' if len(bad) > 1 else ''} "
                       f"({', '.join(bad)}), in red below.")
    if unsure:
        return "warn", f"No red flags. To note, in amber below: {', '.join(unsure)}."
    if not any(f.level == "good" for f in found):
        return "warn", "Nothing here could be checked: see below for what is missing."
    return "good", "Every check below passed."


def verdict_html(layout: Layout) -> str:
    """The box report.html opens with; every text is escaped."""
    found = findings(layout)
    if not found:
        return ""
    level, summary = _summary(found)
    counts = stage_counts(layout)
    grid = counts_grid(counts)
    items = []
    for f in found:
        badge = f'<span class="badge">{escape(f.badge)}</span>' if f.badge else ""
        label = f'<span class="topic">{escape(f.label)}.</span> ' if f.label else ""
        facts = grid if f.topic == COUNTS else f'<span class="facts">{escape(f.facts)}</span>' if f.facts else ""
        detail = f'<p class="detail">{escape(f.detail)}</p>' if f.detail else ""
        items.append(f'<li class="finding v-{f.level}">{badge}<p class="head">{label}{escape(f.text)}</p>{facts}'
                     f"{detail}</li>")
    return (f'<section id="verdict" class="verdict"><h2>Verdict</h2><p class="summary v-{level}">{escape(summary)}</p>'
            f'<ul class="findings">{"".join(items)}</ul></section>')
