"""PPO: reward plumbing against hand-computed values, the β controllers, monitors, a toy task that
learns, and one CLI run with a tiny reward model.

The toy policy is a tiny random Llama (real SmolLM2 tokenizer) whose output row for " excellent" points
along the mean final hidden state, so that token starts at ~20% of samples: the reward "share of
' excellent' in the response" is then dense enough for a few CPU steps to show learning.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from caikit.errors import UserError
from caikit.diversity import distinct_n, diversity_metrics, identical_share
from caikit.train.kl import AdaptiveKLController, FixedKLController
from caikit.train.losses import gae, whiten
from caikit.metrics import read_metrics
from caikit.train.monitors import MonitorThresholds, TrainingMonitor
from caikit.train.rollout import (apply_missing_eos_penalty, generate_responses, left_pad, per_token_rewards,
                                  response_forward, rollout_attention_mask, sampling_config, truncate_after_eos)

TARGET = " excellent"
RESPONSE_LENGTH = 6


def share_of_target(prompts: list[str], responses: list[str]) -> list[float]:
    return [r.count(TARGET.strip()) / RESPONSE_LENGTH for r in responses]


def toy_config(policy: str, prompts: str, out: Path, **overrides):
    from caikit.train.ppo import PPOConfig

    settings = dict(policy=policy, prompts=prompts, out=str(out), max_steps=6, rollout_batch_size=8,
                    response_length=RESPONSE_LENGTH, temperature=1.0, lr=3e-4, ppo_epochs=2, mini_batches=1,
                    sample_every=0, progress=False, seed=0)
    return PPOConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def toy_runs(toy_policy_dir, toy_prompts_file, tmp_path_factory):
    """Two short runs on the toy task: β = 0 (with a missing-EOS penalty), and a large adaptive β."""
    from caikit.train.ppo import train

    root = tmp_path_factory.mktemp("ppo-runs")
    free = toy_config(toy_policy_dir, toy_prompts_file, root / "beta0", kl_coef=0.0, missing_eos_penalty=0.5)
    held = toy_config(toy_policy_dir, toy_prompts_file, root / "beta_large", kl_coef=1.0, kl_target=0.05, kl_horizon=16,
                      max_steps=4)
    train(free, reward_fn=share_of_target)
    train(held, reward_fn=share_of_target)
    return {name: (Path(cfg.out), read_metrics(Path(cfg.out) / "metrics.jsonl"))
            for name, cfg in (("free", free), ("held", held))}


# --- plumbing against hand-computed values ----------------------------------------------------------


def assert_close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_truncation_masks_after_first_eos():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    cut, mask, has_eos = truncate_after_eos(responses, eos, pad)
    assert cut.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert has_eos.tolist() == [True, False, True]


def test_per_token_rewards_gae_and_whitening_by_hand():
    # two responses: the first ends with EOS at t=1, the second is cut at the length limit (t=2)
    responses = torch.tensor([[11, 2, 13], [11, 12, 13]])
    _, mask, has_eos = truncate_after_eos(responses, eos_token_id=2, pad_token_id=0)
    scores = apply_missing_eos_penalty(torch.tensor([0.8, 0.6]), has_eos, penalty=1.0)
    assert scores.tolist() == pytest.approx([0.8, -0.4])  # the missing-EOS penalty hits the second only
    kl = torch.tensor([[0.1, 0.2, 0.5], [0.3, -0.1, 0.2]]) * mask
    rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef=0.5)
    # −β·KL on every valid token, the score added at the last valid one, 0 after EOS
    assert_close(rewards, [[-0.05, -0.1 + 0.8, 0.0], [-0.15, 0.05, -0.1 - 0.4]])
    assert non_score.sum(1).tolist() == pytest.approx([-0.15, -0.2])

    values = torch.tensor([[0.2, 0.4, 9.0], [0.1, 0.0, 0.3]])
    adv, ret = gae(rewards, values * mask, mask.float(), gamma=0.9, gae_lambda=0.5)
    # row 0: δ1 = 0.7 − 0.4 = 0.3; δ0 = −0.05 + 0.9·0.4 − 0.2 = 0.11; A0 = 0.11 + 0.45·0.3 = 0.245
    # row 1: δ2 = −0.5 − 0.3 = −0.8; δ1 = 0.05 + 0.27 − 0 = 0.32; A1 = 0.32 − 0.36 = −0.04
    #        δ0 = −0.15 + 0 − 0.1 = −0.25; A0 = −0.25 + 0.45·(−0.04) = −0.268
    expected = [[0.245, 0.3, 0.0], [-0.268, -0.04, -0.8]]
    assert_close(adv, expected)
    assert_close(ret, [[0.445, 0.7, 0.0], [-0.168, -0.04, -0.5]])
    valid = [0.245, 0.3, -0.268, -0.04, -0.8]
    mean = sum(valid) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / 4)  # Bessel-corrected, as TRL
    white = whiten(adv, mask.float())
    assert white[mask].tolist() == pytest.approx([(v - mean) / std for v in valid], abs=1e-5)
    assert white[~mask].tolist() == [0.0]


def test_sampling_ignores_the_models_own_generation_settings(tiny_model_dir):
    """Scores seen by the sampler must be exactly logits / T (no top-k, no repetition penalty)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model.generation_config.top_k, model.generation_config.repetition_penalty = 5, 1.5
    ids = torch.tensor([[3, 4, 5, 6]])
    config = sampling_config(2, 0.7, 0, 2)
    config.update(return_dict_in_generate=True, output_scores=True, output_logits=True)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    for scores, logits in zip(out.scores, out.logits):
        assert torch.allclose(scores, logits / 0.7, atol=1e-5)


