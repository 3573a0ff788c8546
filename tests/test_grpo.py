"""GRPO / RLOO on the toy task, the reward interface, resume, and the command line.

The toy policy (fixture toy_policy_dir in conftest.py) samples " excellent" at ~20% of tokens; the rule
reward "share of ' excellent' in the response" must rise within a few CPU steps under both estimators.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from caikit.errors import UserError
from caikit.metrics import read_metrics
from caikit.train.rewards import (FunctionReward, RewardBatch, RewardFn, as_reward_fn, compute_rewards,
                                  load_function, make_reward_fn)

pytestmark = pytest.mark.e2e

TARGET, RESPONSE_LENGTH = " excellent", 6  # as calibrated by conftest.toy_policy_dir


def share_of_target(prompts: list[str], responses: list[str]) -> list[float]:
    return [r.count(TARGET.strip()) / RESPONSE_LENGTH for r in responses]


def toy_config(policy: str, prompts: str, out: Path, **overrides):
    from caikit.train.grpo import GRPOConfig

    settings = dict(policy=policy, prompts=prompts, out=str(out), max_steps=4, rollout_batch_size=4, num_generations=4,
                    response_length=RESPONSE_LENGTH, temperature=1.0, lr=3e-4, kl_coef=0.0, sample_every=0,
                    progress=False, seed=0)
    return GRPOConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def toy_runs(toy_policy_dir, toy_prompts_file, tmp_path_factory):
    from caikit.train.grpo import train

    root = tmp_path_factory.mktemp("grpo-runs")
    runs = {}
    for estimator in ("grpo", "rloo"):
        cfg = toy_config(toy_policy_dir, toy_prompts_file, root / estimator, estimator=estimator)
        train(cfg, reward_fn=share_of_target)
        runs[estimator] = (Path(cfg.out), read_metrics(Path(cfg.out) / "metrics.jsonl"))
    return runs


# --- the toy objective ------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_rule_reward_rises_and_collapse_is_flagged(toy_runs, estimator):
    out, rows = toy_runs[estimator]
    scores = [r["rm_score"] for r in rows]
    print(f"{estimator}: share of '{TARGET.strip()}' per step {[round(s, 3) for s in scores]}")  # pytest -rP shows it
    assert scores[-1] > scores[0] + 0.3, scores
    assert rows[-1]["entropy"] < rows[0]["entropy"]
    assert all(r["kl_coef"] == 0.0 and r["kl"] >= 0.0 for r in rows)
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0.0  # policy = reference at the first rollout only
    for r in rows:  # β = 0: the total reward is the score
        assert r["total_reward"] == pytest.approx(r["score"], abs=1e-6)
    kinds = {json.loads(line)["kind"] for line in (out / "warnings.jsonl").read_text().splitlines()}
    assert "entropy_collapse" in kinds  # the same monitors as PPO watch the run


def test_resume_mid_run_equals_an_uninterrupted_run(toy_policy_dir, toy_prompts_file, tmp_path):
    from safetensors.torch import load_file

    from caikit.train.grpo import train

    # adaptive β and two minibatches, so the KL controller's and the optimizer's state both matter
    common = dict(lr_schedule="constant", kl_coef=0.1, kl_target=0.5, kl_horizon=8, mini_batches=2, max_steps=3,
                  rollout_batch_size=2)
    straight = toy_config(toy_policy_dir, toy_prompts_file, tmp_path / "straight", **common)
    train(straight, reward_fn=share_of_target)
    train(toy_config(toy_policy_dir, toy_prompts_file, tmp_path / "resumed", **(common | {"max_steps": 2})),
          reward_fn=share_of_target)
    train(toy_config(toy_policy_dir, toy_prompts_file, tmp_path / "resumed", **(common | {"resume": True})),
          reward_fn=share_of_target)

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keep = ("rm_score", "kl", "kl_coef", "policy_loss", "entropy", "distinct_2")
    rows_a = [{k: r[k] for k in keep} for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    rows_b = [{k: r[k] for k in keep} for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert rows_a == rows_b and len(rows_a) == 3
    assert rows_a[2]["kl_coef"] != rows_a[0]["kl_coef"]  # the adaptive β moved, and resumed where it was


# --- the reward interface ----------------------------------------------------------------------------------


def test_reward_functions_from_specs_and_their_checks(tmp_path, monkeypatch):
    rules = tmp_path / "rules.py"
    rules.write_text("def parts(prompts, responses):\n"
                     "    return {'length': [len(r) / 10 for r in responses], 'asks': [float('?' in p) for p in prompts]}\n"
                     "NOT_CALLABLE = 3\n")
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
                     [{"role": "user", "content": "Hello."}]]
    batch = compute_rewards(make_reward_fn("", f"{rules}:parts"), conversations, ["abcde", "abcdefghij"])
    # the function sees the last user turn as text; a dict's parts are summed and kept for the metrics
    assert batch.details == {"length": [0.5, 1.0], "asks": [1.0, 0.0]}
    assert batch.scores == pytest.approx([1.5, 1.0])
    assert load_function("caikit.train.rule_rewards:concise")([""], ["Short and done."]) == {
        "brevity": [1.0], "complete": [1.0]}

    for spec, message in ((f"{rules}:missing", "no function 'missing'"), (f"{rules}:NOT_CALLABLE", "no function"),
                          ("nonexistent_module_xyz:f", "cannot import"), (str(tmp_path / "none.py:f"), "does not exist"),
                          ("no-colon", "MODULE:FUNCTION")):
        with pytest.raises(UserError, match=message):
            load_function(spec)
    with pytest.raises(UserError, match="not both"):
        make_reward_fn("some/dir", "mod:fn")
    with pytest.raises(UserError, match="--reward-model is required"):
        make_reward_fn("", "")
    with pytest.raises(UserError, match="returned 1 scores for 2 responses"):
        compute_rewards(FunctionReward(lambda p, r: [1.0]), conversations, ["a", "b"])
    with pytest.raises(UserError, match="non-finite"):
        compute_rewards(FunctionReward(lambda p, r: [1.0, float("nan")]), conversations, ["a", "b"])


def test_a_reward_object_gets_conversations_and_groups(toy_policy_dir, toy_prompts_file, tmp_path):
    """What the lead's judge rewards will rely on: whole conversations, and which samples share a prompt."""
    from caikit.train.grpo import train

    class Recorder(RewardFn):
        def __init__(self):
            self.calls, self.closed = [], False

        def __call__(self, prompts, responses, *, groups=None):
            self.calls.append((prompts, groups))
            return RewardBatch([0.0] * len(responses), {"zero": [0.0] * len(responses)})

        def close(self):
            self.closed = True

    recorder = Recorder()
    assert as_reward_fn(recorder) is recorder and isinstance(as_reward_fn(share_of_target), FunctionReward)
    train(toy_config(toy_policy_dir, toy_prompts_file, tmp_path / "rec", max_steps=1, rollout_batch_size=2,
                     num_generations=3), reward_fn=recorder)
    prompts, groups = recorder.calls[0]
    assert groups == [0, 0, 0, 1, 1, 1]
    assert prompts[0] == prompts[1] == prompts[2] != prompts[3] and prompts[0][-1]["role"] == "user"
    assert not recorder.closed  # the caller owns what it passed in
    row = read_metrics(tmp_path / "rec" / "metrics.jsonl")[0]
    assert row["detail_zero"] == 0.0 and row["zero_std_share"] == 1.0 and row["policy_loss"] == 0.0


