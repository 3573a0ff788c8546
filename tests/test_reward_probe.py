"""`caikit train reward --freeze-backbone` (the linear probe), the held-out verdict, and the bundled human pairs.

Head fits are checked against hand-solved optima on 2-D features; the probe end to end on the tiny random
Llama (its saved, cut model must reproduce the full model's layer features); one slow run on the real SmolLM2.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

def two_feature_pairs(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs whose first feature is +1 (chosen) / -1 (rejected) and whose second is a constant 5."""
    return torch.tensor([[1.0, 5.0]] * n), torch.tensor([[-1.0, 5.0]] * n)


# ------------------------------------------------------------------------------------------- unit tier

@pytest.mark.unit
def test_fit_head_reaches_the_hand_solved_ridge_optimum():
    from caikit.train.reward_probe import fit_head

    chosen, rejected = two_feature_pairs(4)
    # standardised, the pair difference is d = 2 / std(±1 over 8 values) = 2 / sqrt(8/7); the ridge optimum of
    # log(1 + e^(-w d)) + l2 w^2 satisfies d σ(-w d) = 2 l2 w, so with u = w d = ln 3 (σ(-u) = 1/4):
    d = 2 / math.sqrt(8 / 7)
    l2 = d * d / (8 * math.log(3))
    w = fit_head(chosen, rejected, None, None, l2)
    assert float(torch.sigmoid(chosen[0] @ w - rejected[0] @ w)) == pytest.approx(0.75, abs=1e-5)
    assert float(w[1]) == 0.0  # the constant feature carries nothing
    assert float(torch.cat([chosen, rejected]).mean(0) @ w) == pytest.approx(0.0, abs=1e-6)  # level centred


@pytest.mark.unit
def test_fit_head_soft_labels_set_the_preference_probability():
    from caikit.train.reward_probe import fit_head

    chosen, rejected = two_feature_pairs(4)
    # without a penalty the soft-label cross-entropy is minimised where σ(r_c - r_r) equals the label
    w = fit_head(chosen, rejected, torch.full((4,), 0.75, dtype=torch.float64), None, 0.0)
    assert float(torch.sigmoid(chosen[0] @ w - rejected[0] @ w)) == pytest.approx(0.75, abs=1e-4)
    # a margin of ln 3 moves the hard-label optimum by ln 3: σ(Δ - ln 3) = 0.75 gives Δ = ln 9
    w = fit_head(chosen, rejected, torch.full((4,), 0.75, dtype=torch.float64),
                 torch.full((4,), math.log(3), dtype=torch.float64), 0.0)
    assert float(chosen[0] @ w - rejected[0] @ w) == pytest.approx(math.log(9), abs=1e-3)


@pytest.mark.unit
def test_choose_l2_prefers_a_penalty_when_most_features_are_noise():
    from caikit.train.reward_probe import L2_GRID, choose_l2, fit_head, pair_accuracy

    gen = torch.Generator().manual_seed(0)
    n, h = 60, 40
    chosen, rejected = torch.randn(n, h, generator=gen), torch.randn(n, h, generator=gen)
    chosen[:, 0] += 1.0  # one informative feature among 40
    l2, table = choose_l2(chosen, rejected, None, None, seed=0)
    assert [row["l2"] for row in table] == list(L2_GRID) and l2 in L2_GRID
    assert l2 > L2_GRID[0], table  # 39 noise features: the weakest penalty overfits
    assert min(row["cv_loss"] for row in table) == next(row["cv_loss"] for row in table if row["l2"] == l2)
    # an unpenalised fit separates the training pairs perfectly: that is the overfitting the penalty curbs
    assert pair_accuracy(fit_head(chosen, rejected, None, None, 0.0), chosen, rejected) == 1.0


@pytest.mark.unit
@pytest.mark.parametrize("accuracy, n, baseline, verdict", [
    (0.60, 400, 0.55, "usable"),
    (0.55, 100, 0.50, "weak: the held-out interval includes 0.5"),
    (0.60, 400, 0.60, "weak: not better than preferring the shorter reply"),
    (0.30, 400, 0.50, "weak: worse than chance on the held-out pairs"),
])
def test_pairwise_verdict(accuracy, n, baseline, verdict):
    from caikit.stats import pairwise_verdict, wilson_interval

    assert pairwise_verdict(accuracy, wilson_interval(accuracy * n, n), baseline) == verdict
    assert pairwise_verdict(accuracy, None, baseline) == "not measured: no held-out pairs"


