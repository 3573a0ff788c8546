"""caikit's exports handed unchanged to TRL's SFTTrainer, DPOTrainer and RewardTrainer (one step each on a tiny
model), and what TRL then trains on: for the SFT export, exactly the revision's tokens, on prompts that are
multi-turn hh-rlhf conversations (where the older `messages` layout trained mostly on the conversation)."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from caikit.cli import main
from scripted_runs import generate_and_judge, scripted_server

pytestmark = pytest.mark.consumer
trl = pytest.importorskip("trl", reason="TRL is a test-only dependency (pip install -e '.[test]')")
from datasets import load_dataset  # noqa: E402

from caikit.testing.trl_consumer import conversation_of, sft_token_share, sft_trainer, trainer_args  # noqa: E402

HH_PROMPTS = 6


@pytest.fixture(scope="module")
def exports(shared_data, tmp_path_factory):
    """generate + judge over multi-turn hh-rlhf prompts (loopback server), exported in both SFT layouts."""
    root = tmp_path_factory.mktemp("trl-consumer")
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    multi_turn = [r for r in rows if r["chosen"].count("\n\nHuman:") >= 3 and len(r["chosen"]) < 1500]
    prompts = root / "hh.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in multi_turn[:HH_PROMPTS]))
    with pytest.MonkeyPatch.context() as mp, scripted_server() as server:
        mp.setenv("OPENAI_API_KEY", "sk-test-trl")
        _, judge = generate_and_judge(root, server, "--prompts", str(prompts))
    out = {}
    for layout in ("prompt-completion", "messages"):
        assert main(["export", str(root / "gen"), "--format", "jsonl", "--sft-layout", layout,
                     "--out", str(root / layout)]) == 0
        out[layout] = load_dataset("json", data_files=str(root / layout / "sft" / "train.jsonl"), split="train",
                                   cache_dir=str(root / "hf-cache"))
    assert main(["export", str(judge), "--format", "jsonl", "--out", str(root / "judge-export")]) == 0
    out["preferences"] = load_dataset("json", data_files=str(root / "judge-export" / "preferences" / "train.jsonl"),
                                      split="train", cache_dir=str(root / "hf-cache"))
    assert len(out["prompt-completion"]) == len(out["preferences"]) == HH_PROMPTS
    assert all(sum(m["role"] == "user" for m in r["prompt"]) >= 3 for r in out["prompt-completion"])
    return out


def test_sft_export_trains_exactly_the_revision_in_trl(exports, tiny_model_dir, tmp_path):
    rows = exports["prompt-completion"].to_list()
    trainer = sft_trainer(tiny_model_dir, exports["prompt-completion"], tmp_path / "sft")
    share = sft_token_share(trainer, rows)
    print(f"\nprompt-completion export: {share.share:.1%} of the {share.trained} tokens TRL trains on are revision "
          f"tokens ({share.coverage:.1%} of the revision tokens trained)")
    assert share.exact_rows == share.rows == HH_PROMPTS and share.share == share.coverage == 1.0
    tokenizer = trainer.processing_class
    for row, ids, labels in zip(rows, trainer.train_dataset["input_ids"], trainer.train_dataset["labels"]):
        prompt, (turn,) = conversation_of(row)
        full = tokenizer.apply_chat_template(prompt + [turn], tokenize=False)
        end_of_turn = full[full.rindex(turn["content"]) + len(turn["content"]):]  # "<|im_end|>\n" for SmolLM2
        assert tokenizer.decode([t for t, label in zip(ids, labels) if label != -100]) == turn["content"] + end_of_turn

    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[-1]["train_loss"])

    # the older layout, as TRL reads it by default: every token of the conversation is trained on
    legacy = sft_token_share(sft_trainer(tiny_model_dir, exports["messages"], tmp_path / "sft-messages"),
                             exports["messages"].to_list())
    print(f"messages export: {legacy.share:.1%} of the {legacy.trained} tokens TRL trains on are revision tokens")
    assert legacy.coverage == 1.0 and legacy.share < 0.6


def test_preference_export_trains_in_trl_dpo_one_step(exports, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             args=trainer_args("dpo", tmp_path, max_length=1024),
                             train_dataset=exports["preferences"], processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_label_smoothing_advice_of_the_card_holds_in_trl(exports, tiny_model_dir, tmp_path):
    """The card says: in TRL, one epsilon for the set goes to loss_type="robust"; "sigmoid" ignores it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             args=trainer_args("dpo", tmp_path, max_length=1024),
                             train_dataset=exports["preferences"],
                             processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    assert hasattr(trainer, "label_smoothing") and hasattr(trainer, "loss_types"), \
        "TRL's DPOTrainer changed: recheck the label_smoothing advice in caikit.commands.dataset_card"

    def loss(loss_type: str, epsilon: float) -> float:
        trainer.loss_types, trainer.label_smoothing = [loss_type], epsilon
        return float(trainer.compute_loss(trainer.model, batch))

    import torch

    with torch.no_grad():
        torch.manual_seed(0)
        for weight in trainer.model.parameters():  # a policy that differs from its reference: the losses differ too
            weight.add_(0.05 * torch.randn_like(weight))
        plain, smoothed, robust = loss("sigmoid", 0.0), loss("sigmoid", 0.2), loss("robust", 0.2)
    assert plain != math.log(2) and smoothed == plain and robust != plain


def test_preference_export_trains_in_trl_reward_and_carries_no_column_it_reads_otherwise(exports, tiny_model_dir,
                                                                                         tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def reward_trainer(dataset, out):
        return trl.RewardTrainer(model=tiny_model_dir, args=trainer_args("reward", out, max_length=1024),
                                 train_dataset=dataset, processing_class=tokenizer)

    trainer = reward_trainer(exports["preferences"], tmp_path / "rm")
    trainer._set_signature_columns_if_needed()
    extra = set(exports["preferences"].column_names) - {"prompt", "chosen", "rejected"}
    assert extra == {"p_chosen", "source"} and not extra & set(trainer._signature_columns)
    assert "margin" not in next(iter(trainer.get_train_dataloader()))
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[-1]["train_loss"])

    # the check can fail: the column the old export carried reaches RewardTrainer's loss
    with_margin = exports["preferences"].add_column("margin", [0.3] * len(exports["preferences"]))
    assert "margin" in next(iter(reward_trainer(with_margin, tmp_path / "rm-margin").get_train_dataloader()))
