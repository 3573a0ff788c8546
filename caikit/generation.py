"""One generation path for PPO / GRPO rollouts and the local backend: an engine turns token-id prompts into
token-id continuations, and is told when the policy's weights change.

The interface every engine has (a test's stub engine too):
    engine.generate(prompts: list[list[int]], decoding: Decoding) -> list[list[int]]
        `decoding.n` continuations per prompt, in prompt order; each ends at its first EOS (kept), else at
        max_new_tokens or a stop string.
    engine.load_weights(weights: Iterable[tuple[str, Tensor]])
        generate from these weights from now on (names as a plain Hugging Face checkpoint has them).
`push_weights(engine, model)` is what a trainer calls after each update: it hands `named_weights(model)` over
(LoRA adapters merged in), or nothing when the engine generates from `model` itself.

Engines (--engine):
  padded      `model.generate` over length-bucketed, left-padded batches (TransformersEngine). On CUDA with a
              static KV cache, which makes transformers compile the decode step (torch.compile, CUDA graphs);
              where compiling fails, one notice and eager decoding from then on. On CPU eager decoding with
              transformers' dynamic cache (compiled CPU decoding is slower to build than to run here), said
              once by a notice.
  continuous  transformers' continuous batching (`init_continuous_batching`, paged KV cache): a finished row's
              slot is refilled with the next waiting prompt, so nothing decodes padding after an early EOS
              (ContinuousEngine). Not the default: its manager thread costs ~1 s to start and stop per call on
              CPU, stop strings are applied only after decoding, and its speed against the static-cache path is
              for scripts/bench_generate_local.py to show on a GPU, which no one has run yet.
  vllm        vLLM in this process with a share of the GPU's memory (caikit/vllm_engine.py, `pip install
              caikit[vllm]`); the trainers push the policy's weights into it after every update.
  auto        padded.

Bucketing: prompts are sorted by length and cut into batches of at most `batch_size`, each left-padded only
to its own longest prompt; a call that fits one batch runs in the order given, exactly as one
`model.generate` over the whole left-padded batch would (same outputs, same random draws).

Weights in the compute dtype: a trainer whose policy keeps fp32 master weights under bf16 autocast gets a
bf16 generation copy (`generation_copy`), refreshed by `push_weights` after each update, so the KV cache
and every matmul of decoding are bf16 instead of casting fp32 weights at every layer. On CPU everything
stays fp32 and the engine decodes from the policy itself (nothing to copy, nothing to push).

Seeds: `Decoding.seed` seeds torch's global generator before the call (None: the generator goes on from
where it is, as a trainer seeded once at its start wants); the same prompts, settings and seed give the
same continuations.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

ENGINES = ("auto", "padded", "continuous", "vllm")
VLLM_HINT = "--engine vllm needs vLLM: pip install 'caikit[vllm]'"


@dataclass(frozen=True)
class Decoding:
    """How to continue the prompts of one call."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy; else plain sampling from softmax(logits / T), nothing else
    n: int = 1  # continuations per prompt
    stop: tuple[str, ...] = ()  # stop strings (the engine's tokenizer decodes to find them)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def notice(message: str) -> None:
    print(f"caikit: generation: {message}", file=sys.stderr, flush=True)


def sampling_config(max_new_tokens: int, temperature: float, pad_token_id: int, eos_token_id: int | list[int],
                    greedy: bool = False, **extra):
    """A GenerationConfig that samples from softmax(logits / T) (or decodes greedily) and nothing else.

    Every processor the model's own generation_config might switch on (top-k, top-p, repetition
    penalty...) is set to its neutral value: PPO's log-probs must be those of the sampling distribution,
    and the local backend samples as the API providers do by default.
    """
    from transformers import GenerationConfig

    neutral = dict(top_p=1.0, min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
                   repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_repetition_penalty=1.0,
                   min_new_tokens=0, suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None,
                   use_cache=True)  # also under --gradient-checkpointing, which turns the config's cache off
    if greedy:
        return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                                eos_token_id=eos_token_id, **neutral, **extra)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0,
                            pad_token_id=pad_token_id, eos_token_id=eos_token_id, **neutral, **extra)


def length_buckets(lengths: Sequence[int], batch_size: int | None) -> list[list[int]]:
    """Row indices cut into batches of at most `batch_size` (None or 0: one batch) of similar length: sorted by
    length to choose the members, each batch in input order (so a call that fits one batch runs as given)."""
    if not batch_size or len(lengths) <= batch_size:
        return [list(range(len(lengths)))]
    ordered = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [sorted(ordered[start:start + batch_size]) for start in range(0, len(ordered), batch_size)]


