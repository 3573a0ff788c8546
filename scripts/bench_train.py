"""Training-step throughput and peak memory of caikit's SFT, reward-model and DPO steps.

    python scripts/bench_train.py                         # smollm2 on CPU, 3 timed steps each
    python scripts/bench_train.py --model HF_ID --batch-size 8 --seq-len 512 --bf16 --steps 20
    python scripts/bench_train.py --compare-trl --bf16    # GPU: same data/batch/length through TRL

Each mode runs the trainers' own step (caikit.train.logprobs / losses, AdamW) on synthetic chat data
tokenised by caikit.train.data: `--warmup` untimed steps, then `--steps` timed ones. tokens/s counts the
non-pad tokens through the model per second (DPO and RM: chosen + rejected). Peak memory: GPU
torch.cuda.max_memory_allocated over the timed steps; CPU the peak resident set size sampled by psutil
during the timed steps (ru_maxrss, the whole process's peak, when psutil is missing).
With --compare-trl, TRL's DPOTrainer / RewardTrainer train on the same rows, batch size and max length
(DPO with precomputed reference log-probs, like caikit), and the script prints caikit/TRL ratios.
The figures are printed last.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the of and a to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up other "
         "about out many then them these so some her would make like him into time has look two more write go see").split()


class PeakMemory:
    """Peak memory (MB) between start() and stop(): CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.source = device, 0.0, ""
        self._stop = threading.Event()

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.source = "cuda max_memory_allocated"
            return self
        try:
            import psutil
        except ImportError:
            self.source = "ru_maxrss (whole process)"
            return self
        proc, self.source = psutil.Process(), "psutil peak RSS"

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss / 2**20)
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        elif self.source.startswith("psutil"):
            self._stop.set()
            self._thread.join()
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return self.peak


def synthetic_rows(n: int, seq_len: int, seed: int) -> list[dict]:
    """Conversational preference rows whose prompt + response overflow seq_len (so every sequence is full)."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": [{"role": "user", "content": text(seq_len // 4)}],
             "chosen": [{"role": "assistant", "content": text(seq_len)}],
             "rejected": [{"role": "assistant", "content": text(seq_len)}]} for _ in range(n)]


def caikit_examples(tokenizer, rows, seq_len):
    from caikit.train.data import preference_triples, tokenize_preferences

    examples, _ = tokenize_preferences(tokenizer, preference_triples(rows, "synthetic"), seq_len, seq_len // 2)
    sft = [{"input_ids": e["chosen_input_ids"], "labels_mask": e["chosen_labels_mask"]} for e in examples]
    return examples, sft


def bench_caikit(mode: str, args, tokenizer, pairs: list[dict], sft: list[dict], device) -> dict:
    """One mode's timed steps with the trainers' own forward/loss calls."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from caikit.models import resolve_model_path
    from caikit.train.data import collate_preferences, collate_sft
    from caikit.train.logprobs import concatenated_forward, response_logits
    from caikit.train.losses import bradley_terry_loss, dpo_loss, sft_loss
    from caikit.train.reward import pair_scores

    path, pad = resolve_model_path(args.model), tokenizer.pad_token_id
    if mode == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = pad
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    model.to(device)
    if args.gradient_checkpointing:  # the same switch the trainers use
        from types import SimpleNamespace

        from caikit.train.loop import prepare_model

        model = prepare_model(model, SimpleNamespace(gradient_checkpointing=True, lora=False))
    n_steps = args.warmup + args.steps
    B = args.batch_size
    if mode == "sft":
        batches = [collate_sft(sft[(i * B) % len(sft):][:B], pad) for i in range(n_steps)]
    else:
        batches = [collate_preferences(pairs[(i * B) % len(pairs):][:B], pad) for i in range(n_steps)]
    ref = None
    if mode == "dpo":  # precomputed once, as in caikit.train.dpo (not timed)
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            ref = [concatenated_forward(model, {k: v.to(device) for k, v in b.items()}, pad) for b in batches]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                                  fused=device.type == "cuda" or None)
    memory, tokens, started = PeakMemory(device), 0, 0.0
    for i, batch in enumerate(batches):
        if i == args.warmup:
            memory.start()
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        b = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
            if mode == "sft":
                logits, start = response_logits(model, b["input_ids"], b["attention_mask"], b["labels_mask"])
                loss = sft_loss(logits, b["input_ids"][:, start:], b["labels_mask"][:, start:])
                del logits
                n = int(b["attention_mask"].sum())
            elif mode == "reward":
                chosen, rejected = pair_scores(model, b, pad)
                loss = bradley_terry_loss(chosen, rejected).mean()
                n = int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum())
            else:
                chosen, rejected = concatenated_forward(model, b, pad)
                loss = dpo_loss(chosen, rejected, ref[i][0], ref[i][1], beta=0.1)[0].mean()
                n = int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            tokens += n
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = memory.stop()
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"tokens_per_s": tokens / elapsed, "step_s": elapsed / args.steps, "peak_mb": peak,
            "tokens_per_step": tokens / args.steps, "memory_source": memory.source}