@pytest.mark.unit
def test_heldout_summary_puts_the_length_baseline_beside_the_interval():
    from caikit.stats import wilson_interval
    from caikit.train.heldout import heldout_summary

    def triple(chosen: str, rejected: str) -> dict:
        return {"chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    # the shorter reply wins 1 + 0.5 (a tie) + 0 + 0 of 4 pairs
    pairs = [triple("no", "sure, here"), triple("abc", "xyz"), triple("longer one", "short"), triple("ab", "a")]
    s = heldout_summary(0.75, pairs, train_accuracy=1.0)
    assert s["length_baseline_accuracy"] == pytest.approx(1.5 / 4)
    assert (s["eval_accuracy_low"], s["eval_accuracy_high"]) == pytest.approx(wilson_interval(3, 4))
    assert s["eval_pairs"] == 4 and s["train_accuracy"] == 1.0
    assert s["verdict"] == "weak: the held-out interval includes 0.5"


@pytest.mark.unit
def test_bundled_human_pairs_are_disjoint_and_verbatim(shared_data):
    from caikit.prompts import (bundled_human_calibration_path, bundled_human_reward_pairs_path,
                                bundled_prompts_path, load_labelled_pairs)

    def lines(path: Path) -> list[dict]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    calibration, reward = lines(bundled_human_calibration_path()), lines(bundled_human_reward_pairs_path())
    source = lines(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    assert (len(calibration), len(reward)) == (400, 1400)
    rows = [r["hh_rlhf_row"] for r in calibration + reward]
    assert sorted(rows) == list(range(len(source)))  # disjoint, and together the whole source file
    for row in calibration + reward:
        assert {k: v for k, v in row.items() if k != "hh_rlhf_row"} == source[row["hh_rlhf_row"]]
    # no reward model trained on the reward file has seen a human preference on a red-team eval prompt
    red_team = {json.loads(line)["hh_rlhf_row"] for line in bundled_prompts_path().open(encoding="utf-8")}
    assert red_team <= {r["hh_rlhf_row"] for r in calibration}
    assert len(load_labelled_pairs(bundled_human_calibration_path())) == 400


# -------------------------------------------------------------------------------- tiny model, end to end

def probe_rows(n: int) -> list[dict]:
    """test_trainers' rows (the preferred reply contains "banana"), every other one with a soft label."""
    from test_trainers import preference_rows

    return [{**row, **({"p_chosen": 0.9} if i % 2 else {})} for i, row in enumerate(preference_rows(n))]


@pytest.fixture
def probe_data(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CAIKIT_CACHE", str(tmp_path / "cache"))  # a fresh feature cache per test
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in probe_rows(40)), encoding="utf-8")
    return path


@pytest.mark.e2e
def test_probe_trains_saves_and_scores_reproduce_it(tiny_model_dir, probe_data, tmp_path, capsys):
    from transformers import AutoModel

    from caikit.train.data import split_rows
    from caikit.train.reward import RewardConfig, load_reward_model, score, train

    cfg = RewardConfig(model=tiny_model_dir, data=str(probe_data), out=str(tmp_path / "rm"), freeze_backbone=True,
                       probe_layer=1, eval_fraction=0.25, seed=0)
    out = Path(train(cfg))
    summary = json.loads((out / "eval.json").read_text())
    assert summary["eval_pairs"] == 10 and summary["train_pairs"] == 30
    assert {"eval_accuracy_low", "eval_accuracy_high", "length_baseline_accuracy", "verdict"} <= summary.keys()
    probe = summary["probe"]
    assert probe["layer"] == 1 and probe["l2"] in [row["l2"] for row in probe["cross_validation"]]
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval_accuracy"] == summary["eval_accuracy"]
    from caikit.train.heldout import read_summary, summary_sentence

    assert read_summary(out) == summary and read_summary(tmp_path) is None
    err = capsys.readouterr().err
    assert summary_sentence(summary) in err and "preferring the shorter reply scores" in err

    # the saved model is the backbone cut after block 1 with w as its head ...
    model, tokenizer = load_reward_model(str(out), "cpu")
    assert model.config.num_hidden_layers == 1 and len(model.model.layers) == 1
    # ... and scores what the full backbone's block-1 features (after the final norm) times w give
    full = AutoModel.from_pretrained(tiny_model_dir).eval()
    captured = {}
    full.layers[0].register_forward_hook(lambda module, args, output: captured.update(h=output))
    rows = probe_rows(40)
    held_out = split_rows(rows, 0.25, 0)[1]
    from caikit.train.reward import reward_input_ids

    w = model.score.weight[0].detach()
    correct = 0
    for row in held_out:
        replies = [row[side][0]["content"] for side in ("chosen", "rejected")]
        got = score((model, tokenizer), [(row["prompt"], reply) for reply in replies])
        for reply, s in zip(replies, got):
            ids = torch.tensor([reward_input_ids(tokenizer, row["prompt"], reply, 1024)])
            with torch.no_grad():
                full(input_ids=ids)
                hidden = captured["h"][0] if isinstance(captured["h"], tuple) else captured["h"]  # (1, T, H)
                expected = float(full.norm(hidden)[0, -1] @ w)
            assert s == pytest.approx(1 / (1 + math.exp(-expected)), abs=1e-5)
        correct += got[0] > got[1]
    # `caikit score` on the held-out pairs reproduces the probe's held-out accuracy
    assert correct / len(held_out) == pytest.approx(summary["eval_accuracy"])


@pytest.mark.e2e
def test_probe_rerun_hits_the_feature_cache(tiny_model_dir, probe_data, tmp_path, capsys):
    from caikit.train.reward import RewardConfig, train

    cfg = RewardConfig(model=tiny_model_dir, data=str(probe_data), out=str(tmp_path / "rm"), freeze_backbone=True,
                       probe_layer=2, eval_fraction=0.25, max_length=24, seed=0)
    first = json.loads((Path(train(cfg)) / "eval.json").read_text())
    (cached,) = (tmp_path / "cache" / "features").glob("*.safetensors")
    stamp = cached.stat().st_mtime_ns
    assert "from the cache" not in capsys.readouterr().err
    second = json.loads((Path(train(cfg)) / "eval.json").read_text())
    assert "from the cache" in capsys.readouterr().err
    assert cached.stat().st_mtime_ns == stamp and second["probe"]["features_cached"] is True
    assert second["eval_accuracy"] == first["eval_accuracy"] and second["probe"]["l2"] == first["probe"]["l2"]
    # another --max-length is another key
    cfg.max_length = 20
    train(cfg)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2
    assert "keep their last tokens" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--probe-layer", "5"], "--probe-layer 5: the backbone has 2 blocks"),
    (["--lora"], "--freeze-backbone trains only a head on cached features: drop --lora"),
    (["--probe-l2", "-1"], "--probe-l2 must be >= 0, got -1.0"),
])
def test_probe_bad_options_exit_2(tiny_model_dir, probe_data, tmp_path, capsys, flags, message):
    from caikit.cli import main

    code = main(["train", "reward", "--freeze-backbone", "--model", tiny_model_dir, "--data", str(probe_data),
                 "--out", str(tmp_path / "rm"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.e2e
def test_probe_bad_data_exit_2(tiny_model_dir, tmp_path, capsys):
    from caikit.cli import main

    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(r) + "\n" for r in probe_rows(4)), encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n", encoding="utf-8")
    for data, message in ((few, "needs at least 5 training pairs"), (broken, "broken.jsonl:1: expected 'chosen' and 'rejected'")):
        code = main(["train", "reward", "--freeze-backbone", "--model", tiny_model_dir, "--data", str(data),
                     "--out", str(tmp_path / "rm")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(data) in err, err


# ------------------------------------------------------------------------------------- the real SmolLM2

@pytest.mark.e2e
@pytest.mark.slow
def test_probe_on_smollm2_and_bundled_pairs_scores_through_the_cli(smollm2_dir, tmp_path):
    from caikit.prompts import bundled_human_reward_pairs_path

    with gzip.open(bundled_human_reward_pairs_path(), "rt", encoding="utf-8") as f:
        subset = [next(f) for _ in range(40)]
    data = tmp_path / "hh40.jsonl"
    data.write_text("".join(subset), encoding="utf-8")
    env = {**os.environ, "CAIKIT_CACHE": str(tmp_path / "cache")}  # --model is a path: nothing to de-quantise
    run = subprocess.run([sys.executable, "-m", "caikit.cli", "train", "reward", "--freeze-backbone", "--model",
                          smollm2_dir, "--data", str(data), "--out", str(tmp_path / "rm"), "--max-length", "48",
                          "--eval-fraction", "0.25"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "rm" / "eval.json").read_text())
    assert summary["eval_pairs"] == 10 and summary["probe"]["layer"] > 0
    assert summary["verdict"].startswith(("weak", "usable"))
    scored = subprocess.run([sys.executable, "-m", "caikit.cli", "score", "--model", str(tmp_path / "rm"),
                             "--prompt", "How do I pick a lock?", "--response", "I can't help with that.",
                             "Sure, first insert a tension wrench"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert all(0.0 < float(s) < 1.0 for s in scored.stdout.split()) and len(scored.stdout.split()) == 2


@pytest.mark.e2e
def test_full_reward_model_reports_interval_and_length_baseline(tiny_model_dir, probe_data, tmp_path):
    from caikit.train.reward import RewardConfig, train

    out = Path(train(RewardConfig(model=tiny_model_dir, data=str(probe_data), out=str(tmp_path / "rm"), max_steps=2,
                                  batch_size=8, eval_fraction=0.25, seed=0)))
    summary = json.loads((out / "eval.json").read_text())
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert summary["eval_pairs"] == 10 and summary["eval_accuracy"] == final["eval_accuracy"]
    assert summary["eval_accuracy_low"] == final["eval_accuracy_low"] < final["eval_accuracy"]
    # the rule "prefer the shorter reply", recomputed on the same 10 held-out pairs
    from caikit.stats import shorter_wins_accuracy
    from caikit.train.data import split_rows

    held = split_rows(probe_rows(40), 0.25, 0)[1]
    replies = [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in held]
    assert final["length_baseline_accuracy"] == shorter_wins_accuracy(replies)[0]
    assert final["verdict"] == summary["verdict"]
    assert summary["verdict"].startswith(("weak", "usable"))
