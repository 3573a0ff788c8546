"""What every offline trainer (SFT, reward, DPO and its variants, KTO) does around its own loss.

A trainer reads its data, loads its model, then:

    session = start_session(cfg, COMMAND, accelerator, model, "CAUSAL_LM", len(train_examples), "sft", summary)
    while session.step < session.total_steps:
        for each micro-batch:
            with session.accumulate():
                loss = ...
                session.apply(loss)
        session.end_step(row, tokens, started, evaluate=lambda: ..., postfix={...})
    out = session.finish(tokenizer, PLOT_GROUPS, final_eval)

The setup (adapters, optimizer, schedule, resume, accelerate, forward options, config, metrics), the optimizer
step with clipping, and the tail of each step (learning rate, speed, periodic eval, logging, progress, checkpoint)
live here once; the trainer keeps only what makes it that trainer.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from caikit.config import save_config


@dataclass
class TrainingSession:
    cfg: Any
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    total_steps: int
    step: int
    how: Any  # caikit.train.logprobs.ForwardOptions
    metrics: Any  # caikit.metrics.MetricsLogger
    bar: Any
    grad_norm: Any = None

    def accumulate(self):
        """One micro-batch: accelerate's gradient accumulation and mixed precision around the forward pass."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.accelerator.accumulate(self.model))
        stack.enter_context(self.accelerator.autocast())
        return stack

    def apply(self, loss) -> None:
        """Backward, clip on the step that syncs gradients, optimizer step (accelerate skips it mid-accumulation)."""
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and self.cfg.max_grad_norm > 0:
            self.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def end_step(self, row: dict, tokens: int, started: float, evaluate: Callable[[], dict],
                 postfix: dict[str, str]) -> dict:
        """Close one optimizer step: schedule, the step's metrics row, periodic eval, log, progress, checkpoint."""
        from caikit.train.checkpoint import save_checkpoint

        cfg = self.cfg
        used_lr = self.scheduler.get_last_lr()[0]  # the rate this step's update was made with, not the next one's
        self.scheduler.step()
        self.step += 1
        row.update(lr=used_lr, tokens_per_s=tokens / (time.perf_counter() - started))
        if self.grad_norm is not None:
            row["grad_norm"] = float(self.grad_norm)
        self.grad_norm = None
        if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
            row.update(evaluate())
        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
            self.metrics.log(self.step, **row)
        self.bar.set_postfix(**postfix, tok_s=f"{row['tokens_per_s']:.0f}")
        self.bar.update(1)
        if cfg.save_every and self.step % cfg.save_every == 0 and self.accelerator.is_main_process:
            save_checkpoint(cfg.out, self.step, self.accelerator.unwrap_model(self.model), self.optimizer,
                            self.scheduler)
        return row

    def finish(self, tokenizer, plot_groups: dict[str, list[str]] | None, final_eval: dict) -> str:
        """Log the held-out evaluation, save a checkpoint to continue from, then the model and its curves."""
        from caikit.train.checkpoint import save_checkpoint
        from caikit.train.loop import finish

        self.bar.close()
        if final_eval:
            self.metrics.log(self.step, **final_eval)
        self.metrics.close()
        if self.accelerator.is_main_process:
            save_checkpoint(self.cfg.out, self.step, self.accelerator.unwrap_model(self.model), self.optimizer,
                            self.scheduler, final_eval)
        return finish(self.accelerator, self.model, tokenizer, self.cfg, plot_groups)


def start_session(cfg, command: str, accelerator, model, task_type: str, n_examples: int, desc: str,
                  data_summary=None) -> TrainingSession:
    """Adapters, optimizer, schedule, resume from a checkpoint, accelerate, config.yaml, metrics and a progress bar."""
    from caikit.progress import step_bar

    from caikit.metrics import MetricsLogger
    from caikit.trackers import open_tracker
    from caikit.train.loop import (count_steps, forward_options, make_optimizer, make_scheduler, prepare_model,
                                   record_data, resume_or_start)

    model = prepare_model(model, cfg, task_type)
    optimizer = make_optimizer(model, cfg)
    total_steps = count_steps(cfg, n_examples, accelerator.num_processes)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    step, _ = resume_or_start(cfg, command, model, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    how = forward_options(cfg, model, command, accelerator)
    save_config(cfg, f"{cfg.out}/config.yaml")
    tracker = open_tracker(cfg.report_to, cfg.out, asdict(cfg)) if accelerator.is_main_process else None
    metrics = MetricsLogger(cfg.out, resume=step > 0, writes=accelerator.is_main_process, tracker=tracker)
    if data_summary is not None:
        record_data(cfg, data_summary, metrics, step)
    bar = step_bar(total=total_steps, initial=step, desc=desc, unit="step",
                   disable=not accelerator.is_local_main_process)
    model.train()
    return TrainingSession(cfg, accelerator, model, optimizer, scheduler, total_steps, step, how, metrics, bar)