def cut_continuation(tokens: list[int], eos_token_ids: Sequence[int], pad_token_id: int) -> list[int]:
    """A row of `generate`'s new tokens as a continuation: up to and including its first EOS; without one,
    trailing pad (rows stopped by a stop string are padded) removed."""
    for k, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[:k + 1]
    end = len(tokens)
    while end and tokens[end - 1] == pad_token_id:
        end -= 1
    return tokens[:end]


def left_pad_rows(prompts: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Left-pad id lists -> (ids (B, P), attention_mask (B, P)), P the longest prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long,
                       device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device)
    return ids, mask


# --- weights ---------------------------------------------------------------------------------------------


def named_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) of `model`'s weights as a plain checkpoint of its architecture names them; a peft model's
    LoRA adapters are merged in on the fly (W + ΔW of the active adapters, Hu et al. 2021, eq. 3), without
    changing the model. Tied weights appear once."""
    if not hasattr(model, "get_base_model"):
        for name, param in model.named_parameters():
            yield name, param.detach()
        return
    base = model.get_base_model()
    lora = {name: m for name, m in base.named_modules() if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight")}
    for name, param in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)  # a fully trained module's trained copy
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner in lora and leaf == "weight":
            layer = lora[owner]
            deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
            value = param.detach() + sum(d.to(param.dtype) for d in deltas) if deltas else param.detach()
            yield f"{owner}.weight", value
        else:
            yield name.replace(".base_layer.", "."), param.detach()


@torch.no_grad()
def load_named(model: nn.Module, weights: Iterable[tuple[str, Tensor]]) -> int:
    """Copy named weights into `model`'s parameters (cast to their dtype); every parameter must be given.
    Returns how many were copied."""
    params = dict(model.named_parameters())
    seen = set()
    for name, value in weights:
        if name not in params:
            raise KeyError(f"generation copy has no weight '{name}'")
        params[name].copy_(value)
        seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise KeyError(f"no value for {len(missing)} weights of the generation copy, e.g. '{missing[0]}'")
    return len(seen)


def generation_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A plain (adapter-free) eval-mode copy of `model`'s architecture in `dtype` on its device, holding its
    current weights: what decoding runs on while `model` keeps fp32 master weights for the optimizer."""
    from transformers import AutoModelForCausalLM

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    with torch.device(device):
        twin = AutoModelForCausalLM.from_config(base.config, dtype=dtype)
    twin.generation_config = base.generation_config
    load_named(twin, named_weights(model))
    twin.requires_grad_(False)
    return twin.eval()


def push_weights(engine, model: nn.Module) -> None:
    """After an update: make `engine` generate from `model`'s current weights (nothing to do when it decodes
    from `model` itself)."""
    if getattr(engine, "model", None) is model:
        return
    engine.load_weights(named_weights(model))


# --- transformers engines --------------------------------------------------------------------------------


class TransformersEngine:
    """`model.generate` over length buckets; static KV cache + compiled decoding on CUDA (see the module doc).

    `compile`: "auto" (on CUDA), False, or a transformers CompileConfig (its `_compile_all_devices` lets a
    test compile on CPU)."""

    refills = False  # a call's rows wait for the longest of their batch

    def __init__(self, model: nn.Module, *, pad_token_id: int, eos_token_ids: Sequence[int], tokenizer=None,
                 batch_size: int | None = None, compile="auto"):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.pad_token_id, self.eos_token_ids = pad_token_id, list(eos_token_ids)
        self.device = next(model.parameters()).device
        self.compile_config = None
        if compile is not False and compile != "auto":
            self.compile_config = compile
        self.compiled = self.compile_config is not None or (compile == "auto" and self.device.type == "cuda")
        if compile == "auto" and not self.compiled:
            notice(f"static KV cache and compiled decoding need CUDA; decoding eagerly on {self.device.type}")

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        load_named(self.model, weights)

    def config(self, decoding: Decoding):
        extra = {"num_return_sequences": decoding.n} if decoding.n > 1 else {}
        if decoding.stop:
            extra["stop_strings"] = list(decoding.stop)
        return sampling_config(decoding.max_new_tokens, decoding.temperature, self.pad_token_id,
                               self.eos_token_ids, decoding.greedy, **extra)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
        if decoding.seed is not None:
            torch.manual_seed(decoding.seed)
        n, drawn = decoding.n, 1 if decoding.greedy else decoding.n  # greedy copies are identical: decode once
        config = self.config(replace(decoding, n=drawn))
        out: list[list[int]] = [[] for _ in range(len(prompts) * n)]
        for bucket in length_buckets([len(p) for p in prompts], self.batch_size):
            ids, mask = left_pad_rows([prompts[i] for i in bucket], self.pad_token_id, self.device)
            # (len(bucket) * drawn, new tokens): generate repeats each prompt `drawn` times, in order
            rows = self._generate(ids, mask, config)[:, ids.size(1):].tolist()
            for j, i in enumerate(bucket):
                for k in range(n):
                    row = rows[j * drawn + (k if drawn > 1 else 0)]
                    out[i * n + k] = cut_continuation(row, self.eos_token_ids, self.pad_token_id)
        return out

    def _generate(self, ids: Tensor, mask: Tensor, config) -> Tensor:
        kwargs = {"tokenizer": self.tokenizer} if config.stop_strings else {}
        if self.compiled:
            compiled = copy.deepcopy(config)
            compiled.cache_implementation = "static"
            if self.compile_config is not None:
                compiled.compile_config = self.compile_config
            try:
                return self.model.generate(input_ids=ids, attention_mask=mask, generation_config=compiled, **kwargs)
            except Exception as e:  # noqa: BLE001 -- any failure to build or run the compiled step
                self.compiled = False
                first = (str(e).strip().splitlines() or [""])[0][:160]
                notice(f"compiled decoding failed ({type(e).__name__}: {first}); decoding eagerly from now on")
        return self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **kwargs)


