"""vLLM as a generation engine (`--engine vllm`, `pip install caikit[vllm]`), colocated in this process.

The pattern RL trainers use with vLLM (OpenRLHF, TRL's colocate mode): one `vllm.LLM` in the training
process, given a share of the GPU's memory (`gpu_memory_utilization`) for its weight copy and KV cache, and
after each policy update the new weights are pushed into its model (`load_weights`, which takes names as a
Hugging Face checkpoint has them and does vLLM's own fusing of q/k/v and gate/up). Its engine core runs
in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the pushed tensors are handed over by reference, not
serialised. Cached prefixes are dropped after every push: their keys and values came from the old weights.

The interface is caikit.generation's: `generate(prompts, decoding)` and `load_weights(weights)`. Everything
here runs only where vLLM and a GPU are; the weight-sync logic around it is tested on CPU with a stub engine
of the same interface (tests/test_generation.py).

Seeds: each request gets its own seed (decoding.seed + its index, or a base drawn from torch's seeded
generator when decoding.seed is None), so identical prompts in one call (GRPO's groups) still sample
independently and a seeded run repeats.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch
from torch import Tensor

from caikit.generation import Decoding, cut_continuation, require_vllm


def _load_on_worker(worker, weights: list[tuple[str, Tensor]]) -> None:
    """Runs on vLLM's (in-process) worker: hand the weights to its model's own loader."""
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    refills = True  # vLLM schedules continuously

    def __init__(self, model_path: str, *, eos_token_ids: Sequence[int], pad_token_id: int, memory: float,
                 dtype: str = "auto", max_model_len: int | None = None, seed: int = 0):
        require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights pushed by reference
        import vllm

        self.eos_token_ids, self.pad_token_id = list(eos_token_ids), pad_token_id
        self.llm = vllm.LLM(model=model_path, dtype=dtype, gpu_memory_utilization=memory, seed=seed,
                            max_model_len=max_model_len, enable_prefix_caching=True)
        self.sampling_class = vllm.SamplingParams

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> None:
        weights = list(weights)
        if hasattr(self.llm, "collective_rpc"):
            self.llm.collective_rpc(_load_on_worker, args=(weights,))
        else:  # older vLLM: the driver worker is reachable directly
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights=weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], decoding: Decoding) -> list[list[int]]:
        base = decoding.seed if decoding.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        drawn = 1 if decoding.greedy else decoding.n  # greedy copies are identical: decode once
        params = [self.sampling_class(n=drawn, temperature=max(decoding.temperature, 0.0), top_p=1.0, top_k=-1,
                                      max_tokens=decoding.max_new_tokens, stop=list(decoding.stop) or None,
                                      stop_token_ids=self.eos_token_ids, seed=base + i)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [cut_continuation(list(c.token_ids), self.eos_token_ids, self.pad_token_id)
                for output in outputs for c in output.outputs for _ in range(decoding.n // drawn)]
