"""The verdict box of `caikit report` and `verdict_lines`, and single-stage directories, in headless Chromium.

Run directories are fabricated in the formats the stages write (gate.json as `caikit judge` documents it, the
reward model's eval.json, state.json of `caikit run`), and the before/after table is built by `caikit eval`'s
own `build_table`, so the report reads real rows with real intervals. Set CAIKIT_REPORT_SHOTS=DIR to keep the
screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from caikit.eval.compare import build_table
from caikit.report.html import build_report
from caikit.report.verdict import verdict_lines
from caikit.testing.chromium import CHROMIUM, Chromium

pytestmark = pytest.mark.e2e

XSS = "<script>alert(1)</script>"
GOOD_GATE = {"status": "passed", "calibrated_pairs": 32, "position_consistency": 0.81, "mean_abs_margin": 0.31,
             "unparseable_rate": 0.0, "judge_longer_rate": 0.61,
             "human": {"n": 400, "accuracy": 0.72, "interval": [0.674, 0.762], "kappa": 0.44, "human_longer_rate": 0.55,
                       "length_baseline": 0.571},
             "thresholds": {"min_consistency": 0.6}, "allow_weak_judge": False,
             "verdict": f"The judge agrees with people on 72 % of 400 pairs. {XSS}"}
CHANCE_GATE = {**GOOD_GATE, "status": "allowed-weak", "position_consistency": 0.0, "judge_longer_rate": 0.84,
               "human": {"n": 400, "accuracy": 0.465, "interval": [0.416, 0.514], "kappa": -0.07,
                         "human_longer_rate": 0.55, "length_baseline": 0.571},
               "allow_weak_judge": True, "verdict": "Position consistency 0.00 is below 0.60. Ways forward: ..."}


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _eval_table(clear: bool) -> list[dict]:
    """`caikit eval`'s table over 20 + 20 fabricated pairs: a clear effect, or harmlessness at a coin flip."""
    pairs = []
    for i in range(20):
        p_red = 0.8 + 0.01 * (i % 5) if clear else (0.2, 0.8, 0.45, 0.6)[i % 4]
        refused = clear and i < 12 or not clear and i < 3
        pairs.append({"kind": "red-team", "prompt": [], "before": f"Sure, step {i}: do it.",
                      "after": "I can't help with that." if refused else f"Sure, step {i}: do it.",
                      "judge_p_after": p_red})
        pairs.append({"kind": "benign", "prompt": [], "before": f"Bake for {i} minutes.",
                      "after": f"Bake it for {i} minutes.", "judge_p_after": (0.4, 0.6, 0.55, 0.45)[i % 4]})
    rewards = {"red-team": {"before": [0.30 + 0.01 * (i % 7) for i in range(20)],
                            "after": [(0.62 + 0.01 * (i % 7)) if clear else (0.30 + 0.01 * (i % 7) + 0.02 * (i % 3 - 1))
                                      for i in range(20)]},
               "benign": {"before": [0.5] * 20, "after": [0.5 + 0.01 * (i % 3 - 1) for i in range(20)]}}
    kl = {"per_response": 2.0, "per_token": 0.2, "tokens": 400, "terms": [(1.5 + 0.05 * i, 10) for i in range(20)]}
    cfg = SimpleNamespace(judge="local:smollm2", reward_model="RUN/reward", temperature=0.0, seed=0)
    return build_table(pairs, kl, rewards, cfg)


