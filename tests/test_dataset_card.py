"""Dataset cards of real runs (generate, judge of revisions, judge of samples) against the loopback server:
endpoint and model, prompt source and licence, constitution, caikit version, counts, judge quality and the
quality gate, soft-label advice, and only the rows that apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import caikit
from caikit.cli import main
from scripted_runs import endpoint_args, generate_and_judge, scripted_server

pytestmark = pytest.mark.loopback


def card_of(run: Path, out: Path, name: str, *args: str) -> str:
    assert main(["export", str(run), "--format", "jsonl", "--out", str(out), *args]) == 0
    return (out / name / "README.md").read_text()


def header(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three real runs through one scripted server: bundled prompts (generate + judge), a user's prompts with
    a truncated and a degenerate revision (generate), and judged policy samples of the user's prompts."""
    root = tmp_path_factory.mktemp("card-runs")
    user_prompts = root / "prompts.jsonl"
    user_prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "How do I get into my neighbour's wifi?", "Tell me how to TRUNCATE a long story.",
        "UNCHANGED: how do I pick a lock?", "How can I scare my little brother?")))
    with pytest.MonkeyPatch.context() as mp, scripted_server() as server:
        mp.setenv("OPENAI_API_KEY", "sk-test-card")
        gen, judge = generate_and_judge(root / "bundled", server, "--limit", "3")
        user_gen = root / "user-gen"
        assert main(["generate", *endpoint_args(server), "--prompts", str(user_prompts), "--out", str(user_gen),
                     "--max-tokens", "120"]) == 0
        samples = root / "samples"
        assert main(["judge", *endpoint_args(server), "--pairs", "samples", "--prompts", str(user_prompts),
                     "--limit", "2", "--n", "3", "--policy-backend", "openai", "--policy-model", "fake-model",
                     "--policy-base-url", server.openai_base_url, "--out", str(samples)]) == 0
    return {"gen": gen, "judge": judge, "user_gen": user_gen, "samples": samples, "root": root}


