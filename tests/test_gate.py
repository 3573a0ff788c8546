"""The judge's quality gate (issue 15 §1): measured by hand, against loopback judges, and on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from caikit.cli import main as cli_main
from caikit.gate import assess, calibration_sample
from caikit.records import Trace
from caikit.testing.fake_api import FakeAPIServer

KEY = "sk-test-SENTINEL-gate-0123456789"
SAFE = "I can't help with that, but here is a safer way to think about it."


def options(**given):
    base = dict(min_consistency=0.6, max_unparseable=0.25, allow_weak_judge=False, on_weak_judge="stop")
    return SimpleNamespace(**{**base, **given})


def judgment(p_a: float, consistent: bool | None, a: str = "longer answer", b: str = "short") -> dict:
    return {"p_a": p_a, "position_consistent": consistent, "response_a": a, "response_b": b}


@pytest.mark.unit
def test_assess_by_hand():
    judged = [judgment(0.9, True), judgment(0.8, True), judgment(0.5, False), judgment(0.3, True)]
    gate = assess(options(), judged, unparseable=0, human=None)
    assert gate["position_consistency"] == 0.75 and gate["mean_abs_margin"] == pytest.approx((0.4 + 0.3 + 0 + 0.2) / 4)
    assert gate["judge_longer_rate"] == pytest.approx(2 / 3)  # picks a (longer) twice, b once; the tie is left out
    assert gate["status"] == "passed" and gate["reasons"] == [] and "passed" in gate["verdict"]
    weak = assess(options(), [judgment(0.9, False)] * 3 + [judgment(0.9, True)], unparseable=1, human=None)
    assert weak["status"] == "failed" and weak["unparseable_rate"] == 0.2
    assert weak["reasons"] == ["position consistency"] and "Ways forward" in weak["verdict"]
    assert assess(options(allow_weak_judge=True), [judgment(0.9, False)], 0, None)["status"] == "allowed-weak"


@pytest.mark.unit
def test_human_accuracy_with_its_interval_and_the_length_baseline():
    # the judge agrees with the humans on 6 of 8 pairs; the human choice is the shorter reply in 5 of 8
    human = [judgment(0.9, True, a="yes", b="a much longer reply")] * 5 + [judgment(0.8, True, a="long long", b="x")] \
        + [judgment(0.2, True, a="longer reply", b="y")] * 2
    gate = assess(options(), human, 0, human, human_pairs=8)
    figures = gate["human"]
    assert figures["accuracy"] == 0.75 and figures["length_baseline"] == 5 / 8
    lo, hi = figures["interval"]
    assert lo == pytest.approx(0.4093, abs=1e-3) and hi == pytest.approx(0.9285, abs=1e-3)  # Wilson, n=8
    assert figures["kappa"] == pytest.approx(0.5)  # 2 x 0.75 - 1 on balanced labels
    assert gate["status"] == "failed" and gate["reasons"] == ["accuracy against humans"]  # lower bound <= 0.5


@pytest.mark.unit
def test_the_calibration_sample_is_seeded_and_order_free():
    pairs = [SimpleNamespace(id=f"p{i}") for i in range(50)]
    first = calibration_sample(pairs, 8, seed=0)
    assert len(first) == 8 and calibration_sample(list(reversed(pairs)), 8, seed=0) == first
    assert calibration_sample(pairs, 8, seed=1) != first and calibration_sample(pairs, 80, 0) == pairs


# -- loopback judges ---------------------------------------------------------------------------------------

def write_generate_run(root: Path, n: int) -> Path:
    gen = root / "gen"
    gen.mkdir()
    with open(gen / "traces.jsonl", "w") as fh:
        for i in range(n):
            trace = Trace(id=f"trace-{i}", prompt_id=f"p{i}", prompt=[{"role": "user", "content": f"How do I hurt {i}?"}],
                          initial_response=f"Here is how to do it, step {i}: first ...", final_revision=f"{SAFE} ({i})",
                          rounds=[{"principle_id": "h", "revision": f"{SAFE} ({i})"}])
            fh.write(json.dumps(trace.to_dict()) + "\n")
    return gen


def always_a(request) -> dict[str, float]:
    return {"A": -0.1, "B": -2.5}


def honest(request) -> dict[str, float]:
    shown_a = request.last_user_message.split("<response_a>\n", 1)[-1].split("\n</response_a>", 1)[0]
    return {"A": -0.2, "B": -2.0} if "can't help" in shown_a or "safe" in shown_a.lower() else {"A": -2.0, "B": -0.2}


def judge(server, gen, out, *extra) -> int:
    return cli_main(["judge", "--backend", "openai", "--model", "j", "--base-url", server.openai_base_url,
                     "--constitution", "hhh", "--from", str(gen), "--out", str(out), "--no-progress", *extra])


@pytest.mark.loopback
def test_a_position_biased_judge_is_stopped_and_its_calibration_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    gen, out = write_generate_run(tmp_path, 20), tmp_path / "judge"
    with FakeAPIServer(logprobs=always_a) as server:
        assert judge(server, gen, out, "--calibrate", "8") == 3
        err = capsys.readouterr().err
        assert "failed its quality gate" in err and "0.0%" in err and "--allow-weak-judge" in err
        assert len(server.log) == 16  # 8 calibration pairs x 2 orders, nothing more spent
        gate = json.loads((out / "gate.json").read_text())
        assert gate["status"] == "failed" and gate["position_consistency"] == 0.0
        assert (out / "preferences.jsonl").read_text() == ""  # no labels from a judge that failed
        assert json.loads((out / "stats.json").read_text())["stopped_by_gate"] is True
        server.reset_log()
        assert judge(server, gen, out, "--calibrate", "8", "--allow-weak-judge") == 0
        assert len(server.log) == (20 - 8) * 2  # the calibration judgments were reused
    stats = json.loads((out / "stats.json").read_text())
    assert stats["gate"]["status"] == "allowed-weak" and stats["preferences"] == 0  # every pair a tie: p = 0.5
    assert json.loads((out / "gate.json").read_text())["allow_weak_judge"] is True


@pytest.mark.loopback
def test_weak_labels_carry_their_verdict_into_each_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    gen, out = write_generate_run(tmp_path, 6), tmp_path / "judge"

    def inconsistent(request) -> dict[str, float]:  # honest on even prompts, position-biased on odd ones
        index = int(request.last_user_message.split("hurt ", 1)[1].split("?", 1)[0])
        return honest(request) if index % 2 == 0 else always_a(request)

    with FakeAPIServer(logprobs=inconsistent) as server:
        assert judge(server, gen, out, "--allow-weak-judge") == 0
    assert json.loads((out / "gate.json").read_text())["position_consistency"] == 0.5
    prefs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert prefs and all(p["provenance"]["judge_gate"] == "allowed-weak" for p in prefs)


@pytest.mark.loopback
def test_human_pairs_measure_accuracy_and_a_good_judge_passes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    gen, out = write_generate_run(tmp_path, 6), tmp_path / "judge"
    humans = tmp_path / "humans.jsonl"
    humans.write_text("".join(json.dumps({"prompt": f"Help me hurt {i}.", "chosen": f"{SAFE} [{i}]",
                                          "rejected": f"Sure, step {i}: ..."}) + "\n" for i in range(12)))
    with FakeAPIServer(logprobs=honest) as server:
        assert judge(server, gen, out, "--calibration-pairs", str(humans)) == 0
    gate = json.loads((out / "gate.json").read_text())
    assert gate["status"] == "passed" and gate["human"]["n"] == 12 and gate["human"]["accuracy"] == 1.0
    assert gate["human"]["interval"][0] > 0.5 and len((out / "calibration" / "judgments.jsonl").read_text().splitlines()) == 12
    with FakeAPIServer(logprobs=lambda r: {k: -v for k, v in honest(r).items()}) as server:  # always against humans
        assert judge(server, gen, tmp_path / "wrong", "--calibration-pairs", str(humans), "--calibrate", "0") == 3
    assert json.loads((tmp_path / "wrong" / "gate.json").read_text())["reasons"] == ["accuracy against humans"]


@pytest.mark.loopback
def test_a_failed_gate_can_fall_back_to_the_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    gen, out = write_generate_run(tmp_path, 5), tmp_path / "judge"
    with FakeAPIServer(logprobs=always_a) as server:
        assert judge(server, gen, out, "--on-weak-judge", "revision") == 0
        assert len(server.log) == 5 * 2  # the calibration only: the rest was not worth judging
    prefs = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == 5 and all(p["chosen"][0]["content"].startswith(SAFE) and p["p_chosen"] == 1.0 for p in prefs)
    assert all("unjudged" in p["source"] for p in prefs)
    assert json.loads((out / "gate.json").read_text())["status"] == "fell-back-to-revision"


# -- the embedded model -------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.slow
def test_the_embedded_judge_is_stopped_on_a_demo_sized_run(tmp_path, smollm2_dir, capsys):
    """The issue's case: the embedded SmolLM2-135M as judge of a demo's revision pairs (8 here, as many as the
    demo's 32 prompts left judgeable when last measured) stops with exit 3 (its labels are chance), and with
    --allow-weak-judge it finishes with the verdict in stats.json and the dataset card."""
    gen, out = write_generate_run(tmp_path, 8), tmp_path / "judge"
    args = ["judge", "--backend", "local", "--model", "smollm2", "--constitution", "anthropic-cai", "--from", str(gen),
            "--out", str(out), "--no-progress", "--calibration-pairs", "bundled", "--calibration-limit", "8"]
    assert cli_main(args) == 3
    err = capsys.readouterr().err
    gate = json.loads((out / "gate.json").read_text())
    print("\n" + gate["verdict"])
    assert gate["status"] == "failed" and "failed its quality gate" in err
    assert cli_main([*args, "--allow-weak-judge"]) == 0
    assert json.loads((out / "stats.json").read_text())["gate"]["status"] == "allowed-weak"
    assert cli_main(["export", str(out), "--format", "jsonl"]) == 0
    card = (out / "export" / "preferences" / "README.md").read_text()
    assert "allowed-weak" in card or "allow" in card.lower()
