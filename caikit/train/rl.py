"""The run around an RL trainer's loop, shared by PPO and GRPO / RLOO (and online DPO later).

`RLRun.open` reads the inputs (prompts, probe prompts, tokenizer) and builds the reward and the
independent check; `start` sets up the β controller and the monitors and resumes; `end_step` does the
bookkeeping after each update (check score, monitors, metrics row, probe samples, checkpoint); `close`
writes the last checkpoint and releases what the run built. The loops themselves (rollout, advantages,
updates) stay flat in ppo.py and grpo.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from caikit.errors import UserError
from caikit.train.rewards import RewardFn

Messages = list[dict[str, str]]
# curves every RL trainer draws (plots/<group>.png); each trainer adds its own losses
PLOT_GROUPS = {
    "reward": ["rm_score", "score", "total_reward", "check_score"],
    "kl_beta": ["kl", "kl_coef"],
    "entropy": ["entropy"],
    "length": ["response_length"],
    "diversity": ["distinct_1", "distinct_2", "identical_share"],
    "timing": ["gen_share"],
}


@dataclass
class RLRun:
    cfg: Any  # an RLConfig
    command: str
    accelerator: Any
    conversations: list[Messages]  # the prompts, up to the last user turn
    probes: list[Messages]  # fixed prompts answered greedily into samples.jsonl
    tokenizer: Any  # left padding, pad distinct from EOS
    prompt_ids: list[list[int]]
    probe_ids: list[list[int]]
    reward: RewardFn
    check: Callable[[list[Messages], list[str]], list[float]] | None  # the independent reward-hacking check
    owned: list = field(default_factory=list)  # what `open` built, so `close` releases it
    kl_ctl: Any = None
    monitor: Any = None
    metrics: Any = None
    reference: Any = None  # the frozen reference model (None under LoRA: the policy with its adapters off)
    depth_probe: Any = None  # --depth-every: caikit.depth.probe.DepthProbe, built at its first use

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @classmethod
    def open(cls, cfg, command: str, accelerator, reward_fn: RewardFn | Callable | None = None,
             check: Callable | None = None) -> "RLRun":
        """Inputs first, so a bad path fails before any model loads; `reward_fn` and `check` default to what
        --reward-model / --reward-fn and --check-rm / --check-judge name."""
        from caikit.train.monitors import make_check
        from caikit.train.rewards import as_reward_fn, make_reward_fn
        from caikit.train.rollout import encode_prompt

        device = str(accelerator.device)
        split = getattr(cfg, "split", "") or None
        conversations = load_conversations(cfg.prompts, "--prompts", split)
        probes = load_conversations(cfg.probe_prompts, "--probe-prompts", split) if cfg.probe_prompts else \
            conversations[:cfg.probe_count]
        owned = []
        if reward_fn is None:
            reward_fn = make_reward_fn(cfg.reward_model, cfg.reward_fn, device=device)
            owned.append(reward_fn)
        if check is None:  # a judge as the check (--check-judge) is built above caikit/train and passed in
            check = make_check(cfg.check_rm, device=device)
            owned.append(check)
        tokenizer = load_rollout_tokenizer(cfg.policy)
        return cls(cfg, command, accelerator, conversations, probes, tokenizer,
                   [encode_prompt(tokenizer, c, cfg.max_prompt_length) for c in conversations],
                   [encode_prompt(tokenizer, c, cfg.max_prompt_length) for c in probes],
                   as_reward_fn(reward_fn), check, owned)

    def start(self, model, optimizer, scheduler) -> int:
        """β controller, monitors, --resume (weights, optimizer, schedule, β, monitor history), the run's files
        and config.yaml; returns the step to start from. Call before `accelerator.prepare`."""
        from caikit.config import save_config
        from caikit.metrics import MetricsLogger
        from caikit.train.kl import make_kl_controller
        from caikit.train.loop import resume_or_start
        from caikit.train.monitors import MonitorThresholds, TrainingMonitor

        cfg = self.cfg
        self.kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.monitor = TrainingMonitor(self.out, MonitorThresholds(identical_share=cfg.collapse_share,
                                                                   kl_max=cfg.kl_max, window=cfg.hack_window))
        step, extra = resume_or_start(cfg, self.command, model, optimizer, scheduler)
        if step:
            self.kl_ctl.load_state_dict(extra["kl_ctl"])
            self.monitor.load_state_dict(extra.get("monitor", {}))
        self.out.mkdir(parents=True, exist_ok=True)
        reset_run_files(self.out, step)
        save_config(cfg, self.out / "config.yaml")
        from caikit.trackers import open_tracker

        self.metrics = MetricsLogger(self.out, resume=step > 0,
                                     tracker=open_tracker(cfg.report_to, self.out, asdict(cfg)))
        return step

    def end_step(self, step: int, total_steps: int, row: dict[str, float], conversations: list[Messages],
                 texts: list[str], engine, model: nn.Module, optimizer, scheduler) -> None:
        """After an update (its weights already pushed to `engine`): the independent check's score, the monitors,
        the metrics row, greedy answers to the probes (from `engine`) and, every --save-every steps, a checkpoint
        of `model` (unwrapped)."""
        from caikit.train.rewards import compute_rewards, last_user_text

        cfg, main = self.cfg, self.accelerator.is_main_process
        if self.check is not None and step % cfg.check_every == 0:
            row["check_score"] = sum(self.check(conversations, texts)) / len(texts)
        if main:
            self.monitor.check(step, row)
            if step % cfg.log_every == 0 or step == total_steps:
                self.metrics.log(step, **row)
            if cfg.sample_every and (step == 1 or step % cfg.sample_every == 0 or step == total_steps):
                with torch.no_grad(), self.accelerator.autocast():
                    answers, has_eos = greedy_answers(engine, self.probe_ids, self.tokenizer, cfg.response_length,
                                                      self.accelerator.device)
                append_samples(self.out / "samples.jsonl", step, [last_user_text(c) for c in self.probes], answers,
                               compute_rewards(self.reward, self.probes, answers).scores, has_eos)
        every = getattr(cfg, "depth_every", 0)
        if every and main and (step % every == 0 or step == total_steps):
            self.record_depth(step, getattr(model, "lm", model))
        if cfg.save_every and step % cfg.save_every == 0 and main:
            self.save(step, model, optimizer, scheduler)

    def record_depth(self, step: int, lm: nn.Module) -> None:
        """--depth-every: the shift's dimensionality and the ablation result against the reference, into
        depth.jsonl (caikit/depth/probe.py)."""
        from caikit.depth.probe import DepthProbe

        if self.depth_probe is None:
            self.depth_probe = DepthProbe(self.tokenizer, self.out, device=self.accelerator.device,
                                          max_prompt_tokens=self.cfg.max_prompt_length)
        with self.accelerator.autocast():
            row = self.depth_probe.record(step, lm, self.reference)
        print(f"{self.command}: step {step}: depth: shift in {row['k90']} directions at layer {row['layer']} "
              f"(PR {row['participation_ratio']:.1f}); refusal {row['refusal']:.0%}, with its direction ablated "
              f"{row['refusal_ablated']:.0%} (reference {row['refusal_reference']:.0%})", file=sys.stderr)

    def save(self, step: int, model: nn.Module, optimizer, scheduler) -> None:
        from caikit.train.checkpoint import save_checkpoint

        save_checkpoint(self.out, step, model, optimizer, scheduler,
                        {"kl_ctl": self.kl_ctl.state_dict(), "monitor": self.monitor.state_dict()})

    def close(self, step: int, model: nn.Module, optimizer, scheduler) -> None:
        """The last checkpoint (to continue from with --resume); releases the reward and check `open` built
        (a caller's objects are the caller's to close)."""
        self.metrics.close()
        for part in self.owned:
            if hasattr(part, "close"):
                part.close()
        if self.accelerator.is_main_process:
            self.save(step, model, optimizer, scheduler)


def timing_metrics(started: float, gen_seconds: float, rollout_seconds: float, train_seconds: float,
                   n_rollouts: int, train_tokens: int) -> dict[str, float]:
    """Where one step's time went (generation's share is what a faster sampler would win back)."""
    import time

    step_seconds = time.perf_counter() - started
    return {"gen_seconds": gen_seconds, "rollout_seconds": rollout_seconds, "train_seconds": train_seconds,
            "step_seconds": step_seconds, "gen_share": gen_seconds / step_seconds,
            "rollouts_per_s": n_rollouts / step_seconds, "train_tokens_per_s": train_tokens / max(train_seconds, 1e-9)}


def load_conversations(path: str, what: str, split: str | None = None) -> list[Messages]:
    """Prompt conversations (messages up to the last user turn) from a prompt file; an empty file is an error."""
    from caikit.prompts import load_prompts

    rows = load_prompts(path, split=split)
    if not rows:
        raise UserError(f"{what}: no prompts in file", path=path)
    return [row.messages for row in rows]


def load_rollout_tokenizer(name: str):
    """Left-padding tokenizer for generation, whose pad token differs from EOS (the response masks need it)."""
    from caikit.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(name, padding_side="left")
    except OSError as e:
        raise UserError(f"cannot load tokenizer for '{name}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise UserError(f"tokenizer of '{name}' has no pad token distinct from EOS; rollout masks need one")
    return tokenizer


def load_reference(cfg) -> nn.Module | None:
    """The frozen reference policy (a second copy of --policy), or None under --lora, where the reference is
    the policy with its adapters switched off (`rollout.reference_logprobs`)."""
    from transformers import AutoModelForCausalLM

    from caikit.train.loop import load_pretrained

    if cfg.lora:
        return None
    ref = load_pretrained(AutoModelForCausalLM, cfg.policy, dtype=torch.bfloat16 if cfg.bf16 else None)
    ref.requires_grad_(False)
    return ref.eval()


def greedy_answers(engine, prompt_ids: list[list[int]], tokenizer, response_length: int,
                   device) -> tuple[list[str], list[bool]]:
    """Greedy answers to the fixed probe prompts (for samples.jsonl) from the rollout engine: (texts, has_eos)."""
    from caikit.train.rollout import decode_responses, generate_responses, left_pad

    ids, mask = left_pad(prompt_ids, tokenizer.pad_token_id, device)
    _, responses, response_mask, has_eos = generate_responses(engine, ids, mask, response_length, 1.0,
                                                              tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                              greedy=True)
    return decode_responses(tokenizer, responses, response_mask), has_eos.tolist()


def append_samples(path: Path, step: int, prompts: list[str], texts: list[str], scores: list[float],
                   has_eos: list[bool]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for prompt, text, score, eos in zip(prompts, texts, scores, has_eos):
            fh.write(json.dumps({"step": step, "prompt": prompt, "response": text, "score": score, "has_eos": eos},
                                ensure_ascii=False) + "\n")


def reset_run_files(out: Path, step: int) -> None:
    """warnings.jsonl and samples.jsonl: on resume, cut back to rows up to `step` (a crashed run may have written
    past its last checkpoint); on a fresh start, removed. warnings.jsonl then exists in every run dir: "no
    warnings" is an answer too."""
    for name in ("warnings.jsonl", "samples.jsonl", "depth.jsonl"):
        path = out / name
        if not step:
            path.unlink(missing_ok=True)
            continue
        if path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    (out / "warnings.jsonl").touch()
