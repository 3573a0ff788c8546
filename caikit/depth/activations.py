"""Both models, their answers, and their residual-stream activations on the same tokens.

Models load through caikit.models (the embedded alias, a directory, a hub id; safetensors only), as the trainers
load them; a LoRA adapter directory (adapter_config.json, as peft saves it) is applied to its base model and
merged, so every measure sees one plain model. Activations are the output of each decoder layer (the residual
stream after layer l), read by forward hooks in batches under torch.no_grad, at the positions asked for; they
go to one array per layer, in memory or, past a size budget, in .npy files on disk written as they come.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from caikit.depth.ablation import decoder_layers
from caikit.errors import UserError


def adapter_base(spec: str) -> str | None:
    """The base model a LoRA adapter directory names (adapter_config.json), or None for a full model."""
    config = Path(spec).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError):
        raise UserError("adapter_config.json has no base_model_name_or_path", path=str(config)) from None


def load_model(spec: str, *, device: str = "cpu", dtype: str | None = None, base: str | None = None) -> nn.Module:
    """A causal LM in eval mode: a full model by alias, path or hub id, or a LoRA adapter merged into its base
    (`base` overrides the base the adapter names, e.g. the --before model)."""
    from caikit.models import check_safetensors, load_causal_lm

    base_name = adapter_base(spec)
    if base_name is None:
        return load_causal_lm(spec, dtype=dtype, device=device)
    try:
        from peft import PeftModel
    except ImportError:
        raise UserError("a LoRA adapter needs peft: pip install 'caikit[lora]' (or pip install peft)",
                        path=spec) from None
    check_safetensors(Path(spec).expanduser())
    model = load_causal_lm(base or base_name, dtype=dtype, device=device)
    model = PeftModel.from_pretrained(model, str(Path(spec).expanduser()), use_safetensors=True).merge_and_unload()
    return model.to(device).eval()


def tokenizer_for(after: str, before: str):
    """The after-model's tokenizer, else (a directory without one: an adapter, a bare checkpoint) the before-model's,
    else an adapter's base's. Both models read the same token ids, so either serves when both have one."""
    from caikit.models import load_tokenizer

    for spec in (after, before, adapter_base(after), adapter_base(before)):
        if not spec:
            continue
        path = Path(spec).expanduser()
        if not path.is_dir() or (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            return load_tokenizer(spec)
    raise UserError("no tokenizer found beside either model (tokenizer_config.json)", path=after)


def encode_prompts(tokenizer, conversations: list[list[dict]], max_prompt_tokens: int) -> list[list[int]]:
    """Prompt ids with the chat template and generation cue, as the trainers encode them (left-truncated)."""
    from caikit.train.rollout import encode_prompt

    return [encode_prompt(tokenizer, messages, max_prompt_tokens) for messages in conversations]


def generate(model: nn.Module, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
             seed: int, batch_size: int) -> list[list[int]]:
    """Each prompt's continuation (up to and including its first EOS). Hooks registered on `model` apply."""
    from caikit.generation import Decoding, TransformersEngine

    engine = TransformersEngine(model, pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id],
                                batch_size=batch_size, compile=False)
    return engine.generate(prompts, Decoding(max_new_tokens, temperature, seed=seed))


def positions_of(prompt_len: int, total_len: int, response_positions: int) -> list[int]:
    """The last prompt token, then the first `response_positions` response tokens; a response shorter than that
    repeats its last token's position, so every sequence gives the same number of rows."""
    return [min(prompt_len - 1 + j, total_len - 1) for j in range(response_positions + 1)]


class LayerStore:
    """One float32 array (N, n_positions, d) per layer: in memory, or as .npy memory maps under `folder`."""

    def __init__(self, n_layers: int, n: int, n_positions: int, d: int, folder: Path | None = None):
        self.folder = folder
        shape = (n, n_positions, d)
        if folder is None:
            self.arrays = [np.zeros(shape, dtype=np.float32) for _ in range(n_layers)]
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.arrays = [np.lib.format.open_memmap(folder / f"layer{l:03d}.npy", mode="w+", dtype=np.float32,
                                                     shape=shape) for l in range(n_layers)]

    def layer(self, index: int) -> Tensor:
        return torch.from_numpy(np.asarray(self.arrays[index]))

    def flush(self) -> None:
        for array in self.arrays:
            if isinstance(array, np.memmap):
                array.flush()


@torch.no_grad()
def gather(model: nn.Module, sequences: list[list[int]], positions: list[list[int]], *, pad_token_id: int,
           batch_size: int, device: str, folder: Path | None = None) -> LayerStore:
    """The residual stream after every decoder layer at the given positions of each sequence.

    sequences: token ids (right-padded here, so positions keep their meaning); positions: per sequence, the
    same number of indices. Returns a LayerStore of (N, n_positions, d) arrays, one per layer."""
    layers = decoder_layers(model)
    d = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") else \
        model.config.hidden_size
    store = LayerStore(len(layers), len(sequences), len(positions[0]), d, folder)
    current: dict[str, object] = {}

    def capture(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # (B, T, d)
            rows, cols = current["rows"], current["cols"]
            picked = hidden[rows, cols].float().cpu().numpy()  # (B * n_positions, d)
            store.arrays[index][current["slice"]] = picked.reshape(current["n"], -1, d)
        return hook

    handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(layers)]
    try:
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in batch], device=device)
            attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
            k = len(positions[0])
            current.update(n=len(batch), slice=slice(start, start + len(batch)),
                           rows=torch.arange(len(batch), device=device).repeat_interleave(k),
                           cols=torch.tensor([p for i in range(len(batch)) for p in positions[start + i]],
                                             device=device))
            model(input_ids=ids, attention_mask=attention, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    store.flush()
    return store


def store_folder(out: Path, name: str, n_layers: int, n: int, n_positions: int, d: int,
                 budget_mb: float) -> Path | None:
    """Where a model's activations go: None (memory) when they fit in `budget_mb`, else out/activations/NAME."""
    size_mb = n_layers * n * n_positions * d * 4 / 2**20
    if size_mb <= budget_mb:
        return None
    print(f"caikit depth: {name}: {size_mb:.0f} MB of activations, past --memory-mb {budget_mb:g}: streaming them "
          f"to {out / 'activations' / name}", file=sys.stderr)
    return out / "activations" / name
