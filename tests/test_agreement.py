"""`caikit eval judge`: accuracy vs human labels, position consistency, calibration (hand-computed), and
the real shared hh-rlhf pairs judged through the loopback OpenAI server."""

from __future__ import annotations

import json
import math
import re

import pytest

from caikit.commands.eval_judge import AgreementConfig, run_agreement
from caikit.gate import QualityGateFailed
from caikit.eval.agreement import agreement_report, calibration_table, correctness
from caikit.prompts import load_labelled_pairs
from caikit.testing import FakeAPIServer

KEY = "sk-test-AGREE-SENTINEL-0123456789"
BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)
HH = "hh-rlhf/harmless-base-test.jsonl.gz"


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_calibration_table_and_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.5 tie (half right)
    p_chosen = [0.9, 0.1 + 0.0, 0.6, 0.5]
    assert [correctness(p) for p in p_chosen] == [1.0, 0.0, 1.0, 0.5]
    table, ece = calibration_table(p_chosen, bins=5)  # bins of width 0.1 over [0.5, 1]
    assert [r["n"] for r in table] == [1, 1, 0, 0, 2]
    assert table[4]["confidence"] == pytest.approx(0.9) and table[4]["accuracy"] == 0.5
    assert table[2]["accuracy"] is None
    # ECE = 1/4 |0.5 - 0.5| + 1/4 |1 - 0.6| + 2/4 |0.5 - 0.9|
    assert ece == pytest.approx(0.25 * 0.0 + 0.25 * 0.4 + 0.5 * 0.4)
    assert calibration_table([1.0], bins=10)[0][9]["n"] == 1  # confidence 1.0 lands in the last bin


def test_report_separates_position_bias_from_agreement():
    # a judge that always answers (A): right when the human choice is shown first, wrong when swapped
    biased = [{"p_a": 0.5, "p_a_first": 0.9, "p_a_swapped": 0.1, "position_consistent": False,
               "raw": [{"p_shown_a": 0.9}, {"p_shown_a": 0.9}]} for _ in range(4)]
    report = agreement_report(biased)
    assert report["accuracy"] == 0.5 and report["ties"] == 4
    assert report["accuracy_first_order"] == 1.0 and report["accuracy_swapped_order"] == 0.0
    assert report["position_consistency_rate"] == 0.0 and report["share_choosing_shown_a"] == 1.0


def hh_judge(shared_data, *, favour_human: bool):
    """Log-probs that put 0.8 on whichever shown option is (or is not) the human-chosen response."""
    chosen = {p.chosen.strip() for p in load_labelled_pairs(shared_data / HH, limit=20)}

    def logprobs(req):
        blocks = dict(BLOCK.findall(req.last_user_message))
        a_is_human = blocks["a"].strip() in chosen
        prefer_a = a_is_human == favour_human
        return {"A": math.log(0.8 if prefer_a else 0.2), " B": math.log(0.2 if prefer_a else 0.8)}

    return logprobs


@pytest.mark.parametrize("favour_human, accuracy", [(True, 1.0), (False, 0.0)])
def test_agreement_on_shared_hh_rlhf_pairs(tmp_path, shared_data, capsys, favour_human, accuracy):
    out = tmp_path / "eval"
    with FakeAPIServer(logprobs=hh_judge(shared_data, favour_human=favour_human)) as server:
        cfg = AgreementConfig(backend="openai", base_url=server.openai_base_url, pairs=str(shared_data / HH),
                              limit=20, out=str(out), progress=False, calibrate=8)
        if not favour_human:  # a judge that always disagrees fails the gate: still measured whole, then exit 3
            with pytest.raises(QualityGateFailed, match="no better than chance"):
                run_agreement(cfg)
            assert json.loads((out / "gate.json").read_text())["status"] == "failed"
            assert json.loads((out / "report.json").read_text())["n"] == 20
            cfg.allow_weak_judge = True  # measured knowingly: nothing is asked again
        assert run_agreement(cfg) == 0
        assert len(server.log) == 40  # 20 pairs x 2 orders
        run_agreement(cfg)  # resumable: nothing requested again
        assert len(server.log) == 40
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 20 and report["failures"] == 0
    assert report["accuracy"] == accuracy
    assert report["position_consistency_rate"] == 1.0 and report["share_choosing_shown_a"] == 0.5
    assert report["mean_confidence"] == pytest.approx(0.8) and report["ece"] == pytest.approx(abs(accuracy - 0.8))
    assert [r["n"] for r in report["calibration"]][6] == 20  # all in [0.80, 0.85)
    assert report["constitution"] == "anthropic-cai" and len(report["constitution_hash"]) == 64
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"accuracy vs human       {accuracy:.1%}" in printed and "[0.80, 0.85)" in printed
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 20
    assert all(KEY not in p.read_text(errors="ignore") for p in out.iterdir() if p.suffix != ".png")
