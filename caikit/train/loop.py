"""Set-up shared by the trainers: accelerate, optimizer and schedule, LoRA, batching, resume, final save.

The training loops themselves stay in sft.py / reward.py / dpo.py / kto.py (and ppo.py / grpo.py, whose
shared run plumbing is in rl.py), flat and top to bottom; this module only holds the pieces they would
otherwise repeat.

Multi-GPU: run the same command under `accelerate launch --config_file configs/accelerate/<x>.yaml -m
caikit.cli train ...`; each process takes its share of every global batch (`micro_batches`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from caikit.errors import UserError

if TYPE_CHECKING:
    from caikit.train.data import DataSummary

PEFT_HINT = "--lora needs peft: pip install 'caikit[lora]' (or pip install peft)"


def note(command: str, message: str) -> None:
    """One informational line on stderr (stdout stays for results); said once, by the first of several processes."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"caikit {command}: {message}", file=sys.stderr, flush=True)


def tokenized_split(command: str, cfg, items: list, tokenize, tokenizer, what: str) -> tuple[list[dict], list[dict]]:
    """(train, eval) examples: `items` split into held-out rows (cfg.eval_fraction, cfg.seed), each side
    tokenized by `tokenize(tokenizer, items, max_length, max_prompt_length)`; a note when truncation cut
    or dropped any, and a UserError naming cfg.data when no training `what` are left."""
    from caikit.train.data import split_rows

    train_items, eval_items = split_rows(items, cfg.eval_fraction, cfg.seed)
    train_examples, train_count = tokenize(tokenizer, train_items, cfg.max_length, cfg.max_prompt_length)
    eval_examples, eval_count = tokenize(tokenizer, eval_items, cfg.max_length, cfg.max_prompt_length)
    truncated = (train_count + eval_count).message(cfg.max_length)
    if truncated:
        note(command, truncated)
    if not train_examples:
        from caikit.train.data import data_sources

        raise UserError(f"no training {what} left after the held-out split and truncation",
                        path=", ".join(data_sources(cfg)))
    return train_examples, eval_examples


def read_training_data(command: str, cfg, what: str) -> tuple[list, "DataSummary"]:
    """Every --data source through caikit.rows (what: "pairs" | "examples"), one stderr line per source."""
    from caikit.train.data import training_data

    items, summary = training_data(cfg, what)
    for line in summary.lines():
        note(command, line)
    return items, summary


def record_data(cfg, summary, metrics, step: int) -> None:
    """The per-source counts into OUT/data.json and, for a fresh run, metrics.jsonl's first row (key "data")."""
    summary.write(cfg.out)
    if step == 0:
        metrics.first_row = {"data": summary.to_dict()}


def guard_output(cfg, command: str):
    """Before a `caikit train` command: refuse an --out that is a file, or that holds a finished model or
    checkpoints unless --resume or --overwrite says what to do with them; then lock it (the main process of a
    multi-process launch only), so a second trainer cannot write into it at the same time. Returns the lock."""
    import os

    from caikit.rundir import RunDir, lock_directory
    from caikit.store import read_json

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory: choose another --out", path=str(out))
    stage = (read_json(out / RunDir.RUN) or {}) if out.is_dir() else {}
    if stage:  # a generate / judge / eval directory: its config.yaml and records are not a trainer's to replace
        what = stage.get("stage", "caikit") if isinstance(stage, dict) else "caikit"
        raise UserError(f"holds a caikit '{what}' run (run.json); a trainer would overwrite its config.yaml: "
                        "choose another --out", path=str(out))
    finished = out.is_dir() and ((out / "config.json").exists() or (out / "checkpoint").exists())
    if finished and not (cfg.resume or getattr(cfg, "overwrite", False)):
        raise UserError("holds a trained model or checkpoints: pass --resume to continue from its checkpoint, or "
                        "--overwrite to train again from the start (replacing the model and its metrics)",
                        path=str(out))
    if os.environ.get("RANK", "0") != "0":
        return None
    return lock_directory(out, command)


