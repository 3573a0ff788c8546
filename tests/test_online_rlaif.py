"""Online RLAIF on tiny models, CPU: `caikit train online-dpo` against a scripted loopback judge, its resume after
kills, its quality gate and report, and GRPO with a pairwise judge as the reward.

The policy (conftest.eos_policy_dir) ends its answers after 1 to ~17 tokens; the judge prefers the shorter answer
(a hash breaks exact ties the same way in both orders, so it is position-consistent and passes its gate). Two
iterations of sample -> judge -> DPO must shorten the answers and win against the initial policy's.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest

from caikit.testing import FakeAPIServer

pytestmark = pytest.mark.e2e

BLOCK = re.compile(r"<response_(a|b)>\n(.*?)\n</response_\1>", re.S)


def shown(req) -> tuple[str, str]:
    blocks = dict(BLOCK.findall(req.last_user_message))
    return blocks["a"], blocks["b"]


def two_options(d: float) -> dict[str, float]:
    """log P(A), log P(B) with P(A) = σ(d)."""
    return {"A": -math.log1p(math.exp(-d)), "B": -math.log1p(math.exp(d))}


def prefer_shorter(req) -> dict[str, float]:
    def size(text: str) -> float:
        return len(text) + int(hashlib.sha256(text.encode()).hexdigest()[:4], 16) / 65536

    a, b = shown(req)
    return two_options((size(b) - size(a)) / 8)


def always_a(req) -> dict[str, float]:
    return two_options(2.0)


def judge_server(logprobs) -> FakeAPIServer:
    """One request at a time (the probe finds one slot), so an interrupted run has nothing in flight."""
    return FakeAPIServer(logprobs=logprobs, props={"total_slots": 1}, slots=1)


def online_config(policy: str, prompts: str, out: Path, server: FakeAPIServer, **overrides):
    from caikit.commands.online_dpo import OnlineDPOConfig

    settings = dict(policy=policy, prompts=prompts, limit=8, out=str(out), iterations=2, samples_per_prompt=4,
                    response_length=16, judge=f"openai:judge@{server.openai_base_url}", pairs_from="all", lr=1e-4,
                    beta=0.1, batch_size=4, max_steps=8, lr_schedule="constant", calibrate=8, progress=False,
                    device="cpu", seed=0, sample_concurrency=1)  # one prompt per batch: the same answers every run
    return OnlineDPOConfig(**(settings | overrides))


def iterations(out: Path) -> list[dict]:
    return json.loads((out / "iterations.json").read_text())["iterations"]


FIGURES = ("answers", "win_rate_vs_initial", "win_rate_pairs", "kl_from_initial", "kl_per_token", "mean_length_words",
           "mean_length_chars", "truncated_share", "distinct_1", "distinct_2", "dpo_pairs")


@pytest.fixture(scope="module")
def online_run(eos_policy_dir, toy_prompts_file, tmp_path_factory):
    """Two uninterrupted iterations: (OUT, its rows, judge requests sent)."""
    from caikit.commands.online_dpo import run_online_dpo

    out = tmp_path_factory.mktemp("online") / "run"
    with pytest.MonkeyPatch.context() as mp, judge_server(prefer_shorter) as server:
        mp.setenv("OPENAI_API_KEY", "sk-fake")
        assert run_online_dpo(online_config(eos_policy_dir, toy_prompts_file, out, server)) == 0
        sent = len(server.log)
    return out, iterations(out), sent


def test_a_judge_that_prefers_shorter_answers_shortens_them(online_run):
    out, rows, _ = online_run
    for key in ("mean_length_words", "mean_length_chars", "win_rate_vs_initial", "kl_from_initial", "truncated_share"):
        print(f"online DPO, {key} by iteration:", [round(r[key], 3) for r in rows])  # pytest -rP shows them
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[2]["mean_length_chars"] < 0.6 * rows[0]["mean_length_chars"]
    assert rows[2]["mean_length_words"] < rows[1]["mean_length_words"] < rows[0]["mean_length_words"]
    assert rows[0]["win_rate_vs_initial"] == 0.5 and rows[0]["kl_from_initial"] == 0.0
    assert rows[2]["win_rate_vs_initial"] > 0.6 and rows[2]["win_rate_interval"][0] > 0.5  # beyond noise
    assert rows[1]["kl_from_initial"] > 0 and rows[2]["kl_from_initial"] > 0
    assert all(r["answers"] == 8 * 4 for r in rows)  # every answer counts, cut ones included
    for r in rows[1:]:
        assert r["judge"]["gate"] == "passed" and r["judge"]["position_consistency_rate"] == 1.0
        assert r["dpo_pairs"] > 8  # --pairs-from all: more than one pair per prompt
    pairs = [json.loads(line) for line in (out / "iter-1" / "pairs.jsonl").read_text().splitlines()]
    assert all(len(p["chosen"][0]["content"]) <= len(p["rejected"][0]["content"]) and p["p_chosen"] > 0.5
               for p in pairs)
    for name in ("iter-0/samples/samples.jsonl", "iter-1/judge/gate.json", "iter-1/judge/preferences.jsonl",
                 "iter-1/dpo/model.safetensors", "iter-2/samples/policy_requests.jsonl", "winrate/judgments.jsonl",
                 "config.yaml", "run.json", "progress.json", "warnings.jsonl"):
        assert (out / name).exists(), name
    assert (out / "policy").resolve() == (out / "iter-2" / "dpo").resolve()


def test_resume_after_kills_equals_an_uninterrupted_run(online_run, eos_policy_dir, toy_prompts_file, tmp_path,
                                                         monkeypatch):
    """Killed in the middle of iteration 1's judge, then at iteration 2's DPO: the rerun finishes with the same
    figures, and the judge is sent exactly the requests the uninterrupted run sent (none twice)."""
    from caikit import judge_run
    from caikit.commands.online_dpo import run_online_dpo
    from caikit.runner import Runner
    from caikit.train import dpo

    _, straight, straight_sent = online_run
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    out = tmp_path / "resumed"
    real_judge_pair, real_train = judge_run.judge_pair, dpo.train
    calls = []

    async def dies_at_the_eleventh_pair(ask, *args, **kwargs):
        if isinstance(getattr(ask, "__self__", None), Runner):  # a pair asked for real (not priced by the estimate)
            calls.append(1)
            if len(calls) == 11:
                raise KeyboardInterrupt
        return await real_judge_pair(ask, *args, **kwargs)

    def dies_in_iteration_2(cfg):
        if "iter-2" in cfg.out:
            raise KeyboardInterrupt
        return real_train(cfg)

    with judge_server(prefer_shorter) as server:
        cfg = online_config(eos_policy_dir, toy_prompts_file, out, server)
        with monkeypatch.context() as mp:
            mp.setattr(judge_run, "judge_pair", dies_at_the_eleventh_pair)
            with pytest.raises(KeyboardInterrupt):
                run_online_dpo(cfg)
        progress = json.loads((out / "progress.json").read_text())["stages"]
        assert progress == {"iter-0/samples": "done", "iter-0/figures": "done"}  # the judge was cut short
        judged = (out / "iter-1" / "judge" / "judgments.jsonl").read_text().splitlines()
        assert len(judged) == 10  # each pair stored as it finished: the rerun judges the rest
        with monkeypatch.context() as mp:
            mp.setattr(dpo, "train", dies_in_iteration_2)
            with pytest.raises(KeyboardInterrupt):
                run_online_dpo(cfg)
        first_model = (out / "iter-1" / "dpo" / "model.safetensors").stat().st_mtime_ns
        assert run_online_dpo(cfg) == 0
        sent = len(server.log)
    assert (out / "iter-1" / "dpo" / "model.safetensors").stat().st_mtime_ns == first_model  # not retrained
    assert sent == straight_sent
    resumed = iterations(out)
    assert len(resumed) == len(straight)
    for a, b in zip(straight, resumed):
        for key in FIGURES:
            expected = a.get(key)
            assert b.get(key) == (None if expected is None else pytest.approx(expected, rel=1e-6, abs=1e-9)), \
                (a["iteration"], key)


def test_a_judge_that_always_picks_a_stops_the_loop_with_exit_3(eos_policy_dir, toy_prompts_file, tmp_path,
                                                                monkeypatch, capsys):
    from caikit.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    out = tmp_path / "weak"
    with judge_server(always_a) as server:
        args = ["train", "online-dpo", "--policy", eos_policy_dir, "--prompts", toy_prompts_file, "--limit", "4",
                "--out", str(out), "--iterations", "1", "--response-length", "16", "--calibrate", "4",
                "--judge", f"openai:judge@{server.openai_base_url}", "--device", "cpu", "--no-progress"]
        assert main(args) == 3
    assert "failed its quality gate" in capsys.readouterr().err
    assert json.loads((out / "iter-1" / "judge" / "gate.json").read_text())["status"] == "failed"
    assert not (out / "iter-1" / "dpo").exists()
    assert json.loads((out / "progress.json").read_text())["stages"] == {"iter-0/samples": "done",
                                                                         "iter-0/figures": "done"}


def test_report_draws_the_iterations(online_run, tmp_path):
    from caikit.report.html import build_report

    out, rows, _ = online_run
    page = build_report(out, tmp_path / "report.html").read_text()
    assert "Online DPO iterations" in page and page.count("<svg") == 4 and ">iteration</text>" in page
    assert f"{rows[2]['win_rate_vs_initial']:.3f}" in page
    assert "<script" not in page


def test_help_configs_and_run_file_wiring(repo_root, tmp_path, capsys):
    from caikit.cli import main
    from caikit.commands.online_dpo import OnlineDPOConfig
    from caikit.commands.rl import GRPOConfig
    from caikit.commands.run import _build_stage_configs, _load_run_file
    from caikit.config import resolve

    with pytest.raises(SystemExit):
        main(["train", "online-dpo", "--help"])
    text = capsys.readouterr().out
    for flag in ("--iterations", "--samples-per-prompt", "--pairs-from", "--reference", "--judge", "--loss",
                 "--allow-weak-judge", "--max-length-growth", "--calibrate"):
        assert flag in text, flag
    run = {"prompts": "p.jsonl", "constitution": "hhh", "seed": 3,
           "stages": {"sft": {}, "online_dpo": {"iterations": 3, "judge": "openai:gpt-4o-mini"}, "eval": {}}}
    planned = {name: cfg for name, cfg, _ in _build_stage_configs(run, tmp_path / "run", "run.yaml")}
    online = planned["online_dpo"]
    assert (online.policy, online.prompts, online.constitution, online.seed, online.iterations) == (
        str(tmp_path / "run" / "sft"), "p.jsonl", "hhh", 3, 3)
    assert planned["eval"].after == str(tmp_path / "run" / "online_dpo" / "policy")
    # the shipped configs resolve and validate
    configs = repo_root / "configs"
    online = resolve(OnlineDPOConfig, {}, config_file=str(configs / "online-dpo.yaml"))
    assert (online.iterations, online.pairs_from, online.judge) == (3, "all", "openai:gpt-4o-mini")
    grpo = resolve(GRPOConfig, {}, config_file=str(configs / "grpo-judge-reward.yaml"))
    assert (grpo.judge, grpo.reward, grpo.num_generations) == ("openai:gpt-4o-mini", "pairwise", 4)
    run = _load_run_file(str(configs / "online-rlaif-run.yaml"))
    stages = [name for name, _, _ in _build_stage_configs(run, tmp_path / "r", "online-rlaif-run.yaml")]
    assert stages == ["generate", "sft", "online_dpo", "eval"]


# -- GRPO with a judge as the reward ----------------------------------------------------------------------------

RUBRIC = re.compile(r"<response>\n(.*?)\n</response>", re.S)
TWO_RULES = """\
name: toy-rules
version: 1
principles:
  - id: praise
    judge: Choose the response that praises the item more.
    weight: 3.0
  - id: anything
    judge: Choose any response.
    weight: 1.0
