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
    max_steps: int = option(-1, low=-1, help="stop after this many optimizer steps (-1: run --epochs)")
    epochs: float = option(1.0, above=0, high=10_000, help="passes over the training data when --max-steps is -1")
    lr: float = option(5e-6, above=0, high=1, help="peak learning rate (AdamW); see --warmup-steps and --lr-schedule")
    lr_schedule: str = option("linear", help="after warm-up: linear (decay to 0 at the last step) | constant",
                              metadata={"choices": ["linear", "constant"]})
    warmup_steps: int = option(0, low=0, help="linear warm-up steps")
    weight_decay: float = option(0.0, low=0, high=1, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, low=0, help="gradient clipping norm (0 disables)")
    batch_size: int = option(4, low=1, high=65_536, help="sequences (or pairs) per device per micro-batch")
    grad_accum: int = option(1, low=1, high=65_536, help="micro-batches accumulated per optimizer step")
    max_length: int = option(512, low=8, high=1_000_000, help="max tokens per sequence (prompt + response); longer ones are truncated and counted")
    max_prompt_length: int = option(256, low=1, high=1_000_000, help="max prompt tokens kept (left-truncated) when a sequence is too long")
    eval_fraction: float = option(0.1, low=0, below=1, help="share of the data held out for evaluation")
    eval_every: int = option(0, low=0, help="evaluate every N steps (0: only at the end)")
    save_every: int = option(0, low=0, help="checkpoint every N steps for --resume (0: only at the end)")
    log_every: int = option(1, low=1, help="write a metrics row every N steps")
    lora: bool = option(False, help="train LoRA adapters (peft) instead of all weights")
    lora_r: int = option(16, low=1, high=4096, help="LoRA rank")
    lora_alpha: int = option(32, low=1, high=65_536, help="LoRA alpha")
    bf16: bool = option(False, help="bfloat16 mixed precision (GPU); fp32 otherwise")
    gradient_checkpointing: bool = option(False, help="trade compute for memory by recomputing activations")
    seed: int = option(0, low=0, high=2**32 - 1, help="random seed (data order, init, sampling)")
    group_by_length: bool = option(True, help="batch sequences of similar length (sorted inside shuffled mega-batches "
                                              "of --length-group-batches micro-batches), so batches carry less padding")
    length_group_batches: int = option(64, low=1, help="micro-batches per mega-batch that --group-by-length sorts "
                                                       "(larger: less padding, a less random order)")
    packing: bool | None = option(None, help="padding-free: each micro-batch runs as packed rows, position ids "
                                             "restarting per sequence and attention kept per sequence (default: on "
                                             "where a probe shows the model's attention keeps packed sequences "
                                             "apart, said on stderr)")
    attn_implementation: str = option("", help="attention kernel: sdpa | eager | flex_attention | flash_attention_2 "
                                               "(default: transformers' choice); packing runs each micro-batch as "
                                               "one row with flash-attention / FlexAttention, else padded-width rows")
    logprob_chunk: int = option(1024, low=0, help="tokens per chunk of the output layer and log-softmax, so the "
                                                  "full-vocabulary fp32 logits never exist at once (0: whole logits)")
    resume: bool = option(False, help="continue from the last checkpoint in --out")
    overwrite: bool = option(False, help="train again from the start into an --out that holds a trained model "
                                         "(its model, checkpoints and metrics are replaced)")
    report_to: str = option("none", help="also send each metrics.jsonl row (same names) to an experiment tracker; "
                                         "each is an optional extra: pip install 'caikit[tensorboard]' ...",
                            metadata={"choices": ["none", "tensorboard", "wandb", "mlflow", "trackio"]})

    def validate(self) -> None:
        if not self.out:
            raise UserError("--out is required")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("--batch-size and --grad-accum must be >= 1")
        if self.max_length < 8:
            raise UserError("--max-length must be >= 8")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError("--eval-fraction must be in [0, 1)")
        from caikit.trackers import check_tracker

        check_tracker(self.report_to)  # a missing tracker stops here, not after the model has loaded