def make_accelerator(cfg):
    """Accelerator with bf16 autocast when asked (GPU), fp32 otherwise; seeds every RNG. Under `accelerate
    launch` with no GPU the processes train together over gloo (configs/accelerate/cpu_gloo.yaml)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.bf16 and not torch.cuda.is_available():
        raise UserError("--bf16 needs a GPU with bfloat16 support; drop it on CPU")
    # launched as several processes on a machine with no accelerator: gloo over CPUs, rather than N lone copies
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_accelerator = getattr(torch, "accelerator", None) and torch.accelerator.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", gradient_accumulation_steps=cfg.grad_accum,
                              cpu=distributed and not (has_accelerator or torch.cuda.is_available()))
    set_seed(cfg.seed)
    return accelerator


def load_train_tokenizer(model_name: str):
    """Right-padding tokenizer (training batches), pad token distinct from EOS where possible."""
    from caikit.models import load_tokenizer

    try:
        return load_tokenizer(model_name, padding_side="right")
    except OSError as e:
        raise UserError(f"cannot load tokenizer for '{model_name}': {str(e).splitlines()[0]}") from None


def load_pretrained(auto_class, model_name: str, **kwargs):
    """`auto_class.from_pretrained` on the resolved path, with a one-line error for bad names.

    Keyword arguments that are None are left out (transformers' own defaults apply).
    """
    from caikit.models import from_pretrained

    return from_pretrained(auto_class, model_name, **{k: v for k, v in kwargs.items() if v is not None})


def prepare_model(model, cfg, task_type: str = "CAUSAL_LM"):
    """Gradient checkpointing and LoRA adapters, as configured. task_type: CAUSAL_LM | SEQ_CLS."""
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise UserError(PEFT_HINT) from None
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, task_type=task_type,
                          target_modules="all-linear")
        model = get_peft_model(model, lora)
    return model


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW over trainable weights; no weight decay on biases and norms (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.999), fused=fused or None)


def lr_multiplier(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant or linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def last_used_lr(scheduler) -> float:
    """The learning rate of the optimizer step just taken (the scheduler has already moved on to the next):
    what a metrics row logs beside that step's loss."""
    if scheduler.last_epoch < 1:
        return scheduler.get_last_lr()[0]
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)