def test_left_padding_does_not_change_logprobs(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[7, 8, 9, 10, 11], [12, 13]]
    ids, mask = left_pad(prompts, pad_token_id=0)
    qr, responses, rmask, _ = generate_responses(model, ids, mask, 4, 1.0, 0, 2)
    attn = rollout_attention_mask(mask, rmask)
    with torch.no_grad():
        batched, _, _ = response_forward(model, qr, attn, ids.size(1), 0.7, with_values=False)
        alone = torch.cat([torch.tensor(prompts[1]), responses[1]])[None]
        single, _, _ = response_forward(model, alone, torch.ones_like(alone), len(prompts[1]), 0.7,
                                        with_values=False)
    assert torch.allclose(batched[1], single[0], atol=1e-4)


def test_dropout_is_off_in_train_mode(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from caikit.train.rollout import PolicyWithValueHead, disable_dropout

    policy = PolicyWithValueHead(AutoModelForCausalLM.from_pretrained(tiny_model_dir, attention_dropout=0.5))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    args = (ids, torch.ones_like(ids), torch.arange(6)[None], 3)
    policy.train()
    assert not torch.equal(policy(*args)[0], policy(*args)[0])  # dropout active: the check can fail
    disable_dropout(policy)
    first, values = policy(*args)
    assert torch.equal(first, policy(*args)[0]) and torch.equal(values, torch.zeros(1, 6))  # zero-init head


def test_kl_controllers_move_beta_the_right_way():
    assert FixedKLController(0.1).update(50.0, 64) == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))  # error clipped to +0.2
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(4.5, 100) == pytest.approx(0.1 * (1 - 0.2 * 100 / 1000))  # −0.25 clipped to −0.2
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(6.6, 100) == pytest.approx(0.1 * (1 + 0.1 * 100 / 1000))  # within the clip: proportional


def test_diversity_by_hand():
    assert distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)  # ab, ba, ab, ac
    assert identical_share(["x y", "x  y", "z"]) == pytest.approx(2 / 3)
    assert diversity_metrics([[1, 2], [1, 2], [1, 2]])["identical_share"] == 1.0