def bench_trl(mode: str, args, tokenizer, rows: list[dict], tokens_per_step: float, device) -> dict | None:
    """TRL's DPOTrainer / RewardTrainer on the same rows, batch and max length; None if TRL is missing."""
    try:
        import trl
    except ImportError:
        print("  --compare-trl: trl is not installed (pip install 'caikit[bench]'); skipping TRL", flush=True)
        return None
    import dataclasses

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    from caikit.models import resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.memory, self.started, self.elapsed = PeakMemory(device), None, 0.0

        def on_step_begin(self, _args, state, control, **kw):
            if state.global_step == args.warmup:
                self.memory.start()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.started = time.perf_counter()

        def on_train_end(self, _args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.started
            self.peak = self.memory.stop()

    path = resolve_model_path(args.model)
    config_cls, trainer_cls = (trl.DPOConfig, trl.DPOTrainer) if mode == "dpo" else (trl.RewardConfig, trl.RewardTrainer)
    wanted = dict(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=args.batch_size,
                  max_steps=args.warmup + args.steps, max_length=args.seq_len, max_prompt_length=args.seq_len // 2,
                  learning_rate=1e-6, bf16=args.bf16, logging_steps=10**6, save_strategy="no", report_to=[],
                  gradient_checkpointing=args.gradient_checkpointing, precompute_ref_log_probs=True, beta=0.1,
                  dataloader_num_workers=0, seed=0, use_cpu=device.type == "cpu")
    known = {f.name for f in dataclasses.fields(config_cls)}
    config = config_cls(**{k: v for k, v in wanted.items() if k in known})
    if mode == "dpo":
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
    timer = StepTimer()
    data = Dataset.from_list(rows[:(args.warmup + args.steps) * args.batch_size])
    trainer = trainer_cls(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    return {"tokens_per_s": tokens_per_step * args.steps / timer.elapsed, "step_s": timer.elapsed / args.steps,
            "peak_mb": timer.peak, "trl_version": trl.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, a local path or an HF id")
    parser.add_argument("--modes", default="sft,reward,dpo", help="comma-separated: sft,reward,dpo")
    parser.add_argument("--batch-size", type=int, default=2, help="sequences (SFT) or pairs (RM, DPO) per step")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (prompt + response)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--compare-trl", action="store_true", help="also run TRL's DPOTrainer/RewardTrainer (GPU)")
    args = parser.parse_args(argv)

    from caikit.models import load_tokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model, padding_side="right")
    rows = synthetic_rows((args.warmup + args.steps) * args.batch_size, args.seq_len, seed=0)
    pairs, sft = caikit_examples(tokenizer, rows, args.seq_len)
    if args.compare_trl and device.type != "cuda":
        print("--compare-trl is meant for a GPU; running TRL on CPU anyway", flush=True)

    results, trl_results = {}, {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        print(f"caikit {mode} ...", flush=True)
        results[mode] = bench_caikit(mode, args, tokenizer, pairs, sft, device)
        if args.compare_trl and mode in ("dpo", "reward"):
            print(f"trl {mode} ...", flush=True)
            trl_results[mode] = bench_trl(mode, args, tokenizer, rows, results[mode]["tokens_per_step"], device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nmodel {args.model} | {name} | batch {args.batch_size} | seq-len {args.seq_len} | "
          f"{'bf16' if args.bf16 else 'fp32'} | {args.steps} timed steps after {args.warmup} warm-up | "
          f"memory: {next(iter(results.values()))['memory_source']}")
    for mode, r in results.items():
        line = f"{mode:>6}: {r['tokens_per_s']:9.1f} tokens/s  {r['step_s']:7.3f} s/step  peak {r['peak_mb']:8.1f} MB"
        other = trl_results.get(mode)
        if other:
            line += (f"  | TRL {other['trl_version']}: {other['tokens_per_s']:9.1f} tokens/s, "
                     f"peak {other['peak_mb']:8.1f} MB"
                     f"  | ratio {r['tokens_per_s'] / other['tokens_per_s']:.2f}x speed, "
                     f"{r['peak_mb'] / other['peak_mb']:.2f}x memory")
        print(line)


if __name__ == "__main__":
    main()
