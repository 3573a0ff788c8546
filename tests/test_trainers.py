"""SFT / reward / DPO trainers on a tiny random Llama (real SmolLM2 tokenizer), on CPU.

The data are synthetic with a learnable rule: the preferred response contains the word "banana".
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORDS = "the a cat dog runs blue green river stone light quick slow tree house music cloud paper window".split()


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def response(marker: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        if marker:
            words.insert(rng.randint(0, len(words)), "banana")
        return " ".join(words)

    return [{"prompt": [{"role": "user", "content": f"Question {i}: tell me about the {rng.choice(WORDS)}."}],
             "chosen": [{"role": "assistant", "content": response(True)}],
             "rejected": [{"role": "assistant", "content": response(False)}]} for i in range(n)]


def sft_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Greet person number {i}."},
                          {"role": "assistant", "content": "Hello there, it is lovely to meet you."}]} for i in range(n)]


def metrics(out: str) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train-data")
    write_jsonl(d / "preferences.jsonl", preference_rows(64))
    write_jsonl(d / "dpo.jsonl", preference_rows(32, seed=1))
    write_jsonl(d / "sft.jsonl", sft_rows(16))
    return d


def test_data_layouts_and_tokenisation(tiny_model_dir, tmp_path):
    import datasets

    from caikit.models import load_tokenizer
    from caikit.train.data import load_rows, preference_triples, sft_pairs, tokenize_preferences, tokenize_sft
    from caikit.train.batches import collate_preferences

    # p_chosen is the label; ratings such as score_chosen are not probabilities and are not read as one
    standard = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "p_chosen": 0.8, "score_chosen": 9.0,
                 "score_rejected": 2.0}]
    write_jsonl(tmp_path / "preferences.jsonl", standard)
    datasets.Dataset.from_list(standard).to_parquet(str(tmp_path / "pairs.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(standard)}).save_to_disk(str(tmp_path / "ds"))
    for source in (tmp_path, tmp_path / "pairs.parquet", tmp_path / "ds"):  # run dir, parquet, save_to_disk
        assert load_rows(source, "preference") == standard
    # hh-rlhf style: whole conversations, no prompt column -> split at the first differing turn
    user = {"role": "user", "content": "Say hi."}
    implicit = preference_triples([{"chosen": [user, {"role": "assistant", "content": "Hi!"}],
                                    "rejected": [user, {"role": "assistant", "content": "No."}]}], "x")
    assert implicit[0]["prompt"] == [user] and implicit[0]["chosen"][0]["content"] == "Hi!"
    assert implicit[0]["p_chosen"] is None

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    triples = preference_triples(standard, "x")
    assert triples[0]["p_chosen"] == pytest.approx(0.8)
    # ratings are not probabilities: without p_chosen the pair has a hard label
    ratings_only = [{k: v for k, v in standard[0].items() if k != "p_chosen"}]
    assert preference_triples(ratings_only, "x")[0]["p_chosen"] is None
    (example,), count = tokenize_preferences(tokenizer, triples, 512, 256)
    ids, mask = example["chosen_input_ids"], example["chosen_labels_mask"]
    prompt_len = mask.index(1)
    prompt_text = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[:prompt_len]) == prompt_text  # chat template with the generation cue, masked
    assert tokenizer.decode(ids[prompt_len:]) == "Hi!<|im_end|>" and ids[-1] == tokenizer.eos_token_id
    batch = collate_preferences([example, example], tokenizer.pad_token_id)
    assert batch["chosen_input_ids"].shape == (2, len(ids)) and batch["p_chosen"].tolist() == pytest.approx([0.8] * 2)

    # truncation: the prompt keeps its end, the response its start, and the count is reported
    long_rows = [{"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok " * 50}]},
                 {"messages": [user, {"role": "assistant", "content": "Hi!"}]}]
    examples, count = tokenize_sft(tokenizer, sft_pairs(long_rows, "x"), 64, 32)
    assert max(len(e["input_ids"]) for e in examples) <= 64 and sum(examples[0]["labels_mask"]) == 32
    assert count.message(64) == "1 of 2 sequences longer than --max-length 64 truncated"


def test_help_and_score_command_options(capsys):
    from caikit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "dpo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--beta", "--loss-type", "--lora", "--gradient-checkpointing", "--resume", "--max-length", "--bf16"):
        assert flag in text
    assert "implicit KL penalty" in text  # the field's help string, not just the flag
    assert main(["score", "--model", "/nonexistent/rm", "--prompt", "p", "--response", "r"]) == 2


def test_reward_model_learns_marker_preference(tiny_model_dir, data_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from caikit.train.reward import RewardConfig, load_reward_model, score, train

    out = train(RewardConfig(model=tiny_model_dir, data=str(data_dir / "preferences.jsonl"), out=str(tmp_path / "rm"),
                             max_steps=14, lr=3e-3, batch_size=8, eval_fraction=0.25, seed=0))
    final = metrics(out)[-1]
    assert final["eval_accuracy"] > 0.9, final
    assert {"accuracy.png", "loss.png"} <= {p.name for p in (Path(out) / "plots").glob("*.png")}

    # the saved directory is a plain transformers model with a scalar head, and scores land in 0-1
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1
    reward_model = load_reward_model(out, "cpu")
    prompt = [{"role": "user", "content": "Question 999: tell me about the river."}]
    good, bad = score(reward_model, [(prompt, "the quick banana runs home"), (prompt, "the quick dog runs home")])
    assert 0.0 < bad < good < 1.0

    from caikit.train.reward import ScoreConfig, score_command

    score_command(ScoreConfig(model=out, prompt="Question 5: tell me", response=["banana split", "dog walk"]))
    printed = [float(x) for x in capsys.readouterr().out.split()]
    assert len(printed) == 2 and printed[0] > printed[1]


def test_dpo_raises_chosen_margin_and_caches_reference(tiny_model_dir, data_dir, tmp_path, capsys):
    from caikit.train.dpo import DPOConfig, train
    from caikit.train.reference import REF_CACHE

    cfg = DPOConfig(model=tiny_model_dir, data=str(data_dir / "dpo.jsonl"), out=str(tmp_path / "dpo"),
                    max_steps=5, lr=1e-3, batch_size=8, eval_fraction=0.25, beta=0.1, max_length=48, seed=0)
    out = train(cfg)
    rows = metrics(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    final = rows[-1]
    assert final["eval_reward_margin"] > 0.02 and final["eval_loss"] < math.log(2), final
    assert {"reward_accuracy", "chosen_logps", "rejected_logps", "reward_margin"} <= rows[-2].keys()
    assert "sequences longer than --max-length 48 truncated" in capsys.readouterr().err
    cache = Path(out) / REF_CACHE
    assert cache.exists()

    # a rerun on the same data reuses the cached reference log-probs
    stamp = cache.stat().st_mtime_ns
    cfg.max_steps = 1
    train(cfg)
    assert cache.stat().st_mtime_ns == stamp
    assert "reference log-probs" not in capsys.readouterr().err


def test_sft_lowers_loss_and_round_trips(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from caikit.train.sft import SFTConfig, train

    out = train(SFTConfig(model=tiny_model_dir, data=str(data_dir / "sft.jsonl"), out=str(tmp_path / "sft"),
                          max_steps=8, lr=2e-3, batch_size=4, eval_fraction=0.25, seed=0))
    rows = [r for r in metrics(out) if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert (Path(out) / "config.yaml").read_text().count("max_steps: 8") == 1

    loaded = AutoModelForCausalLM.from_pretrained(out)
    trained = load_file(str(Path(out) / "checkpoint" / "model.safetensors"))
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.state_dict()[name], trained[name])
    assert not torch.equal(loaded.state_dict()[name], initial[name])
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"


def test_resume_continues_exactly_where_it_stopped(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    from caikit.train.sft import SFTConfig, train

    def cfg(out, steps, resume=False):
        return SFTConfig(model=tiny_model_dir, data=str(data_dir / "sft.jsonl"), out=str(out), max_steps=steps,
                         lr=2e-3, lr_schedule="constant", batch_size=4, grad_accum=2, eval_fraction=0.25,
                         resume=resume, seed=0)

    straight = train(cfg(tmp_path / "straight", 4))
    interrupted = train(cfg(tmp_path / "resumed", 2))
    resumed = train(cfg(tmp_path / "resumed", 4, resume=True))
    assert interrupted == resumed
    state = json.loads((Path(resumed) / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4
    steps = [r["step"] for r in metrics(resumed) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    # same data order, optimizer moments and RNG after the restart: the same weights as one straight run
    a = load_file(str(Path(straight) / "model.safetensors"))
    b = load_file(str(Path(resumed) / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_sft_saves_merged_weights(tiny_model_dir, data_dir, tmp_path):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from caikit.train.sft import SFTConfig, train

    out = train(SFTConfig(model=tiny_model_dir, data=str(data_dir / "sft.jsonl"), out=str(tmp_path / "lora"),
                          max_steps=2, lr=5e-3, batch_size=4, lora=True, lora_r=4, gradient_checkpointing=True))
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert not any("lora" in k for k in merged)
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(merged[name], initial[name])  # adapters merged into the base weights


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caikit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["empty", "missing_column"])
def test_bad_data_is_one_line_error(tiny_model_dir, tmp_path, case):
    path = tmp_path / "pairs.jsonl"
    if case == "empty":
        path.write_text("")
    else:
        write_jsonl(path, [{"prompt": "hi", "chosen": "hello"}])
    proc = run_cli("train", "dpo", "--model", tiny_model_dir, "--data", str(path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in lines[0]
    assert ("empty" in lines[0]) if case == "empty" else ("'rejected'" in lines[0])


@pytest.mark.slow
def test_sft_cli_on_real_smollm2(smollm2_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(6))
    out = tmp_path / "smol"
    proc = run_cli("train", "sft", "--model", smollm2_dir, "--data", data, "--out", str(out), "--max-steps", "2",
                   "--batch-size", "2", "--max-length", "64", "--lr", "1e-4", "--eval-fraction", "0", "--lora")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = metrics(str(out))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] < 10 for r in rows)  # a trained model, not random: low loss
    assert (out / "model.safetensors").exists() and (out / "config.yaml").exists()