"""


def toy_judge(req) -> dict[str, float]:
    """Pairwise: the answer with more "excellent" wins; rubric: P(yes) for praise grows with the count of
    "excellent" (0.05 + 0.15 each), 0.5 for the other principle whatever the answer."""
    rubric = RUBRIC.search(req.last_user_message)
    if rubric is None:
        a, b = shown(req)
        return two_options(a.count("excellent") - b.count("excellent"))
    p = 0.5 if "Choose any response" in req.last_user_message else min(0.95, 0.05 + 0.15 * rubric.group(1).count(
        "excellent"))
    return {"Yes": math.log(p), "No": math.log(1 - p)}


@pytest.mark.parametrize("reward", ["pairwise", "rubric"])
def test_grpo_with_a_judge_reward_raises_what_the_judge_prefers(reward, toy_policy_dir, toy_prompts_file, tmp_path,
                                                                 monkeypatch):
    from caikit.commands.rl import GRPOConfig, run_trainer
    from caikit.metrics import read_metrics
    from caikit.train import grpo

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    constitution = tmp_path / "toy-rules.yaml"
    constitution.write_text(TWO_RULES)

    def share(conversations, responses):  # the toy objective, logged as the check score
        return [r.count("excellent") / 6 for r in responses]

    with FakeAPIServer(logprobs=toy_judge) as server:
        cfg = GRPOConfig(policy=toy_policy_dir, prompts=toy_prompts_file, out=str(tmp_path / "g"), max_steps=4,
                         rollout_batch_size=4, num_generations=4, response_length=6, temperature=1.0, lr=3e-4,
                         kl_coef=0.0, sample_every=0, progress=False, seed=0, constitution=str(constitution),
                         judge=f"openai:judge@{server.openai_base_url}", reward=reward)
        run_trainer(lambda c, reward_fn, check: grpo.train(c, reward_fn=reward_fn, check=share), cfg)
        sent = len(server.log)
    rows = read_metrics(tmp_path / "g" / "metrics.jsonl")
    shares = [r["check_score"] for r in rows]
    print(f"GRPO with a {reward} judge, share of 'excellent' per step:", [round(s, 3) for s in shares])
    assert shares[-1] > shares[0] + 0.3
    assert rows[-1]["detail_judge_failed"] == 0.0
    if reward == "pairwise":
        assert all(r["rm_score"] == pytest.approx(0.5) for r in rows)  # win rates average 0.5 in each group
    else:  # one curve per principle; the score is their weighted mean
        for r in rows:
            assert r["detail_rubric_anything"] == pytest.approx(0.5)
            assert r["rm_score"] == pytest.approx((3 * r["detail_rubric_praise"] + 0.5) / 4)
        assert rows[-1]["detail_rubric_praise"] > rows[0]["detail_rubric_praise"]
    assert len((tmp_path / "g" / "requests.jsonl").read_text().splitlines()) == sent > 0
    assert json.loads((tmp_path / "g" / "usage.json").read_text())["judge"]["requests"] == sent


# -- the pieces, by hand -------------------------------------------------------------------------------------------

def test_each_iterations_dpo_gets_the_reference_and_labels_it_asks_for(tmp_path):
    from caikit.commands.online_dpo import OnlineDPOConfig, dpo_config
    from caikit.errors import UserError

    def made(**overrides):
        cfg = OnlineDPOConfig(policy="pi0", prompts="p.jsonl", out=str(tmp_path), **overrides)
        cfg.validate()
        return dpo_config(cfg, "pi1", tmp_path / "pairs.jsonl", tmp_path / "dpo")

    first = made()
    assert (first.model, first.ref_model, first.data, first.use_soft_labels, first.resume) == (
        "pi1", "pi0", [str(tmp_path / "pairs.jsonl")], False, False)
    assert made(reference="previous").ref_model == ""  # DPO's default: the model it starts from
    assert made(loss="simpo", beta=2.0).ref_model == ""  # no reference at all
    assert made(pairs_from="all").use_soft_labels is True  # every pair, weighted by its margin
    assert made(pairs_from="all", loss="ipo").use_soft_labels is False
    (tmp_path / "dpo" / "checkpoint").mkdir(parents=True)
    assert made().resume is True  # a killed DPO goes on from its checkpoint
    with pytest.raises(UserError, match="--reference initial | previous"):
        made(ref_model="other")
    with pytest.raises(UserError, match="--allow-weak-judge"):
        made(on_weak_judge="revision")


def test_length_growth_is_warned_in_warnings_jsonl(tmp_path):
    import types

    from caikit.commands.online_figures import Figures

    cfg = types.SimpleNamespace(iterations=3, max_length_growth=1.5)
    figures = Figures(cfg, tmp_path, make_judge=None)
    for i, words in enumerate((4.0, 5.0, 7.0)):
        figures.rows[i] = {"iteration": i, "mean_length_words": words, "length_growth": words / 4.0}
    figures.write()
    warnings = [json.loads(line) for line in (tmp_path / "warnings.jsonl").read_text().splitlines()]
    assert [(w["iteration"], w["kind"], w["value"]) for w in warnings] == [(2, "length_growth", 1.75)]
    assert "1.75x the initial policy's (limit 1.5x)" in warnings[0]["message"]
    assert [r["iteration"] for r in iterations(tmp_path)] == [0, 1, 2]
    # a rerun keeps the rows it finds, up to --iterations
    assert sorted(Figures(types.SimpleNamespace(iterations=1, max_length_growth=1.5), tmp_path, None).rows) == [0, 1]
