"""Options shared by every trainer. Each trainer module declares its own dataclass on top of this one."""

from __future__ import annotations

from dataclasses import dataclass

from caikit.config import option
from caikit.errors import UserError


@dataclass
class CommonTrainConfig:
    model: str = option("smollm2", help="policy / backbone: `smollm2` (embedded), a local path or an HF id")
    data: list[str] = option([], help="training data, repeat to mix sources (`--data a/ --data labels.jsonl`; counts "
                                      "per source go to stderr and OUT/data.json): a caikit run or export dir, "
                                      ".jsonl / .json / .csv (also .gz), .parquet, or a `datasets` save_to_disk dir")
    split: str = option("", help="split to read from a `datasets` DatasetDict dir, or the export file of that name "
                                 "(default: train)")
    out: str = option("", help="output directory (checkpoints, metrics.jsonl, plots/, config.yaml)")
    max_steps: int = option(-1, help="stop after this many optimizer steps (-1: run --epochs)")
    epochs: float = option(1.0, help="passes over the training data when --max-steps is -1")
    lr: float = option(5e-6, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")
    lr_schedule: str = option("linear", help="after warm-up: linear (decay to 0 at the last step) | constant",
                              metadata={"choices": ["linear", "constant"]})
    warmup_steps: int = option(0, help="linear warm-up steps")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="gradient clipping norm (0 disables)")
    batch_size: int = option(4, help="sequences (or pairs) per device per micro-batch")
    grad_accum: int = option(1, help="micro-batches accumulated per optimizer step")
    max_length: int = option(512, help="max tokens per sequence (prompt + response); longer ones are truncated and counted")
    max_prompt_length: int = option(256, help="max prompt tokens kept (left-truncated) when a sequence is too long")
    eval_fraction: float = option(0.1, help="share of the data held out for evaluation")
    eval_every: int = option(0, help="evaluate every N steps (0: only at the end)")
    save_every: int = option(0, help="checkpoint every N steps for --resume (0: only at the end)")
    log_every: int = option(1, help="write a metrics row every N steps")
    lora: bool = option(False, help="train LoRA adapters (peft) instead of all weights")
    lora_r: int = option(16, help="LoRA rank")
    lora_alpha: int = option(32, help="LoRA alpha")
    bf16: bool = option(False, help="bfloat16 mixed precision (GPU); fp32 otherwise")
    gradient_checkpointing: bool = option(False, help="trade compute for memory by recomputing activations")
    seed: int = option(0, help="random seed (data order, init, sampling)")
    resume: bool = option(False, help="continue from the last checkpoint in --out")

    def validate(self) -> None:
        if not self.out:
            raise UserError("--out is required")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--batch-size and --grad-accum must be >= 1")
        if self.max_length < 8:
            raise UserError("--max-length must be >= 8")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError("--eval-fraction must be in [0, 1)")