def continuous_batching_available(model: nn.Module | None = None) -> bool:
    """Does the installed transformers offer continuous batching (`init_continuous_batching`) to `model`
    (None: to its models in general)?"""
    try:
        from transformers import ContinuousBatchingConfig, GenerationMixin  # noqa: F401
    except ImportError:
        return False
    return hasattr(model if model is not None else GenerationMixin, "init_continuous_batching")


class ContinuousEngine(TransformersEngine):
    """transformers' continuous batching: up to `batch_size` rows decode at once and a finished row's slot takes
    the next waiting prompt. Every request is queued before the manager starts, so the schedule -- and with a
    seed the samples -- depend only on the call. Stop strings are cut by the caller after decoding."""

    refills = True
    PAGE = 64  # tokens per KV-cache page

    def __init__(self, model: nn.Module, **kwargs):
        kwargs["compile"] = False  # the manager compiles (or not) by its own rules
        super().__init__(model, **kwargs)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
        from transformers import ContinuousBatchingConfig

        requests = [p for p in prompts for _ in range(decoding.n)]  # copies sample independently
        rows = min(self.batch_size or len(requests), len(requests))
        longest = max(len(p) for p in requests) + decoding.max_new_tokens
        pages = -(-longest // self.PAGE)
        cb = ContinuousBatchingConfig(page_size=self.PAGE, num_blocks=rows * pages + 1, max_requests_per_batch=rows,
                                      max_batch_tokens=max(longest, 256), seed=decoding.seed)
        config = self.config(Decoding(decoding.max_new_tokens, decoding.temperature))
        manager = self.model.init_continuous_batching(generation_config=config, continuous_batching_config=cb)
        ids = manager.add_requests(requests, max_new_tokens=decoding.max_new_tokens)
        manager.start()
        results: dict[str, list[int]] = {}
        try:
            while len(results) < len(ids):
                result = manager.get_result(timeout=0.05)
                if result is not None and result.is_finished():
                    if result.error is not None:
                        raise RuntimeError(f"continuous batching failed: {result.error}")
                    results[result.request_id] = list(result.generated_tokens)
                elif result is None and not manager.is_running():
                    raise RuntimeError("continuous batching stopped before every request finished")
        finally:
            manager.stop(block=True, timeout=30)
            manager.destroy()
        return [cut_continuation(results[i], self.eos_token_ids, self.pad_token_id) for i in ids]


def make_engine(kind: str, model: nn.Module, **kwargs):
    """The transformers engine `kind` (auto | padded | continuous) over `model`; vLLM is built by
    caikit.vllm_engine from a model path instead."""
    if kind == "continuous":
        if not continuous_batching_available(model):
            from caikit.errors import UserError

            raise UserError("--engine continuous needs a transformers with continuous batching (5.x); "
                            "pip install -U transformers, or use --engine padded")
        return ContinuousEngine(model, **kwargs)
    return TransformersEngine(model, **kwargs)


def require_vllm() -> None:
    """A UserError naming the install command when vLLM is not importable (checked before any model loads)."""
    import importlib.util

    from caikit.errors import UserError

    if importlib.util.find_spec("vllm") is None:
        raise UserError(VLLM_HINT)
