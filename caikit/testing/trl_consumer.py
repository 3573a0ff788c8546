"""caikit's exports handed to TRL as a user would hand them, and what TRL then trains on.

Used by the consumer tests (tests/test_consumers_trl.py) and the llama.cpp test (tests/test_llamacpp_server.py).
TRL is imported lazily: caikit does not depend on it.

`sft_token_share(trainer, rows)` reads the `labels` TRL's SFTTrainer built while preparing its dataset (-100:
not trained) and compares them, row by row, with the tokens of the conversation's final assistant turn (the
revision and the chat template's end-of-turn marker), found independently of TRL: after the last assistant
header the tokenizer's chat template writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


def trainer_args(kind: str, out: str | Path, **overrides: Any):
    """A one-step, CPU, fp32, no-logging, no-saving config for TRL's `kind` trainer ("sft" | "dpo" | "reward").
    (TRL 1.16 turns on bf16 and gradient checkpointing by default: both only slow a tiny model on a CPU.)"""
    import trl

    config = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "reward": trl.RewardConfig}[kind]
    settings = dict(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-4,
                    report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0,
                    disable_tqdm=True, seed=0, bf16=False, gradient_checkpointing=False)
    return config(**{**settings, **overrides})


def conversation_of(row: dict[str, Any]) -> tuple[Messages, Messages]:
    """(the conversation before the final assistant turn, that turn) of an SFT export row, in either layout."""
    if "messages" in row:
        return row["messages"][:-1], row["messages"][-1:]
    return row["prompt"], row["completion"]


def assistant_header(tokenizer, prompt: Messages) -> list[int]:
    """The tokens the chat template writes to open an assistant turn (`<|im_start|>assistant\\n` for SmolLM2)."""
    plain = tokenizer.apply_chat_template(prompt, tokenize=False)
    opened = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert opened.startswith(plain), "the chat template rewrites the conversation when it opens a turn"
    return tokenizer(opened[len(plain):], add_special_tokens=False)["input_ids"]


def final_turn_span(input_ids: list[int], header: list[int]) -> range:
    """Positions after the last occurrence of `header` in `input_ids` (the final assistant turn)."""
    for start in range(len(input_ids) - len(header), -1, -1):
        if input_ids[start:start + len(header)] == header:
            return range(start + len(header), len(input_ids))
    raise ValueError("no assistant turn in the tokenised row")


@dataclasses.dataclass
class TokenShare:
    rows: int
    trained: int  # tokens TRL computes the loss on
    revision: int  # tokens of the final assistant turn (revision + end-of-turn)
    trained_revision: int  # trained tokens that are revision tokens
    exact_rows: int  # rows whose trained tokens are exactly their revision tokens

    @property
    def share(self) -> float:
        """Of the tokens TRL trains on, the share that are the revision's."""
        return self.trained_revision / self.trained if self.trained else 0.0

    @property
    def coverage(self) -> float:
        """Of the revision's tokens, the share TRL trains on."""
        return self.trained_revision / self.revision if self.revision else 0.0


def sft_token_share(trainer, rows: list[dict[str, Any]]) -> TokenShare:
    """What an SFTTrainer built on `rows` (the export, in its order) trains on; see the module docstring."""
    tokenizer = trainer.processing_class
    prepared = trainer.train_dataset
    total = TokenShare(len(rows), 0, 0, 0, 0)
    for row, input_ids, labels in zip(rows, prepared["input_ids"], prepared["labels"], strict=True):
        prompt, _ = conversation_of(row)
        span = set(final_turn_span(input_ids, assistant_header(tokenizer, prompt)))
        trained = {i for i, label in enumerate(labels) if label != -100}
        total.trained += len(trained)
        total.revision += len(span)
        total.trained_revision += len(trained & span)
        total.exact_rows += trained == span
    return total


def sft_trainer(model_dir: str, dataset, out: str | Path, **overrides: Any):
    """TRL's SFTTrainer on `dataset` exactly as exported (TRL's defaults for how it is trained)."""
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    return trl.SFTTrainer(model=model, args=trainer_args("sft", out, max_length=1024, **overrides),
                          train_dataset=dataset, processing_class=tokenizer)