@dataclass
class RLConfig(CommonTrainConfig):
    """Options of the on-policy trainers (PPO, GRPO / RLOO): prompts, reward, KL to the reference, monitors."""

    policy: str = option("", help="policy to train: `smollm2`, a local path (e.g. an SFT run dir) or an HF id "
                                  "(default: --model)")
    model: str = option("smollm2", help="alias of --policy, used when --policy is not given")
    reward_model: str = option("", help="reward model directory from `caikit train reward` (sigmoid score 0-1)")
    reward_fn: str = option("", help="reward as a Python function instead: MODULE:FUNCTION or FILE.py:FUNCTION, "
                                     "f(prompts: list[str], responses: list[str]) -> list[float] (or a dict of "
                                     "named parts, summed)")
    prompts: str = option("", help="prompt file: JSONL/JSON/CSV/parquet with `prompt` or `messages` (default: --data)")
    data: str = option("", help="alias of --prompts")
    batch_size: int = option(4, low=1, high=65_536, help="not used here: see --rollout-batch-size, --mini-batches and --grad-accum")
    kl_coef: float = option(0.05, low=0, help="β: weight of the per-token KL penalty to the reference (initial β when "
                                       "--kl-target is set)")
    kl_target: float = option(0.0, low=0, help="target KL (nats per response) for the adaptive β of Ziegler et al. 2019: "
                                        "β rises when KL is above it, falls when below (0: fixed β)")
    kl_horizon: int = option(10000, low=1, help="adaptive β horizon in rollouts: larger reacts more slowly")
    kl_estimator: str = option("k1", help="per-token KL estimator in the reward: k1 = log π − log π_ref, "
                                          "k3 = (r − 1) − log r (always >= 0)", metadata={"choices": ["k1", "k3"]})
    response_length: int = option(64, low=1, high=1_000_000, help="max new tokens per response")
    temperature: float = option(0.7, above=0, high=10, help="sampling temperature; log-probs are computed under the same T")
    missing_eos_penalty: float = option(0.0, low=-1000, high=1000, help="subtracted from the score of responses that never end with EOS "
                                                  "(e.g. 1.0 with a 0-1 RM)")
    check_rm: str = option("", help="second, held-out reward model dir: the independent check for reward hacking")
    check_judge: str = option("", help="judge as BACKEND:MODEL[@BASE_URL] (e.g. local:smollm2): independent check "
                                       "asking if each response is harmless and helpful")
    check_every: int = option(1, low=1, help="score the independent check every N steps")
    probe_prompts: str = option("", help="prompt file of fixed probe prompts (default: the first --probe-count prompts)")
    probe_count: int = option(4, low=0, help="probe prompts taken from --prompts when --probe-prompts is not given")
    sample_every: int = option(10, low=0, help="greedy answers to the probe prompts into samples.jsonl every N steps (0: off)")
    collapse_share: float = option(0.5, low=0, high=1, help="mode-collapse warning when more than this share of responses repeat")
    kl_max: float = option(20.0, above=0, help="warning when the KL to the reference exceeds this many nats per response")
    hack_window: int = option(10, low=2, high=100_000, help="steps over which RM score and check trends are compared")
    progress: bool = option(True, help="show a progress bar")
    depth_every: int = option(0, low=0, help="every N steps, the shift's dimensionality against the reference and "
                                             "the refusal rate with the policy's refusal direction ablated, into "
                                             "depth.jsonl (see `caikit depth`; 0: off)")
    engine: str = option("auto", help="what samples the rollouts: padded = transformers generate over length buckets "
                                      "(static KV cache + compiled decoding on CUDA) | continuous = transformers' "
                                      "continuous batching | vllm = vLLM in this process, weights pushed after each "
                                      "update (pip install 'caikit[vllm]') | auto = padded",
                         metadata={"choices": ["auto", "padded", "continuous", "vllm"]})
    generation_batch_size: int = option(0, low=0, help="rollouts decoded per batch (0: all of a step's at once)")
    vllm_memory: float = option(0.3, above=0, below=1, help="--engine vllm: share of the GPU's memory vLLM may take "
                                                            "for its weights and KV cache (the rest is training's)")

    def validate(self) -> None:
        self.policy = self.policy or self.model
        self.prompts = self.prompts or self.data
        CommonTrainConfig.validate(self)
        if not self.prompts:
            raise UserError("--prompts is required (a prompt file)")
        if self.temperature <= 0:
            raise UserError("--temperature must be > 0 (the trainer samples; log-probs use logits / T)")
        if self.response_length < 1:
            raise UserError("--response-length must be >= 1")
        if self.kl_target < 0 or self.kl_coef < 0:
            raise UserError("--kl-coef and --kl-target must be >= 0")
        if self.check_every < 1:
            raise UserError("--check-every must be >= 1")
        if self.reward_model and self.reward_fn:
            raise UserError("give --reward-model or --reward-fn, not both")
        if self.engine == "vllm":
            from caikit.generation import require_vllm

            require_vllm()
