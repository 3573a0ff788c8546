"""Generation speed of caikit's two generation paths against plain transformers, in one run, offline.

    python scripts/bench_generate_local.py --smoke                                  # CPU: tiny model, seconds
    python scripts/bench_generate_local.py --random-init 0.48b --batch-sizes 64,256  # one GPU, no weights needed

For each batch size B: B prompts of ~--prompt-tokens tokens (chat-templated red-team prompts, lengths spread
±20 %), --new-tokens new tokens each, sampled at T = 0.7 with nothing else (as PPO samples). Rows:
  plain       model.generate, dynamic KV cache, weights in the compute dtype (bf16 on CUDA, fp32 on CPU)
  static      model.generate, cache_implementation="static" (transformers compiles the decode step on CUDA)
  rollout     caikit's PPO rollout as ppo.py sets it up: fp32 policy (+ value head) under bf16 autocast on CUDA,
              `rollout_engine` (bf16 generation copy, static cache, compiled decoding), weights pushed, then
              `generate_responses`
  rollout-old the rollout before caikit.generation: `generate` on the fp32 policy under autocast
  local       caikit's local backend (--backend local, --batch-size B), B concurrent requests
  continuous  the local backend with --engine continuous (transformers' continuous batching), where available
  vllm        the local backend with --engine vllm, where vLLM is installed
Each row runs once to warm up (compiling happens there: its seconds are printed), then --repeats timed times.
Tokens counted: generated tokens up to and including EOS. The table, then the rollout and local rows as a
multiple of the best plain-transformers row, are printed last. CPU figures are smoke figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TEMPERATURE = 0.7


def build_conversations(tokenizer, count: int, prompt_tokens: int) -> list[list[dict]]:
    """`count` one-turn conversations whose templated prompts are ~prompt_tokens long (±20 %, fixed spread)."""
    from caikit.prompts import load_prompts

    texts = [row.messages[-1]["content"] for row in load_prompts(REPO / "caikit" / "data" / "red_team_prompts.jsonl")]
    conversations = []
    for i in range(count):
        target = int(prompt_tokens * (0.8 + 0.4 * ((i * 37) % 101) / 100))
        words, k = [], i
        while True:
            messages = [{"role": "user", "content": " ".join(words)}]
            if len(prompt_ids(tokenizer, messages)) >= target:
                break
            words += texts[k % len(texts)].split()
            k += 1
        conversations.append(messages)
    return conversations


def prompt_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run, repeats: int) -> tuple[float, float, int]:
    """(warm-up seconds, timed seconds per call, tokens per call); `run()` returns the tokens it generated."""
    sync()
    start = time.perf_counter()
    run()
    sync()
    warmup = time.perf_counter() - start
    seconds, tokens = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens += run()
        sync()
        seconds += time.perf_counter() - start
    return warmup, seconds / repeats, tokens // repeats


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plain_rows(model_dir, ids, mask, args, device, dtype, tokenizer):
    """plain and static: transformers' own generate on the compute-dtype model."""
    import torch
    from transformers import AutoModelForCausalLM

    from caikit.generation import cut_continuation, sampling_config

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    rows = {}
    for name, extra in (("plain", {}), ("static", {"cache_implementation": "static"})):
        config = sampling_config(args.new_tokens, TEMPERATURE, pad, eos, **extra)

        def run():
            torch.manual_seed(0)
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.size(1):]
            return sum(len(cut_continuation(row, [eos], pad)) for row in out.tolist())

        rows[name] = timed(run, args.repeats)
    model = None  # (not del: run() closes over it) frees the weights
    free_memory()
    return rows


def rollout_rows(model_dir, ids, mask, args, device, tokenizer):
    """rollout (through caikit.generation) and rollout-old (generate on the fp32 policy under autocast)."""
    import torch
    from transformers import AutoModelForCausalLM

    from caikit.generation import push_weights
    from caikit.train.loop import make_accelerator
    from caikit.train.ppo import PPOConfig
    from caikit.train.rollout import PolicyWithValueHead, disable_dropout, generate_responses, rollout_engine

    cfg = PPOConfig(policy=model_dir, prompts="-", out=tempfile.mkdtemp(), bf16=device == "cuda", engine=args.engine,
                    response_length=args.new_tokens, temperature=TEMPERATURE)
    accelerator = make_accelerator(cfg)
    policy = disable_dropout(PolicyWithValueHead(AutoModelForCausalLM.from_pretrained(model_dir))).to(device)
    policy = accelerator.prepare(policy)
    lm = accelerator.unwrap_model(policy).lm
    rows = {}
    for name in ("rollout", "rollout-old"):
        engine = rollout_engine(cfg, accelerator, lm, tokenizer) if name == "rollout" else lm

        def run():
            torch.manual_seed(0)
            if engine is not lm:
                push_weights(engine, lm)  # as ppo.py does after every update
            with torch.no_grad(), accelerator.autocast():
                _, _, rmask, _ = generate_responses(engine, ids, mask, args.new_tokens, TEMPERATURE,
                                                    tokenizer.pad_token_id, tokenizer.eos_token_id)
            return int(rmask.sum())

        rows[name] = timed(run, args.repeats)
        engine = None
        free_memory()
    policy = lm = None
    free_memory()
    return rows


