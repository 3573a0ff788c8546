"""Reference log-probs computed once, before training, for the offline objectives that need them (DPO, KTO).

One no-grad pass of the frozen reference over every tokenised example, cached in
`out/ref_logps.safetensors` under a hash of the reference model path and the token ids, then the
reference model is freed, so training holds one model. A rerun on the same data reuses the cache.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from caikit.train.logprobs import ForwardOptions

REF_CACHE = "ref_logps.safetensors"
# sequences(reference model, micro-batch of tokenised examples, forward options) -> {name: (b,) summed log-probs}
SequenceLogps = Callable[[torch.nn.Module, list[dict], "ForwardOptions"], dict[str, torch.Tensor]]


def data_hash(model_name: str, splits: dict[str, list[dict]], fields: tuple[str, ...]) -> str:
    """Key of the cache: reference model path + the named token-id / mask fields of every example of every split."""
    from caikit.models import resolve_model_path

    h = hashlib.sha256(resolve_model_path(model_name).encode())
    for name, examples in splits.items():
        h.update(name.encode())
        for e in examples:
            h.update(json.dumps([e[f] for f in fields]).encode())
    return h.hexdigest()[:32]


def reference_logps(cfg, accelerator, command: str, splits: dict[str, list[dict]], fields: tuple[str, ...],
                    sequences: SequenceLogps) -> dict[str, torch.Tensor]:
    """{"<split>_<name>": (N,)} summed reference log-probs, indexed by each example's "index".

    cfg: the trainer's config (ref_model or model, out, batch_size, bf16, seed, and how to run the forward:
    group_by_length, packing, logprob_chunk, attn_implementation). fields: the example keys that determine
    the numbers (for the cache key). sequences: the forward for one micro-batch.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from caikit.train.batches import batches
    from caikit.train.logprobs import ForwardOptions
    from caikit.train.loop import load_pretrained, note
    from caikit.train.packing import keeps_sequences_apart

    ref_name = cfg.ref_model or cfg.model
    key = data_hash(ref_name, splits, fields)
    path = Path(cfg.out) / REF_CACHE
    if accelerator.is_main_process and not _cache_matches(path, key):
        started = time.perf_counter()
        kwargs = {"dtype": torch.bfloat16 if cfg.bf16 else None,
                  "attn_implementation": cfg.attn_implementation or None}
        ref = load_pretrained(AutoModelForCausalLM, ref_name, **kwargs).to(accelerator.device).eval()
        # packed where the reference keeps packed sequences apart (unless --no-packing); sorted by length
        how = ForwardOptions(packed=cfg.packing is not False and keeps_sequences_apart(ref), chunk=cfg.logprob_chunk)
        tensors: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for split, examples in splits.items():
                for micro in batches(examples, cfg.batch_size * 2, cfg.seed, 0, shuffle=False,
                                     group_by_length=cfg.group_by_length):
                    index = torch.tensor([e["index"] for e in micro])
                    for name, logps in sequences(ref, micro, how).items():
                        column = tensors.setdefault(f"{split}_{name}", torch.zeros(len(examples)))
                        column[index] = logps.float().cpu()
        # the reference is only needed for these numbers: free it before the policy trains
        del ref
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"data_hash": key, "ref_model": ref_name})
        note(command, f"reference log-probs for {sum(len(e) for e in splits.values())} examples in "
                      f"{time.perf_counter() - started:.1f}s -> {path}")
    accelerator.wait_for_everyone()
    return load_file(str(path))


def _cache_matches(path: Path, key: str) -> bool:
    from safetensors import safe_open

    if not path.exists():
        return False
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("data_hash") == key