def make_scheduler(optimizer, cfg, total_steps: int):
    # a partial (not a lambda) pickles, and carries no state: a resumed run follows its own --max-steps
    multiplier = functools.partial(lr_multiplier, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.lr_schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def count_steps(cfg, n_examples: int, num_processes: int = 1) -> int:
    """Optimizer steps in the run: --max-steps, or --epochs over the data."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    micro_per_epoch = math.ceil(n_examples / (cfg.batch_size * num_processes))
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def micro_batches(examples: list[dict], cfg, collate: Callable[[list[dict]], dict], start_step: int = 0,
                  process_index: int = 0, num_processes: int = 1) -> Iterator[dict]:
    """Endless stream of collated micro-batches over seeded epochs, resuming after start_step optimizer steps.

    The epoch is cut into global batches of batch_size x num_processes examples (length-grouped as such), each
    split evenly between the processes: N processes see exactly what one process with N times the batch would
    (an epoch's last, short global batch loses the examples that would make the shares unequal)."""
    from caikit.train.batches import batches

    skip = start_step * cfg.grad_accum
    epoch = 0
    while True:
        groups = batches(examples, cfg.batch_size * num_processes, cfg.seed, epoch,
                         group_by_length=cfg.group_by_length, group_batches=cfg.length_group_batches)
        shares = [(group, len(group) // num_processes) for group in groups]
        mine = [group[process_index * share:(process_index + 1) * share] for group, share in shares if share]
        if not mine:
            raise UserError("not enough training examples for one batch per process")
        for micro in mine:
            if skip:
                skip -= 1
                continue
            yield collate(micro)
        epoch += 1


def forward_options(cfg, model, command: str, accelerator):
    """How this run's forwards go (`caikit.train.logprobs.ForwardOptions`), decided after `accelerator.prepare`.

    Packing: --packing / --no-packing, or by default wherever a probe of the prepared model shows packed
    sequences kept apart (one stderr line says which and why); every process must agree. The output layer
    runs in chunks of --logprob-chunk tokens, except where its weights are sharded (FSDP, ZeRO-3)."""
    import transformers

    from caikit.train.logprobs import ForwardOptions
    from caikit.train.packing import attention_name, keeps_sequences_apart

    packed = False
    if cfg.packing is not False:
        works = keeps_sequences_apart(model)
        if accelerator.num_processes > 1:  # one process failing the probe turns packing off everywhere
            works = bool(accelerator.gather(torch.tensor([int(works)], device=accelerator.device)).min())
        name = attention_name(model)
        if cfg.packing and not works:
            raise UserError(f"--packing: with {name} attention this model lets packed sequences attend to each other "
                            f"(transformers {transformers.__version__}); drop --packing or pick another "
                            "--attn-implementation")
        if cfg.packing is None:
            note(command, f"packing {'on' if works else 'off'}: {name} attention "
                          f"{'keeps' if works else 'did not keep'} packed sequences apart in a probe of this model "
                          "(--packing / --no-packing to choose)")
        packed = works
    chunk = cfg.logprob_chunk
    kind = accelerator.distributed_type.value
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if chunk and (kind == "FSDP" or (kind == "DEEPSPEED" and getattr(plugin, "zero_stage", 0) == 3)):
        note(command, "--logprob-chunk off: the output layer's weights are sharded outside the model's forward")
        chunk = 0
    return ForwardOptions(packed=packed, chunk=chunk)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def resume_or_start(cfg, command: str, model, optimizer, scheduler) -> tuple[int, dict]:
    """(step, extra) from out/checkpoint when --resume, else (0, {})."""
    from caikit.train.checkpoint import load_checkpoint

    if not cfg.resume:
        return 0, {}
    loaded = load_checkpoint(cfg.out, model, optimizer, scheduler)
    if loaded is None:
        note(command, f"--resume: no checkpoint in {cfg.out}, starting from step 0")
        return 0, {}
    note(command, f"resuming from step {loaded[0]} ({cfg.out}/checkpoint)")
    from caikit.train.config import RLConfig

    if not isinstance(cfg, RLConfig):  # the offline trainers skip the batches they did: same order, or say so
        order_changed(cfg, command)
    return loaded


# what fixes the offline trainers' data order, with the value a run started before the option existed had
ORDER_OPTIONS = {"seed": None, "batch_size": None, "grad_accum": None, "group_by_length": False,
                 "length_group_batches": None}


def order_changed(cfg, command: str) -> None:
    """A note when --resume runs with options that order the data differently from the run it continues
    (read from the config.yaml that run left in --out): it will not skip exactly the examples it saw."""
    import yaml

    path = Path(cfg.out) / "config.yaml"
    first = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    changed = [f"--{name.replace('_', '-')} {first.get(name, legacy)} -> {getattr(cfg, name)}"
               for name, legacy in ORDER_OPTIONS.items()
               if first and first.get(name, legacy) is not None and first.get(name, legacy) != getattr(cfg, name)]
    if changed:
        note(command, f"--resume: {', '.join(changed)} since the first run: the data come in another order, so "
                      "the resumed run does not skip exactly the examples already trained on")


def finish(accelerator, model, tokenizer, cfg, plot_groups: dict[str, list[str]] | None) -> str:
    """Final save (merged weights, tokenizer, config.yaml) and PNG curves; returns the output dir."""
    from caikit.plots import plot_metrics
    from caikit.train.checkpoint import save_pretrained

    accelerator.wait_for_everyone()
    out = Path(cfg.out)
    # sharded runs (ZeRO-3 / FSDP) gather the full weights on every process; plain runs need no copy
    sharded = accelerator.distributed_type.value in ("DEEPSPEED", "FSDP")
    state_dict = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        save_pretrained(accelerator.unwrap_model(model), tokenizer, cfg, out, state_dict=state_dict)
        if (out / "metrics.jsonl").exists():
            plot_metrics(out / "metrics.jsonl", out / "plots", plot_groups)
    return str(out)