# --- the command line --------------------------------------------------------------------------------------


def test_cli_config_file_rule_reward_and_outputs(toy_policy_dir, toy_prompts_file, repo_root, tmp_path, capsys):
    from caikit.cli import main

    out = tmp_path / "cli"
    args = ["train", "grpo", "--config", str(repo_root / "configs" / "grpo-rule-reward.yaml"), "--policy",
            toy_policy_dir, "--prompts", toy_prompts_file, "--out", str(out), "--max-steps", "2", "--response-length", "6",
            "--sample-every", "1", "--save-every", "1", "--lr", "1e-4", "--no-progress"]
    assert main(args) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("rm_score", "score", "kl", "kl_coef", "total_reward", "entropy", "response_length", "distinct_1",
                "distinct_2", "identical_share", "reward_std", "policy_loss", "clipfrac", "gen_share",
                "detail_brevity", "detail_complete"):
        assert isinstance(rows[-1][key], float), key
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4 and {"prompt", "response", "score"} <= set(samples[0])
    assert (out / "warnings.jsonl").exists() and (out / "plots" / "reward.png").exists()
    assert "estimator: grpo" in (out / "config.yaml").read_text()
    assert (out / "checkpoint" / "trainer_state.json").exists() and (out / "model.safetensors").exists()

    # a bad option is one line and exit status 2
    capsys.readouterr()
    assert main(args[:-1] + ["--num-generations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-generations must be 2 to 1024, got 1" in err[0]  # the flag, not the config file it overrides


@pytest.mark.parametrize("command,flags", [
    ("grpo", ("--num-generations", "--estimator", "--no-scale-std", "--clip-eps", "--kl-coef", "--kl-target",
              "--reward-model", "--reward-fn", "--num-iterations", "--resume", "--check-rm", "--sample-every")),
    ("kto", ("--beta", "--lambda-d", "--lambda-u", "--ref-model", "--resume", "--data")),
    ("dpo", ("--loss", "--loss-type", "--simpo-gamma", "--orpo-lambda", "--label-smoothing")),
])
def test_help_documents_the_new_options(command, flags, capsys):
    from caikit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag
