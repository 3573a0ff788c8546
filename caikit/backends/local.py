"""Local transformers backend: concurrent calls are batched into one generation call / forward pass.

The pipeline awaits `generate` (or `option_logprobs`) once per prompt from many coroutines. Each call
tokenises its prompt and joins a queue keyed by its sampling parameters; one worker per event loop
waits up to `max_wait_ms` for a batch to fill, cuts the group into length buckets of --batch-size
(less padding; --concurrency plays no part) and hands each to the generation engine
(caikit/generation.py, the one PPO / GRPO sample with) on a dedicated thread, so the event loop stays
responsive. Model and tokenizer load once, lazily, on that same thread.

Engines (--engine): padded (the default, `auto`) left-pads each bucket into one `model.generate`, with a
static KV cache and compiled decoding on CUDA; a bucket's rows wait for its longest. continuous hands the
whole group to transformers' continuous batching, which refills a finished row's slot with the next prompt
(--batch-size rows decode at once); it is not the default until a GPU run of
scripts/bench_generate_local.py shows it ahead (see caikit/generation.py). vllm generates with vLLM in
this process (option log-probs still use the transformers model, loaded on first use).

Seeds: a batch is seeded with the first seed among its requests (`torch.manual_seed`) before it runs, so
sampled outputs depend on which requests shared the batch. Greedy decoding (temperature 0) does not depend
on batch composition: left padding is masked and HF derives position ids from the attention mask.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from caikit.backends.base import Backend, BackendError, Completion, Message, Usage, without_cache_marks
from caikit.backends.option_scoring import checked_options, max_option_tokens
from caikit.errors import UserError
from caikit.models import load_causal_lm, load_tokenizer

DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class SamplingParams:
    """What requests must share to be generated in one batch (the queue key)."""

    temperature: float
    max_tokens: int
    n: int
    stop: tuple[str, ...]


@dataclass
class _Request:
    prompt_ids: list[int]
    future: asyncio.Future
    seed: int | None = None
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass
class _LoopQueue:
    """Pending requests of one event loop, grouped by key ("generate", params) / ("score", options)."""

    pending: dict[Hashable, list[_Request]] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task | None = None
    in_flight: list[_Request] = field(default_factory=list)  # the batch now on the worker thread


class LocalBackend(Backend):
    """A Hugging Face causal LM in this process (alias `smollm2`, an HF id, or a local path)."""

    name = "local"
    default_model = "smollm2"
    supports_logprobs = True
    honours_n = True
    in_process = True

    @classmethod
    def from_options(cls, opts, *, in_flight: int) -> "LocalBackend":
        """--batch-size sizes the generate batches (default by device); --concurrency plays no part here."""
        return cls(opts.model_name(), batch_size=opts.batch_size or None, device=opts.device or None,
                   engine=opts.engine, vllm_memory=opts.vllm_memory)

    def __init__(
        self,
        model: str = "smollm2",
        *,
        batch_size: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_wait_ms: float = 5.0,
        engine: str = "auto",
        vllm_memory: float = 0.8,
    ):
        super().__init__(model)
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if batch_size is None:  # a GPU keeps a bigger batch busy; 2 CPU cores gain little past 16
            batch_size = 64 if device.startswith("cuda") else 16
        if batch_size < 1:
            raise UserError(f"local backend: batch_size must be >= 1, got {batch_size}")
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"local backend: dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        from caikit.generation import ENGINES  # (torch loads with the model, not with this module)

        if engine not in ENGINES:
            raise UserError(f"local backend: engine must be one of {', '.join(ENGINES)}, got '{engine}'")
        if engine == "vllm":
            from caikit.generation import require_vllm

            require_vllm()
        if dtype is None:
            dtype = "fp32"
            if device.startswith("cuda"):
                import torch

                dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.batch_size, self.device, self.dtype = batch_size, device, dtype
        self.max_wait_ms = max_wait_ms
        self.engine_name, self.vllm_memory = engine, vllm_memory
        self._engine = None
        self.stats = dict.fromkeys(
            ("generate_calls", "forward_calls", "sequences", "scored_sequences", "prompt_tokens",
             "completion_tokens", "truncated_prompts"), 0)  # fmt: skip
        self._model = self._tokenizer = None
        self.last_usage: Usage | None = None  # of the latest option_logprobs call
        self._load_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()

    # ---- loading and prompts -------------------------------------------------------------------

    def load(self) -> None:
        """Load tokenizer (left padding, pad != EOS) and model once; safe to call from any thread."""
        with self._load_lock:
            if self._engine is not None:
                return
            from transformers import AutoConfig, GenerationConfig

            from caikit.generation import make_engine
            from caikit.models import resolve_model_path

            self._tokenizer = load_tokenizer(self.model, padding_side="left")
            path = resolve_model_path(self.model)
            if self.engine_name != "vllm":  # vLLM holds its own copy; option log-probs load this one on first use
                self._model = load_causal_lm(self.model, dtype=self.dtype, device=self.device)  # eval(): dropout off
            config = self._model.config if self._model is not None else AutoConfig.from_pretrained(path)
            try:
                generation_config = self._model.generation_config if self._model is not None else \
                    GenerationConfig.from_pretrained(path)
            except OSError:
                generation_config = GenerationConfig()
            ids = generation_config.eos_token_id
            ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
            self._eos_ids = sorted({self._tokenizer.eos_token_id, *ids} - {None})
            limits = [getattr(config, "max_position_embeddings", None), self._tokenizer.model_max_length]
            self.context_length = min(x for x in limits if isinstance(x, int) and 0 < x < 10**7)
            if self.engine_name == "vllm":
                from caikit.vllm_engine import VLLMEngine

                vllm_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(self.dtype, "float32")
                self._engine = VLLMEngine(path, eos_token_ids=self._eos_ids, pad_token_id=self._tokenizer.pad_token_id,
                                          memory=self.vllm_memory, dtype=vllm_dtype)
            else:
                self._engine = make_engine(self.engine_name, self._model, pad_token_id=self._tokenizer.pad_token_id,
                                           eos_token_ids=self._eos_ids, tokenizer=self._tokenizer,
                                           batch_size=self.batch_size)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="caikit-local")
        return self._pool

    async def _ensure_loaded(self) -> None:
        if self._engine is None:
            await asyncio.get_running_loop().run_in_executor(self._executor(), self.load)

    def prompt_text(self, messages: list[Message]) -> str:
        """The conversation as the model sees it, ending where the assistant's answer starts."""
        if getattr(self._tokenizer, "chat_template", None):  # (prompt-cache marks are no business of a template)
            return self._tokenizer.apply_chat_template(without_cache_marks(messages), add_generation_prompt=True,
                                                       tokenize=False)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]  # no template: plain layout
        return "\n".join(lines) + "\nAssistant:"

    def encode_prompt(self, messages: list[Message], *, reserve: int) -> list[int]:
        """Token ids of the prompt, left-truncated (keep the end) so `reserve` new tokens still fit."""
        text = self.prompt_text(messages)
        ids = self._tokenizer(text, add_special_tokens=not self._tokenizer.chat_template)["input_ids"]
        limit = self.context_length - reserve
        if limit <= 0:
            raise UserError(
                f"local backend: {reserve} new tokens leave no room for the prompt in the "
                f"{self.context_length}-token context of '{self.model}'"
            )
        if len(ids) > limit:
            self.stats["truncated_prompts"] += 1
            ids = ids[-limit:]
        return ids

    def _scoring_model(self):
        """The transformers model option log-probs are computed with (under --engine vllm loaded here, once)."""
        if self._model is None:
            self._model = load_causal_lm(self.model, dtype=self.dtype, device=self.device)
        return self._model

    # ---- batch kernels (run on the worker thread) ----------------------------------------------

    def _generate_chunk(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None
    ) -> list[list[Completion]]:
        """One engine call over a batch of prompts; `n` completions per prompt (plain temperature sampling, as
        the API providers do by default; greedy at temperature 0)."""
        from caikit.generation import Decoding

        decoding = Decoding(params.max_tokens, params.temperature, params.n, params.stop, seed)
        new_tokens = self._engine.generate(prompts, decoding)  # n per prompt, in order
        self.stats["generate_calls"] += 1
        self.stats["sequences"] += len(prompts) * (1 if decoding.greedy else params.n)  # before greedy copies
        results = []
        for i, prompt in enumerate(prompts):
            completions, completion_tokens = [], 0
            for tokens in new_tokens[i * params.n : (i + 1) * params.n]:
                completion, count = self._finish(tokens, params)
                completions.append(completion)
                completion_tokens += count
            completions[0].usage = Usage(prompt_tokens=len(prompt), completion_tokens=completion_tokens, requests=1)
            self.stats["prompt_tokens"] += len(prompt)
            self.stats["completion_tokens"] += completion_tokens
            results.append(completions)
        return results

    def _finish(self, tokens: list[int], params: SamplingParams) -> tuple[Completion, int]:
        """Decoded text cut at EOS / the first stop string, its finish reason and its token count."""
        eos_at = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
        if eos_at is not None:
            count, kept = eos_at + 1, tokens[:eos_at]
        else:
            count = len(tokens)
            while count and tokens[count - 1] == self._tokenizer.pad_token_id:  # rows finished early are padded
                count -= 1
            kept = tokens[:count]
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        cuts = [text.find(s) for s in params.stop if s and s in text]
        if cuts:
            text = text[: min(cuts)]
        stopped = eos_at is not None or bool(cuts) or count < params.max_tokens
        return Completion(text=text, finish_reason="stop" if stopped else "length"), count

    def _score_chunk(self, prompts: list[list[int]], options: tuple[str, ...]) -> list[dict[str, float]]:
        """log p(option | prompt) for every prompt and option, in one forward (caikit/backends/option_scoring.py)."""
        from caikit.backends.option_scoring import score_options

        return score_options(self._scoring_model(), self._tokenizer, prompts, options, self.stats)

    # ---- dynamic batching ----------------------------------------------------------------------

    async def _submit(self, key: Hashable, prompt_ids: list[int], seed: int | None = None) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue()
        request = _Request(prompt_ids, loop.create_future(), seed)
        group = queue.pending.setdefault(key, [])
        group.append(request)
        if len(group) >= self.batch_size:
            queue.wakeup.set()
        if queue.worker is None or queue.worker.done():
            queue.worker = loop.create_task(self._worker(queue))
        return await request.future

    async def _worker(self, queue: _LoopQueue) -> None:
        from caikit.generation import length_buckets

        loop = asyncio.get_running_loop()
        while queue.pending:
            # Let the oldest request's batch fill for up to max_wait_ms, unless some group is already full.
            oldest_key = min(queue.pending, key=lambda k: queue.pending[k][0].enqueued_at)
            deadline = queue.pending[oldest_key][0].enqueued_at + self.max_wait_ms / 1000
            while max(len(g) for g in queue.pending.values()) < self.batch_size:
                queue.wakeup.clear()
                try:
                    await asyncio.wait_for(queue.wakeup.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            full = [k for k, g in queue.pending.items() if len(g) >= self.batch_size]
            group_key = full[0] if full else oldest_key
            group = queue.pending.pop(group_key)
            kind, arg = group_key
            kernel: Callable = self._generate_chunk if kind == "generate" else self._score_chunk
            lengths = [len(r.prompt_ids) for r in group]
            # an engine that refills finished rows takes the whole group (it keeps --batch-size rows decoding)
            refills = kind == "generate" and self._engine.refills
            for chunk in length_buckets(lengths, None if refills else self.batch_size):
                requests = [group[i] for i in chunk]
                requests = [r for r in requests if not r.future.done()]  # callers may have given up
                if not requests:
                    continue
                extra = ()
                if kind == "generate":  # the batch takes the seed of its earliest request that has one
                    seeds = [r.seed for r in sorted(requests, key=lambda r: r.enqueued_at) if r.seed is not None]
                    extra = (seeds[0] if seeds else None,)
                prompts = [r.prompt_ids for r in requests]
                queue.in_flight = requests
                try:
                    results = await loop.run_in_executor(self._executor(), kernel, prompts, arg, *extra)
                except Exception as e:  # noqa: BLE001 — hand the failure to every caller in the batch
                    error = e if isinstance(e, (UserError, BackendError)) else BackendError(
                        f"local {kind} failed: {type(e).__name__}: {e}", retryable=False)  # fmt: skip
                    results = [error] * len(requests)
                for request, result in zip(requests, results):
                    if request.future.done():
                        continue
                    if isinstance(result, BaseException):
                        request.future.set_exception(result)
                    else:
                        request.future.set_result(result)

    async def generate(
        self,
        messages: list[Message],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[Completion]:
        await self._ensure_loaded()
        params = self._sampling_params(n, temperature, max_tokens, stop)
        prompt_ids = self.encode_prompt(messages, reserve=params.max_tokens)
        return await self._submit(("generate", params), prompt_ids, seed)

    async def option_logprobs(self, messages: list[Message], options: list[str]) -> dict[str, float]:
        await self._ensure_loaded()
        options_key = checked_options(options)
        prompt_ids = self.encode_prompt(messages, reserve=max_option_tokens(self._tokenizer, options_key))
        scores = await self._submit(("score", options_key), prompt_ids)
        self.last_usage = Usage(prompt_tokens=len(prompt_ids), requests=1)  # read by CachingBackend, no await between
        return scores

    def _sampling_params(self, n: int, temperature: float, max_tokens: int, stop: list[str] | None) -> SamplingParams:
        if n < 1 or max_tokens < 1 or temperature < 0:
            raise UserError(
                f"local backend: need n >= 1, max_tokens >= 1, temperature >= 0 (got {n}, {max_tokens}, {temperature})"
            )
        return SamplingParams(float(temperature), int(max_tokens), int(n), tuple(s for s in stop or () if s))

    # ---- synchronous helpers (eval, benchmarks) ------------------------------------------------

    def _run_sorted(self, kernel: Callable, prompts: list[list[int]], *args: Any) -> list[Any]:
        from caikit.generation import length_buckets

        results: list[Any] = [None] * len(prompts)
        refills = kernel == self._generate_chunk and self._engine.refills
        for chunk in length_buckets([len(p) for p in prompts], None if refills else self.batch_size):
            for i, result in zip(chunk, kernel([prompts[i] for i in chunk], *args)):
                results[i] = result
        return results

    def generate_batch(
        self,
        list_of_messages: list[list[Message]],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """Generate for many conversations now, in length-sorted batches of `batch_size` (blocking)."""
        self.load()
        params = self._sampling_params(n, temperature, max_tokens, stop)
        prompts = [self.encode_prompt(m, reserve=params.max_tokens) for m in list_of_messages]
        return self._executor().submit(self._run_sorted, self._generate_chunk, prompts, params, seed).result()

    def score_options_batch(self, list_of_messages: list[list[Message]], options: list[str]) -> list[dict[str, float]]:
        """`option_logprobs` for many conversations now, one forward pass per batch (blocking)."""
        self.load()
        options_key = checked_options(options)
        reserve = max_option_tokens(self._tokenizer, options_key)
        prompts = [self.encode_prompt(m, reserve=reserve) for m in list_of_messages]
        return self._executor().submit(self._run_sorted, self._score_chunk, prompts, options_key).result()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "device": self.device, "dtype": self.dtype}

    async def aclose(self) -> None:
        queue = self._queues.pop(asyncio.get_running_loop(), None)
        if queue is not None:
            if queue.worker is not None:
                queue.worker.cancel()
            for group in [*queue.pending.values(), queue.in_flight]:
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(BackendError("local backend closed", retryable=True))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