def make_run(root: Path, *, gate: dict | None, clear: bool) -> Path:
    """A `caikit run` layout: generate, judge (with its gate), reward (on human pairs), dpo, eval."""
    run = root
    (run / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("name: verdict-test\nstages: {generate: {}, judge: {}, reward: {}, dpo: {}, "
                                     "eval: {}}\n", encoding="utf-8")
    _json(run / "state.json", {"stages": {
        "generate": {"status": "incomplete", "seconds": 60.0, "config_hash": "g", "exit_code": 0,
                     "outcome": {"failures": 1}},
        "judge": {"status": "done", "seconds": 20.0, "config_hash": "j", "exit_code": 0, "outcome": {"failures": 0}},
        "reward": {"status": "done", "seconds": 30.0, "config_hash": "r", "exit_code": 0},
        "dpo": {"status": "done", "seconds": 90.0, "config_hash": "d", "exit_code": 0},
        "eval": {"status": "done", "seconds": 40.0, "config_hash": "e", "exit_code": 0}}})
    _json(run / "generate" / "stats.json", {"prompts": 32, "traces": 31, "failures": 1, "sft_examples": 28,
                                            "truncated": 2, "degenerate": 1})
    _json(run / "judge" / "stats.json", {"pairs": 31, "judged": 28, "failures": 0, "position_consistency_rate": 0.8,
                                         "skipped": {"revision_unchanged": 2, "truncated": 1, "degenerate": 0}})
    if gate is not None:
        _json(run / "judge" / "gate.json", gate)
    _json(run / "reward" / "eval.json", {"eval_accuracy": 0.621, "eval_accuracy_low": 0.578,
                                         "eval_accuracy_high": 0.662, "eval_pairs": 512,
                                         "length_baseline_accuracy": 0.576, "verdict": "usable"})
    (run / "reward" / "config.yaml").write_text("data: caikit/data/human-pairs.jsonl.gz\n", encoding="utf-8")
    _jsonl(run / "dpo" / "metrics.jsonl", [{"step": s, "loss": 0.69 - 0.01 * s} for s in range(1, 4)])
    _json(run / "eval" / "report.json", {"models": {"before": "smollm2", "after": "RUN/dpo"},
                                         "judge": {"backend": "local", "model": "smollm2",
                                                   "spec": "local:smollm2@http://h/?api-key=SECRET"},
                                         "counts": {"judged_pairs": 40, "judge_failures": 0,
                                                    "truncated_answers_before": 1, "truncated_answers_after": 0},
                                         "table": _eval_table(clear)})
    return run


def _facts(browser: Chromium, url: str, shot: Path) -> dict:
    browser.navigate(url)
    facts = json.loads(browser.evaluate("""JSON.stringify({
        text: document.body.innerText, scripts: document.scripts.length,
        verdict: (document.querySelector('#verdict') || {}).innerText || '',
        summary: (document.querySelector('#verdict .summary') || {}).innerText || '',
        red: [...document.querySelectorAll('#verdict .finding.v-bad')].map(e => e.innerText),
        redColour: [...document.querySelectorAll('#verdict .finding.v-bad .head')].map(e => getComputedStyle(e).color),
        good: document.querySelectorAll('#verdict .finding.v-good').length,
        missing: [...document.querySelectorAll('.missing')].map(e => e.innerText),
        sections: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
        statuses: [...document.querySelectorAll('.status')].map(e => e.innerText)})"""))
    browser.screenshot(shot)
    if os.environ.get("CAIKIT_REPORT_SHOTS"):
        shutil.copy(shot, Path(os.environ["CAIKIT_REPORT_SHOTS"]) / shot.name)
    return facts


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verdict")
    runs = {"good": make_run(root / "good", gate=GOOD_GATE, clear=True),
            "chance": make_run(root / "chance", gate=CHANCE_GATE, clear=True),
            "noise": make_run(root / "noise", gate=GOOD_GATE, clear=False)}
    gen = root / "plain-generate"  # what `caikit generate --out DIR` leaves
    _json(gen / "run.json", {"stage": "generate", "identity": {}, "shard": ""})
    (gen / "config.yaml").write_text("constitution: anthropic-cai\nmax_tokens: 256\n", encoding="utf-8")
    _json(gen / "stats.json", {"prompts": 3, "traces": 3, "failures": 0, "sft_examples": 2, "truncated": 1,
                               "degenerate": 0})
    _jsonl(gen / "traces.jsonl", [{"id": f"t{i}", "prompt_id": f"p{i}", "prompt": [{"role": "user", "content": "q"}],
                                   "initial_response": f"answer {i} {XSS}",
                                   "rounds": [{"principle_id": "p0", "critique": "c", "revision": f"revised {i}"}]}
                                  for i in range(3)])
    judge = root / "plain-judge"  # what `caikit judge --out DIR` leaves, without a gate
    _json(judge / "run.json", {"stage": "judge", "identity": {}, "shard": ""})
    _json(judge / "stats.json", {"pairs": 2, "judged": 2, "failures": 0, "position_consistency_rate": 0.75,
                                 "position_checked": 2, "skipped": {"revision_unchanged": 0}})
    _jsonl(judge / "preferences.jsonl", [{"id": "x", "prompt": [{"role": "user", "content": "pq"}],
                                          "chosen": [{"role": "assistant", "content": f"chosen {XSS}"}],
                                          "rejected": [{"role": "assistant", "content": "rejected text"}],
                                          "p_chosen": 0.7, "source": "revision-vs-initial"}])
    runs |= {"plain-generate": gen, "plain-judge": judge}
    return {name: build_report(run) for name, run in runs.items()}


def test_verdict_lines_as_text(pages):
    good = verdict_lines(pages["good"].parent)
    assert not any(line.startswith("[!!]") for line in good), good
    assert good[0].startswith("[ok] The judge agrees with human labels better than chance. Measured: position "
                              "consistency 0.81 (threshold 0.60) on 32 pairs; accuracy against human labels 0.720 "
                              "(95 % interval 0.674-0.762, 400 pairs, kappa 0.44), where preferring the shorter reply "
                              "scores 0.571")
    assert good[1] == ("[ok] The reward model beats chance and the length-only baseline on pairs it did not train on. "
                       "Held-out pairwise accuracy 0.621 (95 % interval 0.578-0.662, 512 pairs); preferring the "
                       "shorter reply scores 0.576 on the same pairs.")
    assert good[2].startswith("[ok] Harmlessness improved beyond noise: Mean P(trained model's answer better) from "
                              "the judge local:smollm2 = 0.820")
    assert good[3].startswith("[ok] Helpfulness: No measurable change in helpfulness:")
    assert good[-1] == ("[??] Failures and dropped items: 1 item failed. generate 1 failure, 2 truncated, 1 "
                        "degenerate; judge 0 failures, 3 skipped (2 revision unchanged, 1 truncated); eval 0 "
                        "failures, 1 truncated.")
    chance = verdict_lines(pages["chance"].parent)
    assert chance[0].startswith("[!!] The judge's labels are no better than chance: its agreement with human labels "
                                "could be a coin flip (the 95 % interval includes 0.5), and it keeps its verdict when "
                                "the two answers swap places in only 0 % of pairs (the gate asks for 60 %).")
    assert chance[0].endswith("The run went on past the gate with --allow-weak-judge.")
    # the win-rates may come from that same judge (nothing here says otherwise): no longer green
    assert chance[2].startswith("[??] Harmlessness improved beyond noise:")
    assert chance[2].endswith("If that is the judge found wanting above, this says little.")
    noise = verdict_lines(pages["noise"].parent)
    assert noise[2] == ("[!!] Harmlessness: The change in harmlessness is within noise: Mean P(trained model's answer "
                        "better) from the judge local:smollm2 = 0.512, 95 % interval 0.407-0.618 over 20 red-team "
                        "pairs, which includes 0.5.")
    assert any(line.startswith("[!!] Mean reward (red-team): The change in the mean reward (red-team) is within noise")
               for line in noise)
    assert verdict_lines(pages["plain-judge"].parent)[0] == (
        "[??] The judge ran without a quality gate, so its accuracy against humans is unknown. Measured: "
        "position consistency 0.75 (threshold 0.60) on 2 pairs; accuracy against human labels: not measured.")
    assert verdict_lines(pages["good"].parent / "no-such-dir") == []


def test_page_escapes_and_stays_locked(pages):
    page = pages["good"].read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the gate's paragraph
    assert "SECRET" not in "".join(verdict_lines(pages["good"].parent))  # the judge is named by backend:model
    assert "default-src 'none'" in page
    plain = pages["plain-generate"].read_text(encoding="utf-8")
    assert "<script" not in plain.lower() and "answer 0 &lt;script&gt;" in plain


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_verdict_box_in_headless_chromium(pages, tmp_path):
    with Chromium(tmp_path / "profile", window="1280,1100") as browser:
        facts = {name: _facts(browser, path.as_uri(), tmp_path / f"report-{name}.png") for name, path in pages.items()}
        problems = browser.problems()
    assert problems == []  # no console output, CSP violations, failed loads or dialogs on any page
    good, chance, noise = facts["good"], facts["chance"], facts["noise"]
    assert good["sections"][0] == "Verdict" and good["red"] == [] and good["good"] >= 4
    assert good["summary"] == "No red flags. To note, in amber below: Failures and dropped items."
    assert "incomplete with 1 failure" in good["statuses"]
    assert XSS in good["verdict"]  # the gate's paragraph, shown as text
    # a chance-level judge: red, in plain words, and the colour is the page's red
    assert len(chance["red"]) == 1 and "The judge's labels are no better than chance" in chance["red"][0]
    assert "CHANCE LEVEL" in chance["red"][0] and chance["redColour"] == ["rgb(179, 38, 30)"]  # --bad, #b3261e
    assert chance["summary"] == "Do not trust this run's conclusions yet: 1 problem (Judge), in red below."
    # an effect inside the noise: red, in plain words
    assert any("The change in harmlessness is within noise" in r and "WITHIN NOISE" in r for r in noise["red"])
    # single-stage directories: no complaints about the stages they never had
    for name in ("plain-generate", "plain-judge"):
        assert facts[name]["missing"] == [], facts[name]["missing"]
        assert "missing" not in facts[name]["text"].lower() and facts[name]["statuses"] == ["done"]
    assert facts["plain-generate"]["sections"] == ["Verdict", "Data", "Critique and revision examples", "Configuration"]
    assert "generate\t0\t1\t0\t—\t3 prompts" in facts["plain-generate"]["verdict"]  # failures, truncated, degenerate
    assert XSS in facts["plain-generate"]["text"]
    assert "not measured" in facts["plain-judge"]["verdict"] and f"chosen {XSS}" in facts["plain-judge"]["text"]


def test_report_cli_on_a_plain_stage_directory(pages):
    proc = subprocess.run([sys.executable, "-m", "caikit.cli", "report", str(pages["plain-judge"].parent), "--out",
                           str(pages["plain-judge"].with_name("again.html"))], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "again.html" in proc.stdout and "One judge stage directory" in pages["plain-judge"].with_name(
        "again.html").read_text(encoding="utf-8")
