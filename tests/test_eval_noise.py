"""Intervals on `caikit eval`'s before/after rows (caikit.eval.noise), with hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from caikit.eval.compare import build_table, format_table
from caikit.eval.noise import descriptive_row, noise_verdict, paired_row, win_rate_row

pytestmark = pytest.mark.unit

REFUSAL = "I can't help with that."


def test_win_rate_interval_and_verdict():
    clear = win_rate_row("harmlessness win-rate (red-team)", [0.9] * 10, "note", seed=0, role="aim")
    # every pair says 0.9: no spread, so the t interval is the point 0.9
    assert clear["after"] == 0.9 and clear["before"] == pytest.approx(0.1)
    assert clear["interval"] == [0.9, 0.9] and clear["beyond_noise"] is True and clear["n"] == 10
    assert clear["verdict"].startswith("beyond noise") and "excludes 0.5" in clear["verdict"]
    assert clear["role"] == "aim" and clear["better"] == "higher"
    # 0.2 / 0.8 alternating: mean 0.5, so any interval must hold 0.5
    split = win_rate_row("w", [0.2, 0.8] * 5, "note", seed=0, role="aim")
    lo, hi = split["interval"]
    assert lo < 0.5 < hi and split["beyond_noise"] is False and "includes 0.5" in split["verdict"]
    one = win_rate_row("w", [0.7], "note", seed=0, role="aim")  # one value is no interval
    assert one["interval"] is None and one["beyond_noise"] is None and one["verdict"].startswith("not measured")


def test_refusal_rate_wilson_sides_and_paired_change():
    row = paired_row("refusal rate (red-team)", [0.0] * 10, [1.0] * 10, "note", seed=0, proportion=True)
    # Wilson 1927 for 0/10 and 10/10, z = 1.96: centre = half = (z^2/20) / (1 + z^2/10) = 0.13876
    z2 = 1.959963984540054 ** 2
    half = (z2 / 20) / (1 + z2 / 10)
    assert row["interval_before"] == [0.0, round(2 * half, 4)] == [0.0, 0.2775]
    assert row["interval_after"] == [round(1 - 2 * half, 4), 1.0]
    assert row["interval_change"] == [1.0, 1.0] and row["beyond_noise"] is True
    assert (row["before"], row["after"]) == (0.0, 1.0)
    # one prompt flips of ten: the paired change's interval holds 0
    flip = paired_row("r", [0.0] * 10, [1.0] + [0.0] * 9, "note", seed=0, proportion=True)
    # paired t on the differences (1, 0 x 9): 0.1 ± t(9) 0.316 / sqrt(10) = 0.1 ± 0.226
    assert flip["interval_change"] == [-0.1262, 0.3262] and flip["beyond_noise"] is False
    assert "includes 0" in flip["verdict"]


def test_paired_change_uses_the_pairing():
    """The same prompts move together: each side's interval is wide, the paired change's is a point."""
    before = [0.1, 0.3, 0.5, 0.7, 0.9, 0.2, 0.4, 0.6, 0.8, 0.0]
    after = [b + 0.05 for b in before]
    row = paired_row("mean reward (red-team)", before, after, "note", seed=3)
    assert row["interval_before"][1] - row["interval_before"][0] > 0.2  # the two sides' intervals overlap
    assert row["interval_after"][0] < row["interval_before"][1]
    assert row["interval_change"] == [0.05, 0.05] and row["beyond_noise"] is True
    assert paired_row("x", [], [], "no --reward-model given", seed=0)["beyond_noise"] is None


def test_descriptive_rows_and_noise_verdict():
    row = descriptive_row("distinct-1", 0.5, 0.4, "note", 10)
    assert row["interval_change"] is None and row["beyond_noise"] is None and row["verdict"].startswith("descriptive")
    assert noise_verdict((0.1, 0.3), 0.0, "the change", 12) == (
        True, "beyond noise: the 95 % interval of the change (+0.100 to +0.300, 12 pairs) excludes 0")
    assert noise_verdict(None, 0.5, "x", 1)[0] is None


def test_build_table_every_row_has_its_interval():
    pairs = [{"kind": kind, "prompt": [], "before": "Sure, here you go." if kind == "red-team" else "Bake it.",
              "after": REFUSAL if kind == "red-team" else "Bake it for an hour.", "judge_p_after": 0.8}
             for kind in ("red-team", "benign") for _ in range(12)]
    rewards = {k: {"before": [0.3 + 0.01 * i for i in range(12)], "after": [0.6 + 0.01 * i for i in range(12)]}
               for k in ("red-team", "benign")}
    kl = {"per_response": 1.5, "per_token": 0.25, "tokens": 96, "terms": [(1.0, 6), (2.0, 6)] * 8}
    cfg = SimpleNamespace(judge="openai:j", reward_model="rm", temperature=0.0, seed=0)
    table = {r["metric"]: r for r in build_table(pairs, kl, rewards, cfg)}
    assert table["harmlessness win-rate (red-team)"]["interval"] == [0.8, 0.8]
    refusals = table["refusal rate (red-team)"]
    assert (refusals["before"], refusals["after"], refusals["beyond_noise"]) == (0.0, 1.0, True)
    assert table["refusal rate (benign)"]["interval_change"] == [0.0, 0.0]
    assert table["refusal rate (benign)"]["beyond_noise"] is False
    assert table["mean reward (red-team)"]["interval_change"] == [0.3, 0.3]
    kl_row = table["KL(after || before) per token"]
    assert kl_row["after"] == 0.25 and 0 < kl_row["interval_after"][0] <= 0.25 <= kl_row["interval_after"][1]
    # words: red-team 4 -> 5, benign 2 -> 5, so the mean length goes 3 -> 5 and each pair moves by 1 or 3
    length = table["response length (words)"]
    assert (length["before"], length["after"]) == (3.0, 5.0)
    assert 1.0 < length["interval_change"][0] <= 2.0 <= length["interval_change"][1] < 3.0
    assert [r["role"] for r in table.values()][:6] == ["aim", "guard", "watch", "guard", "aim", "watch"]
    assert all("beyond_noise" in r and "verdict" in r for r in table.values())
    text = format_table(list(table.values()))
    assert "P(after better) 0.800 to 0.800: beyond noise" in text and "change 0.000 to 0.000: within noise" in text
