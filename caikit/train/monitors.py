"""Watch a PPO run for the two classic failures and say so: mode collapse and reward hacking.

`TrainingMonitor.check(step, metrics)` reads one step's metrics row and returns warnings, each also
printed to stderr and appended to `out_dir/warnings.jsonl`:
  identical_responses   the share of identical responses in the batch is above a threshold
  distinct_collapse     distinct-2 fell below a fraction of its first-step value
  entropy_collapse      policy entropy fell below a fraction of its first-step value
  reward_hacking        the RM score rose over the last `window` steps while the independent check fell
  kl_explosion          KL to the reference is above a bound (or not finite)
A kind that fired stays quiet for `window` steps so a persisting problem does not flood the log.

The independent check is a second reward model (`RewardModelCheck`) or a judge model asked whether
each response is harmless and helpful (caikit/commands/rl.py `JudgeCheck`, built above the trainers and
passed in); both give one score in 0-1 per response.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable



@dataclass
class MonitorThresholds:
    identical_share: float = 0.5  # warn when more than this share of responses repeat another one
    distinct_ratio: float = 0.3  # warn when distinct-2 < this × its first-step value
    entropy_ratio: float = 0.2  # warn when entropy < this × its first-step value
    kl_max: float = 20.0  # warn when the per-sequence KL (nats) exceeds this
    window: int = 10  # steps over which score and check trends are compared
    min_trend: float = 0.02  # a score (or check) change over the window smaller than this is noise


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    x_mean, y_mean = (n - 1) / 2.0, sum(ys) / n
    den = sum((i - x_mean) ** 2 for i in range(n))
    return sum((i - x_mean) * (y - y_mean) for i, y in enumerate(ys)) / den if den else 0.0


class TrainingMonitor:
    """Per-step checks of a metrics row; keeps the history it needs for trends and baselines."""

    def __init__(self, out_dir: str | Path, thresholds: MonitorThresholds | None = None, *,
                 echo: Callable[[str], None] | None = None):
        self.path = Path(out_dir) / "warnings.jsonl"
        self.t = thresholds or MonitorThresholds()
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.baseline: dict[str, float] = {}
        self.history: list[tuple[float, float]] = []  # (score, check_score) on steps that had a check
        self.last_fired: dict[str, int] = {}

    def state_dict(self) -> dict:
        return {"baseline": self.baseline, "history": self.history, "last_fired": self.last_fired}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = dict(state.get("baseline", {}))
        self.history = [tuple(h) for h in state.get("history", [])]
        self.last_fired = dict(state.get("last_fired", {}))

    def check(self, step: int, metrics: dict[str, float]) -> list[dict]:
        found: list[tuple[str, str]] = []
        for key in ("distinct_2", "entropy"):
            if key in metrics and key not in self.baseline:
                self.baseline[key] = float(metrics[key])

        share = metrics.get("identical_share")
        if share is not None and share > self.t.identical_share:
            found.append(("identical_responses", f"{share:.0%} of the batch's responses repeat another "
                          f"(threshold {self.t.identical_share:.0%}): mode collapse"))
        d2, d2_0 = metrics.get("distinct_2"), self.baseline.get("distinct_2")
        if d2 is not None and d2_0 and d2 < self.t.distinct_ratio * d2_0:
            found.append(("distinct_collapse", f"distinct-2 fell to {d2:.3f} from {d2_0:.3f} at the start: "
                          "responses are becoming alike"))
        ent, ent_0 = metrics.get("entropy"), self.baseline.get("entropy")
        if ent is not None and ent_0 and ent < self.t.entropy_ratio * ent_0:
            found.append(("entropy_collapse", f"policy entropy fell to {ent:.3f} nats/token from {ent_0:.3f}: "
                          "the policy is close to deterministic"))
        kl = metrics.get("kl")
        if kl is not None and (not math.isfinite(kl) or kl > self.t.kl_max):
            found.append(("kl_explosion", f"KL to the reference is {kl:.2f} nats (bound {self.t.kl_max:g}): "
                          "raise --kl-coef or set --kl-target, or lower --lr"))
        if metrics.get("check_score") is not None and metrics.get("rm_score") is not None:
            self.history.append((float(metrics["rm_score"]), float(metrics["check_score"])))
            self.history = self.history[-self.t.window:]
            if len(self.history) >= max(3, self.t.window):
                n = len(self.history) - 1
                score_rise = _slope([h[0] for h in self.history]) * n
                check_rise = _slope([h[1] for h in self.history]) * n
                if score_rise > self.t.min_trend and check_rise < -self.t.min_trend:
                    found.append(("reward_hacking", f"RM score rose by {score_rise:+.3f} over the last "
                                  f"{len(self.history)} checked steps while the independent check moved "
                                  f"{check_rise:+.3f}: the policy may be exploiting the reward model"))

        warnings = []
        for kind, message in found:
            last = self.last_fired.get(kind)
            if last is not None and step - last < self.t.window:
                continue
            self.last_fired[kind] = step
            warnings.append({"step": step, "kind": kind, "message": message, "time": time.time()})
        if warnings:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                for w in warnings:
                    fh.write(json.dumps(w, ensure_ascii=False) + "\n")
                    self.echo(f"warning (step {step}): {w['message']}")
        return warnings


# --- independent checks --------------------------------------------------------------------------------

class RewardModelCheck:
    """A second, held-out reward model: mean of its sigmoid scores is the check."""

    def __init__(self, model_dir: str, device: str = "cpu"):
        from caikit.train.rewards import RewardModelReward

        self.reward = RewardModelReward.from_dir(model_dir, device=device, what="--check-rm")

    def __call__(self, conversations: list[list[dict]], responses: list[str]) -> list[float]:
        return self.reward(conversations, responses).scores


def make_check(check_rm: str = "", device: str = "cpu"):
    """The held-out reward model the reward-hacking monitor compares against, or None. (A judge as the
    check, --check-judge, is built by the command and passed in: caikit/commands/rl.py.)"""
    if check_rm:
        return RewardModelCheck(check_rm, device=device)
    return None


# --- the same failures, between a starting model and a trained one (`caikit eval`) ---------------------

@dataclass
class BeforeAfterThresholds:
    distinct_drop: float = 0.25  # warn when distinct-1 or -2 of the answers falls by more than this share
    kl_per_response: float = MonitorThresholds.kl_max  # nats; the bound PPO's kl_explosion warns at
    length_ratio: float = 1.5  # warn when mean answer length grows past this × (or shrinks below 1 / this ×)
    copy_share: float = 0.25  # warn when more than this share of answers copy their prompt (and more than before)
    copy_overlap: float = 0.5  # an answer copies its prompt when this share of its word trigrams is in the prompt


def _trigrams(text: str) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i:i + 3]) for i in range(len(words) - 2)]


def copies_prompt(prompt: str, answer: str, overlap: float = BeforeAfterThresholds.copy_overlap) -> bool:
    """Whether the answer mostly repeats the user's words (parroting): the share of its word trigrams found in the
    prompt. An answer under three words copies nothing."""
    grams = _trigrams(answer)
    if not grams:
        return False
    seen = set(_trigrams(prompt))
    return sum(g in seen for g in grams) / len(grams) >= overlap


def before_after_warnings(prompts: list[str], before: list[str], after: list[str], kl_per_response: float | None,
                          t: BeforeAfterThresholds | None = None) -> list[dict]:
    """Mode collapse and reward hacking between two models' answers to the same prompts: distinct-n falling, a KL
    per response past PPO's bound, the answer length running away, answers that copy the prompt.
    Returns [{"kind", "message", "before", "after"}]; empty when nothing fired."""
    from caikit.diversity import distinct_n

    t = t or BeforeAfterThresholds()
    found = []
    for n in (1, 2):
        d0, d1 = distinct_n(before, n), distinct_n(after, n)
        if d0 > 0 and d1 < (1 - t.distinct_drop) * d0:
            found.append({"kind": "distinct_collapse", "before": d0, "after": d1,
                          "message": f"distinct-{n} fell from {d0:.2f} to {d1:.2f} ({d1 / d0 - 1:+.0%}): the trained "
                                     "model's answers are becoming alike (mode collapse)"})
            break
    if kl_per_response is not None and (not math.isfinite(kl_per_response) or kl_per_response > t.kl_per_response):
        found.append({"kind": "kl_explosion", "before": 0.0, "after": kl_per_response,
                      "message": f"KL from the starting model is {kl_per_response:.1f} nats per response (bound "
                                 f"{t.kl_per_response:g}): the model has moved far from where it started"})
    words = [sum(len(a.split()) for a in side) / max(len(side), 1) for side in (before, after)]
    if words[0] > 0 and not (1 / t.length_ratio <= words[1] / words[0] <= t.length_ratio):
        found.append({"kind": "length_change", "before": words[0], "after": words[1],
                      "message": f"mean answer length went from {words[0]:.0f} to {words[1]:.0f} words "
                                 f"(× {words[1] / words[0]:.2f}): length is what judges and reward models are "
                                 "most easily gamed with"})
    copied = [sum(copies_prompt(p, a) for p, a in zip(prompts, side)) / max(len(side), 1) for side in (before, after)]
    if copied[1] > t.copy_share and copied[1] > copied[0] + 0.1:
        found.append({"kind": "prompt_copying", "before": copied[0], "after": copied[1],
                      "message": f"{copied[1]:.0%} of the trained model's answers repeat the prompt's words "
                                 f"(before: {copied[0]:.0%}): it parrots the user instead of answering"})
    return found