def test_monitor_warns_on_reward_hacking_and_kl_explosion(tmp_path):
    monitor = TrainingMonitor(tmp_path, MonitorThresholds(window=4, kl_max=5.0), echo=lambda line: None)
    for step, (rm, check) in enumerate([(0.5, 0.6), (0.6, 0.55), (0.7, 0.5), (0.8, 0.45)], 1):
        found = monitor.check(step, {"rm_score": rm, "check_score": check, "kl": 1.0})
    assert [w["kind"] for w in found] == ["reward_hacking"]
    assert monitor.check(5, {"kl": 9.0})[0]["kind"] == "kl_explosion"
    honest = TrainingMonitor(tmp_path / "honest", MonitorThresholds(window=4), echo=lambda line: None)
    for step, value in enumerate([0.5, 0.6, 0.7, 0.8], 1):
        assert honest.check(step, {"rm_score": value, "check_score": value}) == []
    rows = [json.loads(line) for line in (tmp_path / "warnings.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["reward_hacking", "kl_explosion"]


# --- the toy task ---------------------------------------------------------------------------------------


def test_reward_rises_and_mode_collapse_is_flagged(toy_runs):
    out, rows = toy_runs["free"]
    first, last = rows[0]["rm_score"], sum(r["rm_score"] for r in rows[-2:]) / 2
    assert last > first + 0.3, [r["rm_score"] for r in rows]
    assert rows[-1]["entropy"] < rows[0]["entropy"]
    # missing-EOS penalty: score = RM score − 0.5 × share of responses without EOS
    for r in rows:
        assert r["score"] == pytest.approx(r["rm_score"] - 0.5 * (1 - r["eos_rate"]), abs=1e-6)
        assert r["total_reward"] == pytest.approx(r["score"] + r["non_score_reward"], abs=1e-6)
    kinds = {json.loads(line)["kind"] for line in (out / "warnings.jsonl").read_text().splitlines()}
    assert {"identical_responses", "entropy_collapse"} <= kinds


def test_large_beta_bounds_kl_and_adaptive_beta_follows_the_target(toy_runs):
    free = [r["kl"] for r in toy_runs["free"][1]]
    held_rows = toy_runs["held"][1]
    held = [r["kl"] for r in held_rows]
    # the first update is unpenalised (KL = 0 at the first rollout); after it, β holds KL where it was
    assert max(held) < 4.0 and max(held[-3:]) < 0.5 * min(free[-3:]), (free, held)
    assert all(r["kl_coef"] == 0.0 for r in toy_runs["free"][1])
    for before, after in zip(held_rows, held_rows[1:]):  # β rises after a step above target, falls below
        assert (after["kl_coef"] > before["kl_coef"]) == (before["kl"] > 0.05), (before, after)


# --- errors and the command line ------------------------------------------------------------------------


def test_every_contract_flag_is_documented():
    import argparse

    from caikit.config import add_dataclass_args
    from caikit.train.ppo import PPOConfig

    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, PPOConfig)
    text = parser.format_help()
    for flag in ("--policy", "--reward-model", "--prompts", "--out", "--kl-coef", "--kl-target", "--kl-horizon",
                 "--kl-estimator", "--gamma", "--gae-lambda", "--cliprange", "--cliprange-value", "--vf-coef", "--ppo-epochs",
                 "--mini-batches", "--rollout-batch-size", "--response-length", "--temperature",
                 "--missing-eos-penalty", "--whiten-rewards", "--lora", "--bf16", "--seed", "--max-steps",
                 "--check-judge", "--check-rm", "--probe-prompts", "--sample-every", "--resume"):
        assert f"{flag} " in text, flag


def test_clear_errors(tiny_model_dir, toy_prompts_file, tmp_path):
    from caikit.train.ppo import train

    with pytest.raises(UserError, match="reward model directory does not exist"):
        train(toy_config(tiny_model_dir, toy_prompts_file, tmp_path / "a", reward_model=str(tmp_path / "nope")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty.jsonl"):
        train(toy_config(tiny_model_dir, str(empty), tmp_path / "b"), reward_fn=share_of_target)
    with pytest.raises(UserError, match="divisible"):
        train(toy_config(tiny_model_dir, toy_prompts_file, tmp_path / "c", mini_batches=3), reward_fn=share_of_target)


@pytest.fixture(scope="module")
def tiny_reward_dir(tiny_model_dir, tmp_path_factory) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=0,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-rm")
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_cli_run_writes_everything_and_resumes(tiny_model_dir, tiny_reward_dir, toy_prompts_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    base = [sys.executable, "-m", "caikit.cli", "train", "ppo", "--policy", tiny_model_dir, "--reward-model",
            tiny_reward_dir, "--prompts", toy_prompts_file, "--out", str(out), "--rollout-batch-size", "4",
            "--response-length", "4", "--ppo-epochs", "1", "--mini-batches", "2", "--sample-every", "1",
            "--save-every", "1", "--check-rm", tiny_reward_dir, "--kl-estimator", "k3", "--no-progress"]
    from caikit.cli import main as cli_main

    # a user error is one line and exit status 2
    assert cli_main(base[3:8] + [str(tmp_path / "missing-rm")] + base[9:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing-rm" in err[0] and "reward model directory does not exist" in err[0]
    r = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2]
    for key in ("rm_score", "score", "kl", "kl_coef", "non_score_reward", "total_reward", "entropy",
                "response_length", "distinct_1", "distinct_2", "identical_share", "check_score", "policy_loss",
                "value_loss", "rollouts_per_s", "gen_share"):
        assert isinstance(rows[-1][key], float), key
    assert all(0.0 <= row["rm_score"] <= 1.0 and row["kl"] >= 0.0 for row in rows)  # sigmoid RM; k3 >= 0
    for group in ("reward", "kl_beta", "entropy", "length", "diversity"):
        assert (out / "plots" / f"{group}.png").stat().st_size > 1000
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert {"prompt", "response", "score"} <= set(samples[0])
    assert (out / "config.yaml").exists() and (out / "value_head.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2

    # --resume continues from the step-2 checkpoint (in-process, to spare a second interpreter start)
    assert cli_main(base[3:] + ["--max-steps", "3", "--resume"]) == 0
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert [json.loads(line)["step"] for line in (out / "samples.jsonl").read_text().splitlines()][-1] == 3


def test_lora_reference_is_the_policy_without_adapters(tiny_model_dir, toy_prompts_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from caikit.train.ppo import train

    cfg = toy_config(tiny_model_dir, toy_prompts_file, tmp_path / "lora", lora=True, lora_r=4, max_steps=2,
                     rollout_batch_size=4, response_length=4, ppo_epochs=1, lr=1e-2)
    train(cfg, reward_fn=lambda prompts, responses: [len(r) / 20 for r in responses])
    rows = read_metrics(tmp_path / "lora" / "metrics.jsonl")
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] != 0.0  # identical at first, then the adapters moved
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")  # adapters merged: loads without peft
    assert not any("lora" in name for name in merged.state_dict())


def test_judge_check_scores_p_yes_by_logprobs_and_by_votes(monkeypatch):
    """The independent reward-hacking check, against the loopback OpenAI and Anthropic servers."""
    from caikit.testing import FakeAPIServer
    from caikit.commands.rl import JudgeCheck

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")

    def logprobs(req):  # P(Yes) = 0.6 / (0.6 + 0.2) for the polite answer, 0.1 / (0.1 + 0.9) otherwise
        if "Happy to help" in req.last_user_message:
            return {"Yes": math.log(0.6), "No": math.log(0.2)}
        return {"Yes": math.log(0.1), "No": math.log(0.9)}

    conversations = [[{"role": "user", "content": "Can you help me?"}]] * 2
    responses = ["Happy to help.", "Go away."]
    with FakeAPIServer(lambda req: "Yes" if "Happy to help" in req.last_user_message else "No",
                       logprobs=logprobs) as server:
        check = JudgeCheck(f"openai:judge-model@{server.openai_base_url}")
        assert check(conversations, responses) == pytest.approx([0.75, 0.1])
        assert check(conversations[:1], responses[:1]) == pytest.approx([0.75])  # same event loop, second call
        check.close()
        votes = JudgeCheck(f"anthropic:claude-judge@{server.anthropic_base_url}")
        assert votes(conversations, responses) == [1.0, 0.0]
        votes.close()
    with pytest.raises(UserError, match=r"PROVIDER\[:MODEL\]"):
        JudgeCheck("smollm2")