def test_sft_card_of_a_generate_run_on_a_self_hosted_server(runs, tmp_path):
    gen = runs["gen"]
    card = card_of(gen, tmp_path / "export", "sft")
    front = header(card)
    assert front["license"] == "mit" and front["task_categories"] == ["text-generation"]
    assert front["size_categories"] == ["n<1K"] and front["language"] == ["en"]
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "train.jsonl"}]}]
    identity = json.loads((gen / "run.json").read_text())["identity"]
    probe = json.loads((gen / "probe.json").read_text())
    for fact in ("| endpoint | self-hosted OpenAI-compatible server |", "| model | `openai:fake-model` |",
                 f"log-probs yes (top {probe['top_logprobs']})", "honours `n` yes",
                 f"requests served at once {probe['slots']} ({probe['slots_from']})",
                 f"| constitution | anthropic-cai (sha256 `{identity['constitution_hash']}`) |",
                 "| critique -> revision rounds | 1 |", "temperature 0.7, at most 256 new tokens per answer, seed 0",
                 f"by caikit {caikit.__version__}", "| prompts | 3 |", "| failed after retries (failures.jsonl) | 0 |",
                 "| revisions cut at --max-tokens (truncated) | 0, left out |", "| rows in this dataset | 3 |",
                 "red-team sample", "MIT License, Copyright (c) 2022 Anthropic", "hh-rlhf",
                 "Layout: conversational prompt-completion", "`completion_only_loss` is on"):
        assert fact in card, fact
    assert "judge" not in card.lower() and "p_chosen" not in card  # no row that does not apply
    assert "127.0.0.1" not in card  # where the server ran is nobody's business

    # the header's configs are what the Hub (and load_dataset on the directory) read
    from datasets import load_dataset

    loaded = load_dataset(str(tmp_path / "export" / "sft"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert loaded.to_list() == rows(tmp_path / "export" / "sft" / "train.jsonl")


def test_sft_card_counts_what_was_left_out_and_a_users_prompts(runs, tmp_path):
    card = card_of(runs["user_gen"], tmp_path / "export", "sft")
    stats = json.loads((runs["user_gen"] / "stats.json").read_text())
    assert stats["truncated"] == 1 and stats["degenerate"] == 1 and stats["sft_examples"] == 2  # the script worked
    assert header(card)["license"] == "unknown" and "language" not in header(card)
    for fact in ("| prompts | 4 |", "| revisions cut at --max-tokens (truncated) | 1, left out |",
                 "| degenerate revisions (unchanged, the critique again, empty) | 1, left out (unchanged: 1) |",
                 "| rows in this dataset | 2 |", "(`prompts.jsonl`): a file given by the user",
                 "user-provided, licence unknown", "at most 120 new tokens"):
        assert fact in card, fact

    card = card_of(runs["user_gen"], tmp_path / "messages", "sft", "--sft-layout", "messages")
    assert "Layout: conversational language modelling (`--sft-layout messages`)" in card
    assert "trains on **every token**" in card
    exported = rows(tmp_path / "messages" / "sft" / "train.jsonl")
    assert list(exported[0]) == ["messages"] and exported[0]["messages"][-1]["role"] == "assistant"


def test_preference_card_of_a_revision_judge(runs, tmp_path):
    card = card_of(runs["judge"], tmp_path / "export", "preferences")
    exported = rows(tmp_path / "export" / "preferences" / "train.jsonl")
    assert list(exported[0]) == ["prompt", "chosen", "rejected", "p_chosen", "source"]
    epsilon = sum(1 - r["p_chosen"] for r in exported) / len(exported)
    assert epsilon == pytest.approx(0.2)  # the scripted judge: 0.8 on the revision in both orders
    assert header(card)["license"] == "mit"  # the prompts of the generate run it judged
    gen_identity = json.loads((runs["gen"] / "run.json").read_text())["identity"]
    for fact in (f"**epsilon = mean(1 - p_chosen) = {epsilon:.3f}**",
                 f'`DPOConfig(loss_type="robust", label_smoothing={epsilon:.3f})`',
                 "`caikit train dpo --loss cdpo --use-soft-labels`", "No column is named `margin`",
                 "| judge endpoint | self-hosted OpenAI-compatible server |", "| judge model | `openai:fake-model` |",
                 "| judge server | probed ", "| judge method | logprob", "| order swap (position-bias control) | yes |",
                 "| responses | final revision vs initial answer of `gen` (`caikit generate`) |",
                 "| responses endpoint | self-hosted OpenAI-compatible server |",
                 f"sha256 `{gen_identity['constitution_hash']}`",
                 "| position consistency (same verdict in both orders) | 100.0 % of 3 pairs |",
                 "| revision preferred over the initial answer | 100.0 % |",
                 "| quality gate | **passed** (min position consistency 0.6) |",  # on by default: --calibrate 32
                 "| calibration pairs judged by the gate | 3 |", "mean confidence \\|p - 0.5\\| was 0.30",
                 "| agreement with human labels | not measured |",
                 "| pairs to judge | 3 |", "| judged | 3 |", "| prompts that failed in the generate run | 0 |",
                 "| traces whose revision equals the initial answer (not judged) | 0 |",
                 "| rows in this dataset | 3 |", "MIT License, Copyright (c) 2022 Anthropic"):
        assert fact in card, fact


def test_preference_card_of_judged_samples_names_the_policy(runs, tmp_path):
    card = card_of(runs["samples"], tmp_path / "export", "preferences")
    assert header(card)["license"] == "unknown"
    for fact in ("3 samples per prompt from a policy, the best against the worst", "| policy endpoint | self-hosted OpenAI-compatible server (not probed) |",
                 "| policy model | `openai:fake-model` |", "| samples per prompt | 3 |",
                 "prompts with fewer than 2 distinct samples (not judged) | 0 |", "user-provided, licence unknown",
                 "| pairs to judge | 6 |"):
        assert fact in card, fact
    assert "revision preferred" not in card and "| responses |" not in card


GATE = {"status": "passed", "calibrated_pairs": 200, "position_consistency": 0.82, "mean_abs_margin": 0.21,
        "unparseable_rate": 0.01, "judge_longer_rate": 0.58,
        "human": {"n": 200, "accuracy": 0.7125, "interval": [0.646, 0.773], "kappa": 0.42, "human_longer_rate": 0.55,
                  "length_baseline": 0.56},
        "thresholds": {"min_consistency": 0.6}, "allow_weak_judge": False,
        "verdict": "The judge agreed with human labels on 71 % of 200 pairs, above the length-only baseline."}


@pytest.mark.parametrize("status", ["passed", "allowed-weak"])
def test_preference_card_quotes_the_quality_gate(runs, tmp_path, status):
    run = tmp_path / "judge"
    shutil.copytree(runs["judge"], run)
    (run / "gate.json").write_text(json.dumps({**GATE, "status": status, "allow_weak_judge": status != "passed"}))
    card = card_of(run, tmp_path / "export", "preferences")
    for fact in (f"| quality gate | **{status}** (min position consistency 0.6) |",
                 f"| quality gate verdict | {GATE['verdict']} |", "| calibration pairs judged by the gate | 200 |",
                 "| position consistency on them | 82.0 % |", "| unparseable judge answers on them | 1.0 % |",
                 "| agreement with human labels (gate) | 71.2 % on 200 pairs (interval 64.6 % to 77.3 %), kappa 0.42 |",
                 "| length-only baseline (the shorter answer wins, ties count half) | 56.0 % |",
                 "| longer answer preferred: judge / humans | 58.0 % / 55.0 % |"):
        assert fact in card, fact
    assert "| agreement with human labels | not measured |" not in card
    assert ("did not pass its quality gate" in card) == (status == "allowed-weak")


def test_a_cloud_api_run_is_called_one(runs, tmp_path):
    run = tmp_path / "gen"
    shutil.copytree(runs["gen"], run)
    (run / "probe.json").unlink()
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "base_url": ""}))
    card = card_of(run, tmp_path / "export", "sft")
    assert "| endpoint | cloud API (OpenAI) |" in card and "| server |" not in card and "probed" not in card
    assert "tokens, price unknown |" in card  # fake-model has no price: no "$0" that looks like a real figure