def backend_row(model_dir, conversations, args, engine: str, batch: int):
    from caikit.backends.local import LocalBackend

    backend = LocalBackend(model_dir, batch_size=batch, engine=engine, max_wait_ms=50)
    backend.load()

    def run():
        async def all_at_once():
            answers = await asyncio.gather(*(backend.generate(m, temperature=TEMPERATURE, max_tokens=args.new_tokens,
                                                              seed=0) for m in conversations))
            await backend.aclose()
            return answers

        return sum(a[0].usage.completion_tokens for a in asyncio.run(all_at_once()))

    row = timed(run, args.repeats)
    backend = None
    free_memory()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model dir / alias (default: --random-init)")
    parser.add_argument("--random-init", default="0.48b", help="CONFIG_OR_SHAPE: a preset (tiny, 135m, 360m, 0.48b, "
                                                               "1.7b), a config.json, or key=value Llama shape")
    parser.add_argument("--batch-sizes", default="64", help="comma-separated: one column per batch (B prompts each)")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", default="auto", help="engine of the rollout row (auto | padded | continuous)")
    parser.add_argument("--rows", default="plain,static,rollout,rollout-old,local,continuous,vllm")
    parser.add_argument("--smoke", action="store_true", help="tiny random model, batch 8, 40-token prompts, "
                                                             "16 new tokens, 1 repeat (CPU smoke test)")
    args = parser.parse_args()
    if args.smoke:  # settings not given on the command line shrink to a CPU smoke test
        smoke = {"random_init": "tiny", "batch_sizes": "8", "prompt_tokens": 40, "new_tokens": 16, "repeats": 1}
        for key, value in smoke.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)

    import importlib.util

    import torch

    from caikit.generation import continuous_batching_available, left_pad_rows
    from caikit.models import load_tokenizer, resolve_model_path
    from caikit.random_init import parameter_count, random_init_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tmp = tempfile.TemporaryDirectory()
    model_dir = resolve_model_path(args.model) if args.model else random_init_model(args.random_init, tmp.name)
    what = args.model or f"random-init {args.random_init}"
    tokenizer = load_tokenizer(model_dir, padding_side="left")
    wanted = args.rows.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    table: dict[str, dict[int, tuple[float, float, int]]] = {}
    skipped: dict[str, str] = {}
    for batch in batches:
        conversations = build_conversations(tokenizer, batch, args.prompt_tokens)
        prompts = [prompt_ids(tokenizer, m) for m in conversations]
        ids, mask = left_pad_rows(prompts, tokenizer.pad_token_id, device)
        lengths = sorted(len(p) for p in prompts)
        print(f"batch {batch}: prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]})",
              file=sys.stderr, flush=True)
        found = {}
        if {"plain", "static"} & set(wanted):
            found |= plain_rows(model_dir, ids, mask, args, device, dtype, tokenizer)
        if {"rollout", "rollout-old"} & set(wanted):
            found |= rollout_rows(model_dir, ids, mask, args, device, tokenizer)
        if "local" in wanted:
            found["local"] = backend_row(model_dir, conversations, args, "auto", batch)
        if "continuous" in wanted:
            if continuous_batching_available():
                found["continuous"] = backend_row(model_dir, conversations, args, "continuous", batch)
            else:
                skipped["continuous"] = "this transformers has no continuous batching"
        if "vllm" in wanted:
            if importlib.util.find_spec("vllm") is None:
                skipped["vllm"] = "vLLM is not installed (pip install 'caikit[vllm]')"
            elif device != "cuda":
                skipped["vllm"] = "vLLM needs a GPU"
            else:
                found["vllm"] = backend_row(model_dir, conversations, args, "vllm", batch)
        for name, row in found.items():
            if name in wanted:
                table.setdefault(name, {})[batch] = row
                print(f"  {name}: warm-up {row[0]:.1f} s, {row[2] / row[1]:,.0f} tokens/s", file=sys.stderr, flush=True)

    labels = {"plain": "plain generate, dynamic cache, compute-dtype weights",
              "static": "generate, static cache (compiled decode on CUDA)",
              "rollout": f"caikit rollout path (--engine {args.engine})",
              "rollout-old": "rollout before: fp32 policy under autocast",
              "local": "caikit local backend (--engine auto)",
              "continuous": "caikit local backend, --engine continuous",
              "vllm": "caikit local backend, --engine vllm"}
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    import transformers

    print(f"\n{what} ({parameter_count(model_dir) / 1e6:,.0f}M parameters) on {device_name}, "
          f"{'bf16' if device == 'cuda' else 'fp32'}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; "
          f"~{args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, T={TEMPERATURE}, "
          f"{args.repeats} timed call(s) per row" + ("  [CPU: smoke figures only]" if device == "cpu" else ""))
    header = "| path | " + " | ".join(f"tokens/s, batch {b}" for b in batches) + " | warm-up s |"
    print(header + "\n|" + "---|" * (len(batches) + 2))
    for name, cols in table.items():
        cells = [f"{cols[b][2] / cols[b][1]:,.0f}" if b in cols else "-" for b in batches]
        print(f"| {labels[name]} | " + " | ".join(cells) + f" | {max(c[0] for c in cols.values()):.1f} |")
    for name, why in skipped.items():
        print(f"| {labels[name]} | skipped: {why} |")
    for b in batches:
        best = max((table[n][b][2] / table[n][b][1] for n in ("plain", "static") if b in table.get(n, {})), default=0)
        if best:
            ratios = [f"{n} {table[n][b][2] / table[n][b][1] / best:.2f}x" for n in ("rollout", "local", "continuous",
                                                                                    "vllm") if b in table.get(n, {})]
            print(f"batch {b}, against the best plain-transformers row: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
