"""Training throughput and peak memory of caikit's SFT, reward-model and DPO steps, against TRL's trainers.

    python scripts/bench_train.py --smoke                   # CPU smoke test (tiny random model, a minute)
    python scripts/bench_train.py --random-init llama-0.5b --bf16 --compare-trl          # one GPU, offline
    python scripts/bench_train.py --random-init llama-0.5b --bf16 --compare-trl --synthetic --max-length 1024

Model: --model (smollm2, a path, an HF id) or --random-init SPEC (caikit.random_init: a config or a shape such
as llama-0.5b, with the tokenizer bundled in caikit/data/tokenizer, so no weights and no network are needed).
Data: the real hh-rlhf lengths of shared/data/hh-rlhf/harmless-base-test.jsonl.gz beside the checkout or in it
(or --data FILE); without it, or with --synthetic, rows long enough to fill --max-length. caikit tokenises and
truncates every row once (prompt + response <= --max-length); TRL gets those rows already truncated (SFT and
reward as token ids, DPO as text: its DPOTrainer takes text only).
Runs: "caikit" is `caikit train` as it runs by default (length-grouped batches, packed rows where the probe
allows, chunked log-probs); "caikit padded" turns the three off (the trainers before issue #16); "TRL" is
SFTTrainer / RewardTrainer / DPOTrainer with the same model, batch size, bf16 and gradient checkpointing, DPO
with precomputed reference log-probs as caikit. Each run: --warmup untimed steps, then --steps timed ones.
tokens/s: non-pad tokens the model was given in the timed steps / seconds, counted alike for every run by a
forward pre-hook (the attention mask's sum; a packed row carries no mask, so for those the batch's own mask is
summed); "real" is their share of the token slots the model computed. Peak memory: the CUDA allocator's peak
over the timed steps (CPU: peak RSS, psutil). The table comes last, then the figure: caikit / TRL tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the shared data beside the checkout, or inside it (where a copy of the tree carries shared/ along)
HH_RLHF = next((p for p in (root / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
                            for root in (REPO.parent, REPO)) if p.exists()),
               REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz")
WORDS = ("the of and a to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up other "
         "about out many then them these so some her would make like him into time has look two more write go see").split()
CAIKIT_RUNS = {"caikit": dict(group_by_length=True, packing=True, chunk=1024),
               "caikit padded": dict(group_by_length=False, packing=False, chunk=0),
               # each default switched off alone, to see what it is worth (--runs "caikit,no packing,...")
               "no grouping": dict(group_by_length=False, packing=True, chunk=1024),
               "no packing": dict(group_by_length=True, packing=False, chunk=1024),
               "no chunking": dict(group_by_length=True, packing=True, chunk=0)}


class Meter:
    """Timed window: wall time, peak memory (CUDA allocator, or sampled RSS on CPU), tokens seen by the model."""

    def __init__(self, model, device: torch.device):
        self.device, self.on, self.peak, self.elapsed = device, False, 0.0, 0.0
        self.tokens = self.slots = self.unmasked = 0
        self._stop = threading.Event()
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if not self.on or not torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.slots += int(ids.numel())
        if mask is None:
            self.unmasked += int(ids.numel())  # packed rows: the caller adds the batch's own count
        else:
            self.tokens += int(mask.sum())

    def start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, proc.memory_info().rss / 2**20)
                    time.sleep(0.005)

            threading.Thread(target=sample, daemon=True).start()
        self.on, self._started = True, time.perf_counter()

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        self._stop.set()
        self.on, self.elapsed = False, time.perf_counter() - self._started
        return {"tokens_per_s": self.tokens / self.elapsed, "real": self.tokens / max(self.slots, 1),
                "peak_mb": self.peak, "tokens": self.tokens}


# ------------------------------------------------------------------------------------------------- data

def hh_rlhf_rows(path: Path) -> list[dict]:
    from caikit.train.data import preference_triples

    with gzip.open(path, "rt", encoding="utf-8") as f:
        return preference_triples([json.loads(line) for line in f if line.strip()], str(path))


def synthetic_rows(n: int, max_length: int, seed: int) -> list[dict]:
    """Conversational preference rows whose prompt + response overflow max_length (every sequence is full)."""
    rng = random.Random(seed)

    def said(role, k):
        return [{"role": role, "content": " ".join(rng.choice(WORDS) for _ in range(k))}]

    return [{"prompt": said("user", max_length // 4), "chosen": said("assistant", max_length),
             "rejected": said("assistant", max_length), "p_chosen": None, "margin": 0.0} for _ in range(n)]


def load_data(args, tokenizer) -> tuple[list[dict], list[dict], str]:
    """(pairs, sft examples, what they are): tokenised and truncated by caikit, as the trainers do."""
    from caikit.train.data import tokenize_preferences

    path = Path(args.data) if args.data else HH_RLHF
    if not args.synthetic and path.exists():
        triples, what = hh_rlhf_rows(path), f"hh-rlhf lengths ({path.name})"
    else:
        if not args.synthetic:
            print(f"note: {path} not found; synthetic rows that fill --max-length instead", flush=True)
        triples, what = synthetic_rows(512, args.max_length, 0), f"synthetic rows of {args.max_length} tokens"
    pairs, _ = tokenize_preferences(tokenizer, triples, args.max_length, args.max_prompt_length)
    sft = [{"input_ids": e["chosen_input_ids"], "labels_mask": e["chosen_labels_mask"], "index": e["index"]}
           for e in pairs]

    def quantiles(lengths):
        lengths = sorted(lengths)
        return f"p50 {lengths[len(lengths) // 2]} / p90 {lengths[int(len(lengths) * 0.9)]}"

    prompts = [e["chosen_labels_mask"].index(1) for e in pairs]
    responses = [sum(e[f"{s}_labels_mask"]) for e in pairs for s in ("chosen", "rejected")]
    return pairs, sft, (f"{what}, {len(pairs)} pairs: prompt {quantiles(prompts)}, response {quantiles(responses)} "
                        "tokens")


# ------------------------------------------------------------------------------------------------ caikit

def load_model(mode: str, args, model_dir: str, pad_id: int, device):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if mode == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, **kwargs)
        model.config.pad_token_id = pad_id
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    return model.to(device)


def bench_caikit(mode: str, run: dict, args, model_dir: str, pad_id: int, pairs, sft, device) -> dict:
    """The trainers' own stream, forward and loss calls, AdamW, timed over --steps after --warmup."""
    from caikit.train.batches import collate_preferences, collate_sft
    from caikit.train.logprobs import ForwardOptions, concatenated_forward, token_logps
    from caikit.train.loop import micro_batches, prepare_model, to_device
    from caikit.train.losses import bradley_terry_loss, dpo_loss, sft_loss_from_logps
    from caikit.train.packing import keeps_sequences_apart
    from caikit.train.reward import pair_scores

    model = load_model(mode, args, model_dir, pad_id, device)
    model = prepare_model(model, SimpleNamespace(gradient_checkpointing=args.gradient_checkpointing, lora=False))
    how = ForwardOptions(packed=run["packing"] and keeps_sequences_apart(model), chunk=run["chunk"])
    stream_cfg = SimpleNamespace(batch_size=args.batch_size, grad_accum=1, seed=0, length_group_batches=64,
                                 group_by_length=run["group_by_length"])
    collate = (lambda m: collate_sft(m, pad_id)) if mode == "sft" else (lambda m: collate_preferences(m, pad_id))
    stream = micro_batches(sft if mode == "sft" else pairs, stream_cfg, collate)
    batches = [to_device(next(stream), device) for _ in range(args.warmup + args.steps)]
    autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=args.bf16)  # noqa: E731
    ref = []
    if mode == "dpo":  # precomputed once, as caikit.train.reference does (not timed)
        model.eval()
        with torch.no_grad(), autocast():
            ref = [concatenated_forward(model, b, pad_id, how=how) for b in batches]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6,
                                  fused=device.type == "cuda" or None)
    meter = Meter(model, device)
    for i, b in enumerate(batches):
        if i == args.warmup:
            meter.start()
        with autocast():
            if mode == "sft":
                loss = sft_loss_from_logps(token_logps(model, b["input_ids"], b["attention_mask"], b["labels_mask"],
                                                       how=how), b["labels_mask"])
            elif mode == "reward":
                loss = bradley_terry_loss(*pair_scores(model, b, pad_id, how.packed)).mean()
            else:
                chosen, rejected = concatenated_forward(model, b, pad_id, how=how)
                loss = dpo_loss(chosen, rejected, *ref[i], beta=0.1)[0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if meter.on and meter.unmasked:  # packed rows: count the batch's own non-pad tokens
            meter.tokens += int(sum(v.sum() for k, v in b.items() if k.endswith("attention_mask")))
            meter.unmasked = 0
    result = meter.stop()
    result["setting"] = f"grouped {run['group_by_length']}, packed {how.packed}, chunk {how.chunk}"
    del model, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------------- TRL

def trl_rows(mode: str, tokenizer, pairs: list[dict], sft: list[dict], n: int) -> list[dict]:
    """caikit's truncated examples for TRL: token ids where its trainer takes them (SFT, reward), else text."""
    if mode == "sft":
        return [{"input_ids": e["input_ids"], "completion_mask": e["labels_mask"]} for e in sft[:n]]
    if mode == "reward":
        return [{"chosen_ids": e["chosen_input_ids"], "rejected_ids": e["rejected_input_ids"]} for e in pairs[:n]]
    rows = []
    for e in pairs[:n]:
        start = e["chosen_labels_mask"].index(1)
        rows.append({"prompt": tokenizer.decode(e["chosen_input_ids"][:start]),
                     "chosen": tokenizer.decode(e["chosen_input_ids"][start:]),
                     "rejected": tokenizer.decode(e["rejected_input_ids"][start:])})
    return rows


def bench_trl(mode: str, args, model_dir: str, tokenizer, pairs, sft, device) -> dict | None:
    try:
        import trl
    except ImportError:
        print("  trl is not installed (pip install 'caikit[bench]'): no TRL comparison", flush=True)
        return None
    from datasets import Dataset
    from transformers import TrainerCallback

    classes = {"sft": (trl.SFTConfig, trl.SFTTrainer), "reward": (trl.RewardConfig, trl.RewardTrainer),
               "dpo": (trl.DPOConfig, trl.DPOTrainer)}[mode]
    model = load_model(mode, args, model_dir, tokenizer.pad_token_id, device)
    meter = Meter(model, device)

    class Window(TrainerCallback):
        def on_step_begin(self, _args, state, control, **kw):
            if state.global_step == args.warmup:
                meter.start()

    wanted = dict(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=args.batch_size,
                  max_steps=args.warmup + args.steps, max_length=None, learning_rate=1e-6, bf16=args.bf16,
                  logging_steps=10**6, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
                  precompute_ref_log_probs=True, beta=0.1, completion_only_loss=True,
                  use_cpu=device.type == "cpu", disable_tqdm=True)
    known = {f.name for f in dataclasses.fields(classes[0])}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    wanted.update({checkpointing: args.gradient_checkpointing, f"{checkpointing}_kwargs": {"use_reentrant": False}})
    config = classes[0](**{k: v for k, v in wanted.items() if k in known})
    rows = trl_rows(mode, tokenizer, pairs, sft, (args.warmup + args.steps) * args.batch_size)
    trainer = classes[1](model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Window()])
    trainer.train()
    result = meter.stop()
    result["setting"] = f"TRL {trl.__version__}"
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# -------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, a local path or an HF id")
    parser.add_argument("--random-init", default="", metavar="CONFIG_OR_SHAPE",
                        help="random weights from a config or shape (caikit.random_init), bundled tokenizer")
    parser.add_argument("--modes", default="sft,reward,dpo", help="comma-separated: sft,reward,dpo")
    parser.add_argument("--runs", default="caikit,caikit padded", help=f"caikit runs: {', '.join(CAIKIT_RUNS)}")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences (SFT) or pairs (RM, DPO) per step")
    parser.add_argument("--max-length", type=int, default=1024, help="max tokens per sequence (prompt + response)")
    parser.add_argument("--max-prompt-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast over fp32 weights (GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--attn-implementation", default="", help="sdpa | flash_attention_2 | flex_attention | ...")
    parser.add_argument("--data", default="", help=f"hh-rlhf style .jsonl.gz (default: {HH_RLHF})")
    parser.add_argument("--synthetic", action="store_true", help="rows that fill --max-length instead of real data")
    parser.add_argument("--compare-trl", action="store_true", help="also run TRL's trainers on the same rows")
    parser.add_argument("--device", default="", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--smoke", action="store_true", help="small CPU run: tiny random model, short rows, few steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.random_init = args.random_init or "tiny"
        args.batch_size, args.max_length, args.max_prompt_length = 4, 192, 96
        args.steps, args.warmup, args.compare_trl = min(args.steps, 4), 1, True

    from transformers.utils import logging as transformers_logging

    from caikit.models import load_tokenizer, resolve_model_path
    from caikit.random_init import random_init_model

    transformers_logging.set_verbosity_error()  # load reports and TRL's notices would bury the table
    transformers_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.random_init:
        model_dir = random_init_model(args.random_init, Path(tempfile.gettempdir()) / "caikit-bench-random-init")
    else:
        model_dir = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    pairs, sft, what = load_data(args, tokenizer)
    random.Random(0).shuffle(pairs)  # TRL takes the first rows; caikit's stream shuffles on its own
    pairs = [{**e, "index": i} for i, e in enumerate(pairs)]

    results: dict[tuple[str, str], dict] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
            print(f"{name} {mode} ...", flush=True)
            results[mode, name] = bench_caikit(mode, CAIKIT_RUNS[name], args, model_dir, tokenizer.pad_token_id,
                                               pairs, sft, device)
            print(f"  {results[mode, name]['tokens_per_s']:.0f} tokens/s, peak {results[mode, name]['peak_mb']:.0f} MB",
                  flush=True)  # so a run cut short still leaves its figures
        if args.compare_trl:
            print(f"TRL {mode} ...", flush=True)
            trl_result = bench_trl(mode, args, model_dir, tokenizer, pairs, sft, device)
            if trl_result:
                results[mode, "TRL"] = trl_result
                print(f"  {trl_result['tokens_per_s']:.0f} tokens/s, peak {trl_result['peak_mb']:.0f} MB", flush=True)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nmodel {args.random_init and 'random-init ' + args.random_init or args.model} "
          f"({config.num_hidden_layers} layers, hidden {config.hidden_size}) | {name} | "
          f"{'bf16' if args.bf16 else 'fp32'} | batch {args.batch_size} | max-length {args.max_length} | "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} | {args.steps} timed steps after "
          f"{args.warmup} | data: {what}" + (" | CPU: smoke figures only" if device.type == "cpu" else ""))
    print(f"{'mode':<7}{'run':<15}{'tokens/s':>11}{'real':>7}{'peak MB':>10}{'vs TRL speed':>14}{'vs TRL memory':>15}"
          "  setting")
    figure = []
    for (mode, run), r in results.items():
        trl = results.get((mode, "TRL"))
        speed = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl else "-"
        memory = f"{r['peak_mb'] / trl['peak_mb']:.2f}x" if trl else "-"
        print(f"{mode:<7}{run:<15}{r['tokens_per_s']:>11.0f}{r['real']:>7.0%}{r['peak_mb']:>10.0f}{speed:>14}"
              f"{memory:>15}  {r['setting']}")
        if trl and run == "caikit":
            figure.append(f"{mode} {speed} at {memory} memory")
    print("caikit / TRL non-pad tokens/s: " + ("; ".join(figure) if figure else "no TRL run to compare with"))


if __name__ == "__main__":
    main()
